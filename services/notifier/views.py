"""What a department may see of its cases: the event, minimised. Pure functions.

Never in a feed or webhook: care groups, community-correction status, reporter contacts,
the escalation chain's phone numbers. Lifecycle events carry no reporter data in the first
place; the escalation target keeps its role and name only. Free text (a worker's note, a
resident's reason for reopening) has phone numbers, e-mail addresses and identity numbers
masked: people write them there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared import events
from shared.events import Envelope
from shared.privacy import mask_in_text

DEPARTMENT_EVENTS = (
    events.CaseRouted,
    events.CaseAcknowledged,
    events.CaseProgressed,
    events.CaseResolved,
    events.CaseClosed,
    events.CaseReopened,
    events.CaseMerged,
    events.CaseUrged,
    events.CaseExtensionRequested,
    events.CaseDeadlineExtended,
    events.CaseExtensionRefused,
    events.CaseRated,
    events.CaseWarned,
    events.CaseEscalated,
    # the department deletes its copies of the reporter's contact (the reason is not passed:
    # it is the resident's request, and may name them)
    events.PersonalDataErased,
)


def department_view(env: Envelope, event: events.Event, case: dict[str, Any]) -> dict[str, Any]:
    """The message a department's feed and webhooks carry for one lifecycle event."""
    details: dict[str, Any] = {}
    match event:
        case events.CaseRouted():
            details = {
                "grid_id": event.grid_id,
                "district": event.district,
                "worker_id": event.worker_id,
                "priority": event.priority.value,
                "acknowledge_by": event.deadlines.acknowledge_by.isoformat(),
                "resolve_by": event.deadlines.resolve_by.isoformat(),
                "mediate_in_grid_first": event.mediate_in_grid_first,
                "task_id": event.task_id,
                "handed_over_from": event.handed_over_from,
            }
        case events.CaseEscalated():
            details = {
                "deadline": event.deadline,
                "due_at": event.due_at.isoformat(),
                "level": event.level,
                "to": {"role": event.to.role, "name": event.to.name},
                "repeat": event.repeat,
            }
        case events.CaseWarned():
            details = {"deadline": event.deadline, "due_at": event.due_at.isoformat()}
        case events.CaseRated():
            details = {"rating": event.rating}
        case events.CaseProgressed():
            details = {"note": mask_in_text(event.note)}
        case events.CaseResolved():
            closes_at = event.closes_at.isoformat() if event.closes_at else None
            details = {
                "note": mask_in_text(event.note),
                "closes_at": closes_at,
                "follows": event.follows,
            }
        case events.CaseUrged():
            details = {
                "times": event.times,
                "note": mask_in_text(event.note) if event.note else None,
            }
        case events.CaseExtensionRequested():
            details = {"until": event.until.isoformat(), "reason": mask_in_text(event.reason)}
        case events.CaseDeadlineExtended():
            details = {
                "resolve_by": event.resolve_by.isoformat(),
                "reason": mask_in_text(event.reason),
            }
        case events.CaseExtensionRefused():
            details = {"reason": mask_in_text(event.reason)}
        case events.CaseMerged():
            details = {
                "into": event.into,
                "note": mask_in_text(event.note) if event.note else None,
            }
        case events.CaseReopened():
            details = {"reason": mask_in_text(event.reason)}
        case events.CaseClosed():
            details = {"automatic": event.automatic}
    return {
        "event_id": str(env.event_id),
        "event_type": env.event_type,
        "case_id": env.case_id,
        "occurred_at": env.occurred_at.isoformat(),
        "department": case.get("department"),
        "category": case.get("category"),
        "reported_at": case["reported_at"].isoformat() if case.get("reported_at") else None,
        "details": details,
    }


def dispatch_started(view: dict[str, Any], case: dict[str, Any]) -> datetime | None:
    """When the dispatch a message completes began: the report, for the message that brings
    the department its case (`CaseRouted`); None for every later message about it. Dispatch
    latency (report → department told) is measured on that message only: an acknowledgement,
    an escalation or a closing hours later says nothing about dispatching, and would fill the
    histogram's top bucket. A handover (the same case, another worker) is not a dispatch
    either; a transfer's routing is (to the new department, from the report)."""
    if view["event_type"] != "CaseRouted" or view["details"].get("handed_over_from"):
        return None
    reported_at: datetime | None = case.get("reported_at")
    return reported_at
