"""Whatever an operator's tool sends to the escalation's HTTP API (emergency mode),
it never answers 5xx: schemathesis against its own OpenAPI document."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from shared.localstack import LocalStack, free_port
from tests.helpers.fuzz import fuzz
from tests.helpers.services import fresh_database, running_service


def test_no_generated_input_makes_the_escalation_fail(stack: LocalStack, tmp_path: Path) -> None:
    token = "fuzz-" + uuid.uuid4().hex
    port = free_port()
    env = {
        **stack.env(),
        "GRIDDISPATCH_DATABASE_URL": asyncio.run(fresh_database(stack.postgres.url, "fuzz")),
        "GRIDDISPATCH_ESCALATION__PORT": str(port),
        "GRIDDISPATCH_ESCALATION__ADMIN_TOKEN": token,
    }
    url = f"http://127.0.0.1:{port}"
    with running_service("escalation", env, ready_url=f"{url}/health/ready", log=tmp_path / "log"):
        run = fuzz(url, {"Authorization": f"Bearer {token}"})
        # text the database cannot store (a NUL character) is the caller's error
        nul = httpx.post(
            f"{url}/v1/emergency",
            json={"area": "longsha\x00", "on": True, "factor": 0.5, "reason": "暴雪"},
            headers={"Authorization": f"Bearer {token}"},
        )
    run.check(min_operations=2, ok={200, 202})
    assert nul.status_code == 422, nul.text
