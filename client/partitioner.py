"""Choosing a partition for a record: key hash for keyed records, sticky for keyless ones.

Keyed records: Kafka's murmur2 (the Java client's `Utils.murmur2`, seed 0x9747b28c) of the key
bytes, made positive with `& 0x7fffffff`, modulo the partition count. It is a fixed, documented
function of the bytes, never Python's `hash()` (salted per process by PYTHONHASHSEED), so a key
maps to the same partition in every process, every version of this client, and in Java Kafka
clients given the same partition count. Its pure-Python cost (~1 us for short keys) is paid once
per distinct key thanks to a bounded cache (`KEY_HASH_CACHE_SIZE`).

Keyless records: the sticky partitioner (KIP-480). All keyless records of a topic go to one
partition until the batch there is sealed; then the producer moves to the next partition. This
fills big batches instead of spreading tiny ones over every partition.
"""

from __future__ import annotations

import functools
import random

# Distinct keys whose hash is remembered; bounded so a stream of unique keys cannot grow memory.
KEY_HASH_CACHE_SIZE = 65_536

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` as a signed 32-bit int (equal to Java's `Utils.murmur2`)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@functools.lru_cache(maxsize=KEY_HASH_CACHE_SIZE)
def _positive_hash(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition of a keyed record: `toPositive(murmur2(key)) % partition_count` (Kafka's)."""
    return _positive_hash(key) % partition_count


class StickyPartitioner:
    """Per-topic sticky choice for keyless records.

    `partition(topic, count)` returns the current sticky partition; `next_batch(topic, sealed)`
    is called by the accumulator when the batch of `sealed` fills up, and moves the topic on to
    another partition. The start is random so that many producers do not all begin on partition 0.
    Not thread-safe by itself: the accumulator calls it under its lock.
    """

    __slots__ = ("_random", "current")

    def __init__(self, rng: random.Random | None = None) -> None:
        # Read directly by the accumulator's hot path (a dict lookup instead of a method call).
        self.current: dict[str, int] = {}
        self._random = rng if rng is not None else random.Random()

    def partition(self, topic: str, partition_count: int) -> int:
        current = self.current.get(topic)
        if current is None or current >= partition_count:
            current = self._random.randrange(partition_count)
            self.current[topic] = current
        return current

    def next_batch(self, topic: str, sealed_partition: int, partition_count: int) -> None:
        # Only move on if the sealed batch was the sticky one: a keyed or explicit-partition batch
        # filling up elsewhere must not disturb where keyless records are going.
        if self.current.get(topic) == sealed_partition and partition_count > 1:
            self.current[topic] = (sealed_partition + 1) % partition_count
