"""Helpers shared by the benchmarks: a throw-away stack, the `hey` load generator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT

HEY_VERSION = "v0.1.5"
BIN = PROJECT_ROOT / ".local" / "bin"


@contextmanager
def bench_stack(partitions: int = 12) -> Iterator[LocalStack]:
    """Kafka and PostgreSQL on free ports in a temporary folder; PostgreSQL stays durable
    (fsync on), unlike the tests'."""
    home = Path(tempfile.mkdtemp(prefix="griddispatch-bench-"))
    os.chmod(home, 0o755)
    stack = LocalStack.ephemeral(home, PROJECT_ROOT / ".local" / "cache", partitions=partitions)
    stack.postgres.settings = {}
    try:
        stack.up(lambda _: None)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def hey() -> str:
    """The `hey` HTTP load generator (Go), installed into .local/bin on first use."""
    found = shutil.which("hey") or (str(BIN / "hey") if (BIN / "hey").exists() else None)
    if found:
        return found
    BIN.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["go", "install", f"github.com/rakyll/hey@{HEY_VERSION}"],
        env={**os.environ, "GOBIN": str(BIN)},
        check=True,
    )
    return str(BIN / "hey")


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]


def run_hey(
    url: str,
    body: Path,
    *,
    seconds: int,
    concurrency: int,
    headers: dict[str, str],
    qps_per_worker: float | None = None,
) -> LoadResult:
    cmd = [
        hey(),
        "-z",
        f"{seconds}s",
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body),
    ]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if qps_per_worker:
        cmd += ["-q", str(qps_per_worker)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def pct(p: int) -> float:
        m = re.search(rf"\s{p}%+ in ([0-9.]+) secs", out)
        return float(m[1]) * 1000 if m else float("nan")

    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out)[1])  # type: ignore[index]
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return LoadResult(rps, pct(50), pct(95), pct(99), statuses)


def cpu_seconds(owner: dict[int, str]) -> dict[str, float]:
    """CPU time used so far by each process named in `owner` (pid → name; with its children),
    Kafka, PostgreSQL and everything else of ours (the load generator, this script): take it
    before and after a phase to see where the cores went."""
    used: dict[str, float] = {}
    for proc in psutil.process_iter(["name", "cmdline", "ppid", "uids"]):
        try:
            name = proc.info["name"] or ""
            if name != "postgres" and (
                proc.info["uids"] is None or proc.info["uids"].real != os.getuid()
            ):
                continue  # (PostgreSQL runs as its own user when the stack is root's)
            cpu = proc.cpu_times()
            key = owner.get(proc.pid) or owner.get(proc.info["ppid"])
            if key is None:
                key = next(
                    (owner[a.pid] for a in proc.parents() if a.pid in owner), None
                )  # intake's uvicorn workers are grandchildren
            if key is None:
                cmd = " ".join(proc.info["cmdline"] or ())
                key = (
                    "kafka"
                    if "kafka" in cmd and "java" in name
                    else "postgres"
                    if name == "postgres"
                    else "other"
                )
            spent = cpu.user + cpu.system
            if proc.pid == os.getpid():
                key = "load (hey) and bench"
                spent += cpu.children_user + cpu.children_system  # hey, once it has exited
            used[key] = used.get(key, 0.0) + spent
        except psutil.Error:
            continue
    return used
