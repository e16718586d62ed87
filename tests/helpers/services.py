"""Running services as separate processes against the test stack."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

from shared.db import migrate
from shared.service import discover_services
from shared.settings import PROJECT_ROOT


class ServiceProcess:
    """`griddispatch serve NAME` in a process group of its own: a test can crash it (SIGKILL
    to the whole group, as when a node dies: nothing gets to clean up) and start it again."""

    def __init__(
        self, name: str, env: dict[str, str], *, ready_url: str | None = None, log: Path | None
    ) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.ready_url = ready_url
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; with `ready_url`, return once that answers 200."""
        with open(self.log or os.devnull, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "serve", self.name],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.ready_url:
            self._wait_ready(self.proc, self.ready_url)

    def _wait_ready(self, proc: subprocess.Popen[bytes], url: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode}; see {self.log}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready at {url}; see {self.log}")
            time.sleep(0.2)

    def crash(self) -> None:
        """SIGKILL to every process of the service; returns once they are gone."""
        assert self.proc is not None, f"{self.name} never started"
        assert self.proc.poll() is None, f"{self.name} not running"
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL to the group after 20 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # and any worker left behind
        self.proc.wait()


@contextmanager
def running_service(
    name: str, env: dict[str, str], *, ready_url: str | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`griddispatch serve NAME` in a subprocess; waits for `ready_url` to answer 200."""
    service = ServiceProcess(name, env, ready_url=ready_url, log=log)
    try:
        service.start()
        assert service.proc is not None
        yield service.proc
    finally:
        service.stop()


async def fresh_database(stack_url: str, prefix: str) -> str:
    """A new, empty database on the test stack's PostgreSQL; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return stack_url.rsplit("/", 1)[0] + f"/{name}"


async def migrate_services(conn: asyncpg.Connection) -> None:
    """Every service's schema, as `griddispatch migrate` makes them (a test loads its data
    before it starts the services)."""
    for spec in discover_services().values():
        if spec.schema:
            await migrate(conn, spec.schema, spec.migrations)
