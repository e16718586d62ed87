"""The case lifecycle as a pure state machine: which step is allowed from which state, by whom.

    reported → routed → acknowledged → in_progress → resolved → closed (→ rated)
    routed | acknowledged | in_progress → transfer_requested → (router) → routed | unroutable
    resolved | closed → reopened → routed          unroutable → (operator) → routed
    resolved → (nobody verified within the window: CaseVerificationLapsed) → closed
    routed | acknowledged | in_progress → merged (into another open case)
    merged → (that case is resolved) → resolved          merged → reopened → routed
    acknowledged | in_progress: request_extension (handler), extend | refuse_extension
    (operator) — the resolve deadline moves, the state does not
    routed | acknowledged | in_progress: urge (the resident, once a day) — nor does urging

No I/O here: `decide` answers with the next state and the event to emit, or raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared import events


class Status(StrEnum):
    REPORTED = "reported"
    ROUTED = "routed"
    UNROUTABLE = "unroutable"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    TRANSFER_REQUESTED = "transfer_requested"
    MERGED = "merged"


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    PROGRESS = "progress"
    RESOLVE = "resolve"
    REQUEST_TRANSFER = "request_transfer"
    CLOSE = "close"
    REOPEN = "reopen"
    RATE = "rate"
    MERGE = "merge"
    REQUEST_EXTENSION = "request_extension"
    EXTEND = "extend"
    REFUSE_EXTENSION = "refuse_extension"
    URGE = "urge"


class Actor(StrEnum):
    """Who takes a step. Residents act with their tracking token; others with an API key."""

    RESIDENT = "resident"
    DEPARTMENT = "department"
    WORKER = "worker"
    OPERATOR = "operator"


_HANDLERS = {Actor.DEPARTMENT, Actor.WORKER, Actor.OPERATOR}

BEING_HANDLED = frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS})

# action → (states it may start from, who may take it, state it leads to; None: the same)
TRANSITIONS: dict[Action, tuple[frozenset[Status], frozenset[Actor], Status | None]] = {
    Action.ACKNOWLEDGE: (frozenset({Status.ROUTED}), frozenset(_HANDLERS), Status.ACKNOWLEDGED),
    Action.PROGRESS: (
        frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS}),
        frozenset(_HANDLERS),
        Status.IN_PROGRESS,
    ),
    Action.RESOLVE: (
        frozenset({Status.ACKNOWLEDGED, Status.IN_PROGRESS}),
        frozenset(_HANDLERS),
        Status.RESOLVED,
    ),
    Action.REQUEST_TRANSFER: (
        frozenset({Status.ROUTED, Status.ACKNOWLEDGED, Status.IN_PROGRESS}),
        frozenset({Actor.DEPARTMENT, Actor.OPERATOR}),
        Status.TRANSFER_REQUESTED,
    ),
    Action.CLOSE: (
        frozenset({Status.RESOLVED}),
        frozenset({Actor.DEPARTMENT, Actor.OPERATOR}),
        Status.CLOSED,
    ),
    Action.REOPEN: (
        # a merged case reopened is a case of its own again ("that is not the same problem")
        frozenset({Status.RESOLVED, Status.CLOSED, Status.MERGED}),
        frozenset({Actor.RESIDENT, Actor.OPERATOR}),
        Status.ROUTED,
    ),
    Action.RATE: (frozenset({Status.CLOSED}), frozenset({Actor.RESIDENT}), Status.CLOSED),
    Action.MERGE: (
        # not while it is with the router (reported, transfer requested): its routing would
        # come after the merge; nor from triage: route it first, so that it has a clock to
        # close it after its resolution and a department to go back to if it is reopened
        frozenset({Status.ROUTED, Status.ACKNOWLEDGED, Status.IN_PROGRESS}),
        frozenset(_HANDLERS),
        Status.MERGED,
    ),
    # more time to resolve: asked by whoever handles the case once they have taken it, decided
    # by an operator
    Action.REQUEST_EXTENSION: (
        BEING_HANDLED,
        frozenset({Actor.DEPARTMENT, Actor.WORKER}),
        None,
    ),
    Action.EXTEND: (BEING_HANDLED, frozenset({Actor.OPERATOR}), None),
    Action.REFUSE_EXTENSION: (BEING_HANDLED, frozenset({Actor.OPERATOR}), None),
    # the resident presses for a case with a handler (催办); the hotline's operator for them
    Action.URGE: (
        frozenset({Status.ROUTED}) | BEING_HANDLED,
        frozenset({Actor.RESIDENT, Actor.OPERATOR}),
        None,
    ),
}


class UrgedRecently(Exception):
    """The case was urged a moment ago (HTTP 409): its handlers have the message already."""


def urge_refused(now: datetime, last_urged_at: datetime | None, interval: timedelta) -> str | None:
    """Why a case may not be urged now (urged within `interval`), or None."""
    if last_urged_at is None or now >= last_urged_at + interval:
        return None
    again = (last_urged_at + interval).isoformat()
    return f"the case was urged at {last_urged_at.isoformat()}; it may be urged again from {again}"


LONGEST_EXTENSION = timedelta(days=90)


class ExtensionNotAllowed(Exception):
    """The deadline cannot be moved as asked (HTTP 409)."""


def extension_until(
    action: Action,
    now: datetime,
    resolve_by: datetime | None,
    *,
    asked: datetime | None,
    pending: datetime | None,
) -> datetime | None:
    """The resolve deadline an extension step names, checked: asked for (`request_extension`,
    `extend`), or the one pending if an operator grants it without naming one. An extension is
    asked and granted before the deadline passes (after it, the case has already climbed the
    ladder), to a later moment, at most `LONGEST_EXTENSION` ahead. None for other steps.
    Raises ExtensionNotAllowed."""
    if action is Action.REFUSE_EXTENSION:
        if pending is None:
            raise ExtensionNotAllowed("no extension was asked for this case")
        return None
    if action not in (Action.REQUEST_EXTENSION, Action.EXTEND):
        return None
    until = asked if asked is not None else pending
    if until is None:
        raise ExtensionNotAllowed(
            "until (the new resolve deadline) is required: none was asked for this case"
        )
    if resolve_by is None:
        raise ExtensionNotAllowed("the case has no resolve deadline to move")
    if resolve_by <= now:
        raise ExtensionNotAllowed(
            f"its resolve deadline passed at {resolve_by.isoformat()}: an extension is asked "
            "and granted before it passes"
        )
    if until <= resolve_by:
        raise ExtensionNotAllowed(
            f"until must be later than the resolve deadline, {resolve_by.isoformat()}"
        )
    if until > now + LONGEST_EXTENSION:
        raise ExtensionNotAllowed(f"until is at most {LONGEST_EXTENSION.days} days ahead")
    return until


# What a case may be merged into: open and its own (not itself merged into another; a case
# already resolved has no resolution left to share).
MERGE_TARGETS = frozenset(
    {
        Status.REPORTED,
        Status.ROUTED,
        Status.UNROUTABLE,
        Status.ACKNOWLEDGED,
        Status.IN_PROGRESS,
        Status.TRANSFER_REQUESTED,
    }
)


class IllegalTransition(Exception):
    """The step is not allowed from the case's current state (HTTP 409)."""

    def __init__(self, action: Action, current: Status) -> None:
        allowed = sorted(TRANSITIONS[action][0])
        super().__init__(
            f"cannot {action.value} a case that is {current.value}; "
            f"allowed from: {', '.join(allowed)}"
        )
        self.action = action
        self.current = current


