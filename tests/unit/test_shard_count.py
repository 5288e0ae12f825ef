"""How a replay is cut into tenant shards: by CPUs, and by memory for big histories."""

from __future__ import annotations

from engine.batch.plan import SHARD_ROW_BYTES, shard_count
from engine.config import GiB, MiB


def test_small_replays_get_twice_the_cpus():
    assert shard_count(10_000, 2, 2 * GiB) == 4
    assert shard_count(10_000, 8, 2 * GiB) == 16
    assert shard_count(10_000, 1, 2 * GiB) == 1


def test_big_replays_get_shards_that_fit_the_task_memory_in_whole_waves():
    n = shard_count(5_000_000, 2, 2 * GiB)
    assert n == 8 and 5_000_000 / n * SHARD_ROW_BYTES <= 2 * GiB
    n = shard_count(20_000_000, 2, 2 * GiB)
    assert n % 2 == 0 and 20_000_000 / n * SHARD_ROW_BYTES <= 2 * GiB
    assert shard_count(20_000_000, 3, 2 * GiB) % 3 == 0


def test_a_smaller_task_memory_gives_more_shards():
    assert shard_count(5_000_000, 2, 512 * MiB) > shard_count(5_000_000, 2, 2 * GiB)
    assert shard_count(5_000_000, 1, 512 * MiB) == -(-5_000_000 * SHARD_ROW_BYTES // (512 * MiB))
