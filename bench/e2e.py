"""The whole pipeline on the 2 cores: reports over HTTP → intake → router → notifier feed.

    .venv/bin/python bench/e2e.py [--seconds 20]

Starts Kafka, PostgreSQL and the four services (intake with 2 workers) with the small demo
city, then (1) offers reports as fast as `hey` can send them and counts routed cases arriving
on the department's feed per second; (2) offers 500 reports/s — and each of `--rates` — and
reports the dispatch latency (feed message received minus `reported_at`) p50/p95/p99. After
each phase it prints the CPU each part of the system used (where the two cores went).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench._tools import LoadResult, bench_stack, cpu_seconds, run_hey
from services.intake import store as intake_store
from services.intake.auth import Role
from services.intake.settings import MIGRATIONS as INTAKE_MIGRATIONS
from services.router import democity, store
from services.router.settings import MIGRATIONS as ROUTER_MIGRATIONS
from shared import topics
from shared.db import migrate
from shared.kafka import ensure_topics
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT


async def prepare(stack: LocalStack) -> str:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate(conn, "intake", INTAKE_MIGRATIONS)
        await migrate(conn, "router", ROUTER_MIGRATIONS)
        await store.load_city(conn, democity.generate(seed=3, scale="small"))
        return (await intake_store.create_key(conn, "bench", Role.RESIDENT_APP, None)).token
    finally:
        await conn.close()


async def analyze(stack: LocalStack) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        tables = await conn.fetchval(
            "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ') FROM pg_tables "
            "WHERE schemaname = ANY($1)",
            ["intake", "router", "escalation", "notifier"],
        )
        await conn.execute(f"ANALYZE {tables}")  # the services' tables, in one statement
    finally:
        await conn.close()


async def collect(
    stack: LocalStack, seconds: float, out: list[tuple[float, float]], hops: dict[str, list[float]]
) -> None:
    """(received, latency) for every routed case on the roads feed during `seconds`; and for
    those cases, the time spent in each hop, from the Kafka records' timestamps (set by each
    producer when it sends): reported → on cases.intake (intake's outbox relay), → CaseRouted
    on cases.lifecycle (router), → on the feed (notifier), → received here."""
    consumer = AIOKafkaConsumer(
        topics.department_feed("roads"),
        topics.CASES_INTAKE,
        topics.CASES_LIFECYCLE,
        bootstrap_servers=stack.kafka.bootstrap,
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen_intake: dict[str, float] = {}
    seen_routed: dict[str, float] = {}
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                now = datetime.now(UTC)
                for r in recs:
                    m = json.loads(r.value)
                    case_id = m.get("case_id", "")
                    if tp.topic == topics.CASES_INTAKE:
                        seen_intake[case_id] = r.timestamp / 1000
                    elif tp.topic == topics.CASES_LIFECYCLE:
                        if m["event_type"] == "CaseRouted":
                            seen_routed[case_id] = r.timestamp / 1000
                    elif m["event_type"] == "CaseRouted" and m.get("reported_at"):
                        reported = datetime.fromisoformat(m["reported_at"]).timestamp()
                        lat = now.timestamp() - reported
                        out.append((time.monotonic(), lat))
                        at_intake = seen_intake.pop(case_id, None)
                        at_routed = seen_routed.pop(case_id, None)
                        if at_intake is not None and at_routed is not None:
                            at_feed = r.timestamp / 1000
                            hops["intake relay"].append(at_intake - reported)
                            hops["router"].append(at_routed - at_intake)
                            hops["notifier"].append(at_feed - at_routed)
                            hops["feed → reader"].append(now.timestamp() - at_feed)
    finally:
        await consumer.stop()


SERVICES = ("intake", "router", "escalation", "notifier")


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * p))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--rates",
        type=int,
        nargs="*",
        default=[],
        help="further offered loads (reports/s, multiples of 10) to measure latency at",
    )
    args = parser.parse_args()
    with bench_stack() as stack:
        token = asyncio.run(prepare(stack))
        asyncio.run(
            ensure_topics(stack.kafka.bootstrap, [topics.department_feed("roads")], partitions=12)
        )
        port = free_port()
        ports = {"router": free_port(), "escalation": free_port(), "notifier": free_port()}
        env = {
            **os.environ,
            **stack.env(),
            "GRIDDISPATCH_LOG_LEVEL": "WARNING",
            "GRIDDISPATCH_INTAKE__PORT": str(port),
            "GRIDDISPATCH_INTAKE__WORKERS": "2",
            "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_KEY": "1000000/second",
            "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_ADDRESS": "1000000/second",
            "GRIDDISPATCH_ROUTER__PORT": str(ports["router"]),
            "GRIDDISPATCH_ESCALATION__PORT": str(ports["escalation"]),
            "GRIDDISPATCH_NOTIFIER__PORT": str(ports["notifier"]),
            "GRIDDISPATCH_METRICS_INTERVAL_S": "1",
        }
        ports["intake"] = port
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "serve", name], env=env, cwd=PROJECT_ROOT
            )
            for name in SERVICES
        ]
        owners = {p.pid: name for p, name in zip(procs, SERVICES, strict=True)}
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            time.sleep(5)  # consumer groups settle
            grid = next(
                g
                for g in democity.generate(seed=3, scale="small").grids
                if g["kind"] == "comprehensive"
            )
            lat, lon = democity.point_in(grid, 0.9, 0.9)
            body = Path(tempfile.mkstemp(suffix=".json")[1])
            body.write_text(
                json.dumps(
                    {
                        "category": "roads.pothole",
                        "description": "路面坑洼",
                        "location": {"lat": lat, "lon": lon},
                    }
                )
            )
            url = f"http://127.0.0.1:{port}/v1/cases"
            headers = {"Authorization": f"Bearer {token}"}
            # Warm-up: Kafka's JIT compiler alone took 3-6 CPU-s of the first phase otherwise
            # (a broker in service is warm); the services' pools and caches fill too.
            run_hey(url, body, seconds=20, concurrency=16, headers=headers)
            time.sleep(10)  # drained
            # A database in service has statistics; this one was empty a minute ago, and its
            # planner would go on scanning tables it thinks empty until autovacuum's first
            # analyze (it naps for a minute): measure the steady state, not that minute.
            asyncio.run(analyze(stack))
            idle_before = cpu_seconds(owners)
            time.sleep(10)
            idle = {k: v - idle_before.get(k, 0.0) for k, v in cpu_seconds(owners).items()}
            print(
                "idle (10 s, no reports) CPU seconds: "
                + ", ".join(f"{k} {v:.1f}" for k, v in sorted(idle.items(), key=lambda x: -x[1]))
            )

            phases: list[tuple[str, dict[str, Any]]] = [
                ("saturated", {"concurrency": 64}),
                ("500 reports/s", {"concurrency": 50, "qps_per_worker": 10}),
            ]
            for r in args.rates:
                # hey paces each connection: r/10 connections at 10 requests/s each
                phases.append((f"{r} reports/s", {"concurrency": r // 10, "qps_per_worker": 10}))
            for label, kwargs in phases:
                cpu_before = cpu_seconds(owners)
                got: list[tuple[float, float]] = []
                hops: dict[str, list[float]] = {
                    k: [] for k in ("intake relay", "router", "notifier", "feed → reader")
                }

                async def measure(
                    kw: dict[str, Any] = kwargs,
                    out: list[tuple[float, float]] = got,
                    hop: dict[str, list[float]] = hops,
                ) -> LoadResult:
                    listener = asyncio.create_task(collect(stack, args.seconds + 10, out, hop))
                    await asyncio.sleep(1)
                    result = await asyncio.to_thread(
                        run_hey, url, body, seconds=args.seconds, headers=headers, **kw
                    )
                    await listener
                    return result

                load = asyncio.run(measure())
                times = [t for t, _ in got]
                rate = len(got) / (max(times) - min(times)) if len(times) > 1 else 0.0
                lats = [x for _, x in got]
                print(
                    f"{label:14} offered {load.rps:7,.0f}/s accepted {load.statuses}  "
                    f"routed to the feed {rate:7,.0f}/s"
                )
                if lats:
                    print(
                        f"{'':14} dispatch latency p50 {pct(lats, 0.5):6.0f} ms  "
                        f"p95 {pct(lats, 0.95):6.0f} ms  p99 {pct(lats, 0.99):6.0f} ms "
                        f"({len(lats):,} cases)"
                    )
                if hops["router"]:
                    print(
                        f"{'':14} per hop p50/p99 ms: "
                        + ", ".join(
                            f"{k} {pct(v, 0.5):.0f}/{pct(v, 0.99):.0f}" for k, v in hops.items()
                        )
                    )
                print(f"{'':14} consumer lag at the end: {consumer_lag(ports)}")
                used = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(owners).items()}
                print(
                    f"{'':14} CPU seconds: "
                    + ", ".join(
                        f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda x: -x[1])
                    )
                )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)


def consumer_lag(ports: dict[str, int]) -> str:
    """Where the pipeline queues: each consumer group's lag, from the services' /metrics."""
    lags: dict[str, float] = {}
    for port in ports.values():
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics/", timeout=5).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith("griddispatch_consumer_lag{"):
                labels, value = line.rsplit(" ", 1)
                group = labels.split('group="', 1)[1].split('"', 1)[0]
                lags[group] = lags.get(group, 0.0) + float(value)
    return ", ".join(f"{g} {v:,.0f}" for g, v in sorted(lags.items())) or "(none reported)"


if __name__ == "__main__":
    main()
