"""Log lines: repeated client-library lines are collapsed, everything else passes."""

from __future__ import annotations

import logging

from shared.logging import COLLAPSE, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(
    name: str, msg: str, *args: object, level: int = logging.ERROR, **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_a_run_of_like_lines_is_one_line_a_window_that_says_how_many_it_stands_for() -> None:
    clock = Clock()
    repeats = RepeatFilter(window_s=60, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for i in range(300):  # 30 s of an outage, a retry every 100 ms
        record = _record("aiokafka", template, 1, f"refused {i}")
        if repeats.filter(record):
            passed.append(record.getMessage())
        clock.now += 0.1
    assert passed == ["Unable connect to node with id 1: refused 0"]
    clock.now += 40  # the window has passed: the next one through, with the count
    record = _record("aiokafka", template, 1, "refused again")
    assert repeats.filter(record)
    assert record.getMessage() == (
        "Unable connect to node with id 1: refused again (and 299 more like it in the 70 s before)"
    )
    # a later lone line is told as it is
    clock.now += 61
    record = _record("aiokafka", template, 1, "refused once")
    assert repeats.filter(record)
    assert record.getMessage() == "Unable connect to node with id 1: refused once"


def test_different_lines_levels_and_loggers_are_runs_of_their_own() -> None:
    repeats = RepeatFilter(window_s=60, clock=Clock())
    assert repeats.filter(_record("aiokafka", "Unable to update metadata from %s", [1]))
    assert repeats.filter(_record("aiokafka", "Unable connect to node with id %s", 1))
    assert repeats.filter(_record("aiokafka.consumer.fetcher", "Unable to update metadata %s", 1))
    assert repeats.filter(
        _record("aiokafka", "Unable to update metadata from %s", [1], level=logging.WARNING)
    )
    assert not repeats.filter(_record("aiokafka", "Unable to update metadata from %s", [2]))


def test_our_own_loggers_are_never_collapsed() -> None:
    repeats = RepeatFilter(window_s=60, clock=Clock())
    # each of these is about a message of its own: an operator needs every one
    for offset in range(5):
        assert repeats.filter(_record("shared.kafka", "dead-lettered offset %s", offset))
    for _ in range(2):  # a name that only begins like the library's
        assert repeats.filter(_record("aiokafkaesque", "not the library"))


def test_faststream_s_lines_and_ours_marked_collapse_are_collapsed_too() -> None:
    repeats = RepeatFilter(window_s=60, clock=Clock())
    error = "ConnectionRefusedError: [Errno 111] Connection refused"  # a handler's, each retry
    assert repeats.filter(_record("griddispatch.intake.broker", error))
    assert not repeats.filter(_record("griddispatch.intake.broker", error))
    assert repeats.filter(_record("griddispatch.intake.broker", "assigned to partitions 1, 2"))
    floor = "Failed to restore the pool connection floor; retrying"  # asyncpg, while PG is away
    assert repeats.filter(_record("asyncpg.pool", floor))
    assert not repeats.filter(_record("asyncpg.pool", floor))
    first = _record("services.intake.app", "database unavailable: %s", "refused", **COLLAPSE)
    assert repeats.filter(first)
    assert "collapse_repeats" not in first.__dict__  # the marker is not a field of the line
    assert not repeats.filter(
        _record("services.intake.app", "database unavailable: %s", "refused", **COLLAPSE)
    )
    assert repeats.filter(_record("griddispatch.intake.other", error))
    assert repeats.filter(_record("griddispatch.intake.other", error))
