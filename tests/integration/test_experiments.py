"""Experiments: scratch areas that never touch production, diffs, list/drop, promotion reuse."""

from __future__ import annotations

import pytest

from engine.contract import schemas
from engine.contract.errors import UsageError
from replay import api
from replay.demo import RULESET_DIR
from tests.lakes import FIXTURE

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


@pytest.fixture
def prod(lake):
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(lake, "2026-01", reason="production")
    return lake


def versions(lake):
    return {t: lake.version(t) for t in (*OUTPUTS, schemas.BRONZE, schemas.AUDIT)}


def test_experiment_leaves_production_unchanged_and_diffs(prod):
    before = versions(prod)
    res = api.Experiment(prod, candidate="2026-02").run()
    assert versions(prod) == before
    d = res.diff(schemas.SILVER)
    assert (d.counts["before"], d.counts["after"]) == (3841, 3839)
    plans = {r["plan"]: r for r in res.summary()["plans"].to_pylist()}
    assert plans["free"]["over_limit_minutes_before"] == 4 and plans["free"]["over_limit_minutes_after"] == 0
    con = res.connect()
    assert con.sql("SELECT count(*) FROM candidate_enforcement_alerts").fetchall()[0][0] == 2
    listed = api.experiments(prod)
    assert [e["name"] for e in listed] == [res.name] and listed[0]["ruleset_fingerprint"] == \
        res.candidate.fingerprint


def test_python_ruleset_with_changed_parameters_and_a_baseline(prod):
    cand = api.load_ruleset("2026-01").with_rule("plan_limits", 1, {"limits": {"free": 90}},
                                                 new_name="free-90")
    res = api.Experiment(prod, candidate=cand, baseline="2026-02", name="free90").run()
    assert res.baseline.startswith("2026-02")
    minutes = res.diff(schemas.MINUTE)
    assert minutes.columns["plan_limit"]["changed_rows"] > 0


def test_scoped_experiment_compares_only_the_scope(prod):
    res = api.Experiment(prod, candidate="2026-02", tenants=["acme"], name="acme-only").run()
    for t in (schemas.MINUTE, schemas.SILVER):
        tenants = set(res.cand_data[t].to_table(columns=["tenant_id"]).column("tenant_id").to_pylist())
        assert tenants == {"acme"}
    d = res.diff(schemas.MINUTE)
    assert d.counts["before"] == d.counts["after"] == 6


def test_list_and_drop(prod):
    api.Experiment(prod, candidate="2026-02", name="tmp1").run()
    api.drop(prod, "tmp1")
    assert api.experiments(prod) == []
    with pytest.raises(UsageError, match="no experiment"):
        api.drop(prod, "tmp1")
    with pytest.raises(UsageError, match="experiment name"):
        api.drop(prod, "../etc")


def test_promotion_reuses_the_experiment_output(prod):
    ruleset = RULESET_DIR / "dedup-fix.toml"
    res = api.Experiment(prod, candidate=ruleset).run()
    run = api.run(prod, ruleset, reason="promote")
    assert run.plan.reuse == res.name and any("reusing experiment" in r for r in run.plan.reasons)
    assert all(c.passed for c in run.checks)
    for t in OUTPUTS:
        key = [(k, "ascending") for k in schemas.KEYS[t]]
        assert prod.read(t).sort_by(key).equals(res.scratch.read(t).sort_by(key)), t
        # the experiment's files were copied, not its rows rewritten
        assert prod.files(t) and all("-promote-" in f for f in prod.files(t)), t
        assert len(prod.files(t)) == len(res.scratch.files(t)), t


def test_no_reuse_after_bronze_changed(prod, tmp_path):
    ruleset = RULESET_DIR / "dedup-fix.toml"
    api.Experiment(prod, candidate=ruleset).run()
    extra = tmp_path / "more.jsonl"
    extra.write_bytes(b'{"event_id": "late"}\n')
    api.import_file(prod, extra)
    assert api.run(prod, ruleset, reason="promote").plan.reuse is None
