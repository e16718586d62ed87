"""Department feed topics are created with the cluster's replication factor, and keep 14 days
like the contract's topics."""

from __future__ import annotations

from typing import Any

import pytest

from services.notifier import feeds


async def test_feed_topics_get_the_configured_partitions_and_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[tuple[list[str], dict[str, Any]]] = []

    async def ensure_topics(_: Any, names: list[str], **kw: Any) -> list[str]:
        created.append((names, kw))
        return names

    monkeypatch.setattr(feeds, "ensure_topics", ensure_topics)
    writer = feeds.FeedWriter(None, None, "kafka:9092", 6, None, replication_factor=3)
    assert await writer._topic("heating") == "dept.heating"
    assert await writer._topic("heating") == "dept.heating"  # once per topic
    assert created == [
        (
            ["dept.heating"],
            {"partitions": 6, "replication_factor": 3, "configs": {"retention.ms": "1209600000"}},
        )
    ]
