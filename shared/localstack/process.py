"""Background processes of the local stack: launch, pid files, readiness, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

Progress = Callable[[str], None]


class StackError(RuntimeError):
    """The local stack could not do what was asked; the message says why."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ManagedProcess:
    """One background process, remembered by a pid file holding its pid and start time
    (so a recycled pid is never mistaken for ours)."""

    name: str
    pid_file: Path
    stop_signal: signal.Signals = signal.SIGTERM

    def _read(self) -> psutil.Process | None:
        try:
            info = json.loads(self.pid_file.read_text())
            proc = psutil.Process(info["pid"])
            if abs(proc.create_time() - info["created"]) > 1:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (OSError, ValueError, KeyError, psutil.Error):
            return None

    def running(self) -> bool:
        return self._read() is not None

    @property
    def pid(self) -> int | None:
        proc = self._read()
        return proc.pid if proc else None

    def launch(
        self,
        cmd: list[str],
        log_file: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> int:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            popen = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stopped as a whole
                env={**os.environ, **(env or {})},
                user=user,
            )
        self._popen = popen
        created = psutil.Process(popen.pid).create_time()
        self.pid_file.write_text(json.dumps({"pid": popen.pid, "created": created}))
        return popen.pid

    def wait_for_log(
        self, log_file: Path, needle: str, timeout_s: float, *, what: str, offset: int = 0
    ) -> None:
        """Wait until `needle` appears in `log_file` after byte `offset` (logs are appended
        across restarts: pass the size the log had before this start)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with log_file.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                if needle.encode() in chunk:
                    return
                offset += max(0, len(chunk) - len(needle))
            if not self.running():
                tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
                raise StackError(f"{what} exited while starting; its log ends:\n{tail}")
            time.sleep(0.1)
        raise StackError(f"{what} was not ready after {timeout_s:.0f}s; see {log_file}")

    def stop(self, grace_s: float = 15) -> bool:
        """Signal the process group (SIGTERM unless told otherwise), SIGKILL what is left after
        `grace_s`. True if it was running."""
        proc = self._read()
        if proc is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, self.stop_signal)
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.wait(5)
        popen = getattr(self, "_popen", None)
        if popen is not None:
            with contextlib.suppress(Exception):
                popen.wait(1)  # reap our own child
        self.pid_file.unlink(missing_ok=True)
        return True
