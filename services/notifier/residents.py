"""Messages to residents: templates in zh-CN (default) and en, quiet hours. Pure functions.

Residents hear about their own case only with their consent, at most twice (accepted,
resolved), and not between 22:00 and 07:00 local time unless the case is urgent. Templates are
files rendered in Jinja2's sandbox: a template can format the values it is given, nothing more.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

TEMPLATES = Path(__file__).parent / "templates"
LOCALES = ("zh-CN", "en")
SHANGHAI = ZoneInfo("Asia/Shanghai")
RESIDENT_EVENTS = ("CaseRouted", "CaseResolved")

_env = SandboxedEnvironment(
    loader=FileSystemLoader(str(TEMPLATES)),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)


def render(event_type: str, locale: str, context: dict[str, object]) -> str:
    """The text for one event in one language (zh-CN when the language is not offered)."""
    lang = locale if locale in LOCALES else "zh-CN"
    return _env.get_template(f"{lang}/{event_type}.txt").render(**context).strip()


def quiet_until(
    now: datetime,
    *,
    urgent: bool,
    start: time = time(22, 0),
    end: time = time(7, 0),
    tz: ZoneInfo = SHANGHAI,
) -> datetime | None:
    """When a message that is ready `now` may be sent, if it must wait for quiet hours to end;
    None when it may go now. Urgent cases are never held back."""
    if urgent or start == end:
        return None
    local = now.astimezone(tz)
    t = local.time()
    in_quiet = (t >= start or t < end) if start > end else (start <= t < end)
    if not in_quiet:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tz).astimezone(now.tzinfo)
