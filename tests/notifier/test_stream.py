"""The live stream (server-sent events) of a running notifier, with credentials."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid

import httpx
from aiokafka import AIOKafkaProducer

from shared import topics
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT
from tests.helpers.cli import run_cli
from tests.notifier.test_service import routed


def cli(stack: LocalStack, *args: str) -> str:
    out = run_cli(stack, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def test_a_department_streams_its_own_cases(stack: LocalStack, tmp_path) -> None:
    dept = "sse-" + uuid.uuid4().hex[:6]
    token = cli(stack, "subscriptions", "stream-token", "--department", dept, "--name", "console")
    port = free_port()
    env = {
        **os.environ,
        **stack.env(),
        "GRIDDISPATCH_NOTIFIER__PORT": str(port),
        "GRIDDISPATCH_NOTIFIER__STREAM_RECHECK_S": "1",
    }
    log = open(tmp_path / "notifier.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "notifier"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            other = await client.get(
                "/v1/stream",
                params={"department": "heating"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert other.status_code == 403  # a token opens its own department only
            assert (await client.get("/v1/stream", params={"department": dept})).status_code == 403
            mine, theirs = routed(dept), routed("heating")
            received: list[str] = []

            async def listen(into: list[str], *, until_data: bool) -> None:
                """Read the department's stream into `into`: until its first event, or to
                its end."""
                async with client.stream(
                    "GET",
                    "/v1/stream",
                    params={"department": dept},
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("text/event-stream")
                    async for line in r.aiter_lines():
                        into.append(line)
                        if until_data and line.startswith("data:"):
                            return

            listener = asyncio.create_task(listen(received, until_data=True))
            await asyncio.sleep(2)  # connected, reading from "now"
            producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
            await producer.start()
            for e in (theirs, mine):
                await producer.send_and_wait(
                    topics.CASES_LIFECYCLE, e.to_json(), key=e.case_id.encode()
                )
            await producer.stop()
            await asyncio.wait_for(listener, 30)

            # revoking the token ends the streams it opened, and opens no new one
            ended: list[str] = []
            streaming = asyncio.create_task(listen(ended, until_data=False))
            await asyncio.sleep(1.5)
            assert not streaming.done()  # still allowed, still open
            await asyncio.to_thread(
                cli,
                stack,
                "subscriptions",
                "revoke-stream-token",
                "--department",
                dept,
                "--name",
                "console",
            )
            await asyncio.wait_for(streaming, 15)
            again = await client.get(
                "/v1/stream",
                params={"department": dept},
                headers={"Authorization": f"Bearer {token}"},
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        log.close()
    assert "event: CaseRouted" in received
    data = next(line for line in received if line.startswith("data:"))
    assert mine.case_id in data
    assert theirs.case_id not in "".join(received)
    assert "event: revoked" in ended
    assert again.status_code == 403
    listed = cli(stack, "subscriptions", "stream-tokens")
    assert any(dept in line and "revoked" in line for line in listed.splitlines())
    assert token not in listed
