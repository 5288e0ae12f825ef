"""Errors and in-process rules on the Ray executor: a task's ReplayError reaches the caller as
itself, a worker dead on every attempt says so, rules registered in the driver run in tasks."""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

from engine.contract import schemas
from engine.contract.errors import LakeError, RegistryError, RuleError, ShardError, TaskError
from engine.execution.local import LocalExecutor
from engine.execution.ray_executor import MAX_RETRIES, ship_rules
from engine.execution.shuffle import AREA
from engine.execution.specs import MapSpec, ReduceSpec
from replay import api
from rules import abuse_v2, dedup_v2, plan_limits_v2, validate_v1
from rules.registry import default_registry
from rules.ruleset import load_ruleset
from tests.lakes import FIXTURE, assert_same_tables, make_lake

pytestmark = pytest.mark.ray



@pytest.fixture
def loaded(lake):
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    return lake


class ModuleAbuse(abuse_v2.Abuse):
    """A plugin class at module level: cloudpickle would ship it by reference."""

    version = 9


def _relabel(dups: pa.Table) -> pa.Table:
    i = dups.schema.get_field_index("rule")
    return dups.set_column(i, "rule", pa.array(["dedup@9"] * dups.num_rows, pa.string()))


def test_a_lake_error_in_a_map_task_is_raised_as_itself(loaded, ray_ex):
    """A map task reading a Bronze version that does not exist: LakeError, not Ray's header."""
    rs = load_ruleset("2026-01")
    maps = [MapSpec(loaded.root, (), schemas.BRONZE, 999, (("part-0.parquet", (0,)),), "full", rs, 1)]
    reduces = [ReduceSpec(0, "full", rs)]
    with pytest.raises(LakeError) as local:
        LocalExecutor(1).run(maps, reduces)
    with pytest.raises(LakeError) as remote:
        ray_ex.run(maps, reduces)
    err = remote.value
    assert type(err) is LakeError and not isinstance(err, ray.exceptions.RayError)
    assert str(err) == str(local.value) and err.data == local.value.data == {"table": schemas.BRONZE}
    assert err.exit_code == 1 and err.retryable is False
    assert "retries" not in str(err) and "Ray" not in str(err)
    assert any("raised in a Ray task" in note for note in getattr(err, "__notes__", []))


def test_a_rule_error_in_a_task_reaches_the_api_as_itself(loaded, ray_ex):
    """A plugin (registered in this process only) that fails inside a reduce task."""

    class BrokenLimits(plan_limits_v2.PlanLimits):
        version = 9

        @staticmethod
        def apply(params, minutes):
            raise RuleError("plan_limits@9: the limits table is broken", rule="plan_limits", version=9)

    default_registry().register(BrokenLimits)
    rs = load_ruleset("2026-02").with_rule("plan_limits", 9)
    with pytest.raises(RuleError) as info:
        api.run(loaded, rs, executor=ray_ex, reason="broken plugin")
    err = info.value
    assert type(err) is RuleError
    assert str(err) == "plan_limits@9: the limits table is broken"
    assert err.data == {"rule": "plan_limits", "version": 9}
    assert err.exit_code == 1 and err.retryable is False
    (row,) = [r for r in api.history(loaded) if r["kind"] == "replay"]
    assert row["status"] == "failed" and "RuleError: plan_limits@9" in row["details"]


def test_rules_registered_in_process_run_on_ray_as_they_do_locally(tmp_path, history_parts, ray_ex):
    class LabelledDedup(dedup_v2.Dedup):
        """dedup@2 whose duplicates say dedup@9: proof that the tasks ran this class."""

        version = 9

        @staticmethod
        def apply(params, valid):
            silver, dups = dedup_v2.Dedup.apply(params, valid)
            return silver, _relabel(dups)

        @staticmethod
        def apply_chunk(params, valid, prior, until):
            silver, dups, state = dedup_v2.Dedup.apply_chunk(params, valid, prior, until)
            return silver, _relabel(dups), state

    default_registry().register(LabelledDedup)
    default_registry().register(ModuleAbuse)
    rs = load_ruleset("2026-02").with_rule("dedup", 9).with_rule("abuse", 9)
    shipped = ship_rules([rs])
    assert shipped is not None and ship_rules([load_ruleset("2026-02")]) is None
    local = make_lake(tmp_path / "local", history_parts)
    dist = make_lake(tmp_path / "ray", history_parts)
    api.run(local, rs, executor=LocalExecutor())
    res = api.run(dist, rs, executor=ray_ex, shards=3)
    assert res.conservation_ok
    assert_same_tables(local, dist)
    rules = dist.read(schemas.DUPLICATES).column("rule")
    assert len(rules) > 0 and pc.all(pc.equal(rules, "dedup@9")).as_py()


