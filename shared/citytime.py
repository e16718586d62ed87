"""The city's clock: the time zone its people count days, working hours and quiet hours in
(Asia/Shanghai, the whole of China's). One constant, so that a report's month, a deadline's
working day and a resident's quiet night are the same days."""

from __future__ import annotations

from zoneinfo import ZoneInfo

CITY_TIME = ZoneInfo("Asia/Shanghai")
