"""Process runtime helpers shared by the services."""

from __future__ import annotations

import asyncio
import gc

import pytest

from shared.metrics import REGISTRY
from shared.service import GEN0_THRESHOLD, settle_heap, supervised


def test_settle_heap_freezes_what_is_alive_and_makes_young_passes_rarer() -> None:
    before = gc.get_threshold()
    try:
        kept = [object() for _ in range(1000)]
        settle_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
        frozen = gc.get_freeze_count()
        settle_heap(collect=False)  # after a reload: what is new is frozen too
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_background_loop_that_fails_is_logged_and_started_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    runs: list[int] = []

    async def flaky(stop_: asyncio.Event) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise KeyError("a bug")  # not an error the loop expects
        await stop_.wait()  # the third run works until stopped

    before = REGISTRY.get_sample_value(
        "griddispatch_background_restarts_total", {"task": "flaky sender"}
    )
    task = asyncio.create_task(supervised("flaky sender", flaky, stop, backoff_s=(0.01, 0.02)))
    for _ in range(200):
        if len(runs) == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert runs == [0, 1, 2]
    failures = [r for r in caplog.records if r.getMessage().startswith("flaky sender failed")]
    assert len(failures) == 2
    assert failures[0].exc_info is not None  # with its traceback
    after = REGISTRY.get_sample_value(
        "griddispatch_background_restarts_total", {"task": "flaky sender"}
    )
    assert (after or 0) - (before or 0) == 2


async def test_a_loop_that_returns_is_not_started_again() -> None:
    calls = 0

    async def once(stop: asyncio.Event) -> None:
        nonlocal calls
        calls += 1

    await asyncio.wait_for(supervised("once", once, asyncio.Event()), 1)
    assert calls == 1
