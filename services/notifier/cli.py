"""`griddispatch subscriptions …` and `griddispatch deliveries …`."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import typer
from pydantic import ValidationError
from rich.console import Console

from services.notifier import webhooks
from services.notifier.settings import MIGRATIONS, NotifierSettings
from services.notifier.subscriptions import (
    SubscriptionIn,
    add_demo_subscriptions,
    add_subscription,
    disable_subscription,
    import_subscriptions,
    list_subscriptions,
    read_csv,
    switch_feed,
)
from shared.db import run_in_schema

console = Console(stderr=True, soft_wrap=True)
subscriptions_app = typer.Typer(
    help="Who is told what: webhooks, e-mail, SMS, feed topics.", no_args_is_help=True
)
deliveries_app = typer.Typer(help="The delivery log and its dead letters.", no_args_is_help=True)
mailbox_app = typer.Typer(
    help="A local SMTP server and SMS gateway that keep what they are sent in files "
    "(for `griddispatch up`; not for production)."
)
T = TypeVar("T")


def _db(fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    return run_in_schema("notifier", MIGRATIONS, fn)


@subscriptions_app.command("add")
def add(
    department: str | None = typer.Option(None),
    worker: str | None = typer.Option(None, help="a worker id, or '*' for a worker-app gateway"),
    url: str | None = typer.Option(None, "--webhook", help="https endpoint"),
    secret: list[str] | None = typer.Option(None, help="whsec_… (twice during a rotation)"),
    email: str | None = typer.Option(None, help="a department's e-mail address"),
    sms: str | None = typer.Option(None, help="a grid worker's mobile number"),
    locale: str = typer.Option("zh-CN", help="the language of e-mail and SMS: zh-CN or en"),
    event: list[str] | None = typer.Option(
        None,
        "--event",
        help="only this lifecycle event, e.g. CaseEscalated (repeatable; default: all)",
    ),
) -> None:
    """Tell a department (webhook, e-mail) or a grid worker (webhook, SMS) about its cases."""
    if (department is None) == (worker is None):
        raise typer.BadParameter("give --department or --worker")
    targets = {"webhook": url, "email": email, "sms": sms}
    chosen = [channel for channel, value in targets.items() if value is not None]
    if len(chosen) != 1:
        raise typer.BadParameter("give one of --webhook, --email or --sms")
    channel = chosen[0]
    try:
        body = SubscriptionIn.model_validate(
            {
                "owner_kind": "department" if department else "worker",
                "owner": department or worker,
                "channel": channel,
                "url": url,
                "secrets": secret or None,
                "address": email or sms,
                "locale": locale,
                "event_types": event or None,
            }
        )
        sub_id = _db(lambda c: add_subscription(c, body, NotifierSettings().allow()))
    except (ValidationError, webhooks.ForbiddenDestination) as exc:
        console.print(f"[red]{_reason(exc)}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"[green]✓[/green] subscription {sub_id}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'subscription'}: {e['msg']}"
            for e in exc.errors()
        )
    return str(exc)


@subscriptions_app.command("import")
def import_file(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="a CSV file"),
    dry_run: bool = typer.Option(False, help="check the file, change nothing"),
) -> None:
    """Add many subscriptions at once, e.g. every grid worker's SMS. The CSV's header names
    its columns: owner_kind, owner, channel, and address and locale (e-mail, SMS) or url and
    secrets (webhooks; several secrets separated by spaces). Every row is checked first, and
    nothing is added if any row is wrong; rows already active are skipped, so a file can be
    imported again."""
    subs, errors = read_csv(path.read_text(encoding="utf-8-sig"), NotifierSettings().allow())
    for error in errors[:50]:
        console.print(f"[red]{error}[/red]")
    if errors:
        more = f" ({len(errors) - 50} more not shown)" if len(errors) > 50 else ""
        console.print(f"[red]✗[/red] {len(errors)} problem(s){more}; nothing imported")
        raise typer.Exit(2)
    if dry_run:
        console.print(f"[green]✓[/green] {len(subs)} subscription(s) are valid; nothing changed")
        return
    added, there = _db(lambda c: import_subscriptions(c, subs))
    console.print(f"[green]✓[/green] {added} subscription(s) added, {there} already there")


@subscriptions_app.command("demo")
def demo() -> None:
    """E-mail subscriptions for every department of the service catalogue
    (`<code>@example.org`), for the demo city of `griddispatch up` (whose local mailbox shows
    what they are sent). Adds only what is missing."""
    from shared.catalogue import load_file

    departments = sorted({c.department for c in load_file().categories})
    added = _db(lambda c: add_demo_subscriptions(c, departments))
    console.print(f"[green]✓[/green] demo e-mail subscriptions: {added} added")


@mailbox_app.callback(invoke_without_command=True)
def mailbox(
    folder: Path | None = typer.Option(None, help="where mail.log and sms.log go"),
    smtp_port: int = typer.Option(2525),
    sms_port: int = typer.Option(2526),
) -> None:
    """Keep every e-mail and SMS the notifier sends, until interrupted."""
    import asyncio
    import signal

    from shared.settings import get_settings

    try:
        from services.notifier.mailbox import Mailbox
    except ImportError as exc:  # aiosmtpd is a development dependency, not in the image
        console.print(
            f"[red]griddispatch mailbox is a development tool and needs {exc.name}[/red]: "
            "install the development extras (`make install`, or pip install '.[dev]')"
        )
        raise typer.Exit(2) from exc

    box = Mailbox(
        folder or get_settings().local.home / "mailbox", smtp_port=smtp_port, sms_port=sms_port
    )

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await box.run(stop)

    console.print(
        f"mailbox: SMTP 127.0.0.1:{smtp_port} → {box.mail_file}; SMS {box.sms_url} → {box.sms_file}"
    )
    asyncio.run(run())


@subscriptions_app.command("list")
def list_all() -> None:
    """Every subscription (addresses masked, secrets never shown)."""
    for r in _db(list_subscriptions):
        state = "active" if r["active"] else f"disabled ({r['disabled_reason']})"
        target = r["url"] if r["channel"] == "webhook" else f"{r['address']} ({r['locale']})"
        only = f"  only {','.join(r['event_types'])}" if r["event_types"] else ""
        print(
            f"{r['id']:>5}  {r['owner_kind']:10} {r['owner']:20} {r['channel']:7} {target}  "
            f"{state}{only}"
        )


@subscriptions_app.command("disable")
def disable(sub_id: int) -> None:
    if not _db(lambda c: disable_subscription(c, sub_id)):
        console.print(f"[red]no active subscription {sub_id}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]✓[/green] subscription {sub_id} disabled")


@subscriptions_app.command("feed")
def feed(
    department: str,
    enabled: bool = typer.Option(..., "--on/--off", help="publish to dept.<code> or not"),
) -> None:
    """Switch a department's feed topic on or off (webhooks, e-mail and SMS go on)."""
    try:
        _db(lambda c: switch_feed(c, department, enabled))
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"[green]✓[/green] feed of {department} {'on' if enabled else 'off'}")


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
    from services.notifier.delivery import replay  # (the sender's module: loaded when used)

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


@subscriptions_app.command("stream-tokens")
def stream_tokens() -> None:
    """The live stream's tokens: department, name, when made and revoked (never the token)."""

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(
            await conn.fetch(
                "SELECT department, name, created_at, revoked_at FROM notifier.stream_tokens"
                " ORDER BY department, created_at"
            )
        )

    for r in _db(fetch):
        state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "active"
        print(f"{r['department']:20} {r['name']:30} {r['created_at']:%Y-%m-%d %H:%M}  {state}")


@subscriptions_app.command("revoke-stream-token")
def revoke_stream_token(department: str = typer.Option(...), name: str = typer.Option(...)) -> None:
    """Revoke a department's stream token by its name; streams it opened end within a minute."""

    async def revoke(conn: asyncpg.Connection) -> str:
        done: str = await conn.execute(
            "UPDATE notifier.stream_tokens SET revoked_at = now() WHERE department = $1"
            " AND name = $2 AND revoked_at IS NULL",
            department,
            name,
        )
        return done

    revoked = int(_db(revoke).split()[-1])
    if not revoked:
        console.print(f"[red]no active stream token {name!r} for {department}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]✓[/green] revoked {revoked} token(s) {name!r} of {department}")
