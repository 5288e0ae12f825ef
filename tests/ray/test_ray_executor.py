"""The Ray executor on a local Ray runtime: identical tables to the local executor, retries."""

from __future__ import annotations

import os

import pytest

from engine.execution.local import LocalExecutor  # noqa: E402
from engine.execution.shuffle import AREA
from replay import api  # noqa: E402
from tests.lakes import assert_same_tables, make_lake, staged_orphans  # noqa: E402

pytestmark = pytest.mark.ray



@pytest.mark.parametrize("ruleset", ["2026-01", "2026-02"])
def test_ray_and_local_produce_identical_tables(tmp_path, history_parts, ray_ex, ruleset):
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    api.run(local, ruleset, executor=LocalExecutor())
    res = api.run(dist, ruleset, executor=ray_ex, shards=3)
    assert res.plan.map_tasks == 3 and res.plan.buckets == 3 and res.conservation_ok
    assert no_shuffle_left(dist)
    assert_same_tables(local, dist)
    # gold-only replays agree too
    api.run(local, "2026-01" if ruleset == "2026-02" else "2026-02", executor=LocalExecutor())
    api.run(dist, "2026-01" if ruleset == "2026-02" else "2026-02", executor=ray_ex, shards=5)
    assert_same_tables(local, dist)


def no_shuffle_left(lake) -> bool:
    """The run removed its shuffle area (the files its map tasks wrote, dead attempts' too)."""
    root = os.path.join(lake.root, AREA)
    return not os.path.exists(root) or os.listdir(root) == []


@pytest.mark.parametrize("stage", ["map", "shuffle", "reduce"])
def test_worker_killed_mid_task_is_retried_without_double_counting(tmp_path, history_parts, ray_ex,
                                                                   monkeypatch, stage):
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    api.run(local, "2026-02", executor=LocalExecutor())
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("MEDALLION_FAULT_KILL_ONCE", f"{stage}:{marker}")
    res = api.run(dist, "2026-02", executor=ray_ex, shards=2)
    assert marker.exists(), "the fault was never injected"
    assert res.conservation_ok and no_shuffle_left(dist)
    assert_same_tables(local, dist)
    assert staged_orphans(dist, res.plan.replay_id) == []  # the killed attempt's files are swept


@pytest.mark.slow
def test_shards_over_their_memory_budget_fold_in_chunks_on_ray(tmp_path, history_parts, ray_ex):
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    for rs in ("2026-01", "2026-02"):
        api.run(local, rs, executor=LocalExecutor(), mode="full")
        res = api.run(dist, rs, executor=ray_ex, shards=2, task_memory="1MiB", mode="full")
        assert res.plan.chunks_per_shard > 1 and res.chunks > 2 * 2, res.chunks
        assert res.conservation_ok
        assert_same_tables(local, dist)


def test_a_run_with_no_map_task_is_exact_on_ray(tmp_path, history_parts, ray_ex):
    """A scope no row group can match plans no map task: the reduce tasks run on nothing
    (no shuffle area at all) and the tables are those of the local executor."""
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    for lake, ex in ((local, LocalExecutor()), (dist, ray_ex)):
        api.run(lake, "2026-01", executor=ex)
    scope = {"tenants": ["aaa-no-such-tenant"]}  # below every tenant id: every row group pruned
    assert api.plan(dist, "free-100", executor=ray_ex, **scope).map_tasks == 0
    for lake, ex in ((local, LocalExecutor()), (dist, ray_ex)):
        res = api.run(lake, "free-100", executor=ex, reason="nothing in scope", **scope)
        assert res.conservation_ok is not False
    assert no_shuffle_left(dist)
    assert_same_tables(local, dist)
