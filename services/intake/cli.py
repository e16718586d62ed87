"""`griddispatch keys …`, `catalogue …`, `privacy …` and `tasks …`: intake's command groups."""

from __future__ import annotations

import csv
import dataclasses
import getpass
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import TypeVar

import asyncpg
import pydantic
import typer
from rich import box
from rich.console import Console
from rich.table import Table

from services.intake import performance, store
from services.intake.auth import SCOPED_ROLES, Principal, Role
from services.intake.lifecycle import Action, ExtensionNotAllowed, IllegalTransition
from services.intake.models import TaskIn
from services.intake.settings import MIGRATIONS
from shared.catalogue import TASK_GROUP
from shared.citytime import CITY_TIME, on_city_clock
from shared.db import create_pool, run_in_schema
from shared.settings import get_settings

console = Console(stderr=True, soft_wrap=True)
keys_app = typer.Typer(help="API keys of intake (stored hashed).", no_args_is_help=True)
privacy_app = typer.Typer(help="Residents' personal data.", no_args_is_help=True)
tasks_app = typer.Typer(
    help="Grid tasks: the same task for every grid of an area at once.", no_args_is_help=True
)
extensions_app = typer.Typer(
    help="Requests for more time (a later resolve deadline): the waiting ones, and an "
    "operator's answer.",
    no_args_is_help=True,
)
performance_app = typer.Typer(
    help="The response, resolution and satisfaction rates of a period (the monthly assessment).",
    no_args_is_help=True,
)
T = TypeVar("T")


def _with_db(fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    return run_in_schema("intake", MIGRATIONS, fn)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., help="who gets the key, e.g. 'heating company app'"),
    role: Role = typer.Option(..., help="resident_app, department, worker, operator or admin"),
    scope: str | None = typer.Option(None, help="department code or worker id"),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    if role in SCOPED_ROLES and not scope:
        console.print(f"[red]a {role.value} key needs --scope[/red]")
        raise typer.Exit(2)
    key = _with_db(lambda c: store.create_key(c, name, role, scope))
    console.print(f"created key {key.prefix} ({role.value}{', ' + scope if scope else ''})")
    print(key.token)


@keys_app.command("list")
def keys_list() -> None:
    rows = _with_db(store.list_keys)
    table = Table("prefix", "name", "role", "scope", "created", "revoked")
    for r in rows:
        table.add_row(
            r["prefix"],
            r["name"],
            r["role"],
            r["scope"] or "",
            f"{r['created_at']:%Y-%m-%d %H:%M}",
            f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str) -> None:
    """Revoke the key with this prefix (takes effect at once)."""
    if not _with_db(lambda c: store.revoke_key(c, prefix)):
        console.print(f"[red]no active key {prefix}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked {prefix}")


@privacy_app.command("erase")
def privacy_erase(
    case_id: str = typer.Argument(..., help="the case whose reporter asked"),
    reason: str = typer.Option(
        ..., help="the request, for the audit (when, through which channel)"
    ),
) -> None:
    """Erase a resident's personal data at their request: intake's copy at once, the other
    services' when they read the PersonalDataErased event (as POST /v1/cases/{id}/erasure)."""
    reason = reason.strip()
    if not 1 <= len(reason) <= 500:
        console.print("[red]--reason: 1 to 500 characters[/red]")
        raise typer.Exit(2)
    by = f"cli:{getpass.getuser()}"[:64]
    try:
        env = _with_db(lambda c: store.erase_personal_data(c, case_id, reason=reason, by=by))
    except store.CaseNotFound:
        console.print(f"[red]no case {case_id}[/red]")
        raise typer.Exit(1) from None
    console.print(f"erased the personal data of {case_id} (event {env.event_id})")


