"""Whatever an operator's tool sends to the notifier's HTTP API (subscriptions, feeds,
deliveries), it never answers 5xx: schemathesis against its own OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from shared.localstack import LocalStack, free_port
from tests.helpers.fuzz import fuzz
from tests.helpers.services import fresh_database, running_service


def test_no_generated_input_makes_the_notifier_fail(stack: LocalStack, tmp_path: Path) -> None:
    token = "fuzz-" + uuid.uuid4().hex
    port = free_port()
    env = {
        **stack.env(),
        "GRIDDISPATCH_DATABASE_URL": asyncio.run(fresh_database(stack.postgres.url, "fuzz")),
        "GRIDDISPATCH_NOTIFIER__PORT": str(port),
        "GRIDDISPATCH_NOTIFIER__ADMIN_TOKEN": token,
    }
    url = f"http://127.0.0.1:{port}"
    with running_service("notifier", env, ready_url=f"{url}/health/ready", log=tmp_path / "log"):
        # the live stream never ends by itself: its own tests cover it
        run = fuzz(url, {"Authorization": f"Bearer {token}"}, skip_paths=frozenset({"/v1/stream"}))
        # text the database cannot store (a NUL character) is the caller's error
        nul = httpx.post(
            f"{url}/v1/subscriptions",
            json={
                "owner_kind": "department",
                "owner": "a\x00",
                "channel": "email",
                "address": "desk@example.cn",
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    run.check(min_operations=5, ok={200, 201, 204})
    assert nul.status_code == 422, nul.text
    assert "NUL" in nul.json()["detail"]
