"""How well cases were handled over a period: the three rates a grid-governed city is judged on
(接诉即办: response, resolution, satisfaction), per department, district, grid, category or
worker, as the monthly assessment reads them. Plain arithmetic over one record per case, no
I/O (`store.performance_records` gathers the records from the case timelines).

- *Response rate*: acknowledged without missing the acknowledge deadline ÷ (those + cases that
  missed it). A case that missed it counts as missed even if acknowledged later; a case still
  inside its deadline and not yet acknowledged is not counted yet.
- *Resolution rate*: likewise with the resolve deadline. A report merged into another case
  (the same problem) is resolved with it, but that resolution counts for the case it joined
  only: the merged report has no deadline of its own from its merging on.
- *Satisfaction rate*: ratings of 4 or 5 ÷ all ratings (a case's latest rating).

"Missed" is escalation's word, not a comparison of times here: a case missed a deadline when
escalation escalated it for that deadline (`CaseEscalated.deadline`), which already counts
working time, pauses and emergency mode. These are the definitions of the dashboards' rates,
over cases instead of a Prometheus range, so a month's figures stay when the metrics' retention
has dropped them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum

from shared.citytime import CITY_TIME  # the days a period is made of

LONGEST_PERIOD_DAYS = 366
EARLIEST, LATEST = date(1970, 1, 1), date(2200, 1, 1)  # (and no instant out of range)


class GroupBy(StrEnum):
    DEPARTMENT = "department"
    DISTRICT = "district"
    GRID = "grid"
    CATEGORY = "category"
    WORKER = "worker"


@dataclass(frozen=True)
class CaseRecord:
    """What the assessment needs of one case."""

    key: str | None  # its department, district, … (None: never routed)
    reported_at: datetime
    acknowledged_at: datetime | None  # the first acknowledgement
    acknowledge_missed: bool
    resolved_at: datetime | None  # the first resolution
    resolve_missed: bool
    rating: int | None
    reopened: int  # times
    closed_unverified: bool  # closed because nobody verified the resolution in time
    open: bool
    urged: bool = False  # its resident pressed for it (催办) at least once


@dataclass(frozen=True)
class Performance:
    key: str | None  # None in a by-department report: cases never routed (triage)
    cases: int
    open: int
    acknowledged_on_time: int
    acknowledge_missed: int
    resolved_on_time: int
    resolve_missed: int
    rated: int
    satisfied: int
    reopened: int
    closed_unverified: int
    urged: int  # cases their resident pressed for
    response_rate: float | None  # None: nothing to judge yet
    resolution_rate: float | None
    satisfaction_rate: float | None
    median_minutes_to_acknowledge: float | None
    median_hours_to_resolve: float | None


def period(first_day: date, day_after: date) -> tuple[datetime, datetime]:
    """The instants that begin the two days, in the city's time: [start, end) of a report."""
    if day_after <= first_day:
        raise ValueError("the period ends before it begins")
    if first_day < EARLIEST or day_after > LATEST:
        raise ValueError(f"a period lies between {EARLIEST} and {LATEST}")
    if (day_after - first_day).days > LONGEST_PERIOD_DAYS:
        raise ValueError(f"a period is at most {LONGEST_PERIOD_DAYS} days")
    return (
        datetime.combine(first_day, time(), CITY_TIME),
        datetime.combine(day_after, time(), CITY_TIME),
    )


def month(text: str) -> tuple[date, date]:
    """`2026-11` → its first day and the first day of the next month."""
    try:
        first = datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, following


TOTAL = "*"  # the key of the row over every case of the report


def assess(records: Iterable[CaseRecord]) -> list[Performance]:
    """One row per key (sorted, cases never routed last) and a last row over all of them,
    keyed `TOTAL`."""
    groups: dict[str | None, list[CaseRecord]] = defaultdict(list)
    every: list[CaseRecord] = []
    for record in records:
        groups[record.key].append(record)
        every.append(record)
    keys = sorted(groups, key=lambda k: (k is None, k or ""))
    return [*(_row(k, groups[k]) for k in keys), _row(TOTAL, every)]


def _row(key: str | None, cases: list[CaseRecord]) -> Performance:
    ack_on_time = sum(1 for c in cases if c.acknowledged_at and not c.acknowledge_missed)
    ack_missed = sum(1 for c in cases if c.acknowledge_missed)
    res_on_time = sum(1 for c in cases if c.resolved_at and not c.resolve_missed)
    res_missed = sum(1 for c in cases if c.resolve_missed)
    ratings = [c.rating for c in cases if c.rating is not None]
    satisfied = sum(1 for r in ratings if r >= 4)
    to_ack = [
        (c.acknowledged_at - c.reported_at).total_seconds() / 60 for c in cases if c.acknowledged_at
    ]
    to_resolve = [
        (c.resolved_at - c.reported_at).total_seconds() / 3600 for c in cases if c.resolved_at
    ]
    return Performance(
        key=key,
        cases=len(cases),
        open=sum(1 for c in cases if c.open),
        acknowledged_on_time=ack_on_time,
        acknowledge_missed=ack_missed,
        resolved_on_time=res_on_time,
        resolve_missed=res_missed,
        rated=len(ratings),
        satisfied=satisfied,
        reopened=sum(c.reopened for c in cases),
        closed_unverified=sum(1 for c in cases if c.closed_unverified),
        urged=sum(1 for c in cases if c.urged),
        response_rate=_rate(ack_on_time, ack_on_time + ack_missed),
        resolution_rate=_rate(res_on_time, res_on_time + res_missed),
        satisfaction_rate=_rate(satisfied, len(ratings)),
        median_minutes_to_acknowledge=statistics.median(to_ack) if to_ack else None,
        median_hours_to_resolve=statistics.median(to_resolve) if to_resolve else None,
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None
