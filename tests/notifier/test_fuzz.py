"""Whatever an operator's tool sends to the notifier's HTTP API (subscriptions, feeds,
deliveries), it never answers 5xx: schemathesis against its own OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.localstack import LocalStack
from tests.helpers.fuzz import fuzz, operator_api


def test_no_generated_input_makes_the_notifier_fail(stack: LocalStack, tmp_path: Path) -> None:
    with operator_api(stack, "notifier", tmp_path / "notifier.log") as (url, headers):
        # the live stream never ends by itself: its own tests cover it
        run = fuzz(url, headers, skip_paths=frozenset({"/v1/stream"}))
        # text the database cannot store (a NUL character) is the caller's error
        nul = httpx.post(
            f"{url}/v1/subscriptions",
            json={
                "owner_kind": "department",
                "owner": "a\x00",
                "channel": "email",
                "address": "desk@example.cn",
            },
            headers=headers,
        )
    run.check(min_operations=5, ok={200, 201, 204})
    assert nul.status_code == 422, nul.text
    assert "NUL" in nul.json()["detail"]
