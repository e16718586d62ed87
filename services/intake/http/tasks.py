"""Grid tasks: `/v1/tasks`. An operator gives every grid of an area the same task at once;
the router makes one case per grid, which workers then take like any case."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from prometheus_client import Counter

from services.intake import store
from services.intake.auth import Principal
from services.intake.http.cases import (
    ERRORS,
    IDEMPOTENCY_KEY,
    idempotency_key_reused,
    refuse_nul,
    unknown_category,
)
from services.intake.http.deps import CREDENTIALS, ApiError, IntakeState, caller, documented, state
from services.intake.models import TaskAccepted, TaskIn, TaskView
from shared.metrics import REGISTRY

router = APIRouter(prefix="/v1", tags=["grid tasks"])

TASKS_ISSUED = Counter(
    "griddispatch_grid_tasks_issued_total",
    "Grid tasks issued by operators",
    ["category"],
    registry=REGISTRY,
)

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


async def _operator(request: Request) -> Principal:
    principal = await caller(request, required=True)
    assert principal is not None
    if not principal.sees_everything:
        raise ApiError(403, "forbidden", "only operators may issue or follow grid tasks")
    return principal


@router.post(
    "/tasks",
    status_code=202,
    response_model=TaskAccepted,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS, IDEMPOTENCY_KEY),
)
async def issue_task(body: TaskIn, request: Request) -> TaskAccepted:
    """Give every grid of an area (a district, street office, community or grid, or `city`)
    the same task: the router makes one case per grid, routed to its worker with the
    category's deadlines, and escalation follows each. Operators only."""
    raw = await request.body()
    refuse_nul(raw)
    st = state(request)
    principal = await _operator(request)
    await _check_known(st, body)
    task = body.issued(by=principal.name or str(principal.key_id))
    idempotency_key = IDEMPOTENCY_KEY.read(request)
    idem = None
    if idempotency_key is not None:
        owner = store.new_idempotency_owner(principal, "")
        idem = (owner, idempotency_key, store.request_fingerprint(raw))
    try:
        async with st.pool.acquire() as conn:
            task_id = await store.issue_task(conn, task, idempotency=idem)
    except store.IdempotencyKeyReused as exc:
        raise idempotency_key_reused() from exc
    if task_id == task.task_id:
        TASKS_ISSUED.labels(task.category).inc()
    return TaskAccepted(task_id=task_id, status_url=f"/v1/tasks/{task_id}")


async def _check_known(st: IntakeState, body: TaskIn) -> None:
    """What intake can check itself; the area only the router knows (an area with no grid
    is a dead letter there, and the task shows no cases)."""
    if body.category not in await st.catalogue.offered():
        raise unknown_category(body.category, await st.catalogue.get())
    if (
        body.department is not None
        and st.directory is not None
        and st.directory.caught_up.is_set()  # else the router refuses it, if it must
        and st.department_name(body.department) is None
    ):
        raise ApiError(
            422,
            "unknown_department",
            f"unknown department {body.department!r}",
            field="department",
        )


@router.get(
    "/tasks/{task_id}",
    response_model=TaskView,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS),
)
async def get_task(task_id: TaskId, request: Request) -> TaskView:
    """A task and how far its grids got: their cases by status, and how many are past their
    resolve deadline. The cases themselves: `GET /v1/cases?task=…`. Operators only."""
    st = state(request)
    await _operator(request)
    async with st.pool.acquire() as conn:
        progress = await store.task_progress(conn, task_id)
    if progress is None:
        raise ApiError(404, "not_found", f"no task {task_id}")
    return task_view(progress)


@router.get(
    "/tasks",
    response_model=list[TaskView],
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS),
)
async def list_tasks(
    request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[TaskView]:
    """The latest tasks, newest first, with their progress. Operators only."""
    st = state(request)
    await _operator(request)
    async with st.pool.acquire() as conn:
        found = await store.recent_tasks(conn, limit)
    return [task_view(p) for p in found]


def task_view(p: store.TaskProgress) -> TaskView:
    t = p.task
    return TaskView(
        task_id=t["task_id"],
        category=t["category"],
        title=t["title"],
        instructions=t["instructions"],
        area=t["area"],
        grid_kinds=list(t["grid_kinds"]),
        department=t["department"],
        issued_by=t["issued_by"],
        issued_at=t["issued_at"],
        due_by=t["due_by"],
        cases=sum(p.by_status.values()),
        by_status=p.by_status,
        overdue=p.overdue,
    )