def test_a_rule_class_that_cannot_be_shipped_is_refused_before_any_task(loaded, ray_ex):
    class Unpicklable(abuse_v2.Abuse):
        version = 8
        guard = threading.Lock()  # no pickle for a lock

    default_registry().register(Unpicklable)
    rs = load_ruleset("2026-01").with_rule("abuse", 8)
    with pytest.raises(RegistryError, match=r"abuse@8 registered in this process cannot be shipped "
                                            r"to Ray workers .*entry point"):
        api.run(loaded, rs, executor=ray_ex)


def test_a_worker_dead_on_every_attempt_fails_with_a_shard_error_that_counts_them(loaded, ray_ex):
    class Crashing(validate_v1.Validate):
        version = 9

        @staticmethod
        def apply(params, bronze, known_plans):
            os._exit(17)  # the worker process dies: Ray retries the task

    default_registry().register(Crashing)
    rs = load_ruleset("2026-01").with_rule("validate", 9)
    with pytest.raises(ShardError) as info:
        api.run(loaded, rs, executor=ray_ex)
    msg = str(info.value)
    assert f"died on all {MAX_RETRIES + 1} attempts ({MAX_RETRIES} retries)" in msg, msg
    assert info.value.data["attempts"] == MAX_RETRIES + 1 and info.value.retryable


def test_a_bug_in_a_task_is_a_task_error_that_is_not_retryable(loaded, ray_ex):
    class Buggy(validate_v1.Validate):
        version = 11

        @staticmethod
        def apply(params, bronze, known_plans):
            raise ZeroDivisionError("a bug in a plugin")

    default_registry().register(Buggy)
    rs = load_ruleset("2026-01").with_rule("validate", 11)
    with pytest.raises(TaskError, match="ZeroDivisionError: a bug in a plugin") as info:
        api.run(loaded, rs, executor=ray_ex)
    assert not info.value.retryable and info.value.exit_code == 1
    assert "retries" not in str(info.value)


def test_a_failed_run_cancels_the_tasks_still_running_and_removes_its_shuffle(tmp_path, history_parts,
                                                                                ray_ex):
    """One map task fails while a sibling still works: the driver cancels the sibling (Ray
    would let it run on, and it would write its pieces after the area is gone), then removes
    the run's shuffle area."""
    lake = make_lake(tmp_path / "lake", history_parts)  # 3 files: 3 map tasks on 2 CPUs
    first, survived = tmp_path / "first", tmp_path / "survived"

    class FailFirst(validate_v1.Validate):
        version = 12

        @staticmethod
        def apply(params, bronze, known_plans):
            try:  # the first task to get here fails at once; the others work slowly
                os.close(os.open(first, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                time.sleep(4)
                survived.touch()
                return validate_v1.Validate.apply(params, bronze, known_plans)
            raise RuleError("validate@12: the first task fails", rule="validate", version=12)

    default_registry().register(FailFirst)
    rs = load_ruleset("2026-01").with_rule("validate", 12)
    with pytest.raises(RuleError, match="the first task fails"):
        api.run(lake, rs, executor=ray_ex, shards=2)
    time.sleep(6)  # past the siblings' work, had they not been cancelled
    assert first.exists() and not survived.exists()
    shuffle = os.path.join(lake.root, AREA)
    assert not os.path.exists(shuffle) or os.listdir(shuffle) == []
    (row,) = [r for r in api.history(lake) if r["kind"] == "replay"]
    assert row["status"] == "failed"
