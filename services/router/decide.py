"""The routing decision, as a pure function of a case and a reference-data snapshot.

    grid        building code → grid; else the point (dedicated grids first; snapping);
                address only → unroutable (no geocoder yet)
    department  the rule table, first match wins; else the category's default department
    worker      the on-duty worker of the grid with the fewest open cases; else the grid leader
    priority    catalogue, then rule, raised one step for key-care residents and in emergencies
    deadlines   from the catalogue or the rule, shortened by an emergency factor
    chain       worker → grid leader → community → street office → district → city

Every decision carries a trail that says why, for `griddispatch route --explain`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from services.router.refdata import ReferenceData
from services.router.rules import Facts
from shared import events
from shared.events import Deadlines, EscalationStep, Priority, trusted

PRIORITY_ORDER = [Priority.LOW, Priority.NORMAL, Priority.HIGH, Priority.URGENT]
KEY_CARE_GROUPS = frozenset(
    {
        "elderly_alone",
        "very_old",
        "disabled",
        "lost_only_child",
        "low_income",
        "subsistence_allowance",
        "women_children_hardship",
    }
)


@dataclass(frozen=True)
class CaseFacts:
    """What the router knows of a case: its report, and who declined it so far."""

    case_id: str
    category: str
    description: str
    location: events.Location
    reported_at: datetime
    care_groups: tuple[str, ...] = ()
    exclude_departments: frozenset[str] = frozenset()
    # manual triage: an operator's choice overrides the lookup (and a grid task's grid)
    grid_id: str | None = None
    department: str | None = None
    task_id: str | None = None  # one grid's case of a grid task
    due_by: datetime | None = None  # the grid task's own deadline (wall clock)


@dataclass(frozen=True)
class Decision:
    event: events.CaseRouted | events.CaseUnroutable
    trail: tuple[str, ...] = field(default=())
    # The event's JSON, as its model writes it (a test holds it), for the hot path; None:
    # serialise the model.
    payload_json: bytes | None = None

    @property
    def routed(self) -> bool:
        return isinstance(self.event, events.CaseRouted)


@functools.lru_cache(maxsize=1024)  # deadlines come in a few dozen lengths
def _hours(hours: float) -> timedelta:
    return timedelta(hours=hours)


def raise_priority(p: Priority, steps: int = 1) -> Priority:
    i = min(PRIORITY_ORDER.index(p) + steps, len(PRIORITY_ORDER) - 1)
    return PRIORITY_ORDER[i]


def _unroutable(case: CaseFacts, reason: str, trail: list[str]) -> Decision:
    trail.append(f"unroutable: {reason}")
    return Decision(
        events.CaseUnroutable(
            category=case.category,
            reason=reason,
            reported_at=case.reported_at,
            task_id=case.task_id,
        ),
        tuple(trail),
    )


def decide(
    case: CaseFacts,
    ref: ReferenceData,
    *,
    open_cases: Mapping[str, int],
    explain: bool = True,
) -> Decision:
    # The trail is for explanations only: routing a case does not spend time formatting it.
    trail: list[str] = []
    category = ref.categories.get(case.category)
    if category is None:
        return _unroutable(case, f"unknown category {case.category}", trail)

    # 1. the grid
    grid_id = case.grid_id
    loc = case.location
    if grid_id is not None:
        if grid_id not in ref.grids:
            return _unroutable(case, f"no grid {grid_id}", trail)
        if explain:
            trail.append(
                f"grid {grid_id}: "
                + ("the task's grid" if case.task_id else "chosen by an operator")
            )
    elif loc.facility_code and loc.facility_code in ref.facilities:
        grid_id = ref.facilities[loc.facility_code]
        if explain:
            trail.append(f"grid {grid_id}: facility {loc.facility_code}")
    elif loc.building_code and loc.building_code in ref.buildings:
        grid_id = ref.buildings[loc.building_code]
        if explain:
            trail.append(f"grid {grid_id}: building {loc.building_code}")
    elif loc.lat is not None and loc.lon is not None:
        if loc.building_code and explain:
            trail.append(f"building {loc.building_code} unknown; using the coordinate")
        if loc.facility_code and explain:
            trail.append(f"facility {loc.facility_code} unknown; using the coordinate")
        located = ref.index.locate(loc.lat, loc.lon, explain=explain)
        trail.extend(located.trail)
        if located.grid_id is None:
            return _unroutable(case, "the location is outside every grid", trail)
        grid_id = located.grid_id
        if explain:
            trail.append(f"grid {grid_id}: {located.how}")
    elif loc.building_code:
        return _unroutable(case, f"unknown building {loc.building_code}", trail)
    elif loc.facility_code:
        return _unroutable(case, f"unknown facility {loc.facility_code}", trail)
    else:
        return _unroutable(case, "address only: no geocoder, needs manual triage", trail)

    place = ref.place(grid_id)
    info, street, district = place.info, place.street_office, place.district

    # 2. the department
    facts = Facts(
        category=case.category,
        grid_kind=info.kind,
        dedicated_type=info.dedicated_type,
        district=district.code,
        street_office=street.code,
        day=case.reported_at.date(),
        description=case.description,
        care_groups=case.care_groups,
    )
    rule = None
    if case.department is not None:
        department = case.department
        if explain:
            trail.append(f"department {department}: chosen by an operator")
    else:
        rule, rule_trail = ref.rules.first_match(
            facts,
            exclude_departments=case.exclude_departments,
            default_department=category.department,
            explain=explain,
        )
        trail.extend(rule_trail)
        department = (rule.route.department if rule else None) or category.department
        if department in case.exclude_departments:
            return _unroutable(case, "every candidate department declined the case", trail)
        if explain:
            trail.append(f"department {department}" + (f" (rule {rule.id})" if rule else ""))
    if department not in ref.departments:
        return _unroutable(case, f"department {department} is not known", trail)

    # 3. the worker
    # the grid's staff on duty; for a dedicated grid with nobody on duty, the surrounding grid's
    worker = min(
        place.on_duty, key=lambda w: (open_cases.get(w.worker_id, 0), w.worker_id), default=None
    )
    if explain and worker is not None:
        load = open_cases.get(worker.worker_id, 0)
        trail.append(f"worker {worker.worker_id}: on duty, {load} open cases")
    elif explain:
        trail.append(f"no worker on duty in {grid_id}: the grid leader takes it")

    # 4. priority and deadlines
    priority = category.priority
    ack_h = category.deadlines.acknowledge_hours
    res_h = category.deadlines.resolve_hours
    if rule is not None:
        priority = rule.route.priority or priority
        ack_h = rule.route.acknowledge_hours or ack_h
        res_h = rule.route.resolve_hours or res_h
    if case.care_groups and not KEY_CARE_GROUPS.isdisjoint(case.care_groups):
        priority = raise_priority(priority)
        if explain:
            trail.append(f"priority raised to {priority.value}: a key-care resident")
    factor = (
        min(
            (ref.emergency[a] for a in (grid_id, street.code, district.code) if a in ref.emergency),
            default=None,
        )
        if ref.emergency  # no area in emergency mode: the usual case
        else None
    )
    if factor is not None:
        priority = raise_priority(priority)
        ack_h, res_h = ack_h * factor, res_h * factor
        if explain:
            trail.append(f"emergency mode: deadlines × {factor}, priority {priority.value}")
    ack_by = case.reported_at + _hours(ack_h)
    res_by = case.reported_at + _hours(res_h)
    working_time = category.deadlines.working_time
    if case.due_by is not None:
        # the operator's deadline for the task, on the wall clock: resolved by then, and
        # acknowledged by then at the latest
        res_by, working_time = case.due_by, False
        ack_by = min(ack_by, res_by)
        ack_h = (ack_by - case.reported_at).total_seconds() / 3600
        if explain:
            trail.append(f"deadline: the task's, resolved by {res_by.isoformat()}")
    warn_before = max(60, int(ack_h * 3600 * 0.25))

    # 5. the escalation chain, names and contacts resolved now
    chain: tuple[EscalationStep, ...] = ()
    if worker is not None:
        chain = (worker.escalation_step,)
    chain += ref.chain_above_worker(grid_id, len(chain))
    deadlines = trusted(
        Deadlines,
        acknowledge_by=ack_by,
        resolve_by=res_by,
        warn_before_s=warn_before,
        working_time=working_time,
    )

    # Built without re-validation: every value comes from validated reference data, the
    # validated report, or arithmetic on them (tests compare with validated models).
    routed = trusted(
        events.CaseRouted,
        category=case.category,
        grid_id=grid_id,
        district=district.code,
        street_office=street.code,
        department=department,
        worker_id=worker.worker_id if worker else None,
        priority=priority,
        deadlines=deadlines,
        escalation_chain=chain,
        reported_at=case.reported_at,
        rule_id=rule.id if rule else None,
        mediate_in_grid_first=bool(rule and rule.route.mediate_in_grid_first),
        task_id=case.task_id,
        handed_over_from=None,
    )
    return Decision(routed, tuple(trail), routed_json(routed, ref.chain_json(grid_id, worker)))


def handover_refused(
    routed: events.CaseRouted | None,
    *,
    away: str,
    worker_id: str | None,
    open_: bool,
    acknowledged: bool | None,
    transferred: bool,
    now: datetime,
) -> str | None:
    """Why a case is not handed over from the worker `away` (None: it is). Only a case still
    waiting for its first acknowledgement, with that deadline ahead, moves: its clock then
    runs on unchanged (escalation counts the same deadlines from the same report). A case
    being handled stays with whoever handles it; one reopened or transferred has a clock of
    its own that a new routing would reset."""
    if routed is None:
        return "not routed"
    if worker_id != away:
        return f"assigned to {worker_id or 'the grid leader'} now"
    if not open_:
        return "resolved or closed"
    if acknowledged is None:
        return "reopened, or routed before acknowledgements were followed"
    if acknowledged:
        return "acknowledged already"
    if transferred:
        return "transferred"
    if routed.deadlines.acknowledge_by <= now:
        return "its acknowledge deadline has passed (escalated already)"
    return None


def hand_over(
    routed: events.CaseRouted,
    ref: ReferenceData,
    *,
    away: str,
    open_cases: Mapping[str, int],
) -> Decision | None:
    """The same routing with another worker of the case's grid in place of `away`: the
    on-duty one with the fewest open cases, else the grid leader; everything else (department,
    priority, deadlines, the ladder above the worker) as it was. None: the grid is gone from
    the reference data (the case stays where it is)."""
    if routed.grid_id not in ref.grids:
        return None
    place = ref.place(routed.grid_id)
    worker = min(
        (w for w in place.on_duty if w.worker_id != away),
        key=lambda w: (open_cases.get(w.worker_id, 0), w.worker_id),
        default=None,
    )
    chain: tuple[EscalationStep, ...] = (worker.escalation_step,) if worker is not None else ()
    chain += ref.chain_above_worker(routed.grid_id, len(chain))
    event = routed.model_copy(
        update={
            "worker_id": worker.worker_id if worker else None,
            "escalation_chain": chain,
            "handed_over_from": away,
        }
    )
    to = worker.worker_id if worker else "the grid leader"
    return Decision(event, (f"handed over from {away} to {to}",))


def routed_json(event: events.CaseRouted, chain_json: bytes) -> bytes:
    """`event`'s JSON as its model writes it, with the escalation chain rendered already."""
    deadlines = event.deadlines
    return orjson.dumps(
        {
            "category": event.category,
            "grid_id": event.grid_id,
            "district": event.district,
            "street_office": event.street_office,
            "department": event.department,
            "worker_id": event.worker_id,
            "priority": event.priority,
            "deadlines": {
                "acknowledge_by": deadlines.acknowledge_by,
                "resolve_by": deadlines.resolve_by,
                "warn_before_s": deadlines.warn_before_s,
                "working_time": deadlines.working_time,
            },
            "escalation_chain": orjson.Fragment(chain_json),
            "reported_at": event.reported_at,
            "rule_id": event.rule_id,
            "mediate_in_grid_first": event.mediate_in_grid_first,
            "task_id": event.task_id,
            "handed_over_from": event.handed_over_from,
        },
        option=orjson.OPT_UTC_Z,  # pydantic writes UTC as `Z`, other offsets as they are
    )
