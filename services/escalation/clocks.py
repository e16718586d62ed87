"""What a lifecycle event does to a case's deadline clock. Pure: no I/O.

Escalation keeps one `CaseClock` per case (a row of `escalation.cases`). `apply` takes the
clock as the events before left it and one event, and says what changes: the clock's new
state, and the timers to arm in place of the case's pending ones (every event that escalation
follows cancels those). The adapter (`timers.fold_batch`) applies a whole batch of events in
memory this way and writes the outcome with a few set-based statements.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import TypeAdapter

from services.escalation.deadlines import WorkCalendar, after_pause, due, with_factor
from shared import events

Phase = Literal["acknowledge", "resolve", "paused", "verify", "done"]

FOLLOWED = (
    events.CaseRouted,
    events.CaseAcknowledged,
    events.CaseResolved,
    events.CaseClosed,
    events.CaseReopened,
    events.CaseTransferRequested,
    events.CaseMerged,
    events.CaseDeadlineExtended,
)

# The chain's JSON as its models write it, in one call (4 µs; json.dumps of each step's dump
# took 17 µs a routed case); stored as jsonb, so only the content matters.
_CHAIN: TypeAdapter[tuple[events.EscalationStep, ...]] = TypeAdapter(
    tuple[events.EscalationStep, ...]
)


@dataclass(frozen=True)
class CaseClock:
    """A row of `escalation.cases`: the case's chain and the deadline it is racing."""

    case_id: str
    department: str | None
    district: str | None
    street_office: str | None
    grid_id: str | None
    chain: str  # the escalation chain as JSON text (the timers' payloads embed it)
    working_time: bool
    warn_before_s: float
    ack_window_s: float
    resolve_window_s: float
    phase: str
    due_at: datetime | None
    resolve_due_at: datetime | None
    paused_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> CaseClock:
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def columns(self) -> tuple[Any, ...]:
        """The row's values in column order, as they are (`dataclasses.astuple` deep-copies
        each value: a fifth of a batch's fold)."""
        return _clock_columns(self)


_clock_columns = operator.attrgetter(*(f.name for f in dataclasses.fields(CaseClock)))


@dataclass(frozen=True)
class NewTimer:
    kind: Literal["warn", "escalate", "close"]
    deadline: Literal["acknowledge", "resolve", "verify"]
    level: int
    deadline_at: datetime
    due_at: datetime
    started_at: datetime | None = None  # "close" timers: the resolution the window began with

    def columns(self) -> tuple[str, str, int, datetime, datetime, datetime | None]:
        return (
            self.kind, self.deadline, self.level, self.deadline_at, self.due_at, self.started_at
        )  # fmt: skip


@dataclass(frozen=True)
class Change:
    clock: CaseClock
    arm: tuple[NewTimer, ...]  # replaces every pending timer of the case


def timers_for(
    deadline: Literal["acknowledge", "resolve"],
    deadline_at: datetime,
    warn_before_s: float,
    now: datetime,
    level: int = 1,
) -> tuple[NewTimer, ...]:
    """The escalation at the deadline, and a warning before it if that is still ahead."""
    armed = [NewTimer("escalate", deadline, level, deadline_at, deadline_at)]
    warn_at = deadline_at - timedelta(seconds=warn_before_s)
    if warn_before_s > 0 and warn_at > now:
        armed.append(NewTimer("warn", deadline, level - 1, deadline_at, warn_at))
    return tuple(armed)


# The verification window of resolutions that do not state when they close (`closes_at`):
# those intake wrote before it stated it, when this was the window's default.
UNSTATED_VERIFY_WINDOW = timedelta(hours=72)


def resolution_closes_at(event: events.CaseResolved, resolved_at: datetime) -> datetime | None:
    """When a resolution closes its case unless the resident verifies or reopens it first: as
    intake stated (None: never)."""
    if "closes_at" in event.model_fields_set:
        return event.closes_at
    return resolved_at + UNSTATED_VERIFY_WINDOW


def verification_timer(resolved_at: datetime, close_at: datetime) -> NewTimer:
    """The timer that closes a resolved case nobody verified or reopened within the window."""
    return NewTimer("close", "verify", 0, close_at, close_at, started_at=resolved_at)


def catch_up(
    change: Change,
    case_id: str,
    earlier: Sequence[tuple[datetime, events.Event]],
    now: datetime,
    cal: WorkCalendar,
) -> Change:
    """A case's routing arrived after events that follow it (its routing was a dead letter
    here, replayed later): the clock as if they had come in order. The last event's timers
    replace the routing's, as they would have."""
    for occurred_at, event in earlier:
        nxt = apply(
            change.clock,
            case_id,
            event,
            now,
            cal,
            occurred_at=occurred_at,
        )
        if nxt is not None:
            change = nxt
    return change


def _handed_over(clock: CaseClock, event: events.CaseRouted, now: datetime) -> Change | None:
    """A handover (another worker, nothing else): the clock runs on as it is — deadlines
    already shortened by emergency mode are not shortened again from now — along the new
    ladder. One acknowledged just before the router heard of it keeps everything."""
    if clock.phase != "acknowledge" or clock.due_at is None:
        return None
    new = dataclasses.replace(clock, chain=_CHAIN.dump_json(event.escalation_chain).decode())
    return Change(new, timers_for("acknowledge", clock.due_at, clock.warn_before_s, now))


