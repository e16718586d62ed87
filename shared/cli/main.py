"""The `griddispatch` command line. Its root lives here; services add their own command
groups through the `griddispatch.commands` entry-point group."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console

from shared.catalogue import SEED_FILE, Catalogue, CatalogueRefused, load_file
from shared.cli.dlq import dlq_app
from shared.db import migrate as run_migrations
from shared.db import run_in_schema
from shared.settings import get_settings

# The local stack and the service runtime (Kafka clients, web servers) are imported by the
# commands that use them: a CLI call loads only what its command needs (see `run`).
if TYPE_CHECKING:
    from shared.localstack import LocalStack
    from shared.service import ServiceSpec

console = Console(stderr=True, soft_wrap=True)
app = typer.Typer(
    help="GridDispatch: case dispatch for grid-governed cities.", no_args_is_help=True
)
stack_app = typer.Typer(
    help="The local Kafka + PostgreSQL stack (development).", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
contract_app = typer.Typer(help="The Kafka contract's published schemas.", no_args_is_help=True)
app.add_typer(contract_app, name="contract")
app.add_typer(dlq_app, name="dlq")
catalogue_app = typer.Typer(help="The service catalogue.", no_args_is_help=True)
app.add_typer(catalogue_app, name="catalogue")


@catalogue_app.command("import")
def catalogue_import(
    path: Path = typer.Argument(SEED_FILE, exists=True, dir_okay=False),
    retire_others: bool = typer.Option(
        False,
        "--retire-others",
        help="the file is the whole catalogue: categories it does not name stop taking reports "
        "and grid tasks, and leave the service list (cases in them keep them)",
    ),
) -> None:
    """Load categories from a YAML file into every service that decides by category (intake
    accepts reports in them, the router routes them, the notifier names them), replacing those
    with the same code; running services pick them up within seconds. Every service checks the
    file first (the router: each category's department exists): any problem, nothing changes."""
    try:
        catalogue = load_file(path)
    except Exception as exc:
        console.print(f"[red]{path}: {exc}[/red]")
        raise typer.Exit(2) from exc
    from shared.service import discover_services  # the services' runtime: only for this command

    specs = [s for s in discover_services().values() if s.take_catalogue and s.schema is not None]
    problems = [
        f"{spec.name}: {problem}"
        for spec in specs
        if spec.check_catalogue is not None
        for problem in _in_schema(spec, spec.check_catalogue, catalogue)
    ]
    if problems:
        _refuse_catalogue(problems)
    done: list[str] = []
    # a service that checks takes it first: should it refuse now, the others are untouched
    for spec in sorted(specs, key=lambda s: s.check_catalogue is None):
        assert spec.take_catalogue is not None
        take = functools.partial(spec.take_catalogue, retire_others=retire_others)
        try:
            taken = _in_schema(spec, take, catalogue)
        except CatalogueRefused as exc:  # the reference data changed since the check
            _refuse_catalogue([f"{spec.name}: {p}" for p in exc.problems], taken_by=done)
        done.append(spec.name)
        retired = f", {len(taken.retired)} retired" if taken.retired else ""
        console.print(
            f"[green]✓[/green] {spec.name}: {taken.written} categories from {path}{retired}"
        )


T = TypeVar("T")


def _in_schema(
    spec: ServiceSpec,
    fn: Callable[[asyncpg.Connection, Catalogue], Awaitable[T]],
    catalogue: Catalogue,
) -> T:
    assert spec.schema is not None

    async def run(conn: asyncpg.Connection) -> T:
        return await fn(conn, catalogue)

    return run_in_schema(spec.schema, spec.migrations, run)


def _refuse_catalogue(problems: list[str], taken_by: Sequence[str] = ()) -> NoReturn:
    for problem in problems[:50]:
        console.print(f"[red]✗[/red] {problem}")
    changed = (
        f"{', '.join(taken_by)} took the file already: mend it and import it again"
        if taken_by
        else "no service changed"
    )
    console.print(f"[red]{len(problems)} problem(s): {changed}[/red]")
    raise typer.Exit(2)


def _progress(message: str) -> None:
    console.print(f"[cyan]›[/cyan] {message}")


def _stack() -> LocalStack:
    from shared.localstack import LocalStack

    return LocalStack.from_settings(get_settings())


@stack_app.command("up")
def stack_up() -> None:
    """Start Kafka and PostgreSQL in the background (downloads jars on first use)."""
    stack = _stack()
    try:
        with console.status("starting the local stack …"):
            timings = stack.up(_progress)
    except _stack_error() as exc:
        console.print(f"[red]✗[/red] {exc}")
        raise typer.Exit(1) from exc
    for name, seconds in timings.items():
        if seconds:
            _progress(f"{name} ready in {seconds:.1f}s")
    _print_where(stack)


def _stack_error() -> type[Exception]:
    from shared.localstack import StackError

    return StackError


def _print_where(stack: LocalStack) -> None:
    console.print(
        f"[green]✓[/green] Kafka       {stack.kafka.bootstrap}   (log {stack.kafka.log_file})"
    )
    console.print(
        f"[green]✓[/green] PostgreSQL  {stack.postgres.url}   (log {stack.postgres.log_file})"
    )


@stack_app.command("down")
def stack_down() -> None:
    """Stop Kafka and PostgreSQL."""
    stopped = _stack().down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Say what of the local stack runs, and where."""
    for name, state in _stack().status().items():
        console.print(f"{name:9} {state}")


@app.command()
def migrate() -> None:
    """Apply every service's database migrations (idempotent)."""
    applied = asyncio.run(_migrate_all())
    for label in applied:
        _progress(f"applied {label}")
    console.print(f"[green]✓[/green] migrations up to date ({len(applied)} applied now)")


async def _migrate_all() -> list[str]:
    from shared.service import discover_services

    settings = get_settings()
    conn = await asyncpg.connect(settings.database_url)
    try:
        applied: list[str] = []
        for spec in discover_services().values():
            if spec.schema:
                applied += await run_migrations(conn, spec.schema, spec.migrations)
        return applied
    finally:
        await conn.close()


@app.command()
def serve(
    service: str = typer.Argument(..., help="intake, router, escalation or notifier"),
) -> None:
    """Run one service in the foreground."""
    from shared.service import discover_services, run_service

    services = discover_services()
    if service not in services:
        console.print(
            f"[red]unknown service {service!r}[/red]; known: {', '.join(services) or 'none'}"
        )
        raise typer.Exit(2)
    run_service(services[service])


@app.command()
def up(
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate"),
    demo: bool = typer.Option(True, "--demo/--no-demo", help="load a small demo city if empty"),
    keep_stack: bool = typer.Option(False, help="leave Kafka and PostgreSQL running on exit"),
) -> None:
    """Start the stack and every service in the foreground; Ctrl-C stops everything."""
    from shared.service import discover_services

    stack = _stack()
    try:
        stack.up(_progress)
    except _stack_error() as exc:
        console.print(f"[red]✗[/red] {exc}")
        raise typer.Exit(1) from exc
    # Everything started from here talks to this stack.
    os.environ.update(stack.env())
    get_settings.cache_clear()
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    demo_keys: list[str] = []  # prefixes of the keys made for this run
    try:
        if migrate_first:
            migrate()
        if demo and "demo" in {ep.name for ep in entry_points(group="griddispatch.commands")}:
            # A service's command, run as a command: the CLI root imports no service.
            subprocess.run(
                [sys.executable, "-m", "shared.cli.main", "demo", "city", "--if-empty"],
                check=True,
            )
        _print_where(stack)
        commands = {ep.name for ep in entry_points(group="griddispatch.commands")}
        mailbox = _start_mailbox() if "mailbox" in commands else None
        if mailbox is not None:
            procs.append(("mailbox", mailbox))
            if demo and "subscriptions" in commands:
                subprocess.run(
                    [sys.executable, "-m", "shared.cli.main", "subscriptions", "demo"], check=True
                )
        for name in discover_services():
            proc = subprocess.Popen([sys.executable, "-m", "shared.cli.main", "serve", name])
            procs.append((name, proc))
            _progress(f"started {name} (pid {proc.pid})")
        prometheus = _start_prometheus()
        if prometheus is not None:
            procs.append(("prometheus", prometheus))
        with_keys = demo and {"demo", "keys"} <= commands
        operator = _demo_key("demo operator", "operator", demo_keys) if with_keys else None
        _print_services(operator)
        if with_keys:
            key = _demo_key("demo reports", "resident_app", demo_keys)
            trickle = subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "demo", "reports"],
                env={**os.environ, "GRIDDISPATCH_DEMO_API_KEY": key},
            )
            procs.append(("demo reports", trickle))
            _progress("a trickle of demo reports every 5 s (griddispatch demo reports)")
        if not procs:
            console.print("no services are installed yet: the stack is up on its own")
        console.print("[bold]running — press Ctrl-C to stop[/bold]")
        _wait_for_interrupt(procs)
    finally:
        # the demo's keys live as long as the run that printed them
        for prefix in demo_keys:
            subprocess.run([sys.executable, "-m", "shared.cli.main", "keys", "revoke", prefix])
        for _, proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _progress(f"stopped {name}")
        if not keep_stack:
            stopped = stack.down()
            _progress(f"stopped {', '.join(stopped)}")


