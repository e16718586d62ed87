"""A local HTTP receiver for tests: webhook endpoints, an SMS gateway."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.localstack import free_port

Handler = Callable[[Request], Awaitable[Response]]


@contextlib.asynccontextmanager
async def receiving(path: str, handler: Handler, *, port: int | None = None) -> AsyncIterator[int]:
    """Serves POST `path` with `handler` on 127.0.0.1 until the block ends; yields the port."""
    port = port or free_port()
    app = Starlette(routes=[Route(path, handler, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        await serving