@tasks_app.command("issue")
def tasks_issue(
    area: str = typer.Option(..., help="a district, street office, community or grid, or city"),
    category: str = typer.Option(..., help="e.g. task.door-to-door or task.notice"),
    title: str = typer.Option(..., help="what every grid is to do, in a line"),
    instructions: str = typer.Option("", help="the details the workers need"),
    kind: list[str] = typer.Option(
        ["comprehensive"], help="comprehensive and/or dedicated grids (repeat the option)"
    ),
    department: str | None = typer.Option(None, help="default: the category's department"),
    due_by: str | None = typer.Option(
        None,
        help="resolve every grid's case by then, e.g. '2026-12-01 18:00' (the city's time "
        "unless it names its offset); default: the category's deadlines",
    ),
) -> None:
    """Give every grid of an area the same task (as POST /v1/tasks): the router makes one case
    per grid, routed to its worker; follow it with `griddispatch tasks show`."""
    try:
        body = TaskIn.model_validate(
            {
                "area": area,
                "category": category,
                "title": title,
                "instructions": instructions,
                "grid_kinds": kind,
                "department": department,
                "due_by": _city_time(due_by) if due_by else None,
            }
        )
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            console.print(f"[red]--{'.'.join(map(str, err['loc']))}: {err['msg']}[/red]")
        raise typer.Exit(2) from None
    categories = _with_db(store.load_categories).offered
    if body.category not in categories:
        console.print(f"[red]--category: unknown or retired category {body.category}[/red]")
        raise typer.Exit(2)
    if categories[body.category].group != TASK_GROUP:
        console.print(f"[yellow]{body.category} is not in the {TASK_GROUP} group[/yellow]")
    task = body.issued(by=f"cli:{getpass.getuser()}")
    _with_db(lambda c: store.issue_task(c, task))
    console.print(f"issued grid task {task.task_id} to {body.area}")
    print(task.task_id)