def routed_areas(event: events.CaseRouted) -> tuple[str, ...]:
    """The areas whose emergency mode shortens this case's deadlines."""
    return tuple(a for a in (event.district, event.street_office, event.grid_id) if a)


def apply(
    clock: CaseClock | None,
    case_id: str,
    event: events.Event,
    now: datetime,
    cal: WorkCalendar,
    emergency_factor: float | None = None,
    *,
    occurred_at: datetime | None = None,
) -> Change | None:
    """The change `event` makes to `clock` (None: the case has none yet); None if the event
    changes nothing (not one escalation follows, or about a case it does not know).

    A resolution starts the verification window that intake set on it (`closes_at`; none:
    the case waits for a person): the resident may verify or reopen until it ends, and then a
    "close" timer fires `CaseVerificationLapsed`."""
    if isinstance(event, events.CaseRouted):
        if event.handed_over_from and clock is not None:
            return _handed_over(clock, event, now)
        if clock is not None and clock.phase in ("verify", "done"):
            # No flow routes a resolved or closed case (a reopened one resumes its clock
            # itself): an old routing delivered late, a dead letter replayed after the case
            # moved on. Arming its deadlines now would escalate a finished case.
            return None
        return _routed(clock, case_id, event, now, cal, emergency_factor)
    if clock is None:
        return None
    match event:
        case events.CaseAcknowledged():
            res_due = clock.resolve_due_at
            if res_due is None:
                return Change(dataclasses.replace(clock, phase="resolve"), ())
            return Change(
                dataclasses.replace(clock, phase="resolve", due_at=res_due),
                timers_for("resolve", res_due, clock.warn_before_s, now),
            )
        case events.CaseResolved() if close_at := resolution_closes_at(
            event, resolved_at := occurred_at or now
        ):
            timer = verification_timer(resolved_at, close_at)
            return Change(dataclasses.replace(clock, phase="verify", due_at=timer.due_at), (timer,))
        case events.CaseResolved() | events.CaseClosed() | events.CaseMerged():
            # merged: the case it joined carries the deadlines; this one is resolved with it
            return Change(dataclasses.replace(clock, phase="done"), ())
        case events.CaseReopened():
            res_due = due(now, clock.resolve_window_s, working_time=clock.working_time, cal=cal)
            return Change(
                dataclasses.replace(clock, phase="resolve", due_at=res_due, resolve_due_at=res_due),
                timers_for("resolve", res_due, clock.warn_before_s, now),
            )
        case events.CaseTransferRequested():
            return Change(dataclasses.replace(clock, phase="paused", paused_at=now), ())
        case events.CaseDeadlineExtended() if clock.phase == "resolve":
            # more time, granted by an operator before the deadline passed: the new deadline
            # as it was granted (not shortened or counted in working time again), and the ladder
            # from its first step (had it started climbing meanwhile, it starts again)
            extended = event.resolve_by
            return Change(
                dataclasses.replace(clock, due_at=extended, resolve_due_at=extended),
                timers_for("resolve", extended, clock.warn_before_s, now),
            )
    return None


def _routed(
    clock: CaseClock | None,
    case_id: str,
    event: events.CaseRouted,
    now: datetime,
    cal: WorkCalendar,
    factor: float | None,
) -> Change:
    d = event.deadlines
    wt = d.working_time
    ack_window = (d.acknowledge_by - event.reported_at).total_seconds()
    res_window = (d.resolve_by - event.reported_at).total_seconds()
    ack_due = due(event.reported_at, ack_window, working_time=wt, cal=cal)
    res_due = due(event.reported_at, res_window, working_time=wt, cal=cal)
    if (
        clock is not None
        and clock.phase == "paused"
        and clock.due_at
        and clock.paused_at
        and clock.resolve_due_at
    ):
        # back from a transfer: the clock resumes where it stopped
        ack_due = after_pause(clock.due_at, clock.paused_at, now, working_time=wt, cal=cal)
        res_due = after_pause(clock.resolve_due_at, clock.paused_at, now, working_time=wt, cal=cal)
    if factor is not None:
        ack_due = with_factor(now, ack_due, factor, working_time=wt, cal=cal)
        res_due = with_factor(now, res_due, factor, working_time=wt, cal=cal)
    new = CaseClock(
        case_id=case_id,
        department=event.department,
        district=event.district,
        street_office=event.street_office,
        grid_id=event.grid_id,
        chain=_CHAIN.dump_json(event.escalation_chain).decode(),
        working_time=wt,
        warn_before_s=float(d.warn_before_s),
        ack_window_s=ack_window,
        resolve_window_s=res_window,
        phase="acknowledge",
        due_at=ack_due,
        resolve_due_at=res_due,
        paused_at=None,
    )
    return Change(new, timers_for("acknowledge", ack_due, d.warn_before_s, now))
