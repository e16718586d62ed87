"""Residents' quiet hours. Pure functions.

Residents hear about their own case only with their consent, at most twice (accepted,
resolved; the words are in `texts`), and not between 22:00 and 07:00 local time unless the
case is urgent.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.citytime import CITY_TIME

SHANGHAI = CITY_TIME  # residents' nights are the city's


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
