"""The local executor's thread pool: any number of workers gives the same tables."""

from __future__ import annotations

import pytest

from engine.execution.local import LocalExecutor
from engine.ingest.generator import GeneratorConfig, generate
from replay import api
from tests.lakes import assert_same_tables, make_lake


def test_threads_and_a_single_worker_produce_identical_tables(tmp_path):
    t = generate(GeneratorConfig(events=30_000, tenants=30, days=0.5, seed=4))
    n = t.num_rows
    parts = [t.slice(0, n // 3), t.slice(n // 3, n // 3), t.slice(2 * (n // 3))]  # 3 files
    one, three = make_lake(tmp_path / "one", parts), make_lake(tmp_path / "three", parts)
    seen = []
    for rs in ("2026-01", "2026-02"):
        seen.clear()
        a = api.run(one, rs, executor=LocalExecutor(1), shards=5)
        b = api.run(three, rs, executor=LocalExecutor(3), shards=5,
                    progress=lambda stage, done, total: seen.append((stage, done, total)))
        assert a.conservation_ok and b.conservation_ok and b.plan.map_tasks >= 3
        assert_same_tables(one, three)
    assert [d for _, d, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][1] == seen[-1][2]


@pytest.mark.slow
def test_map_outputs_over_the_budget_are_spilled_and_read_back(tmp_path):
    t = generate(GeneratorConfig(events=30_000, tenants=30, days=0.5, seed=6))
    n = t.num_rows
    parts = [t.slice(0, n // 3), t.slice(n // 3, n // 3), t.slice(2 * (n // 3))]
    whole, spilled = make_lake(tmp_path / "whole", parts), make_lake(tmp_path / "spilled", parts)
    api.run(whole, "2026-02", executor=LocalExecutor(2))
    ex = LocalExecutor(2)
    res = api.run(spilled, "2026-02", executor=ex, task_memory="1MiB")
    assert ex.spilled_bytes > 0 and res.chunks > res.plan.buckets and res.conservation_ok
    assert_same_tables(whole, spilled)
