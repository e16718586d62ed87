"""Topic names of the Kafka contract (see docs/architecture.md)."""

from __future__ import annotations

import re

CASES_INTAKE = "cases.intake"
CASES_LIFECYCLE = "cases.lifecycle"
CONTRACT_TOPICS: tuple[str, ...] = (CASES_INTAKE, CASES_LIFECYCLE)
DLQ_SUFFIX = ".dlq"
# The department directory (shared/directory.py): keyed by department code, compacted, one
# partition (a few dozen records, read whole by every reader).
DEPARTMENTS = "directory.departments"
DIRECTORY_CONFIG: dict[str, str] = {"cleanup.policy": "compact"}

# A department feed keeps what the contract topics keep (deploy/k8s/base/kafka/topics.yaml), so a
# department's system that was down for a week still finds everything when it is back.
FEED_CONFIG: dict[str, str] = {"retention.ms": str(14 * 24 * 3600 * 1000)}

_DEPT_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def dlq(topic: str) -> str:
    """The dead-letter topic of `topic`."""
    return topic + DLQ_SUFFIX


def dead_letter_topics() -> list[str]:
    """Every DLQ of the contract: `cases.intake.dlq`, `cases.lifecycle.dlq`."""
    return [dlq(t) for t in CONTRACT_TOPICS]


def department_feed(code: str) -> str:
    """The feed topic of one department, `dept.<code>`; codes are lower-case slugs."""
    if not _DEPT_CODE.match(code):
        raise ValueError(f"not a department code: {code!r}")
    return f"dept.{code}"


def case_topics() -> list[str]:
    """The topics keyed by case id, and their dead-letter topics: all with the configured
    partition count."""
    return [*CONTRACT_TOPICS, *dead_letter_topics()]


def all_contract_topics() -> list[str]:
    """Every topic the local stack and the Kubernetes manifests must create up front."""
    return [*case_topics(), DEPARTMENTS]
