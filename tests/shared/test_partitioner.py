"""Our producers' partitioner puts every key where the Java client and aiokafka put it."""

from __future__ import annotations

import uuid

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from shared.kafka import key_partitioner, make_broker, make_producer
from shared.settings import KafkaSettings


@given(key=st.binary(max_size=80), partitions=st.integers(min_value=1, max_value=64))
def test_any_key_lands_where_aiokafkas_default_partitioner_puts_it(
    key: bytes, partitions: int
) -> None:
    every = list(range(partitions))
    assert key_partitioner(key, every, every) == DefaultPartitioner()(key, every, every)


def test_case_ids_spread_over_partitions_as_aiokafka_spreads_them() -> None:
    every = list(range(12))
    keys = [str(uuid.uuid4()).encode() for _ in range(2_000)]
    ours = [key_partitioner(k, every, every) for k in keys]
    assert ours == [DefaultPartitioner()(k, every, every) for k in keys]
    assert set(ours) == set(every)


def test_a_message_without_key_goes_to_an_available_partition() -> None:
    assert {key_partitioner(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {key_partitioner(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}


async def test_producers_and_brokers_use_it() -> None:
    settings = KafkaSettings()
    assert make_producer(settings, "t")._partitioner is key_partitioner
    # what FastStream builds its producer with when the broker connects
    assert make_broker(settings, "t")._connection_kwargs["partitioner"] is key_partitioner