class NotPermitted(Exception):
    """This kind of actor may not take this step at all (HTTP 403)."""


class MergeRefused(Exception):
    """The case named to merge into cannot take it (HTTP 409)."""


def merge_refused(
    case_id: str, target_id: str, target: Status, target_into: str | None
) -> str | None:
    """Why `case_id` may not be merged into `target_id` (in state `target`, itself merged into
    `target_into`), or None."""
    if target_id == case_id:
        return "a case cannot be merged into itself"
    if target is Status.MERGED:
        return f"case {target_id} was itself merged into {target_into}: merge into that one"
    if target not in MERGE_TARGETS:
        return (
            f"case {target_id} is {target.value}: only an open case that is not resolved "
            "can take a merged report"
        )
    return None


@dataclass(frozen=True)
class Step:
    action: Action
    by: str  # the actor's id: key id, worker id, "resident"
    note: str | None = None
    reason: str | None = None
    photo_urls: tuple[str, ...] = ()
    rating: int | None = None
    department: str | None = None  # current department, for transfer requests
    into: str | None = None  # a merge: the case it joins
    until: datetime | None = None  # an extension: the resolve deadline (`extension_until`)
    times: int = 0  # an urging: how often, this one included
    # a resolution: when it closes unless the resident verifies or reopens it (None: never)
    closes_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    status: Status
    event: events.Event
    also_reroute: events.RerouteRequested | None = None


def check_allowed(
    current: Status, actor: Actor, action: Action, *, already_rated: bool = False
) -> None:
    """Whether `actor` may take `action` on a case in state `current`: raises NotPermitted or
    IllegalTransition (before any check of the step's own values)."""
    sources, actors, _ = TRANSITIONS[action]
    if actor not in actors:
        raise NotPermitted(f"a {actor.value} may not {action.value} a case")
    if current not in sources or (action is Action.RATE and already_rated):
        raise IllegalTransition(action, current)


