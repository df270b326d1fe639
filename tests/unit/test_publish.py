"""gateway/publish.py without a broker: the partition an ordering key maps to."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hookline.core.partitioner import key_hash, murmur2


@pytest.mark.parametrize("length", [*range(0, 70), 255, 256, 1000, 4099])
def test_murmur2_is_kafkas(length: int) -> None:
    rng = random.Random(length)
    for _ in range(30):
        data = rng.randbytes(length)
        assert murmur2(data) == aiokafka_murmur2(data)


def test_ordering_keys_land_where_kafkas_default_partitioner_puts_them() -> None:
    partitioner = DefaultPartitioner()
    for count in (1, 3, 8, 12):
        partitions = list(range(count))
        for key in (b"ord_1", b"tx-0001", "\u00e9t\u00e9-\U0001f600".encode(), b"\xff" * 33):
            expected = partitioner(key, partitions, partitions)
            assert partitions[(murmur2(key) & 0x7FFFFFFF) % count] == expected


def test_key_hash_is_the_partitioners() -> None:
    partitioner = DefaultPartitioner()
    partitions = list(range(12))
    rng = random.Random(3)
    keys = [rng.randbytes(rng.randrange(40)) for _ in range(200)]
    for key in keys:
        assert partitions[key_hash(key) % 12] == partitioner(key, partitions, partitions)