def _demo_key(name: str, role: str, made: list[str]) -> str:
    """A fresh intake API key for the demo (printed once by `keys create`); its prefix goes to
    `made`, so that the run revokes it when it stops."""
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "keys", "create", "--name", name, "--role", role],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    made.append(out.split("_")[1])  # a key reads gd_<prefix>_<secret>
    return out


def _print_services(operator_key: str | None) -> None:
    """Where each service answers, and one request to try with an operator's key."""
    from shared.service import discover_services

    urls = {
        name: f"http://127.0.0.1:{spec.http_port()}"
        for name, spec in discover_services().items()
        if spec.http_port is not None
    }
    for name, url in urls.items():
        console.print(f"[green]✓[/green] {name:11} {url}/docs   (its API; /metrics, /health)")
    if operator_key and "intake" in urls:
        console.print(
            "  try it with an operator's key (revoked when this run stops):\n"
            f"  curl -H 'Authorization: Bearer {operator_key}' '{urls['intake']}/v1/cases?limit=5'"
        )
        console.print(
            "  or give every grid of a street office a task (one case per grid):\n"
            "  .venv/bin/griddispatch tasks issue --area longsha-s01 "
            "--category task.door-to-door --title 寒潮入户排查"
        )
        console.print(
            "  or see the requests for more time waiting for an operator's answer:\n"
            "  .venv/bin/griddispatch extensions list"
        )
        today, tomorrow = _city_days()
        console.print(
            "  or read today's response, resolution and satisfaction rates per department:\n"
            f"  curl -H 'Authorization: Bearer {operator_key}' "
            f"'{urls['intake']}/v1/performance?from={today}&to={tomorrow}'"
        )