def decide(current: Status, actor: Actor, step: Step, *, already_rated: bool = False) -> Decision:
    """The outcome of `step` on a case in state `current`, or `IllegalTransition`/`NotPermitted`."""
    check_allowed(current, actor, step.action, already_rated=already_rated)
    target = TRANSITIONS[step.action][2]
    status = current if target is None else target
    event: events.Event
    reroute = None
    match step.action:
        case Action.ACKNOWLEDGE:
            event = events.CaseAcknowledged(by=step.by, note=step.note)
        case Action.PROGRESS:
            event = events.CaseProgressed(by=step.by, note=step.note or "")
        case Action.RESOLVE:
            event = events.CaseResolved(
                by=step.by,
                note=step.note or "",
                photo_urls=step.photo_urls,
                closes_at=step.closes_at,
            )
        case Action.REQUEST_TRANSFER:
            reason = step.reason or ""
            event = events.CaseTransferRequested(
                by=step.by, department=step.department or "", reason=reason
            )
            reroute = events.RerouteRequested(
                reason=reason,
                requested_by=step.by,
                exclude_departments=(step.department,) if step.department else (),
            )
        case Action.CLOSE:
            event = events.CaseClosed(by=step.by, note=step.note)
        case Action.REOPEN:
            event = events.CaseReopened(by=step.by, reason=step.reason or "")
        case Action.RATE:
            if step.rating is None:
                raise ValueError("a rating is required")
            event = events.CaseRated(rating=step.rating, comment=step.note)
        case Action.MERGE:
            if step.into is None:
                raise ValueError("the case to merge into is required")
            event = events.CaseMerged(by=step.by, into=step.into, note=step.note)
        case Action.REQUEST_EXTENSION | Action.EXTEND:
            if step.until is None:
                raise ValueError("the new resolve deadline is required")
            if step.action is Action.REQUEST_EXTENSION:
                event = events.CaseExtensionRequested(
                    by=step.by, until=step.until, reason=step.reason or ""
                )
            else:
                event = events.CaseDeadlineExtended(
                    by=step.by, resolve_by=step.until, reason=step.reason or ""
                )
        case Action.REFUSE_EXTENSION:
            event = events.CaseExtensionRefused(by=step.by, reason=step.reason or "")
        case Action.URGE:
            event = events.CaseUrged(by=step.by, times=max(1, step.times), note=step.note)
    return Decision(status=status, event=event, also_reroute=reroute)


FINISHED = frozenset({Status.RESOLVED, Status.CLOSED})
# not open in any count: finished, or merged into another case (which carries the work)
SETTLED = FINISHED | {Status.MERGED}


def follow(original: events.CaseResolved, into: str) -> events.CaseResolved:
    """The resolution a case merged into `into` gets when `into` is resolved: the same words,
    photos and verification window, so its resident hears and may verify or reopen as for a
    case of their own."""
    return events.CaseResolved(
        by=original.by,
        note=original.note,
        photo_urls=original.photo_urls,
        closes_at=original.closes_at,
        follows=into,
    )


def arrives_late(current: Status, event: events.Event) -> bool:
    """A routing outcome for a case already resolved, closed or merged: no flow routes such a
    case (a reopened one goes back to `routed` itself), so it is an old event delivered late —
    a dead letter replayed after the case moved on — or a handover that crossed a merge. It
    joins the timeline; it must not re-open the case or re-assign it."""
    return current in SETTLED and isinstance(event, events.CaseRouted | events.CaseUnroutable)


def status_after_event(current: Status, event: events.Event) -> Status:
    """How the read model moves on events that other services emit."""
    match event:
        case events.CaseRouted(handed_over_from=str()):
            # a handover changes the worker, never the state: had the worker acknowledged it
            # just before (the router had not heard yet), it stays acknowledged
            return current
        case events.CaseRouted():
            return Status.ROUTED
        case events.CaseUnroutable():
            return Status.UNROUTABLE
        case events.CaseAcknowledged():
            return Status.ACKNOWLEDGED
        case events.CaseProgressed():
            return Status.IN_PROGRESS
        case events.CaseResolved():
            return Status.RESOLVED
        case events.CaseClosed():
            return Status.CLOSED
        case events.CaseReopened():
            return Status.ROUTED
        case events.CaseTransferRequested():
            return Status.TRANSFER_REQUESTED
        case events.CaseMerged():
            return Status.MERGED
        case _:
            return current  # warnings, escalations, ratings: attributes, not states


CLOSED_BY_SYSTEM = "griddispatch"


def close_unverified(
    current: Status, lapse: events.CaseVerificationLapsed, last_resolved_at: datetime | None
) -> events.CaseClosed | None:
    """The closing a lapsed verification window brings: only while the case is still resolved,
    and by the resolution the window began with (`last_resolved_at`: the case's latest
    `CaseResolved`). A case reopened meanwhile, or reopened and resolved again (a new window),
    is left alone: the lapse arrived after the resident had spoken."""
    if current is not Status.RESOLVED or last_resolved_at != lapse.resolved_at:
        return None
    return events.CaseClosed(by=CLOSED_BY_SYSTEM, automatic=True)


def met_deadline(
    action: Action, at: datetime, *, acknowledge_by: datetime | None, resolve_by: datetime | None
) -> bool | None:
    """Whether an acknowledgement or resolution at `at` kept its deadline (None: the step has
    no deadline, or the case had none). Feeds the response and resolution rates."""
    deadline = {Action.ACKNOWLEDGE: acknowledge_by, Action.RESOLVE: resolve_by}.get(action)
    return None if deadline is None else at <= deadline
