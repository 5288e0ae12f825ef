"""generate -> import -> run for both rulesets, plan/auto modes, Scenario 1 and 2."""

from __future__ import annotations

import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig
from replay import api
from replay.demo import RULESET_DIR, change_summary


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    lk = api.open_lake(tmp_path_factory.mktemp("e2e") / "lake")
    out = tmp_path_factory.mktemp("gen") / "h.parquet"
    api.generate_history(GeneratorConfig(events=60_000, tenants=40, days=0.5, seed=7), out=out,
                         fmt="bronze-parquet")
    api.import_file(lk, out, "bronze-parquet")
    return lk


def test_generator_is_deterministic_and_covers_every_reason(tmp_path):
    from engine.ingest.generator import generate

    a = generate(GeneratorConfig(events=5000, tenants=10, seed=3))
    b = generate(GeneratorConfig(events=5000, tenants=10, seed=3))
    assert a.equals(b)
    lk = api.open_lake(tmp_path / "l")
    api.generate_history(GeneratorConfig(events=20_000, tenants=10, seed=3, invalid_rate=0.02), lake=lk)
    api.run(lk, "2026-02")
    reasons = set(api.sql(lk, "SELECT DISTINCT split_part(reason, ':', 1) r FROM silver_quarantine")
                  .column("r").to_pylist())
    assert reasons == {"malformed_json", "missing_field", "invalid_type", "invalid_timestamp",
                       "unknown_plan", "out_of_range", "future_timestamp"}


def test_scenario1_is_gold_only_and_frees_free_tenants_between_61_and_100(history):
    r1 = api.run(history, "2026-01")
    assert r1.plan.mode == "full" and r1.conservation_ok
    silver_v = history.version(schemas.SILVER)
    before = {t: history.version(t) for t in schemas.GOLD_TABLES}
    ruleset = RULESET_DIR / "free-100.toml"
    plan = api.plan(history, ruleset)
    assert plan.mode == "gold" and any("plan_limits" in r for r in plan.reasons)
    r2 = api.run(history, ruleset)
    assert history.version(schemas.SILVER) == silver_v  # Silver untouched
    after = {t: history.version(t) for t in schemas.GOLD_TABLES}
    q = """SELECT count(*) AS n FROM tenant_usage_1min
           WHERE subscription_plan = 'free' AND total_requests BETWEEN 61 AND 100 AND over_limit_count {} 0"""
    from engine.query.duck import connect, register_version

    con = connect(history)
    register_version(con, history, schemas.MINUTE, before[schemas.MINUTE], "m_old")
    old_over = con.sql(q.format("> ").replace("tenant_usage_1min", "m_old")).fetchall()[0][0]
    new_over = con.sql(q.format("> ")).fetchall()[0][0]
    old_all = con.sql(q.format(">=").replace("tenant_usage_1min", "m_old")).fetchall()[0][0]
    assert old_over == old_all > 0 and new_over == 0
    summary = {r["plan"]: r for r in change_summary(history, before, after).to_pylist()}
    assert summary["free"]["over_limit_minutes_after"] < summary["free"]["over_limit_minutes_before"]
    assert summary["starter"]["over_limit_minutes_after"] == summary["starter"]["over_limit_minutes_before"]
    assert r2.plan.mode == "gold"
    assert api.plan(history, ruleset).up_to_date


def test_scenario2_dedup_fix_is_silver_and_gold(history):
    plan = api.plan(history, RULESET_DIR / "dedup-fix.toml")
    assert plan.mode == "full" and any("dedup" in r for r in plan.reasons)
    res = api.run(history, RULESET_DIR / "dedup-fix.toml")
    assert res.conservation_ok
    meta = history.commit_metadata(schemas.SILVER)
    assert meta["ruleset_fingerprint"] == plan.ruleset_fingerprint
    assert meta["replay_id"] == res.plan.replay_id and meta["bronze_version"] == plan.bronze_version
    assert {r["name"] for r in meta["rules"]} == {"validate", "dedup", "plan_limits", "abuse"}


def test_gold_mode_refused_when_plan_set_changes(history, tmp_path):
    from engine.contract.errors import UsageError

    api.run(history, "2026-01")
    f = tmp_path / "gold.toml"
    f.write_text("[rules]\nvalidate = 1\ndedup = 1\nplan_limits = 1\n[params.plan_limits.limits]\ngold = 9000\n")
    plan = api.plan(history, f)
    assert plan.mode == "full" and any("set of known plans" in r for r in plan.reasons)
    with pytest.raises(UsageError, match="--mode gold"):
        api.plan(history, f, mode="gold")


def test_both_rulesets_conserve_rows(history):
    for rs in ("2026-01", "2026-02"):
        res = api.run(history, rs, mode="full")
        c = res.counts
        assert c[schemas.BRONZE] == c[schemas.SILVER] + c[schemas.QUARANTINE] + c[schemas.DUPLICATES]
