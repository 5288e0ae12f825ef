"""One atomic, reversible replay: ledger, lease, recovery after a killed driver, rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.lease import LeaseHeldError, lease_for
from replay import api
from tests.lakes import FIXTURE, ROOT

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


def snapshot(lake):
    return {t: sorted(map(repr, lake.read(t).to_pylist())) for t in OUTPUTS if lake.exists(t)}


@pytest.fixture
def loaded(lake):
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    return lake


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_ledger_records_a_successful_replay(loaded):
    res = api.run(loaded, "2026-01", reason="initial load")
    (row,) = api.history(loaded)
    assert row["reprocessing_id"] == res.plan.replay_id and row["status"] == "success"
    assert row["kind"] == "replay" and row["reason"] == "initial load" and row["conservation_ok"]
    assert json.loads(row["versions_after"]) == res.versions
    assert set(json.loads(row["versions_before"])) == set(OUTPUTS)
    assert row["ruleset_after"] == res.plan.ruleset_fingerprint and row["bronze_version"] == 1
    assert row["record_count"] == 3841
    rng = api.sql(loaded, "SELECT min(window_start) AS lo, max(window_end) AS hi FROM tenant_usage_1min")
    lo, hi = rng.column("lo")[0].as_py(), rng.column("hi")[0].as_py()
    assert (row["affected_start"], row["affected_end"]) == (lo, hi)


def test_rollback_restores_every_table_and_is_audited(loaded):
    api.run(loaded, "2026-01", reason="a")
    after_a = snapshot(loaded)
    b = api.run(loaded, "2026-02", reason="b")
    assert snapshot(loaded) != after_a
    out = api.rollback(loaded, b.plan.replay_id, reason="undo b")
    assert snapshot(loaded) == after_a
    rows = {r["reprocessing_id"]: r for r in api.history(loaded)}
    assert rows[b.plan.replay_id]["status"] == "rolled_back"
    rb = rows[out["rollback_id"]]
    assert rb["kind"] == "rollback" and rb["status"] == "success" and rb["target_id"] == b.plan.replay_id
    # the restored tables carry 2026-01's fingerprints again: nothing to do for 2026-01
    assert api.plan(loaded, "2026-01").up_to_date


def test_rollback_refuses_when_a_later_replay_changed_the_tables(loaded):
    a = api.run(loaded, "2026-01", reason="a")
    api.run(loaded, "2026-02", reason="b")
    with pytest.raises(UsageError, match="changed since"):
        api.rollback(loaded, a.plan.replay_id, reason="too late")
    with pytest.raises(UsageError, match="no operation"):
        api.rollback(loaded, "r20990101T000000-deadbeef", reason="x")


@pytest.mark.parametrize("commits,expect", [(2, "failed"), (6, "success")])
def test_driver_killed_mid_replay_is_recovered_consistently(loaded, commits, expect):
    api.run(loaded, "2026-01", reason="baseline")
    before = snapshot(loaded)
    p = cli("run", "--executor", "local", "--lake", loaded.root, "--ruleset", "2026-02", "--reason", "killed",
            env={"MEDALLION_FAULT_AFTER_COMMITS": str(commits)})
    assert p.returncode == 99, p.stderr
    running = [r for r in api.history(loaded) if r["status"] == "running"]
    assert len(running) == 1
    r = cli("recover", "--lake", loaded.root)
    assert r.returncode == 0, r.stderr
    rows = {x["reprocessing_id"]: x for x in api.history(loaded)}
    assert rows[running[0]["reprocessing_id"]]["status"] == expect
    assert any(x["kind"] == "recovery" for x in rows.values())
    now = snapshot(loaded)
    if expect == "failed":
        assert now == before  # every table back at its pre-replay version
    else:
        api.run(loaded, "2026-02", mode="full", reason="reference")
        assert snapshot(loaded) == now  # every table at the post-replay version


def test_next_replay_recovers_automatically(loaded):
    api.run(loaded, "2026-01", reason="baseline")
    before = snapshot(loaded)
    p = cli("run", "--executor", "local", "--lake", loaded.root, "--ruleset", "2026-02", "--reason", "killed",
            env={"MEDALLION_FAULT_AFTER_COMMITS": "1"})
    assert p.returncode == 99
    api.run(loaded, "2026-01", mode="gold", reason="next")
    statuses = [r["status"] for r in api.history(loaded) if r["kind"] == "replay"]
    assert statuses == ["success", "failed", "success"]
    assert snapshot(loaded)[schemas.SILVER] == before[schemas.SILVER]


def test_second_replay_is_refused_while_one_runs(loaded):
    holder = lease_for(loaded, "r-other-replay")
    with holder:
        with pytest.raises(LeaseHeldError, match="r-other-replay is running"):
            api.run(loaded, "2026-01", reason="second")
        p = cli("run", "--executor", "local", "--lake", loaded.root, "--ruleset", "2026-01", "--reason", "x")
        assert p.returncode == 1 and "r-other-replay is running" in p.stderr
    api.run(loaded, "2026-01", reason="after release")


def test_lease_left_by_a_dead_process_expires(loaded):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    pid = int(dead.stdout)
    lease = lease_for(loaded, "r-dead")
    lease.path.parent.mkdir(parents=True, exist_ok=True)
    body = lease._body()
    body["pid"] = pid
    lease.path.write_text(json.dumps(body))
    api.run(loaded, "2026-01", reason="takes over")
    assert not lease.path.exists()


@pytest.mark.slow
def test_a_shard_over_its_memory_budget_folds_in_chunks_with_the_same_tables(tmp_path):
    from engine.ingest.generator import GeneratorConfig
    from tests.lakes import assert_same_tables, staged_orphans

    lakes = []
    for name in ("whole", "chunked"):
        lk = api.open_lake(tmp_path / name)
        api.generate_history(GeneratorConfig(events=20_000, tenants=8, days=0.5, seed=5,
                                             dup_rate=0.1, late_rate=0.05), lake=lk)
        lakes.append(lk)
    whole, chunked = lakes
    for rs in ("2026-01", "2026-02"):
        a = api.run(whole, rs, shards=2, mode="full")
        plan = api.plan(chunked, rs, shards=2, task_memory="1MiB", mode="full")
        assert plan.chunks_per_shard > 1 and plan.task_memory == 1 << 20
        b = api.run(chunked, rs, shards=2, task_memory="1MiB", mode="full")
        assert a.chunks == 2 and b.chunks > 4 and b.conservation_ok
        assert_same_tables(whole, chunked)
        assert staged_orphans(chunked, b.plan.replay_id) == []


def test_task_memory_flag_is_checked(loaded):
    r = cli("plan", "--lake", loaded.root, "--ruleset", "2026-01", "--executor", "local",
            "--task-memory", "lots")
    assert r.returncode == 2 and "--task-memory 'lots'" in r.stderr and "Traceback" not in r.stderr
    r = cli("plan", "--lake", loaded.root, "--ruleset", "2026-01", "--executor", "local",
            "--task-memory", "256MiB")
    assert r.returncode == 0 and "memory budget per shard task: 256 MiB" in r.stdout


def test_sweep_removes_only_uncommitted_files_of_the_replay(loaded):
    res = api.run(loaded, "2026-01", reason="load")
    rid = res.plan.replay_id
    rows = loaded.read(schemas.SILVER)
    live = loaded.files(schemas.SILVER)
    assert any(p.split("/")[-1].startswith(f"part-mr-{rid}-") for p in live)
    orphan = loaded.stage(schemas.SILVER, rows, f"{rid}-retried")
    other = loaded.stage(schemas.SILVER, rows, "r-other-replay")
    assert loaded.sweep(schemas.SILVER, rid) == len(orphan.files)
    assert loaded.files(schemas.SILVER) == live and loaded.read(schemas.SILVER).num_rows == rows.num_rows
    root = loaded.root
    assert not any(os.path.exists(os.path.join(root, schemas.SILVER, f.path)) for f in orphan.files)
    assert all(os.path.exists(os.path.join(root, schemas.SILVER, f.path)) for f in other.files)
