"""The city's clock: the time zone its people count days, working hours and quiet hours in
(Asia/Shanghai, the whole of China's). One constant, so that a report's month, a deadline's
working day and a resident's quiet night are the same days."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

CITY_TIME = ZoneInfo("Asia/Shanghai")


def on_city_clock(moment: datetime) -> str:
    """A moment as the city reads it: its own clock, to the minute (`2026-12-05 18:00`)."""
    return moment.astimezone(CITY_TIME).strftime("%Y-%m-%d %H:%M")
