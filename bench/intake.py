"""Intake's durable path (HTTP → PostgreSQL case + outbox, 202) against a bare endpoint.

    .venv/bin/python bench/intake.py [--workers 2] [--seconds 15] [--rounds 3]

Both servers run uvicorn with the same number of worker processes on this machine; the load
comes from `hey` (Go), a separate process. Figures: accepted reports/s at saturation for each,
in alternating rounds, each round's ratio and their median, and p50/p95/p99 latency of the
durable path at a fixed 1,000 reports/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from bench._tools import LoadResult, bench_stack, cpu_seconds, run_hey
from services.intake import store
from services.intake.auth import Role
from shared.localstack import free_port
from shared.settings import PROJECT_ROOT

BODY = {
    "category": "heating.outage",
    "description": "暖气不热，室温只有12度，家里有老人",
    "location": {"lat": 47.3543, "lon": 123.9182, "address": "龙沙区 中华路 12号"},
    "channel": "app",
    "reporter": {"name": "王阿姨", "phone": "13912345678", "consent_to_notify": True},
    "attributes": {"whole_building": "yes"},
}


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code in (200, 405):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never came up")


def show(name: str, r: LoadResult) -> None:
    print(
        f"{name:34} {r.rps:>8,.0f} req/s   p50 {r.p50_ms:6.1f} ms   p95 {r.p95_ms:6.1f} ms"
        f"   p99 {r.p99_ms:6.1f} ms   statuses {r.statuses}"
    )


def show_cpu(before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    """Where the two cores went during a run (200% = both)."""
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    print(
        f"{'':34} CPU: "
        + ", ".join(
            f"{k} {v / seconds:.0%}" for k, v in sorted(used.items(), key=lambda x: -x[1]) if v > 0
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=3, help="bare and durable runs, alternating, each"
    )
    args = parser.parse_args()
    body_file = Path(tempfile.mkstemp(suffix=".json")[1])
    body_file.write_text(json.dumps(BODY, ensure_ascii=False))
    with bench_stack() as stack:
        port, bare_port = free_port(), free_port()
        env = {
            **os.environ,
            **stack.env(),
            "GRIDDISPATCH_INTAKE__PORT": str(port),
            "GRIDDISPATCH_INTAKE__WORKERS": str(args.workers),
            "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_KEY": "1000000/second",
            "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_ADDRESS": "1000000/second",
            "GRIDDISPATCH_LOG_LEVEL": "WARNING",
        }
        intake = subprocess.Popen(
            [sys.executable, "-m", "shared.cli.main", "serve", "intake"], env=env, cwd=PROJECT_ROOT
        )
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.bare_intake:app",
                "--port",
                str(bare_port),
                "--workers",
                str(args.workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=PROJECT_ROOT,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/health/ready", intake)
            wait_ready(f"http://127.0.0.1:{bare_port}/v1/cases", bare)

            async def make_key() -> str:
                conn = await asyncpg.connect(stack.postgres.url)
                try:
                    return (await store.create_key(conn, "bench", Role.RESIDENT_APP, None)).token
                finally:
                    await conn.close()

            token = asyncio.run(make_key())
            headers = {"Authorization": f"Bearer {token}"}
            durable_url = f"http://127.0.0.1:{port}/v1/cases"
            bare_url = f"http://127.0.0.1:{bare_port}/v1/cases"
            # warm-up: connections, pools, caches
            run_hey(durable_url, body_file, seconds=3, concurrency=16, headers=headers)
            run_hey(bare_url, body_file, seconds=3, concurrency=16, headers=headers)

            print(
                f"uvicorn workers per server: {args.workers}; load: hey, "
                f"{args.concurrency} connections, {args.seconds}s per run; 2 cores shared"
            )
            owners = {intake.pid: "intake", bare.pid: "bare server"}
            # Alternating rounds: this machine's speed drifts by up to a third within minutes,
            # so one bare run and one durable run can land on different sides of a drift.
            ratios: list[float] = []
            for round_ in range(1, args.rounds + 1):
                rates: list[float] = []
                for name, url in (
                    ("bare (validate, 202)", bare_url),
                    ("durable (PostgreSQL)", durable_url),
                ):
                    before = cpu_seconds(owners)
                    r = run_hey(
                        url,
                        body_file,
                        seconds=args.seconds,
                        concurrency=args.concurrency,
                        headers=headers,
                    )
                    show(f"round {round_}: {name}", r)
                    show_cpu(before, cpu_seconds(owners), args.seconds)
                    rates.append(r.rps)
                ratios.append(rates[1] / rates[0])
                print(f"{f'round {round_}: ratio durable / bare':34} {ratios[-1]:>8.2f}")
            print(
                f"{'ratio durable / bare, median':34} {statistics.median(ratios):>8.2f}"
                f"   (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
            fixed = run_hey(
                durable_url,
                body_file,
                seconds=args.seconds,
                concurrency=50,
                headers=headers,
                qps_per_worker=20,
            )
            show("durable path at 1,000 reports/s", fixed)

            async def count() -> tuple[int, int]:
                conn = await asyncpg.connect(stack.postgres.url)
                try:
                    for _ in range(600):  # let the relay drain what was accepted
                        if await conn.fetchval("SELECT count(*) FROM intake.outbox") == 0:
                            break
                        await asyncio.sleep(0.1)
                    cases = await conn.fetchval("SELECT count(*) FROM intake.cases")
                    left = await conn.fetchval("SELECT count(*) FROM intake.outbox")
                    return int(cases), int(left)
                finally:
                    await conn.close()

            cases, left = asyncio.run(count())
            print(f"cases stored {cases:,}; outbox rows still waiting for Kafka: {left}")
        finally:
            for proc in (intake, bare):
                proc.terminate()
                proc.wait(30)
            body_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
