"""The validation gate: standard checks after every replay, user checks, rollback on failure."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from engine.contract import schemas
from engine.contract.errors import ChecksFailedError
from replay import api
from rules._abuse import abuse_alerts
from rules.base import Rule, RuleParams
from rules.registry import default_registry
from rules.ruleset import load_ruleset
from tests.lakes import FIXTURE

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


class CorruptAbuse(Rule):
    """A buggy plugin: every abuse alert twice, with a wrong count."""

    name, version, layer = "abuse", 99, "gold"

    class Params(RuleParams):
        multiplier: float = 10

    @staticmethod
    def apply(params, minutes):
        a = abuse_alerts(params.multiplier, minutes)
        bad = a.set_column(a.schema.get_field_index("total_requests"), "total_requests",
                           pa.array([1] * a.num_rows, pa.int64()))
        return pa.concat_tables([a, bad])


@pytest.fixture
def loaded(lake):
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(lake, "2026-01", reason="baseline")
    return lake


@pytest.fixture
def corrupt_ruleset():
    reg = default_registry()
    if ("abuse", 99) not in reg.versions():
        reg.register(CorruptAbuse)
    return load_ruleset("2026-01").with_rule("abuse", 99, new_name="corrupt")


def snapshot(lake):
    return {t: lake.read(t).num_rows for t in OUTPUTS}


def test_every_replay_records_passing_checks(loaded):
    (row,) = api.history(loaded)
    checks = {c["name"]: c for c in json.loads(row["checks"])}
    assert {"conservation", "minute_totals_equal_silver_counts", "hourly_equals_sum_of_minutes",
            "alerts_match_minutes", "unique_keys:tenant_usage_1min"} <= set(checks)
    assert all(c["passed"] for c in checks.values())
    assert checks["row_count:silver_api_usage"]["info"] == "0 -> 3841 rows (+3841)"


def test_corrupted_gold_is_caught_and_rolled_back(loaded, corrupt_ruleset):
    before = snapshot(loaded)
    before_versions = {t: loaded.version(t) for t in OUTPUTS}
    with pytest.raises(ChecksFailedError, match="alerts_match_minutes") as err:
        api.run(loaded, corrupt_ruleset, reason="buggy plugin")
    assert "unique_keys:enforcement_alerts" in err.value.data["failed"]
    assert snapshot(loaded) == before
    assert api.plan(loaded, "2026-01").up_to_date  # the restored tables are 2026-01's again
    row = api.history(loaded)[-1]
    assert row["status"] == "failed" and "validation gate failed" in row["details"]
    failed = [c for c in json.loads(row["checks"]) if not c["passed"]]
    assert failed and failed[0]["sample"]
    assert all(loaded.version(t) > before_versions[t] for t in schemas.GOLD_TABLES)  # restore commits


def test_allow_failed_checks_publishes_and_records_it(loaded, corrupt_ruleset):
    res = api.run(loaded, corrupt_ruleset, reason="accepted", allow_failed_checks=True)
    assert any(not c.passed for c in res.checks)
    row = api.history(loaded)[-1]
    assert row["status"] == "success" and row["allow_failed_checks"] and "despite" in row["details"]


def test_user_checks_from_sql_files(loaded, tmp_path):
    d = tmp_path / "checks"
    d.mkdir()
    (d / "no_big_minutes.sql").write_text("SELECT * FROM tenant_usage_1min WHERE total_requests > 1000")
    (d / "fine.sql").write_text("SELECT * FROM tenant_usage_1min WHERE total_requests < 0")
    with pytest.raises(ChecksFailedError, match="user:no_big_minutes"):
        api.run(loaded, "2026-02", reason="with checks", checks=str(d))
    row = api.history(loaded)[-1]
    names = {c["name"]: c["passed"] for c in json.loads(row["checks"])}
    assert names["user:fine"] and not names["user:no_big_minutes"]


class LossyDedup(Rule):
    """A buggy plugin: drops every tenth duplicate instead of recording it."""

    name, version, layer = "dedup", 99, "silver"

    class Params(RuleParams):
        pass

    @staticmethod
    def apply(params, valid):
        from rules.dedup_v2 import Dedup

        silver, dups = Dedup.apply(Dedup.Params(), valid)
        return silver, dups.slice(0, dups.num_rows - max(1, dups.num_rows // 10))


def test_rows_lost_by_a_plugin_fail_conservation_and_roll_back(loaded):
    reg = default_registry()
    if ("dedup", 99) not in reg.versions():
        reg.register(LossyDedup)
    before = snapshot(loaded)
    lossy = load_ruleset("2026-01").with_rule("dedup", 99, new_name="lossy")
    with pytest.raises(ChecksFailedError, match="conservation"):
        api.run(loaded, lossy, reason="buggy dedup", shards=1)
    assert snapshot(loaded) == before
    row = api.history(loaded)[-1]
    (cons,) = [c for c in json.loads(row["checks"]) if c["name"] == "conservation"]
    s = cons["sample"][0]
    assert not cons["passed"] and s["bronze"] > s["silver"] + s["quarantine"] + s["duplicates"]


def test_a_user_check_that_is_not_a_query_fails_the_gate_and_rolls_back(loaded, tmp_path):
    d = tmp_path / "checks"
    d.mkdir()
    (d / "statement.sql").write_text("CREATE TABLE scratch AS SELECT 1 AS x")
    before = snapshot(loaded)
    with pytest.raises(ChecksFailedError, match="user:statement"):
        api.run(loaded, "2026-02", reason="statement check", checks=str(d))
    row = api.history(loaded)[-1]
    info = {c["name"]: c for c in json.loads(row["checks"])}
    assert row["status"] == "failed" and "not a query" in info["user:statement"]["info"]
    assert snapshot(loaded) == before
    assert not [r for r in api.history(loaded) if r["status"] == "running"]


def test_an_error_while_the_gate_runs_restores_every_table(loaded, monkeypatch):
    import engine.batch.checks as checks_module

    before = snapshot(loaded)

    def broken(*a, **k):
        raise OSError("the lake went away while checking")

    monkeypatch.setattr(checks_module, "run_checks", broken)
    with pytest.raises(OSError, match="went away"):
        api.run(loaded, "2026-02", reason="broken gate")
    row = api.history(loaded)[-1]
    assert row["status"] == "failed" and "after committing" in row["details"]
    assert snapshot(loaded) == before and api.plan(loaded, "2026-01").up_to_date
    assert not [r for r in api.history(loaded) if r["status"] == "running"]


def test_a_failure_after_the_last_commit_restores_every_table(loaded, monkeypatch):
    """Every table was committed but the gate never ran: nothing unchecked is published."""
    import engine.batch.apply as apply_module

    before = snapshot(loaded)

    def boom(committed):
        if committed == len(OUTPUTS):
            raise OSError("the store went away after the last commit")

    monkeypatch.setattr(apply_module, "die_after_commits", boom)
    with pytest.raises(OSError, match="went away"):
        api.run(loaded, "2026-02", reason="lost after commit")
    row = api.history(loaded)[-1]
    assert row["status"] == "failed" and "while committing" in row["details"]
    assert snapshot(loaded) == before and api.plan(loaded, "2026-01").up_to_date
