"""The command line on a real stack: `griddispatch up` brings up Kafka and PostgreSQL, says
where they are, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from shared.localstack import free_port
from shared.settings import PROJECT_ROOT

CLI = [sys.executable, "-m", "shared.cli.main"]


@pytest.fixture
def cli_env(stack) -> Iterator[tuple[dict[str, str], Path]]:
    home = Path(tempfile.mkdtemp(prefix="griddispatch-cli-"))
    os.chmod(home, 0o755)
    cache = home / "cache"
    cache.symlink_to(PROJECT_ROOT / ".local" / "cache")  # reuse the downloaded jars
    env = {
        **os.environ,
        "GRIDDISPATCH_LOCAL__HOME": str(home),
        "GRIDDISPATCH_LOCAL__KAFKA_PORT": str(free_port()),
        "GRIDDISPATCH_LOCAL__KAFKA_CONTROLLER_PORT": str(free_port()),
        "GRIDDISPATCH_LOCAL__POSTGRES_PORT": str(free_port()),
        "GRIDDISPATCH_KAFKA__PARTITIONS": "3",
    }
    try:
        yield env, home
    finally:
        subprocess.run([*CLI, "stack", "down"], env=env, cwd=PROJECT_ROOT, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _processes_under(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(home) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _get_when_up(url: str, headers: dict[str, str]) -> httpx.Response:
    """GET once the service answers (`up` prints its addresses while the services start)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url, headers=headers, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_up_reports_where_things_are_and_ctrl_c_leaves_nothing_running(
    cli_env: tuple[dict[str, str], Path],
) -> None:
    env, home = cli_env
    proc = subprocess.Popen(
        [*CLI, "up"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    output = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        if "press Ctrl-C" in line:
            break
    text = "".join(output)
    assert "press Ctrl-C" in text, text
    assert f"127.0.0.1:{env['GRIDDISPATCH_LOCAL__KAFKA_PORT']}" in text
    assert f"127.0.0.1:{env['GRIDDISPATCH_LOCAL__POSTGRES_PORT']}/griddispatch" in text
    assert len(_processes_under(home)) >= 2  # the broker and the database server
    # it says where each service answers, and gives a key that works there
    for port in (8080, 8081, 8082, 8083):
        assert f"http://127.0.0.1:{port}/docs" in text
    try_it = re.search(r"curl -H 'Authorization: Bearer (gd_[\w-]+)' '(http://[^']+)'", text)
    assert try_it, text
    answer = _get_when_up(try_it[2], {"Authorization": f"Bearer {try_it[1]}"})
    assert answer.status_code == 200, answer.text
    assert "items" in answer.json()

    status = subprocess.run(
        [*CLI, "stack", "status"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stderr.count("running at") == 2, status.stderr

    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, text + rest
    assert "stopped kafka, postgres" in rest
    assert f"revoked {try_it[1].split('_')[1]}" in rest  # the demo's key dies with the run
    assert _processes_under(home) == []


def test_stack_up_and_down_in_the_background(cli_env: tuple[dict[str, str], Path]) -> None:
    env, home = cli_env
    up = subprocess.run(
        [*CLI, "stack", "up"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert "created topics: cases.intake, cases.lifecycle" in up.stderr
    assert len(_processes_under(home)) >= 2
    down = subprocess.run(
        [*CLI, "stack", "down"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "stopped: kafka, postgres" in down.stderr
    assert _processes_under(home) == []
