"""A real Prometheus (Debian's build) scraping services on loopback, with the alert rules of
deploy/prometheus loaded, for the end-to-end test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from shared.localstack import free_port
from shared.localstack import prometheus as local_prometheus
from tests.helpers import ops_tools


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; raises on a PromQL error."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()[
            "data"
        ]["activeTargets"]
        return active

    def rules(self) -> list[dict[str, Any]]:
        groups = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        return [rule for g in groups for rule in g["rules"]]


@contextmanager
def running_prometheus(targets: dict[str, int], home: Path) -> Iterator[Prometheus]:
    """Prometheus scraping `job name → port` every second (`/metrics/` on 127.0.0.1)."""
    local_prometheus.write_config(home, targets, interval="1s")
    port = free_port()
    log = open(home / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        local_prometheus.command(ops_tools.prometheus().parent, home, port),
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited; see {home / 'prometheus.log'}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus not ready")
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
