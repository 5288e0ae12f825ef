"""Writers together (issue 22): one deterministic test per defect of the multi-table
writes, each written to fail before its fix."""

from __future__ import annotations

import pyarrow.parquet as pq

from engine.batch.plan import active_ruleset
from engine.contract import schemas
from engine.execution.local import LocalExecutor
from replay import api
from tests.lakes import FIXTURE, make_lake

TABLES = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


def _lake(tmp_path):
    return make_lake(tmp_path / "lake", [pq.read_table(FIXTURE / "bronze.parquet")])


def test_rollback_onto_a_neutral_version_brings_back_its_ruleset(tmp_path):
    """A restore writes its own non-neutral commit describing the rows it brings back: a
    rollback onto a version an optimize, compaction or barrier wrote is not passed over."""
    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    for t in TABLES:  # the versions before the next replay are neutral commits
        lk.barrier(t, "maintenance")
    b = api.run(lk, "2026-02", executor=LocalExecutor(), reason="b")
    assert active_ruleset(lk).name == "2026-02"
    api.rollback(lk, b.plan.replay_id, reason="undo b")
    assert active_ruleset(lk).name == "2026-01"
    for t in TABLES:
        meta = lk.commit_metadata(t)
        assert meta["ruleset_name"] == "2026-01" and meta["restored_by"] and "neutral" not in meta, t
    assert api.plan(lk, "2026-01").up_to_date


def _cli(*args, env=None):
    import os
    import subprocess
    import sys

    from tests.lakes import ROOT

    return subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=300)


def _bronze_ids(lk) -> set[str]:
    import json

    return {json.loads(p)["event_id"] for p in
            lk.read(schemas.BRONZE, columns=["raw_payload"]).column(0).to_pylist()
            if p.startswith(b"{") and b'"event_id"' in p and b"NaN" not in p}


def test_an_erasure_killed_midway_then_recovered_keeps_the_appends_made_meanwhile(tmp_path):
    """SIGKILL (os._exit) after the erasure's first Silver commit, an ingest commit, then
    `replay recover`: Bronze keeps the ingest's rows (never restored), the erased rows stay
    gone, Silver and Gold are back as they were, the row says failed."""
    from engine.ingest.importers import append_new
    from tests.helpers import bronze, event

    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    derived = {t: lk.version(t) for t in TABLES}
    acme = {i for i in _bronze_ids(lk) if i}  # before: every id
    p = _cli("erase", "--executor", "local", "--lake", lk.root, "--tenant", "acme", "--reason", "gdpr",
             env={"MEDALLION_FAULT_AFTER_COMMITS": "1"})
    assert p.returncode == 99, p.stderr
    append_new(lk, bronze([event(event_id=f"LATE-{i}", tenant_id="gamma") for i in range(4)],
                          topic="late"), "late", {"source": "concurrent ingest"})
    r = _cli("recover", "--lake", lk.root, "--json")
    assert r.returncode == 0, r.stderr
    ids = _bronze_ids(lk)
    assert {f"LATE-{i}" for i in range(4)} <= ids
    assert len(acme - ids) > 0  # acme's rows left Bronze and stay out
    for t, v in derived.items():
        assert lk.row_count(t) == lk.row_count(t, v), t
    rows = {x["kind"]: x for x in api.history(lk)}
    assert rows["erasure"]["status"] == "failed" and rows["recovery"]["status"] == "success"
    assert not [x for x in api.history(lk) if x["status"] == "running"]


def test_a_rollback_publishes_itself_and_its_target_in_one_ledger_commit(tmp_path):
    """A rollback killed between two ledger updates left its target `success`: the target's
    `rolled_back` and the rollback's `success` are one commit now."""
    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    b = api.run(lk, "2026-02", executor=LocalExecutor(), reason="b")
    v0 = lk.version(schemas.AUDIT)
    out = api.rollback(lk, b.plan.replay_id, reason="undo")
    assert lk.version(schemas.AUDIT) == v0 + 2  # the running row, then one publish
    mid = {r["reprocessing_id"]: r["status"] for r in lk.read(schemas.AUDIT, v0 + 1).to_pylist()}
    assert mid[out["rollback_id"]] == "running" and mid[b.plan.replay_id] == "success"
    end = {r["reprocessing_id"]: r["status"] for r in api.history(lk)}
    assert end[out["rollback_id"]] == "success" and end[b.plan.replay_id] == "rolled_back"


def test_an_erasure_on_a_lagging_lake_after_an_archive(tmp_path):
    """Found by the chaos suite (seed 3): Silver built before an archive existed and behind
    Bronze; an erasure then opened the archive at the version Silver recorded (none: -1)."""
    from datetime import UTC, datetime

    from engine.ingest.generator import GeneratorConfig, generate
    from engine.ingest.importers import append_new

    lk = api.open_lake(tmp_path / "lake")
    start = datetime(2026, 2, 27, tzinfo=UTC)
    append_new(lk, generate(GeneratorConfig(events=3000, tenants=5, days=2, start=start)), "a", {})
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    later = generate(GeneratorConfig(events=300, tenants=5, days=1, seed=5, start=start))
    later = later.set_column(later.schema.get_field_index("kafka_topic"), "kafka_topic",
                             __import__("pyarrow").array(["other"] * later.num_rows))
    append_new(lk, later, "b", {})
    api.archive(lk, "2026-02-28", str(tmp_path / "arch"))
    out = api.erase(lk, "tenant-00001", reason="x", executor=LocalExecutor())
    assert out["rows_erased"] > 0
    assert [r["status"] for r in api.history(lk) if r["kind"] == "erasure"] == ["success"]


