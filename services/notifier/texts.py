"""What people are told, in words: templates per audience, event type, channel and language.
Pure functions.

Templates are files, `templates/<lang>/<audience>/<EventType>.<channel>.txt`, rendered in
Jinja2's sandbox (a template can format the values it is given, nothing more). An e-mail
template starts with a `Subject:` line and a blank line, as a message does. Audiences:
residents (about their own report), departments (their cases, by e-mail), grid workers
(their cases, by SMS) and the ladder (whoever a case was escalated to). Staff messages are
written from the department's view of the event (`views.department_view`), which holds no
personal data, so neither can they.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

from shared import events
from shared.catalogue import load_file
from shared.citytime import on_city_clock
from shared.ids import case_reference

TEMPLATES = Path(__file__).parent / "templates"
LOCALES = ("zh-CN", "en")
Audience = Literal["resident", "department", "worker", "ladder"]

# What each audience hears about, and on which channels (a template for each pair and locale;
# a test holds the files to this table).
RESIDENT_EVENTS = (
    "CaseRouted",
    "CaseMerged",
    "CaseDeadlineExtended",
    "CaseResolved",
    "CaseClosed",
)
STAFF_EVENTS = (
    "CaseRouted",
    "CaseWarned",
    "CaseEscalated",
    "CaseReopened",
    "CaseUrged",  # the resident presses for it
    "CaseRated",  # only when the resident was dissatisfied (`tells_staff`): a follow-up call
    # the answer to an extension the department or its worker asked for
    "CaseDeadlineExtended",
    "CaseExtensionRefused",
)
CHANNELS: dict[str, tuple[str, ...]] = {
    "resident": ("email", "sms"),
    "department": ("email",),
    "worker": ("sms",),
    "ladder": ("email", "sms"),  # whoever a case was escalated to (`ladder`)
}
EVENTS: dict[str, tuple[str, ...]] = {
    "resident": RESIDENT_EVENTS,
    "department": STAFF_EVENTS,
    "worker": STAFF_EVENTS,
    "ladder": ("CaseEscalated",),
}


DISSATISFIED = 2  # a rating of this or less asks the department for a follow-up (回访)


def tells_staff(view: dict[str, Any], audience: Audience = "worker") -> bool:
    """Whether `audience` (a department's desk, the case's worker) hears of this event (by its
    department view): the `STAFF_EVENTS`, a rating only when the resident was dissatisfied, a
    handover only the worker (news for them, not a new case for the desk)."""
    details = view.get("details") or {}
    if view["event_type"] == "CaseRated":
        return int(details.get("rating", 5)) <= DISSATISFIED
    if audience == "department" and details.get("handed_over_from"):
        return False
    return view["event_type"] in STAFF_EVENTS


def tells_resident(event: events.Event) -> bool:
    """Residents hear that their report was accepted, merged into another case of the same
    problem, given more time (the new date, not the reason), and resolved, and of a closing
    they did not make themselves (nobody verified the resolution in time:
    `CaseClosed.automatic`)."""
    if isinstance(event, events.CaseClosed):
        return event.automatic
    return event.EVENT_TYPE in RESIDENT_EVENTS


_env = SandboxedEnvironment(
    loader=FileSystemLoader(str(TEMPLATES)),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)
# the packaged catalogue's names, and those a city imported since (`catalogue.CategoryNames`)
_CATEGORIES: dict[str, dict[str, str]] = {c.code: c.name for c in load_file().categories}


def know_category_names(names: dict[str, dict[str, str]]) -> None:
    """Names of categories as imported (`griddispatch catalogue import`), over the packaged."""
    _CATEGORIES.update(names)


_WORDS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "low": "低",
        "normal": "一般",
        "high": "紧急",
        "urgent": "特急",
        "acknowledge": "受理",
        "resolve": "办结",
        "worker": "网格员",
        "grid_leader": "网格长",
        "community": "社区",
        "street_office": "街道办事处",
        "district": "区",
        "city": "市",
    },
    "en": {
        "low": "low",
        "normal": "normal",
        "high": "high",
        "urgent": "urgent",
        "acknowledge": "acknowledge",
        "resolve": "resolve",
        "worker": "grid worker",
        "grid_leader": "grid leader",
        "community": "community",
        "street_office": "street office",
        "district": "district",
        "city": "city",
    },
}


@dataclass(frozen=True)
class Message:
    text: str
    subject: str | None = None  # e-mail only


class NoTemplate(LookupError):
    """This audience is not told about this event on this channel."""


def language(locale: str | None) -> str:
    """The locale a message is written in: the one asked for if offered, else zh-CN."""
    return locale if locale in LOCALES else "zh-CN"


def render(
    audience: Audience, event_type: str, channel: str, locale: str | None, context: dict[str, Any]
) -> Message:
    """One message (zh-CN when the language is not offered); `NoTemplate` when there is
    nothing to say to this audience about this event on this channel."""
    name = f"{language(locale)}/{audience}/{event_type}.{channel}.txt"
    try:
        template = _env.get_template(name)
    except TemplateNotFound as exc:
        raise NoTemplate(name) from exc
    text = template.render(**context).strip()
    if channel != "email":
        return Message(text)
    head, _, body = text.partition("\n\n")
    if not head.startswith("Subject:"):
        raise ValueError(f"{name}: an e-mail template starts with a 'Subject:' line")
    return Message(body.strip(), head.removeprefix("Subject:").strip())


def local_time(value: datetime | str | None) -> str:
    """A time as the city reads it (its own clock, to the minute)."""
    if value is None or value == "":
        return ""
    return on_city_clock(datetime.fromisoformat(value) if isinstance(value, str) else value)


def category_name(code: str | None, locale: str | None) -> str:
    names = _CATEGORIES.get(code or "", {})
    return names.get(language(locale)) or names.get("zh-CN") or (code or "")


def staff_context(view: dict[str, Any], locale: str | None) -> dict[str, Any]:
    """What a department's or a worker's message may say about one event: the department's
    view of it (`views.department_view`), in words of `locale`."""
    words = _WORDS[language(locale)]
    details = view.get("details", {})
    to = details.get("to") or {}
    return {
        "case_id": view["case_id"],
        "reference": case_reference(view["case_id"]),
        "category_name": category_name(view.get("category"), locale),
        "priority_name": words.get(details.get("priority", ""), details.get("priority", "")),
        "grid_id": details.get("grid_id") or "",
        "district": details.get("district") or "",
        "mediate_in_grid_first": bool(details.get("mediate_in_grid_first")),
        "grid_task": bool(details.get("task_id")),  # every grid of an area got the same
        "acknowledge_by": local_time(details.get("acknowledge_by")),
        "resolve_by": local_time(details.get("resolve_by")),
        "deadline_name": words.get(details.get("deadline", ""), ""),
        "due_at": local_time(details.get("due_at")),
        "level": details.get("level", 0),
        "repeat": details.get("repeat", 0),
        "to_role_name": words.get(to.get("role", ""), to.get("role", "")),
        "to_name": to.get("name", ""),
        "reason": details.get("reason", ""),
        "times": details.get("times", 0),  # an urging: how often
        "rating": details.get("rating", 0),
        "note": details.get("note") or "",
    }
