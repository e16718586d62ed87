"""Dead letters as plain data: what a record of a DLQ says, which ones a selection takes, and
what a replay sends (shared.dlq)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.dlq import REPLAYED_FROM, DeadLetter, Selection
from shared.topics import dead_letter_topics

AT = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def letter(
    offset: int = 7,
    *,
    consumer: str = "router",
    error_type: str = "DecodeError",
    at: datetime = AT,
    origin: str = "cases.intake",
    extra: tuple[tuple[str, bytes], ...] = (),
) -> DeadLetter:
    return DeadLetter(
        dlq="cases.intake.dlq",
        partition=3,
        offset=offset,
        key=b"case-1",
        value=b'{"broken": ',
        headers=(
            ("traceparent", b"00-abc-def-01"),
            ("x-dlq-error-type", error_type.encode()),
            ("x-dlq-error", b"Invalid JSON: EOF"),
            ("x-dlq-topic", origin.encode()),
            ("x-dlq-partition", b"3"),
            ("x-dlq-offset", b"41"),
            ("x-dlq-consumer", consumer.encode()),
            ("x-dlq-at", at.isoformat().encode()),
            *extra,
        ),
    )


def test_a_dead_letter_says_where_it_is_where_it_came_from_and_why() -> None:
    dead = letter()
    assert dead.position == "cases.intake.dlq/3/7"
    assert dead.origin == dead.target == "cases.intake"
    assert (dead.consumer, dead.error_type, dead.error) == (
        "router",
        "DecodeError",
        "Invalid JSON: EOF",
    )
    assert dead.dead_at == AT
    assert dead.replayed_from == ""


def test_a_replay_keeps_the_original_headers_drops_the_dlqs_and_says_where_it_came_from() -> None:
    again = letter(extra=((REPLAYED_FROM, b"cases.intake.dlq/3/2"),))
    assert again.replayed_from == "cases.intake.dlq/3/2"
    assert again.replay_headers() == [
        ("traceparent", b"00-abc-def-01"),
        (REPLAYED_FROM, b"cases.intake.dlq/3/7"),
    ]


def test_a_replay_goes_only_to_a_topic_of_the_contract() -> None:
    with pytest.raises(ValueError, match="not replayable"):
        _ = letter(origin="dept.heating").target
    headerless = DeadLetter("cases.lifecycle.dlq", 0, 1, None, b"x", ())
    assert headerless.target == "cases.lifecycle"  # the DLQ's name tells


def test_a_selection_takes_the_dead_letters_matching_every_criterion() -> None:
    letters = [
        letter(1),
        letter(2, consumer="notifier"),
        letter(3, error_type="ValidationError"),
        letter(4, at=AT + timedelta(hours=1)),
    ]

    def chosen(selection: Selection) -> list[int]:
        return [x.offset for x in letters if selection(x)]

    assert Selection().everything
    assert chosen(Selection()) == [1, 2, 3, 4]
    assert chosen(Selection(consumer="router")) == [1, 3, 4]
    assert chosen(Selection(error_type="DecodeError")) == [1, 2, 4]
    assert chosen(Selection(after=AT)) == [4]
    assert chosen(Selection(consumer="router", after=AT - timedelta(seconds=1))) == [1, 3, 4]
    assert chosen(Selection(positions=frozenset({"cases.intake.dlq/3/2"}))) == [2]
    assert not Selection(consumer="router").everything


def test_the_dead_letter_topics_are_the_contracts() -> None:
    assert dead_letter_topics() == ["cases.intake.dlq", "cases.lifecycle.dlq"]
