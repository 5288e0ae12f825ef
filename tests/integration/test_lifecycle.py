"""docs/semantics.md §10: optimize and vacuum move rows, never change them; plans and replays stay the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from engine.contract import schemas
from engine.contract.errors import UsageError, VersionGoneError
from engine.execution.shuffle import ShuffleArea
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from engine.lifecycle.vacuum import UNCOMMITTED_GRACE_HOURS
from replay import api
from tests.lakes import ROOT, assert_same_tables, make_lake


@pytest.fixture(scope="module")
def history():
    t = generate(GeneratorConfig(events=60_000, tenants=30, days=1, seed=12))
    return [t.slice(i * 15_000, 15_000) for i in range(4)]  # 4 appends: small files


def plan_work(lake, ruleset, **kw):
    d = api.plan(lake, ruleset, **kw).to_dict()
    return {k: d[k] for k in ("mode", "reasons", "tables", "rows", "source_table", "up_to_date")}


def test_optimize_and_vacuum_are_neutral(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history)
    api.run(lake, "2026-01", reason="first")
    before = {rs: plan_work(lake, rs) for rs in ("2026-01", "2026-02", "free-100")}
    files = {w["table"]: w["files"] for w in api.optimize(lake, dry_run=True)["tables"]}
    out = api.optimize(lake)
    assert out[schemas.BRONZE]["files_after"] < files[schemas.BRONZE] == 4
    assert out[schemas.BRONZE]["zorder"] == ["tenant_id", "event_timestamp"]
    assert {rs: plan_work(lake, rs) for rs in before} == before
    api.vacuum(lake, retain_hours=0)
    assert {rs: plan_work(lake, rs) for rs in before} == before
    # a replay after them gives the same rows as one on a lake that never had them
    api.run(lake, "2026-02", reason="after")
    ref = make_lake(tmp_path / "ref", history)
    api.run(ref, "2026-02", reason="ref")
    assert_same_tables(lake, ref)
    assert [r["kind"] for r in api.history(lake)] == ["replay", "optimize", "vacuum", "replay"]
    # Bronze that grew after a vacuum is still seen as grown
    extra = generate(GeneratorConfig(events=500, tenants=3, seed=99))
    i = extra.schema.get_field_index("kafka_topic")
    extra = extra.set_column(i, "kafka_topic", pa.array(["late-topic"] * extra.num_rows))
    assert append_new(lake, extra, "late", {"source": "late"}).rows_added == extra.num_rows
    # (only grown, past a compaction of folded files: an incremental step, exact)
    assert api.plan(lake, "2026-02").mode == "incremental"
    api.run(lake, "2026-02", reason="grown")
    append_new(ref, extra, "late", {"source": "late"})
    api.run(ref, "2026-02", mode="full", reason="ref")
    assert_same_tables(lake, ref)


def test_tenant_scoped_replays_read_fewer_bytes_after_optimize(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history)
    api.run(lake, "2026-01", reason="first")
    scope = {"tenants": ["tenant-00004"]}
    whole = api.plan(lake, "free-100")
    before = api.plan(lake, "free-100", **scope)
    api.optimize(lake)
    after = api.plan(lake, "free-100", **scope)
    assert before.mode == after.mode == "gold"
    assert after.rows < before.rows <= whole.rows and after.bytes < before.bytes
    res = api.run(lake, "free-100", reason="scoped", **scope)
    ref = make_lake(tmp_path / "ref", history)
    api.run(ref, "2026-01", reason="first")
    api.run(ref, "free-100", reason="scoped", **scope)
    assert_same_tables(lake, ref)
    assert res.conservation_ok is not False


def test_vacuum_horizon_refuses_old_versions_in_one_line(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history[:1])
    a = api.run(lake, "2026-01", reason="a")
    b = api.run(lake, "2026-02", reason="b")
    dry = api.vacuum(lake, retain_hours=0, dry_run=True)
    assert dry["dry_run"] and dry["files"] > 0
    out = api.vacuum(lake, retain_hours=0)
    assert out["files_removed"] == dry["files"]
    with pytest.raises(VersionGoneError, match="vacuum"):
        api.rollback(lake, b.plan.replay_id, "too late")
    with pytest.raises(VersionGoneError, match="vacuum"):
        api.sql(lake, f'SELECT count(*) FROM "tenant_usage_1min@{a.plan.replay_id}"')
    p = subprocess.run([sys.executable, "-m", "replay", "diff", "--lake", lake.root, "--table",
                        schemas.MINUTE, "--from", f"{a.plan.replay_id}:before"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "vacuum" in p.stderr
    row = [r for r in api.history(lake) if r["kind"] == "vacuum"][-1]
    assert json.loads(row["details"])["retain_hours"] == 0
    assert api.plan(lake, "2026-02").up_to_date


def test_lifecycle_commands_on_the_cli(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history[:2])
    api.run(lake, "2026-01", reason="a")

    def cli(*args):
        p = subprocess.run([sys.executable, "-m", "replay", *args, "--lake", lake.root, "--json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    assert cli("optimize", "--dry-run", "--table", schemas.BRONZE)["tables"][0]["files"] == 2
    assert cli("optimize", "--table", schemas.BRONZE, "--zorder", "event_timestamp")[
        schemas.BRONZE]["zorder"] == ["event_timestamp"]
    assert cli("vacuum", "--dry-run")["retain_hours"] == 168
    tenant = lake.read(schemas.SILVER).column("tenant_id")[0].as_py()
    dry = cli("erase", "--tenant", tenant, "--reason", "r", "--dry-run")
    assert dry["rows"] > 0 and tenant not in json.dumps(dry)
    done = cli("erase", "--tenant", tenant, "--reason", "r", "--executor", "local")
    assert done["rows_erased"] == dry["rows"]
    p = subprocess.run([sys.executable, "-m", "replay", "optimize", "--lake", lake.root, "--zorder",
                        "nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "nope" in p.stderr


def test_a_plan_made_stale_by_an_append_or_an_archive_is_refused(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history[:2])
    api.run(lake, "2026-01", reason="a")
    p = api.plan(lake, "2026-02")
    append_new(lake, history[2], "more", {"source": "more"})
    with pytest.raises(UsageError, match="plan is stale.*bronze_api_usage changed"):
        api.apply(lake, p, "2026-02", reason="stale")
    p = api.plan(lake, "2026-02")
    api.archive(lake, "2026-03-02", str(tmp_path / "cold"))
    with pytest.raises(UsageError, match="plan is stale.*archived"):
        api.apply(lake, p, "2026-02", reason="stale")
    assert api.run(lake, "2026-02", reason="fresh").conservation_ok
    assert not [r for r in api.history(lake) if r["status"] == "running"]


def test_vacuum_removes_shuffle_areas_a_killed_driver_left(tmp_path, history):
    """A driver killed mid-replay leaves its shuffle files (copies of event rows) under the
    lake. Vacuum removes every area of the lake's own (under the lake's lease no replay of
    it runs) and an experiment area's once untouched for the grace (an experiment runs under
    its area's lease: a fresh area may be in use)."""
    lake = make_lake(tmp_path / "lake", history[:1])
    api.run(lake, "2026-01", reason="first")
    rows = [history[0].select(["event_id", "tenant_id"])]
    dead, fresh_dead = ShuffleArea.create(lake.root), ShuffleArea.create(lake.root)
    old_exp = ShuffleArea.create(lake.scratch("gone").root)  # an experiment whose run died
    live_exp = ShuffleArea.create(lake.scratch("running").root)
    for area in (dead, fresh_dead, old_exp, live_exp):
        area.write(rows)
    past = time.time() - (UNCOMMITTED_GRACE_HOURS * 3600 + 60)
    for area in (dead, old_exp):
        for entry in [*Path(area.root).iterdir(), Path(area.root)]:
            os.utime(entry, (past, past))
    plan = api.vacuum(lake, retain_hours=168, dry_run=True)
    assert sorted(plan["shuffle_areas"]) == sorted([dead.root, fresh_dead.root, old_exp.root])
    assert Path(dead.root).exists()  # a dry run removes nothing
    out = api.vacuum(lake, retain_hours=168)
    assert out["shuffle_areas_removed"] == 3
    assert not any(Path(a.root).exists() for a in (dead, fresh_dead, old_exp))
    assert Path(live_exp.root).exists() and api.vacuum(lake, dry_run=True)["shuffle_areas"] == []
