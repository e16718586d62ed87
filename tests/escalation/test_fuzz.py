"""Whatever an operator's tool sends to escalation's HTTP API (emergency mode), it never
answers 5xx: schemathesis against its own OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.localstack import LocalStack
from tests.helpers.fuzz import fuzz, operator_api


def test_no_generated_input_makes_escalation_fail(stack: LocalStack, tmp_path: Path) -> None:
    with operator_api(stack, "escalation", tmp_path / "escalation.log") as (url, headers):
        run = fuzz(url, headers)
        # text the database cannot store (a NUL character) is the caller's error
        nul = httpx.post(
            f"{url}/v1/emergency",
            json={"area": "longsha\x00", "on": True, "factor": 0.5, "reason": "暴雪"},
            headers=headers,
        )
    run.check(min_operations=2, ok={200, 202})
    assert nul.status_code == 422, nul.text
