"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis):
whatever the generated input, a running intake never answers 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.intake.conftest import Keys, auth

EXAMPLES_PER_OPERATION = 30


def test_no_generated_input_makes_intake_fail(intake_url: str, keys: Keys) -> None:
    schema = schemathesis.openapi.from_url(f"{intake_url}/openapi.json")
    failures: list[str] = []
    statuses: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same examples on every run: CI is repeatable
            database=None,
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=intake_url, headers=auth(keys.operator), timeout=10)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                    f" -> {response.status_code}: {response.text[:200]}"
                )

        check()
    assert operations >= 10  # every route of the JSON API and Open311 was exercised
    assert len(statuses) >= operations * 5
    assert {200, 202} & set(statuses)  # valid inputs were generated too, not only rejections
    assert not failures, "\n".join(failures[:10])
