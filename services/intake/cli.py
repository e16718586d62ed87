"""`griddispatch keys …`, `catalogue …` and `privacy …`: intake's command groups."""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from services.intake import store
from services.intake.auth import SCOPED_ROLES, Role
from services.intake.settings import MIGRATIONS
from shared.catalogue import SEED_FILE, load_file
from shared.db import run_in_schema

console = Console(stderr=True, soft_wrap=True)
keys_app = typer.Typer(help="API keys of intake (stored hashed).", no_args_is_help=True)
catalogue_app = typer.Typer(help="The service catalogue.", no_args_is_help=True)
privacy_app = typer.Typer(help="Residents' personal data.", no_args_is_help=True)
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


@catalogue_app.command("import")
def catalogue_import(
    path: Path = typer.Argument(SEED_FILE, exists=True, dir_okay=False),
) -> None:
    """Load categories from a YAML file, replacing those with the same code."""
    try:
        catalogue = load_file(path)
    except Exception as exc:
        console.print(f"[red]{path}: {exc}[/red]")
        raise typer.Exit(2) from exc
    n = _with_db(lambda c: store.import_catalogue(c, catalogue, replace=True))
    console.print(f"imported {n} categories from {path}")


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
