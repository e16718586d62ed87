"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis):
whatever the generated input, a running intake never answers 5xx."""

from __future__ import annotations

from tests.helpers.fuzz import fuzz
from tests.intake.conftest import Keys, auth


def test_no_generated_input_makes_intake_fail(intake_url: str, keys: Keys) -> None:
    run = fuzz(intake_url, auth(keys.operator))
    run.check(min_operations=10, ok={200, 202})  # the JSON API and Open311
