"""`griddispatch subscriptions …` and `griddispatch deliveries …`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import typer
from rich.console import Console

from services.notifier import webhooks
from services.notifier.app import MIGRATIONS, NotifierSettings, SubscriptionIn, add_subscription
from services.notifier.delivery import replay
from shared.db import run_in_schema

console = Console(stderr=True, soft_wrap=True)
subscriptions_app = typer.Typer(help="Who is told what (webhook endpoints).", no_args_is_help=True)
deliveries_app = typer.Typer(help="The delivery log and its dead letters.", no_args_is_help=True)
T = TypeVar("T")


def _db(fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    return run_in_schema("notifier", MIGRATIONS, fn)


@subscriptions_app.command("add")
def add(
    url: str = typer.Option(..., "--webhook", help="https endpoint"),
    secret: list[str] = typer.Option(..., help="whsec_… (twice during a rotation)"),
    department: str | None = typer.Option(None),
    worker: str | None = typer.Option(None),
) -> None:
    if (department is None) == (worker is None):
        raise typer.BadParameter("give --department or --worker")
    body = SubscriptionIn(
        owner_kind="department" if department else "worker",
        owner=department or worker or "",
        url=url,
        secrets=secret,
    )
    try:
        sub_id = _db(lambda c: add_subscription(c, body, NotifierSettings().allow()))
    except webhooks.ForbiddenDestination as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"[green]✓[/green] subscription {sub_id}")


@subscriptions_app.command("list")
def list_subscriptions() -> None:
    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                "SELECT id, owner_kind, owner, url, active, disabled_reason"
                " FROM notifier.subscriptions ORDER BY id"
            )
        )

    for r in _db(fetch):
        state = "active" if r["active"] else f"disabled ({r['disabled_reason']})"
        print(f"{r['id']:>5}  {r['owner_kind']:10} {r['owner']:20} {r['url']}  {state}")


@subscriptions_app.command("disable")
def disable(sub_id: int) -> None:
    async def run(conn: asyncpg.Connection) -> str:
        result: str = await conn.execute(
            "UPDATE notifier.subscriptions SET active = false, disabled_reason = 'by an operator'"
            " WHERE id = $1",
            sub_id,
        )
        return result

    console.print(_db(run))


@deliveries_app.command("list")
def list_deliveries(state: str = typer.Option("dead")) -> None:
    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                "SELECT id, subscription_id, attempts, last_status, last_error, created_at "
                "FROM notifier.deliveries WHERE state = $1 ORDER BY created_at LIMIT 500",
                state,
            )
        )

    for r in _db(fetch):
        print(
            f"{r['id']}  sub {r['subscription_id']}  {r['attempts']} attempts  "
            f"{r['last_status']}  {r['last_error']}"
        )


@deliveries_app.command("replay")
def replay_delivery(delivery_id: uuid.UUID) -> None:
    """Send a dead delivery again, with the same webhook-id."""
    if not _db(lambda c: replay(c, delivery_id)):
        console.print(f"[red]no dead delivery {delivery_id}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]✓[/green] {delivery_id} is pending again")


@subscriptions_app.command("stream-token")
def stream_token(department: str = typer.Option(...), name: str = typer.Option(...)) -> None:
    """A token for one department's live stream (GET /v1/stream); printed once."""
    import hashlib
    import secrets

    token = "gds_" + secrets.token_urlsafe(32)

    async def save(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO notifier.stream_tokens (token_hash, department, name) VALUES ($1, $2, $3)",
            hashlib.sha256(token.encode()).hexdigest(),
            department,
            name,
        )

    _db(save)
    console.print(f"stream token for {department} ({name}):")
    print(token)
