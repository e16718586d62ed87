"""How a stored case is shown to whom. Pure functions: rows in, response models out.

Departments and workers never see sensitivity flags; they see the reporter's phone number
masked unless the category says the department needs it, and the same goes for phone numbers
and e-mail addresses the resident wrote into their own text (the description, a reopening's
reason, a rating's comment); identity numbers there are always masked for them. Operators and
the resident see everything in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.intake.auth import Principal, Role
from services.intake.lifecycle import Status
from services.intake.models import CaseView, ExtensionRequestView, LocationIn, TimelineEntry
from shared.catalogue import Category
from shared.events import Channel, Priority
from shared.ids import case_reference
from shared.privacy import mask_in_text


def mask_phone(phone: str) -> str:
    digits = [c for c in phone if c.isdigit()]
    if len(digits) < 7:
        return "***"
    return "".join(digits[:3]) + "****" + "".join(digits[-4:])


def reporter_for(
    reporter: Mapping[str, Any] | None,
    viewer: Principal | None,
    resident: bool,
    category: Category | None,
) -> dict[str, object] | None:
    if not reporter:
        return None
    if sees_in_full(viewer, resident):
        return dict(reporter)
    if viewer is not None and viewer.role in (Role.DEPARTMENT, Role.WORKER):
        shown: dict[str, object] = {"name": reporter.get("name")}
        phone = reporter.get("phone")
        if phone:
            needs = category is not None and category.department_needs_phone
            shown["phone"] = phone if needs else mask_phone(str(phone))
        return shown
    return None


def sees_in_full(viewer: Principal | None, resident: bool) -> bool:
    """The resident themselves and operators; not departments or workers."""
    return resident or (viewer is not None and viewer.sees_everything)


def residents_text(
    text: str, viewer: Principal | None, resident: bool, category: Category | None
) -> str:
    """Free text a resident wrote, as this viewer may read it."""
    if sees_in_full(viewer, resident):
        return text
    return mask_in_text(
        text, keep_contacts=category is not None and category.department_needs_phone
    )


# Timeline entries whose details only operators and the resident see: an erasure's reason is
# the resident's request, and may name them.
_PRIVATE_DETAILS = frozenset({"PersonalDataErased"})
# The resident's own words in a timeline entry.
_RESIDENTS_WORDS = {"CaseReopened": "reason", "CaseRated": "comment"}


def timeline_details(
    entry: Mapping[str, Any],
    viewer: Principal | None,
    resident: bool,
    category: Category | None = None,
) -> dict[str, Any]:
    in_full = sees_in_full(viewer, resident)
    if entry["event_type"] in _PRIVATE_DETAILS and not in_full:
        return {}
    details: dict[str, Any] = orjson.loads(entry["payload"])
    words = _RESIDENTS_WORDS.get(entry["event_type"])
    if words and not in_full and isinstance(details.get(words), str):
        details[words] = residents_text(details[words], viewer, resident, category)
    return details


def case_view(
    row: Mapping[str, Any],
    *,
    viewer: Principal | None,
    resident: bool,
    category: Category | None,
    timeline: list[Mapping[str, Any]] | None = None,
    department_name: str | None = None,
) -> CaseView:
    reporter = row["reporter"]
    if isinstance(reporter, str):
        reporter = orjson.loads(reporter)
    media = row["media_urls"]
    if isinstance(media, str):
        media = orjson.loads(media)
    location = None
    if row["lat"] is not None or row["address"] or row["building_code"] or row.get("facility_code"):
        location = LocationIn.model_construct(
            lat=row["lat"],
            lon=row["lon"],
            address=row["address"],
            building_code=row["building_code"],
            facility_code=row.get("facility_code"),
        )
    return CaseView(
        case_id=row["case_id"],
        reference=case_reference(row["case_id"]),
        status=Status(row["status"]),
        category=row["category"],
        description=residents_text(row["description"], viewer, resident, category),
        channel=Channel(row["channel"]),
        location=location,
        department=row["department"],
        department_name=department_name,
        grid_id=row["grid_id"],
        district=row["district"],
        worker_id=row["worker_id"],
        priority=Priority(row["priority"]) if row["priority"] else None,
        acknowledge_by=row["acknowledge_by"],
        resolve_by=row["resolve_by"],
        escalation_level=row["escalation_level"],
        rating=row["rating"],
        possible_duplicate_of=row["possible_duplicate_of"],
        reported_at=row["reported_at"],
        updated_at=row["updated_at"],
        media_urls=list(media or []),
        reporter=reporter_for(reporter, viewer, resident, category),
        task_id=row.get("task_id"),
        merged_into=row.get("merged_into"),
        urged=row.get("urged_count") or 0,
        extension_request=ExtensionRequestView(
            until=row["extension_until"],
            reason=row["extension_reason"] or "",
            requested_at=row["extension_requested_at"],
        )
        if row.get("extension_until") is not None and viewer is not None
        else None,
        closes_at=row.get("closes_at") if row["status"] == Status.RESOLVED.value else None,
        personal_data_erased_at=row.get("personal_data_erased_at"),
        timeline=[
            TimelineEntry(
                event_id=str(t["event_id"]),
                event_type=t["event_type"],
                occurred_at=t["occurred_at"],
                producer=t["producer"],
                details=timeline_details(t, viewer, resident, category),
            )
            for t in (timeline or [])
        ],
    )
