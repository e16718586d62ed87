"""Running services as separate processes against the test stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

from shared.settings import PROJECT_ROOT


@contextmanager
def running_service(
    name: str, env: dict[str, str], *, ready_url: str | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`griddispatch serve NAME` in a subprocess; waits for `ready_url` to answer 200."""
    log_file = open(log or os.devnull, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", name],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        if ready_url:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
                try:
                    if httpx.get(ready_url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready at {ready_url}; see {log}")
                time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()


async def fresh_database(stack_url: str, prefix: str) -> str:
    """A new, empty database on the test stack's PostgreSQL; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return stack_url.rsplit("/", 1)[0] + f"/{name}"
