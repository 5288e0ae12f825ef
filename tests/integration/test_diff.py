"""A/B diffs for Scenario 1 (plan_limits@2) and 2 (dedup@2), checked against independent math."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig
from replay import api
from replay.demo import RULESET_DIR


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    lk = api.open_lake(tmp_path_factory.mktemp("diff") / "lake")
    api.generate_history(GeneratorConfig(events=60_000, tenants=30, days=0.5, seed=21, dup_rate=0.05),
                         lake=lk)
    base = api.run(lk, "2026-01", reason="baseline")
    s1 = api.run(lk, RULESET_DIR / "free-100.toml", reason="scenario 1")
    s2 = api.run(lk, RULESET_DIR / "dedup-fix.toml", reason="scenario 2")
    return lk, base.plan.replay_id, s1.plan.replay_id, s2.plan.replay_id


def rows_at(lake, table, version):
    return lake.read(table, version).to_pylist()


def test_scenario1_entitlement_summary_matches_independent_math(scenarios):
    lk, _, s1, _ = scenarios
    res = api.summary(lk, f"{s1}:before", s1)
    plans = {r["plan"]: r for r in res["plans"].to_pylist()}
    hist = {r["reprocessing_id"]: r for r in api.history(lk)}
    import json

    vb = json.loads(hist[s1]["versions_before"])
    va = json.loads(hist[s1]["versions_after"])
    for side, versions in (("before", vb), ("after", va)):
        minutes = rows_at(lk, schemas.MINUTE, versions[schemas.MINUTE])
        alerts = rows_at(lk, schemas.ALERTS, versions[schemas.ALERTS])
        olm, overage = Counter(), Counter()
        for m in minutes:
            olm[m["subscription_plan"]] += m["over_limit_count"] > 0
            overage[m["subscription_plan"]] += m["over_limit_count"]
        al = Counter((a["subscription_plan"], a["alert_type"]) for a in alerts)
        for plan, r in plans.items():
            assert r[f"over_limit_minutes_{side}"] == olm[plan], (side, plan)
            assert r[f"overage_{side}"] == overage[plan]
            assert r[f"over_limit_alerts_{side}"] == al[(plan, "over_limit")]
            assert r[f"abuse_alerts_{side}"] == al[(plan, "abuse")]
    assert plans["free"]["over_limit_minutes_after"] < plans["free"]["over_limit_minutes_before"]
    # tenants flipping: recomputed from minute rows
    per_tenant = defaultdict(lambda: [0, 0])
    for i, versions in enumerate((vb, va)):
        for m in rows_at(lk, schemas.MINUTE, versions[schemas.MINUTE]):
            per_tenant[m["tenant_id"]][i] += m["over_limit_count"] > 0
    freed = sum(1 for b, a in per_tenant.values() if b > 0 and a == 0)
    flips = {(r["flip"], r["plan"]): r["tenants"] for r in res["flips"].to_pylist()}
    assert sum(v for (f, _), v in flips.items() if f == "over_limit -> compliant") == freed > 0


def test_scenario2_silver_diff_matches_independent_math(scenarios):
    lk, _, _, s2 = scenarios
    d = api.diff(lk, schemas.SILVER, f"{s2}:before", s2, sample=3)
    key = lambda r: (r["kafka_topic"], r["kafka_partition"], r["kafka_offset"])  # noqa: E731
    before = {key(r) for r in rows_at(lk, schemas.SILVER, d.from_version)}
    after = {key(r) for r in rows_at(lk, schemas.SILVER, d.to_version)}
    assert d.counts["only_before"] == len(before - after) > 0  # dedup@2 drops late re-deliveries
    assert d.counts["only_after"] == len(after - before) == 0
    assert d.counts["changed"] == 0 and d.schema == {"added": [], "removed": [], "type_changed": {}}
    assert len(d.samples["only_before"]) == 3
    dups = api.diff(lk, schemas.DUPLICATES, f"{s2}:before", s2)
    assert dups.counts["only_after"] == d.counts["only_before"]


def test_versioned_names_in_sql_and_the_seed_validation_queries(scenarios):
    lk, base, s1, _ = scenarios
    # new enforcement status for free tenants (OLD vs NEW), as the seed's queries asked
    q = f"""
      SELECT o.tenant_id, count(*) FILTER (WHERE o.over_limit_count > 0) AS old_over,
             count(*) FILTER (WHERE n.over_limit_count > 0) AS new_over
      FROM "tenant_usage_1min@{s1}:before" o JOIN "tenant_usage_1min@{s1}" n USING (tenant_id, window_start)
      WHERE o.subscription_plan = $plan GROUP BY 1 ORDER BY 1"""
    status = api.sql(lk, q, {"plan": "free"}).to_pylist()
    assert status and all(r["new_over"] <= r["old_over"] for r in status)
    counts = api.sql(lk, f"""
      SELECT (SELECT count(*) FROM "enforcement_alerts@{s1}:before") AS old_alerts,
             (SELECT count(*) FROM "enforcement_alerts@{s1}") AS new_alerts""").to_pylist()[0]
    assert counts["new_alerts"] < counts["old_alerts"]
    v = lk.version(schemas.MINUTE)
    same = api.sql(lk, f"SELECT count(*) AS n FROM tenant_usage_1min__v{v}").column("n")[0].as_py()
    assert same == lk.read(schemas.MINUTE).num_rows


def test_diff_usage_errors(scenarios):
    from engine.contract.errors import UsageError

    lk, *_ = scenarios
    with pytest.raises(UsageError, match="choose one of"):
        api.diff(lk, "nope", 1)
    with pytest.raises(UsageError, match="no replay"):
        api.diff(lk, schemas.MINUTE, "r20990101T000000-00000000")
