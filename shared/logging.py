"""Structured logging: JSON lines when stderr is not a terminal, readable lines when it is.

Personal data (phone numbers, names, care flags) is never passed to a logger; the fields
given in `extra=` are codes and ids only.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

# Loggers whose records come in bursts of the same line while the broker or the database is
# away: the Kafka client's, asyncpg's pool (each attempt to restore its connection floor, with
# a traceback), and FastStream's for each service (a handler's error, each retry).
CHATTY = re.compile(r"^(aiokafka|asyncpg|griddispatch\.[\w-]+\.broker)(\.|$)")
# `log.warning(..., extra=COLLAPSE)`: a line of ours that repeats per request or per attempt
# while something is away, and says nothing of its own (no id, no offset).
COLLAPSE = {"collapse_repeats": True}
# Distinct lines remembered at most (FastStream's are formatted already, so each distinct one is
# a run of its own); then the memory starts again.
MAX_RUNS = 1000


class RepeatFilter(logging.Filter):
    """Of a run of like records (same logger, level and message template) from the `chatty`
    loggers, or logged with `extra=COLLAPSE`, lets the first through and drops the rest for
    `window_s`; the first one after that says how many it stands for. While a broker is away,
    every aiokafka client of a service retries every 100 ms and logs each attempt: ~280 error
    lines a second per service, which bury everything else a reader needs in an outage. Other
    records pass untouched: each of our own lines (a dead-lettered message, say) matters."""

    def __init__(
        self,
        window_s: float = 60.0,
        chatty: re.Pattern[str] = CHATTY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.chatty = chatty
        self.clock = clock
        # (logger, level, template) → (when the window began, records dropped in it). Bounded:
        # a library has few templates.
        self._runs: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        collapse = record.__dict__.pop("collapse_repeats", False)  # not a field of the line
        if not collapse and not self.chatty.match(record.name):
            return True
        if len(self._runs) >= MAX_RUNS:
            self._runs.clear()
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        run = self._runs.get(key)
        if run is not None and now - run[0] < self.window_s:
            self._runs[key] = (run[0], run[1] + 1)
            return False
        if run is not None and run[1]:
            record.msg = (
                f"{record.getMessage()} (and {run[1]} more like it in the "
                f"{now - run[0]:.0f} s before)"
            )
            record.args = None
        self._runs[key] = (now, 0)
        return True


def configure_logging(service: str, *, level: str = "INFO", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatFilter())
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
                static_fields={"service": service},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
