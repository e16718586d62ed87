"""`/v1/performance`: the response, resolution and satisfaction rates of a period, from the
cases themselves (the monthly assessment), for operators and, over their own cases, for
departments and grid workers."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query, Request

from services.intake import performance, store
from services.intake.http.cases import ERRORS
from services.intake.http.deps import CREDENTIALS, ApiError, case_scope, documented, state
from services.intake.models import PerformanceReport, PerformanceRow
from shared.citytime import CITY_TIME

router = APIRouter(prefix="/v1", tags=["performance"])


@router.get(
    "/performance",
    response_model=PerformanceReport,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS),
)
async def get_performance(
    request: Request,
    start: Annotated[
        date, Query(alias="from", description="the first day, in the city's time zone")
    ],
    end: Annotated[
        date, Query(alias="to", description="the day after the last one (at most 366 days on)")
    ],
    by: performance.GroupBy = performance.GroupBy.DEPARTMENT,
    department: Annotated[str | None, Query(max_length=64)] = None,
) -> PerformanceReport:
    """The rates of the cases reported in the period, one row per department (district,
    grid, category or worker) and a total. Departments see only their own cases, grid
    workers only those assigned to them, operators all (or one department's)."""
    scope = await case_scope(request, department, reading="performance reports")
    try:
        begins, ends = performance.period(start, end)
    except ValueError as exc:
        raise ApiError(422, "invalid_period", str(exc), field="to") from exc
    async with state(request).pool.acquire() as conn:
        records = await store.performance_records(
            conn, begins, ends, by, department=scope.department, worker_id=scope.worker_id
        )
    *rows, total = performance.assess(records)
    return PerformanceReport(
        period_start=start,
        period_end=end,
        timezone=str(CITY_TIME),
        by=by.value,
        department=scope.department,
        rows=[PerformanceRow(**asdict(r)) for r in rows],
        total=PerformanceRow(**asdict(total)),
    )
