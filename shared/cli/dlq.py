"""`griddispatch dlq list|replay`: the dead-letter topics, read and replayed (shared.dlq)."""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import TYPE_CHECKING

import orjson
import typer
from rich.console import Console
from rich.table import Table

from shared.settings import get_settings

# Kafka's clients are imported by the commands, not by the CLI root (see shared.cli.main).
if TYPE_CHECKING:
    from shared.dlq import DeadLetter, Selection

console = Console(stderr=True, soft_wrap=True)
dlq_app = typer.Typer(
    help="Dead letters: messages a consumer could not process, read and replayed.",
    no_args_is_help=True,
)

TOPIC = typer.Option(None, "--topic", help="a DLQ (repeatable); default: every DLQ")
CONSUMER = typer.Option(None, help="only those this consumer dead-lettered, e.g. router")
ERROR_TYPE = typer.Option(None, help="only this error, e.g. DecodeError")
AFTER = typer.Option(None, help="only those dead-lettered after this time (ISO 8601)")


def _after(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not an ISO 8601 time: {text!r}", param_hint="--after") from exc
    if at.tzinfo is None:
        raise typer.BadParameter(
            "give a time zone, e.g. 2026-11-29T08:00+08:00", param_hint="--after"
        )
    return at


def _read(topic: list[str] | None, selection: Selection) -> list[DeadLetter]:
    from shared import topics
    from shared.dlq import read_dead_letters
    from shared.kafka import connection_options

    dlqs = topic or topics.dead_letter_topics()
    return asyncio.run(
        read_dead_letters(
            connection_options(get_settings().kafka), dlqs, keep=selection, since=selection.after
        )
    )


@dlq_app.command("list")
def dlq_list(
    topic: list[str] | None = TOPIC,
    consumer: str | None = CONSUMER,
    error_type: str | None = ERROR_TYPE,
    after: str | None = AFTER,
    payload: bool = typer.Option(
        False, help="also print each message (it may hold a resident's contact details)"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line on stdout"),
) -> None:
    """What is in the dead-letter topics, and why."""
    from shared.dlq import Selection

    letters = _read(topic, Selection(consumer, error_type, _after(after)))
    if as_json:
        for letter in letters:
            row = {
                "position": letter.position,
                "topic": letter.origin,
                "key": (letter.key or b"").decode("utf-8", "replace"),
                "consumer": letter.consumer,
                "error_type": letter.error_type,
                "error": letter.error,
                "dead_at": letter.dead_at.isoformat() if letter.dead_at else None,
                "replayed_from": letter.replayed_from or None,
            }
            if payload:
                row["value"] = letter.value.decode("utf-8", "replace")
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return
    table = Table("position", "consumer", "error", "dead at", "replayed from")
    for letter in letters:
        table.add_row(
            letter.position,
            letter.consumer,
            f"{letter.error_type}: {letter.error[:120]}",
            f"{letter.dead_at:%Y-%m-%d %H:%M:%S}" if letter.dead_at else "",
            letter.replayed_from,
        )
        if payload:
            table.add_row("", "", letter.value.decode("utf-8", "replace")[:2000], "", "")
    console.print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("replay")
def dlq_replay(
    topic: list[str] | None = TOPIC,
    consumer: str | None = CONSUMER,
    error_type: str | None = ERROR_TYPE,
    after: str | None = AFTER,
    offset: list[str] | None = typer.Option(
        None, help="<dlq>/<partition>/<offset> as `dlq list` shows it (repeatable)"
    ),
    replay_all: bool = typer.Option(False, "--all", help="every dead letter of the topics"),
    dry_run: bool = typer.Option(False, help="say what would be sent, send nothing"),
) -> None:
    """Send dead letters back to the topic they came from, once their cause is fixed.

    Consumers deduplicate by event id: a message that was processed after all is not
    processed twice. One that fails again comes back to the DLQ, marked as a replay."""
    from shared.dlq import Selection, replay

    selection = Selection(consumer, error_type, _after(after), frozenset(offset or ()))
    if selection.everything and not replay_all:
        console.print(
            "[red]say which dead letters[/red] (--consumer, --error-type, --after, "
            "--offset), or --all"
        )
        raise typer.Exit(2)
    letters = _read(topic, selection)
    missing = selection.positions - {letter.position for letter in letters}
    if missing:
        console.print(f"[red]no such dead letter: {', '.join(sorted(missing))}[/red]")
        raise typer.Exit(1)
    try:
        targets = [(letter, letter.target) for letter in letters]
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    for letter, target in targets:
        console.print(f"{letter.position} → {target}{'  (dry run)' if dry_run else ''}")
    if dry_run:
        console.print(f"{len(letters)} would be replayed")
        return
    sent = asyncio.run(replay(get_settings().kafka, letters))
    console.print(f"[green]✓[/green] replayed {sent}")
