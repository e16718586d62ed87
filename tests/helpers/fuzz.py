"""Property-based fuzzing of a running service's HTTP API from its own OpenAPI document
(schemathesis): whatever the generated input, the service never answers 5xx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err

from shared.localstack import LocalStack, free_port
from tests.helpers.services import fresh_database, running_service


@dataclass
class FuzzRun:
    operations: int = 0
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def check(self, *, min_operations: int, ok: set[int]) -> None:
        assert self.operations >= min_operations  # every route was exercised
        assert len(self.statuses) >= self.operations * 5
        assert ok & set(self.statuses)  # valid inputs were generated too, not only rejections
        assert not self.failures, "\n".join(self.failures[:10])


def fuzz(
    base_url: str,
    headers: dict[str, str],
    *,
    examples: int = 30,
    skip_paths: frozenset[str] = frozenset(),
) -> FuzzRun:
    """Every operation of `base_url/openapi.json`, `examples` generated cases each (the same
    ones on every run, so CI is repeatable), called with `headers`."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    run = FuzzRun()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # an operation the document describes badly is a failure too
        operation = result.ok()
        if operation.path in skip_paths:
            continue
        run.operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=10)
            run.statuses.append(response.status_code)
            if response.status_code >= 500:
                run.failures.append(
                    f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
                    f" -> {response.status_code}: {response.text[:200]}"
                )

        check()
    return run


@contextmanager
def operator_api(stack: LocalStack, name: str, log: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Service `name` running on a fresh database of the test stack, with an operator token:
    yields its URL and the headers that carry the token."""
    token = "fuzz-" + uuid.uuid4().hex
    port = free_port()
    prefix = f"GRIDDISPATCH_{name.upper()}__"
    env = {
        **stack.env(),
        "GRIDDISPATCH_DATABASE_URL": asyncio.run(fresh_database(stack.postgres.url, "fuzz")),
        f"{prefix}PORT": str(port),
        f"{prefix}ADMIN_TOKEN": token,
    }
    url = f"http://127.0.0.1:{port}"
    with running_service(name, env, ready_url=f"{url}/health/ready", log=log):
        yield url, {"Authorization": f"Bearer {token}"}
