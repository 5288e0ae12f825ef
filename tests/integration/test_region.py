"""docs/semantics.md §8: the residency region in Gold, added by a gold-layer change (2026-02 -> 2026-03)."""

from __future__ import annotations

import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api

V2_START = "2026-03-01T06:00:00Z"


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lk = api.open_lake(tmp_path_factory.mktemp("region") / "lake")
    cfg = GeneratorConfig(events=20_000, tenants=10, days=0.5, seed=8, v2_start=V2_START, v2_share=0.7)
    append_new(lk, generate(cfg), "test", {"source": "test"})
    api.run(lk, "2026-02", reason="before regions")
    return lk


def test_generator_emits_v2_traffic_from_the_chosen_start():
    t = generate(GeneratorConfig(events=5000, tenants=5, days=0.5, seed=3, v2_start=V2_START,
                                 v2_share=0.5, invalid_rate=0.0, dup_rate=0.0, late_rate=0.0))
    rows = [r for r in t.to_pylist() if r["event_timestamp"] is not None]
    before = [r for r in rows if r["event_timestamp"].isoformat() < "2026-03-01T06:00:00"]
    after = [r for r in rows if r["event_timestamp"].isoformat() >= "2026-03-01T06:00:00"]
    assert before and after
    assert not any(b"data_residency_region" in r["raw_payload"] for r in before)
    share = sum(b"data_residency_region" in r["raw_payload"] for r in after) / len(after)
    assert 0.4 < share < 0.6


def test_adding_region_usage_is_a_gold_only_replay_and_makes_the_table(lake):
    assert not lake.is_active(schemas.REGION)
    p = api.plan(lake, "2026-03")
    assert p.mode == "gold" and p.reasons == ("region_usage@1 added (gold layer)",)
    assert schemas.REGION in p.tables and schemas.SILVER not in p.tables
    res = api.run(lake, "2026-03", reason="regions")
    assert all(c.passed for c in res.checks), [c for c in res.checks if not c.passed]
    assert {"region_hours_equal_silver_counts", f"unique_keys:{schemas.REGION}"} <= {
        c.name for c in res.checks}
    by_region = {r["data_residency_region"]: r["n"] for r in api.sql(
        lake, "SELECT data_residency_region, sum(total_requests)::BIGINT AS n "
              "FROM tenant_usage_region_hourly GROUP BY 1").to_pylist()}
    silver = api.sql(lake, "SELECT count(*) AS n FROM silver_api_usage").to_pylist()[0]["n"]
    assert None in by_region and len(by_region) == 4 and sum(by_region.values()) == silver
    assert api.plan(lake, "2026-03").up_to_date


def test_the_table_exists_only_while_the_ruleset_has_the_rule_and_rollback_brings_it_back(lake):
    if not lake.is_active(schemas.REGION):
        api.run(lake, "2026-03", reason="regions")
    rows = lake.read(schemas.REGION).num_rows
    res = api.run(lake, "2026-02", reason="no regions")
    assert res.plan.mode == "gold" and not lake.is_active(schemas.REGION)
    assert {s["table"]: s["exists"] for s in api.status(lake)}[schemas.REGION] is False
    with pytest.raises(Exception, match="tenant_usage_region_hourly"):
        api.sql(lake, "SELECT * FROM tenant_usage_region_hourly")
    api.rollback(lake, res.plan.replay_id, reason="regions back")
    assert lake.is_active(schemas.REGION) and lake.read(schemas.REGION).num_rows == rows
    assert api.plan(lake, "2026-03").up_to_date


def test_summary_breaks_down_by_region_when_the_table_exists(lake):
    if not lake.is_active(schemas.REGION):
        api.run(lake, "2026-03", reason="regions")
    last = [r for r in api.history(lake) if r["kind"] == "replay" and r["status"] == "success"][-1]
    summ = api.summary(lake, f"{last['reprocessing_id']}:before", None)
    regions = summ["regions"].to_pylist()
    assert {r["data_residency_region"] for r in regions} >= {"eu-west-1", None}
    assert sum(r["requests_after"] for r in regions) == api.sql(
        lake, "SELECT count(*) AS n FROM silver_api_usage").to_pylist()[0]["n"]