def _city_time(text: str) -> str:
    """An ISO time as typed; without an offset, the city's own clock."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text  # the model says what is wrong with it
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CITY_TIME)
    return moment.isoformat()


@tasks_app.command("show")
def tasks_show(task_id: str = typer.Argument(..., help="the task's id")) -> None:
    """A task and how far its grids got."""
    progress = _with_db(lambda c: store.task_progress(c, task_id))
    if progress is None:
        console.print(f"[red]no task {task_id}[/red]")
        raise typer.Exit(1)
    t = progress.task
    out = Console()
    out.print(
        f"[bold]{t['title']}[/bold] ({t['category']}) in {t['area']}, "
        f"{on_city_clock(t['issued_at'])} by {t['issued_by']}"
    )
    if t["due_by"]:
        out.print(f"due by {on_city_clock(t['due_by'])}")
    table = Table("status", "cases")
    for status, n in sorted(progress.by_status.items()):
        table.add_row(status, str(n))
    table.add_row("[bold]all[/bold]", str(sum(progress.by_status.values())))
    table.add_row("overdue", str(progress.overdue))
    out.print(table)


@performance_app.command("show")
def performance_show(
    month: str | None = typer.Option(None, help="a calendar month, e.g. 2026-11"),
    start: str | None = typer.Option(None, "--from", help="the first day (YYYY-MM-DD)"),
    end: str | None = typer.Option(None, "--to", help="the day after the last one"),
    by: performance.GroupBy = typer.Option(performance.GroupBy.DEPARTMENT, help="one row per"),
    department: str | None = typer.Option(None, help="only this department's cases"),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on standard output"),
) -> None:
    """The cases reported in a period (days in the city's time zone), one row per department
    (district, grid, category or worker) and a total: how many, acknowledged and resolved on
    time or late (escalated), the three rates, ratings, reopenings, median times."""
    try:
        if month is not None:
            if start or end:
                raise ValueError("give --month or --from/--to, not both")
            first, after = performance.month(month)
        elif start and end:
            first, after = date.fromisoformat(start), date.fromisoformat(end)
        else:
            raise ValueError("give --month, or --from and --to")
        begins, ends = performance.period(first, after)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    records = _with_db(
        lambda c: store.performance_records(c, begins, ends, by, department=department)
    )
    rows = performance.assess(records)
    columns = [f.name for f in dataclasses.fields(performance.Performance)]
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([by.value, *columns[1:]])
        for row in rows:
            writer.writerow([_cell(getattr(row, c)) for c in columns])
        return
    table = Table(
        title=f"cases reported {first} – {after - timedelta(days=1)} ({CITY_TIME}); "
        "rates: response, resolution, satisfaction; late-a/-r: escalated for the acknowledge/"
        "resolve deadline; medians: to the first acknowledgement (minutes), resolution "
        "(hours). --csv gives every figure.",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column(by.value, no_wrap=True, max_width=16, overflow="ellipsis")
    for header in ("cases", "open", "resp", "resol", "sat", "late-a", "late-r", "ack-m", "res-h"):
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    for r in rows:
        table.add_row(
            "(not routed)" if r.key is None else "total" if r.key == performance.TOTAL else r.key,
            str(r.cases),
            str(r.open),
            _percent(r.response_rate),
            _percent(r.resolution_rate),
            _percent(r.satisfaction_rate),
            str(r.acknowledge_missed),
            str(r.resolve_missed),
            _number(r.median_minutes_to_acknowledge),
            _number(r.median_hours_to_resolve),
        )
    Console().print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


@extensions_app.command("list")
def extensions_list() -> None:
    """The requests waiting for an answer, oldest first (as GET /v1/cases?extension_asked=true),
    in the city's time: asked, the deadline now, the one asked for, and why."""
    rows = _with_db(store.extensions_asked)
    if not rows:
        console.print("no request for more time is waiting")
        return
    for r in rows:
        print(
            f"{r['case_id']}  {r['department'] or '-':14}"
            f" asked {_local(r['extension_requested_at'])}"
            f"  due {_local(r['resolve_by'])} → {_local(r['extension_until'])}"
            f"  {r['extension_reason'] or ''}"
        )


@extensions_app.command("grant")
def extensions_grant(
    case_id: str = typer.Argument(..., help="the case"),
    reason: str = typer.Option(..., help="for the timeline, the department and the worker"),
    until: str | None = typer.Option(
        None,
        help="the new resolve deadline, e.g. '2026-12-05 18:00' (the city's time unless it names "
        "its offset); default: as asked",
    ),
) -> None:
    """Grant more time (as the step `extend`): the case is due at the new deadline."""
    _answer_extension(case_id, Action.EXTEND, reason, until)


@extensions_app.command("refuse")
def extensions_refuse(
    case_id: str = typer.Argument(..., help="the case"),
    reason: str = typer.Option(..., help="for the timeline, the department and the worker"),
) -> None:
    """Refuse the time asked for (as the step `refuse_extension`): the deadline stands."""
    _answer_extension(case_id, Action.REFUSE_EXTENSION, reason, None)


def _answer_extension(case_id: str, action: Action, reason: str, until: str | None) -> None:
    reason = reason.strip()
    if not 1 <= len(reason) <= 1000:
        console.print("[red]--reason: 1 to 1,000 characters[/red]")
        raise typer.Exit(2)
    deadline = None
    if until is not None:
        try:
            deadline = datetime.fromisoformat(_city_time(until))
        except ValueError:
            console.print(f"[red]--until: not a time: {until}[/red]")
            raise typer.Exit(2) from None
    operator = Principal(uuid.UUID(int=0), f"cli:{getpass.getuser()}"[:64], Role.OPERATOR, None)

    async def answer(conn: asyncpg.Connection) -> store.StepTaken:
        pool = await create_pool(get_settings().database_url, "intake", max_size=1)
        try:
            return await store.apply_step(
                pool,
                case_id,
                action,
                principal=operator,
                tracking_token=None,
                reason=reason,
                until=deadline,
            )
        finally:
            await pool.close()

    try:
        taken = _with_db(answer)
    except store.CaseNotFound:
        console.print(f"[red]no case {case_id}[/red]")
        raise typer.Exit(1) from None
    except (IllegalTransition, ExtensionNotAllowed) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{action.value}: {case_id} (event {taken.envelope.event_id})")


def _local(moment: datetime | None) -> str:
    return on_city_clock(moment) if moment else "-"
