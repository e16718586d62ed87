"""PostgreSQL cannot store a NUL character (U+0000) in text. A request carrying one is refused
at the door, naming where it is, instead of failing in the database (which answered 500).
Pure functions; `refuse_unstorable_text` is the net every service's HTTP API has."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REASON = "must not contain a NUL character (\\x00)"


def nul_in_json(raw: bytes) -> str | None:
    """The dotted path of the first value (or key) holding a NUL in a JSON body, or None. Cheap
    when there is none, the usual case: JSON carries one only as the escape `\\u0000`."""
    if b"\\u0000" not in raw:
        return None
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None  # the body's own validation says what is wrong with it
    return _path(document)


def nul_in_pairs(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The name of the first query or form field whose name or value holds a NUL, or None."""
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            return printable(name)
    return None


def printable(name: str) -> str:
    return name.replace("\x00", "\\x00")


def _path(value: Any) -> str | None:
    if isinstance(value, str):
        return "" if "\x00" in value else None
    if isinstance(value, dict):
        items: Iterable[tuple[str, Any]] = value.items()
    elif isinstance(value, list):
        items = ((str(i), item) for i, item in enumerate(value))
    else:
        return None
    for key, item in items:
        if "\x00" in key:
            return printable(key)
        inner = _path(item)
        if inner is not None:
            return f"{key}.{inner}" if inner else key
    return None


def refuse_unstorable_text(app: FastAPI) -> None:
    """Text the database cannot store, wherever it came from (a query parameter, a body), is
    answered 422, not 500. (Intake names the field before it gets that far.)"""

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def unstorable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"text {REASON}"}, status_code=422)