def _city_days() -> tuple[str, str]:
    """Today and tomorrow, as the city counts them."""
    from datetime import datetime, timedelta

    from shared.citytime import CITY_TIME

    today = datetime.now(CITY_TIME).date()
    return str(today), str(today + timedelta(days=1))


def _start_mailbox() -> subprocess.Popen[bytes] | None:
    """A local SMTP server and SMS gateway (the notifier's `griddispatch mailbox`) that keep
    what the services send in files, and the services pointed at it."""
    local = get_settings().local
    if not local.mailbox_smtp_port:
        return None
    folder = local.home / "mailbox"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "shared.cli.main", "mailbox", "--folder", str(folder)),
            *("--smtp-port", str(local.mailbox_smtp_port)),
            *("--sms-port", str(local.mailbox_sms_port)),
        ]
    )
    # the services started after this send their e-mail and SMS there (unless told otherwise)
    os.environ.setdefault("GRIDDISPATCH_NOTIFIER__SMTP_HOST", "127.0.0.1")
    os.environ.setdefault("GRIDDISPATCH_NOTIFIER__SMTP_PORT", str(local.mailbox_smtp_port))
    os.environ.setdefault(
        "GRIDDISPATCH_NOTIFIER__SMS_GATEWAY_URL", f"http://127.0.0.1:{local.mailbox_sms_port}/sms"
    )
    console.print(
        f"[green]✓[/green] Mailbox     e-mail → {folder / 'mail.log'}, SMS → {folder / 'sms.log'}"
        "   (residents' messages wait out the quiet hours, 22:00–07:00 in the city)"
    )
    return proc


def _start_prometheus() -> subprocess.Popen[bytes] | None:
    """A Prometheus scraping every service, with the alert rules loaded — where the local
    system's metrics can be looked at. Optional: without it the system runs as well."""
    from shared.localstack import prometheus
    from shared.service import discover_services

    local = get_settings().local
    if not local.prometheus_port:
        return None
    targets = {
        f"griddispatch-{name}": spec.http_port()
        for name, spec in discover_services().items()
        if spec.http_port is not None
    }
    try:
        bin_dir = prometheus.ensure_prometheus(local.home / "cache")
    except _stack_error() as exc:
        console.print(f"[yellow]![/yellow] no Prometheus this time: {exc}")
        return None
    folder = local.home / "prometheus"
    prometheus.write_config(folder, targets)
    log = open(folder / "prometheus.log", "ab")  # noqa: SIM115  (the child keeps it open)
    proc = subprocess.Popen(
        prometheus.command(bin_dir, folder, local.prometheus_port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    console.print(
        f"[green]✓[/green] Prometheus  http://127.0.0.1:{local.prometheus_port}   "
        "(alerts under /alerts; try griddispatch_dispatch_latency_seconds_bucket)"
    )
    return proc


def _wait_for_interrupt(procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop:
        for name, proc in procs:
            if proc.poll() is not None:
                console.print(f"[red]{name} exited with {proc.returncode}[/red]; stopping")
                return
        time.sleep(0.3)


@contract_app.command("generate")
def contract_generate() -> None:
    """Write docs/schemas/*.json and docs/asyncapi.json from the event models."""
    from shared import contract

    for path in contract.write():
        _progress(f"wrote {path.relative_to(contract.DOCS.parent)}")


def _add_service_commands(argv: list[str]) -> None:
    """Add the services' sub-commands: only the one named on the command line when it is one
    of theirs (loading a service's commands imports its code: seconds, four times over),
    every one otherwise (the root help lists them, a typo is told the choices)."""
    found = list(entry_points(group="griddispatch.commands"))
    named = next((a for a in argv[1:] if not a.startswith("-")), None)
    if any(ep.name == named for ep in found):
        found = [ep for ep in found if ep.name == named]
    elif named in _root_commands():
        found = []  # one of the root's own commands
    for ep in found:
        app.add_typer(ep.load(), name=ep.name)


def _root_commands() -> set[str]:
    own = {
        str(c.name or getattr(c.callback, "__name__", "")).replace("_", "-")
        for c in app.registered_commands
    }
    return own | {g.name for g in app.registered_groups if g.name}


def run() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _add_service_commands(sys.argv)
    app()


if __name__ == "__main__":
    run()
