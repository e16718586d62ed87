"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.aio import Refreshed


async def test_a_refreshed_value_is_read_once_per_interval() -> None:
    reads: list[Any] = []

    async def read(conn: Any) -> int:
        reads.append(conn)
        return len(reads)

    value = Refreshed(read, 0.05, initial=0)
    assert [await value.get("c1"), await value.get("c2")] == [1, 1]  # read once, then kept
    await asyncio.sleep(0.06)
    assert await value.get("c3") == 2  # read again after the interval, on the caller's conn
    assert reads == ["c1", "c3"]
