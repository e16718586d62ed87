"""Small asyncio helpers shared by the services' background loops."""

from __future__ import annotations

import asyncio


async def until_set(*events: asyncio.Event, at_most_s: float) -> None:
    """Return once any of `events` is set, or after `at_most_s` seconds: a loop's sleep that a
    notification (LISTEN/NOTIFY, a stop request) cuts short."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=at_most_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
