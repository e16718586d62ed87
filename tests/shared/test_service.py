"""Process runtime helpers shared by the services."""

from __future__ import annotations

import gc

from shared.service import GEN0_THRESHOLD, settle_heap


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
