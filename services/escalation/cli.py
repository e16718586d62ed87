"""`griddispatch emergency on|off|status`: wartime mode per area, audited."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import typer
from rich.console import Console

from services.escalation import timers
from services.escalation.settings import MIGRATIONS, EscalationSettings
from shared.db import run_in_schema

console = Console(stderr=True, soft_wrap=True)
emergency_app = typer.Typer(help="Emergency (wartime) mode per area.", no_args_is_help=True)


def _switch(area: str, on: bool, factor: float | None, reason: str, by: str) -> str:
    async def switch(conn: asyncpg.Connection) -> str:
        env = await timers.set_emergency(
            conn,
            area,
            on=on,
            factor=factor,
            reason=reason,
            by=by,
            now=datetime.now(UTC),
            cfg=EscalationSettings().policy(),
        )
        moved = env.payload["timers_moved"]
        return f"{area}: emergency {'on' if on else 'off'}, {moved} timers moved"

    return run_in_schema("escalation", MIGRATIONS, switch)


@emergency_app.command("on")
def on(
    area: str = typer.Option(..., help="district, street office or grid code"),
    factor: float = typer.Option(0.25, min=0.001, max=1.0, help="deadlines × factor"),
    reason: str = typer.Option(..., help="why (audited)"),
    by: str = typer.Option("operator"),
) -> None:
    """Shorten every open deadline in the area at once, and every new one."""
    console.print(_switch(area, True, factor, reason, by))


@emergency_app.command("off")
def off(
    area: str = typer.Option(...),
    reason: str = typer.Option(...),
    by: str = typer.Option("operator"),
) -> None:
    console.print(_switch(area, False, None, reason, by))


@emergency_app.command("status")
def status() -> None:
    rows = run_in_schema("escalation", MIGRATIONS, timers.emergency_status)
    if not rows:
        console.print("no area is in emergency mode")
    for r in rows:
        since = f"{r['since']:%Y-%m-%d %H:%M}"
        console.print(f"{r['area']}: × {r['factor']} since {since} — {r['reason']} ({r['by']})")
