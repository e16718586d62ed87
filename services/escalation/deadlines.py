"""Deadline arithmetic: wall-clock or working time, pauses, emergency factors. Pure functions.

Working time counts only the hours of working days in Asia/Shanghai: Monday to Friday,
09:00–12:00 and 13:30–17:30, minus public holidays, plus the make-up working days (调休) that
fall on weekends. A deadline of "8 working hours" reported on Friday at 16:00 falls due on
Monday at 16:00.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.citytime import CITY_TIME

SHANGHAI = CITY_TIME


@dataclass(frozen=True)
class WorkCalendar:
    tz: ZoneInfo = SHANGHAI
    # working periods of a working day, local time
    periods: tuple[tuple[time, time], ...] = (
        (time(9, 0), time(12, 0)),
        (time(13, 30), time(17, 30)),
    )
    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})  # Monday = 0
    holidays: frozenset[date] = field(default_factory=frozenset)
    makeup_workdays: frozenset[date] = field(default_factory=frozenset)

    def is_workday(self, day: date) -> bool:
        if day in self.makeup_workdays:
            return True
        return day.weekday() in self.workdays and day not in self.holidays

    def periods_on(self, day: date) -> list[tuple[datetime, datetime]]:
        if not self.is_workday(day):
            return []
        return [
            (datetime.combine(day, a, self.tz), datetime.combine(day, b, self.tz))
            for a, b in self.periods
        ]


# China's public holidays and make-up working days for the years the demo runs in.
CHINA_2026 = WorkCalendar(
    holidays=frozenset(
        [date(2026, 1, 1), date(2026, 1, 2)]
        + [date(2026, 2, 16) + timedelta(days=i) for i in range(8)]  # Spring Festival
        + [date(2026, 4, 4), date(2026, 4, 5), date(2026, 4, 6)]  # Qingming
        + [date(2026, 5, 1) + timedelta(days=i) for i in range(5)]  # Labour Day
        + [date(2026, 6, 19), date(2026, 6, 20), date(2026, 6, 21)]  # Dragon Boat
        + [date(2026, 9, 25), date(2026, 9, 26), date(2026, 9, 27)]  # Mid-Autumn
        + [date(2026, 10, 1) + timedelta(days=i) for i in range(7)]  # National Day
    ),
    makeup_workdays=frozenset(
        [
            date(2026, 2, 14),
            date(2026, 2, 28),
            date(2026, 5, 9),
            date(2026, 9, 20),
            date(2026, 10, 10),
        ]
    ),
)


def add_working(start: datetime, seconds: float, cal: WorkCalendar) -> datetime:
    """`start` plus `seconds` of working time."""
    if seconds <= 0:
        return start
    remaining = timedelta(seconds=seconds)
    local = start.astimezone(cal.tz)
    day = local.date()
    for _ in range(3700):  # ten years of days: a bound, never reached in practice
        for begin, end in cal.periods_on(day):
            if end <= local:
                continue
            frm = max(begin, local)
            available = end - frm
            if remaining <= available:
                return (frm + remaining).astimezone(start.tzinfo)
            remaining -= available
        day += timedelta(days=1)
    raise ValueError("deadline beyond the calendar's reach")


def working_seconds_between(a: datetime, b: datetime, cal: WorkCalendar) -> float:
    """Working time in [a, b)."""
    if b <= a:
        return 0.0
    total = 0.0
    day = a.astimezone(cal.tz).date()
    last = b.astimezone(cal.tz).date()
    while day <= last:
        for begin, end in cal.periods_on(day):
            lo, hi = max(begin, a), min(end, b)
            if hi > lo:
                total += (hi - lo).total_seconds()
        day += timedelta(days=1)
    return total


def due(start: datetime, seconds: float, *, working_time: bool, cal: WorkCalendar) -> datetime:
    """When a window of `seconds` that opens at `start` closes."""
    if working_time:
        return add_working(start, seconds, cal)
    return start + timedelta(seconds=seconds)


def remaining(now: datetime, due_at: datetime, *, working_time: bool, cal: WorkCalendar) -> float:
    """Seconds (of the deadline's own kind) left until `due_at`; negative once it passed."""
    if due_at <= now:
        return -(now - due_at).total_seconds()
    if working_time:
        return working_seconds_between(now, due_at, cal)
    return (due_at - now).total_seconds()


def after_pause(
    due_at: datetime,
    paused_at: datetime,
    resumed_at: datetime,
    *,
    working_time: bool,
    cal: WorkCalendar,
) -> datetime:
    """A deadline moved on by the time the clock was paused (waiting for the resident)."""
    left = remaining(paused_at, due_at, working_time=working_time, cal=cal)
    return due(resumed_at, max(left, 0.0), working_time=working_time, cal=cal)


def with_factor(
    now: datetime, due_at: datetime, factor: float, *, working_time: bool, cal: WorkCalendar
) -> datetime:
    """Emergency mode: what is left of a deadline, multiplied by `factor` (e.g. 0.25)."""
    left = remaining(now, due_at, working_time=working_time, cal=cal)
    if left <= 0:
        return due_at
    return due(now, left * factor, working_time=working_time, cal=cal)


@dataclass(frozen=True)
class LadderPolicy:
    """How a stalled case climbs: one level per `step` after the deadline; at the top of the
    chain, reminders every `repeat_every` up to `max_repeats` times."""

    step_s: float | None = None  # None: the length of the missed window itself
    repeat_every_s: float = 3600.0
    max_repeats: int = 3


def next_escalation(
    level: int,
    chain_length: int,
    repeat: int,
    fired_at: datetime,
    window_s: float,
    policy: LadderPolicy,
) -> tuple[int, int, datetime] | None:
    """After an escalation to `level` (with `repeat` reminders so far), the next one:
    (level, repeat, due) — or None when the ladder and its reminders are used up."""
    top = chain_length - 1
    step = policy.step_s if policy.step_s is not None else window_s
    if level < top:
        return level + 1, 0, fired_at + timedelta(seconds=max(step, 1.0))
    if repeat < policy.max_repeats:
        return level, repeat + 1, fired_at + timedelta(seconds=policy.repeat_every_s)
    return None
