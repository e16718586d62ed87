"""Whatever an operator's tool sends to the router's HTTP API (explain, triage), it never
answers 5xx: schemathesis against its own OpenAPI document."""

from __future__ import annotations

from tests.helpers.fuzz import fuzz
from tests.router.conftest import ADMIN_TOKEN


def test_no_generated_input_makes_the_router_fail(router_url: str) -> None:
    run = fuzz(router_url, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    run.check(min_operations=3, ok={200, 202})
