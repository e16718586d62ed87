"""The case lifecycle as a pure state machine: which step is allowed from which state, by whom.

    reported → routed → acknowledged → in_progress → resolved → closed (→ rated)
    routed | acknowledged | in_progress → transfer_requested → (router) → routed | unroutable
    resolved | closed → reopened → routed          unroutable → (operator) → routed
    resolved → (nobody verified within the window: CaseVerificationLapsed) → closed

No I/O here: `decide` answers with the next state and the event to emit, or raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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


class Action(StrEnum):
    ACKNOWLEDGE = "acknowledge"
    PROGRESS = "progress"
    RESOLVE = "resolve"
    REQUEST_TRANSFER = "request_transfer"
    CLOSE = "close"
    REOPEN = "reopen"
    RATE = "rate"


class Actor(StrEnum):
    """Who takes a step. Residents act with their tracking token; others with an API key."""

    RESIDENT = "resident"
    DEPARTMENT = "department"
    WORKER = "worker"
    OPERATOR = "operator"


_HANDLERS = {Actor.DEPARTMENT, Actor.WORKER, Actor.OPERATOR}

# action → (states it may start from, who may take it, state it leads to)
TRANSITIONS: dict[Action, tuple[frozenset[Status], frozenset[Actor], Status]] = {
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
        frozenset({Status.RESOLVED, Status.CLOSED}),
        frozenset({Actor.RESIDENT, Actor.OPERATOR}),
        Status.ROUTED,
    ),
    Action.RATE: (frozenset({Status.CLOSED}), frozenset({Actor.RESIDENT}), Status.CLOSED),
}

OPEN_STATES = frozenset(Status) - {Status.CLOSED}


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


@dataclass(frozen=True)
class Step:
    action: Action
    by: str  # the actor's id: key id, worker id, "resident"
    note: str | None = None
    reason: str | None = None
    photo_urls: tuple[str, ...] = ()
    rating: int | None = None
    department: str | None = None  # current department, for transfer requests
    # a resolution: when it closes unless the resident verifies or reopens it (None: never)
    closes_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    status: Status
    event: events.Event
    also_reroute: events.RerouteRequested | None = None


def decide(current: Status, actor: Actor, step: Step, *, already_rated: bool = False) -> Decision:
    """The outcome of `step` on a case in state `current`, or `IllegalTransition`/`NotPermitted`."""
    sources, actors, target = TRANSITIONS[step.action]
    if actor not in actors:
        raise NotPermitted(f"a {actor.value} may not {step.action.value} a case")
    if current not in sources or (step.action is Action.RATE and already_rated):
        raise IllegalTransition(step.action, current)
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
    return Decision(status=target, event=event, also_reroute=reroute)


FINISHED = frozenset({Status.RESOLVED, Status.CLOSED})


def arrives_late(current: Status, event: events.Event) -> bool:
    """A routing outcome for a case already resolved or closed: no flow routes a finished case
    (a reopened one goes back to `routed` itself), so it is an old event delivered late — a dead
    letter replayed after the case moved on. It joins the timeline; it must not re-open the
    case or re-assign it."""
    return current in FINISHED and isinstance(event, events.CaseRouted | events.CaseUnroutable)


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