def test_an_import_routed_by_the_old_cutoff_during_an_archive_is_not_lost(tmp_path, monkeypatch):
    """An import of old-dated rows lands in hot Bronze while an archive copies (it routed them
    by the old cutoff): the archive's switch, barrier and settle move them, never delete them."""
    from datetime import UTC, datetime

    import pyarrow as pa

    import engine.lifecycle.archive as archive_mod
    from engine.ingest.generator import GeneratorConfig, generate
    from engine.ingest.importers import append_new
    from engine.lake.bronze import bronze_parts

    start = datetime(2026, 2, 26, tzinfo=UTC)
    lk = api.open_lake(tmp_path / "lake")
    append_new(lk, generate(GeneratorConfig(events=2000, tenants=4, days=3, start=start)), "a", {})
    late = generate(GeneratorConfig(events=500, tenants=4, days=1, seed=9, start=start))
    late = late.set_column(late.schema.get_field_index("kafka_topic"), "kafka_topic",
                           pa.array(["late-import"] * late.num_rows))
    real, landed = archive_mod._append, []

    def copy_then_import(*a, **k):
        n = real(*a, **k)
        if not landed:  # the import runs while the archive copies, before its switch
            landed.append(append_new(lk, late, "late", {"source": "import"}))
        return n

    monkeypatch.setattr(archive_mod, "_append", copy_then_import)
    api.archive(lk, "2026-02-28", str(tmp_path / "cold"))
    assert landed and landed[0].rows_added == late.num_rows
    rows = pa.concat_tables([p.dataset().to_table(filter=p.filter()) for p in bronze_parts(lk)])
    mine = rows.filter(pa.compute.equal(rows.column("kafka_topic"), "late-import"))
    assert mine.num_rows == late.num_rows  # every imported row, once, hot or archived
    keys = ["kafka_partition", "kafka_offset"]
    assert mine.select(keys).group_by(keys).aggregate([]).num_rows == late.num_rows


def test_dropping_an_experiment_waits_for_the_experiment_running_in_it(tmp_path):
    """An experiment replays under its area's lease: `experiment --drop` takes that lease
    (waits, then refuses) instead of deleting files under a running experiment."""
    from engine.lake.lease import lease_for

    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    exp = api.Experiment(lk, "free-100", executor=LocalExecutor()).run()
    with lease_for(lk.scratch(exp.name), "r-running-experiment"):
        p = _cli("experiment", "--lake", lk.root, "--drop", exp.name,
                 env={"MEDALLION_LEASE_WAIT": "0.5"})
        assert p.returncode == 1 and "r-running-experiment is running" in p.stderr, p.stderr
        assert [e["name"] for e in api.experiments(lk)] == [exp.name]
        assert lk.scratch(exp.name).exists(schemas.SILVER)
    assert _cli("experiment", "--lake", lk.root, "--drop", exp.name).returncode == 0
    assert api.experiments(lk) == []


def test_vacuum_leaves_the_area_of_a_running_experiment_alone(tmp_path):
    import json

    from engine.lake.lease import lease_for

    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    exp = api.Experiment(lk, "free-100", executor=LocalExecutor()).run()
    area = lk.scratch(exp.name)
    before = area.version(schemas.SILVER)
    with lease_for(area, "r-running-experiment"):
        out = api.vacuum(lk, retain_hours=0)
    assert area.version(schemas.SILVER) == before  # no vacuum commit in the busy area
    row = [r for r in api.history(lk) if r["kind"] == "vacuum"][-1]
    assert json.loads(row["details"])["experiment_areas_busy"] == [exp.name]
    assert not any(k.startswith("_experiments/") for k in out["tables"])
    api.vacuum(lk, retain_hours=0)  # free again: vacuumed
    assert area.version(schemas.SILVER) > before


def test_an_archive_planned_before_another_one_ran_plans_again(tmp_path):
    """Found by the chaos suite (seed 3): two archives planned at once; the second, applied
    after the first, took its stale plan's "no cutoff yet" and removed every archived row."""
    from datetime import UTC, datetime

    from engine.ingest.generator import GeneratorConfig, generate
    from engine.ingest.importers import append_new
    from engine.lake.bronze import bronze_rows
    from engine.lifecycle.archive import apply_archive, plan_archive

    lk = api.open_lake(tmp_path / "lake")
    start = datetime(2026, 2, 26, tzinfo=UTC)
    append_new(lk, generate(GeneratorConfig(events=2000, tenants=4, days=3, start=start)), "a", {})
    total = bronze_rows(lk)
    first, second = (plan_archive(lk, "2026-02-28", str(tmp_path / "cold")) for _ in range(2))
    apply_archive(lk, first)
    apply_archive(lk, second)
    assert bronze_rows(lk) == total


def test_an_ingest_commit_while_a_replay_plans_is_the_next_replays(tmp_path, monkeypatch):
    """Found by the chaos suite (seed 6): the plan read Bronze's version twice, so its tasks
    read a newer Bronze than its commits recorded and its gate counted: conservation failed."""
    import engine.batch.plan as plan_mod
    from engine.ingest.importers import append_new
    from tests.helpers import bronze, event

    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    real, landed = plan_mod._changed_rules, []

    def ingest_meanwhile(*a, **k):
        if not landed:
            landed.append(append_new(lk, bronze([event(event_id=f"MID-{i}") for i in range(7)],
                                                topic="mid"), "mid", {"source": "ingest"}))
        return real(*a, **k)

    monkeypatch.setattr(plan_mod, "_changed_rules", ingest_meanwhile)
    res = api.run(lk, "2026-02", executor=LocalExecutor(), reason="b")
    assert landed and res.conservation_ok
    assert res.plan.source_version == res.plan.bronze_version
    assert lk.commit_metadata(schemas.SILVER)["bronze_version"] == res.plan.bronze_version
