"""docs/semantics.md §11: after any sequence of appends and incremental steps, every table equals a full fold
of the same Bronze. Property tests over random append sequences, then each hard case alone."""

from __future__ import annotations

import json
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.fold.pipeline import Compiled
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from engine.live import keystate
from replay import api
from rules.base import Rule, RuleParams
from rules.ruleset import load_ruleset
from tests.helpers import T0, bronze, event

TABLES = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES, schemas.REGION)


def full_fold(data: pa.Table, ruleset: str) -> dict[str, pa.Table]:
    """Every table of a full replay of ``data``, folded in memory through the same rules."""
    c = Compiled.of(load_ruleset(ruleset))
    valid, quarantine = c.validate(data)
    silver, dups = c.dedup(schemas.conform(valid, schemas.VALID_SCHEMA))
    minute, hourly, alerts = c.gold(silver)
    out = {schemas.SILVER: silver, schemas.QUARANTINE: quarantine, schemas.DUPLICATES: dups,
           schemas.MINUTE: minute, schemas.HOURLY: hourly, schemas.ALERTS: alerts}
    region = c.region(silver)
    if region is not None:
        out[schemas.REGION] = region
    return out


def _sorted(t: pa.Table, table: str) -> pa.Table:
    t = schemas.conform(t, schemas.SCHEMAS[table])
    return t.sort_by([(c, "ascending") for c in t.column_names if c != "raw_payload"])


def assert_equals_full(lake, data: pa.Table, ruleset: str) -> None:
    want = full_fold(data, ruleset)
    for table in TABLES:
        if table not in want:
            assert not lake.is_active(table), table
            continue
        got = _sorted(lake.read(table), table)
        exp = _sorted(want[table], table)
        assert got.num_rows == exp.num_rows, (table, got.num_rows, exp.num_rows)
        assert got.equals(exp), table


def step(lake, ruleset: str, expect: str = "incremental"):
    res = api.run(lake, ruleset)
    assert res.plan.mode == expect, res.plan.reasons
    assert res.conservation_ok
    return res


def _ingested(b: pa.Table, offsets: list[int]) -> pa.Table:
    return b.take(pa.array(offsets)).sort_by([("ingestion_timestamp", "ascending")])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(events=st.integers(50, 1500), tenants=st.integers(1, 6), seed=st.integers(0, 10**6),
       batches=st.integers(2, 4), shuffle=st.booleans(),
       ruleset=st.sampled_from(["2026-01", "2026-02", "2026-03"]), data=st.data())
def test_random_append_sequences_equal_a_full_replay_after_every_step(
        tmp_path_factory, events, tenants, seed, batches, shuffle, ruleset, data):
    """Batches are contiguous in ingestion order, or drawn at random (every batch then holds
    stragglers: rows ingested before rows already folded, copies of keys on both sides)."""
    b = generate(GeneratorConfig(events=events, tenants=tenants, seed=seed, days=0.1, dup_rate=0.2,
                                 late_rate=0.1, invalid_rate=0.05, plan_change_rate=0.3))
    n = b.num_rows
    if shuffle:
        owner = data.draw(st.lists(st.integers(0, batches - 1), min_size=n, max_size=n))
    else:
        cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=batches - 1, max_size=batches - 1)))
        owner = [sum(i >= c for c in cuts) for i in range(n)]
    lake = api.open_lake(tmp_path_factory.mktemp("inc") / "lake")
    seen: list[int] = []
    for k in range(batches):
        mine = [i for i in range(n) if owner[i] == k]
        if mine:
            append_new(lake, _ingested(b, mine), "t", {"source": "test"})
        seen += mine
        if not seen:
            continue
        res = api.run(lake, ruleset)
        assert res.plan.mode in (("full",) if k == 0 or len(seen) == len(mine) else
                                 ("incremental", None)), res.plan.reasons
        assert_equals_full(lake, b.take(pa.array(sorted(seen))), ruleset)


def _lake(tmp_path, payloads, ingestion, ruleset="2026-01", offsets=None):
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, bronze(payloads, ingestion, offsets=offsets), "t", {"source": "test"})
    api.run(lake, ruleset)
    return lake


def _append(lake, payloads, ingestion, offsets):
    append_new(lake, bronze(payloads, ingestion, offsets=offsets), "t", {"source": "test"})


def _all_bronze(lake) -> pa.Table:
    return lake.read(schemas.BRONZE)


def test_straggler_changes_dedup1_decisions_of_rows_already_folded(tmp_path):
    """Copies at 0 and 15 minutes are both kept (dedup@1: 15 > 10); a copy ingested at 8
    minutes arrives later: now 8 is a duplicate of 0 and 15 a duplicate of 8, so the kept
    row at 15 leaves Silver and its minute's count drops."""
    e = event(event_id="k", event_timestamp="2026-03-02T12:20:00Z")
    lake = _lake(tmp_path, [e, e], [T0, T0 + timedelta(minutes=15)])
    assert lake.read(schemas.SILVER).num_rows == 2
    _append(lake, [e], [T0 + timedelta(minutes=8)], [2])
    res = step(lake, "2026-01")
    assert lake.read(schemas.SILVER).num_rows == 1
    dups = lake.read(schemas.DUPLICATES).sort_by("kafka_offset").to_pylist()
    assert [(d["kafka_offset"], d["kept_kafka_offset"]) for d in dups] == [(1, 0), (2, 0)]
    assert res.plan.touched["rows"] == 1
    assert_equals_full(lake, _all_bronze(lake), "2026-01")


def test_late_event_in_an_old_minute_raises_an_alert(tmp_path):
    """free@1 (2026-01: no burst allowance) allows 60 per minute; the 61st event of an old
    minute arrives hours later."""
    evs = [event(event_id=f"e{i}", event_timestamp="2026-03-02T12:00:30Z") for i in range(60)]
    lake = _lake(tmp_path, evs, [T0 + timedelta(seconds=i) for i in range(60)], "2026-01")
    assert lake.read(schemas.ALERTS).num_rows == 0
    late = event(event_id="late", event_timestamp="2026-03-02T12:00:59Z")
    _append(lake, [late], [T0 + timedelta(hours=5)], [60])
    step(lake, "2026-01")
    alerts = lake.read(schemas.ALERTS).to_pylist()
    assert [(a["alert_type"], a["total_requests"], a["over_limit_count"]) for a in alerts] == [
        ("over_limit", 61, 1)]
    assert_equals_full(lake, _all_bronze(lake), "2026-01")


def test_plan_change_inside_a_window_makes_an_alert_disappear(tmp_path):
    """The minute's latest event decides its plan: a late enterprise event lifts the limit."""
    evs = [event(event_id=f"e{i}", event_timestamp="2026-03-02T12:00:30Z") for i in range(70)]
    lake = _lake(tmp_path, evs, [T0 + timedelta(seconds=i) for i in range(70)], "2026-01")
    assert lake.read(schemas.ALERTS).num_rows > 0
    up = event(event_id="up", event_timestamp="2026-03-02T12:00:58Z", subscription_plan="enterprise")
    _append(lake, [up], [T0 + timedelta(hours=2)], [70])
    step(lake, "2026-01")
    assert lake.read(schemas.ALERTS).num_rows == 0
    assert_equals_full(lake, _all_bronze(lake), "2026-01")


def test_late_event_shifts_burst_allowance_in_its_five_minute_window(tmp_path):
    """2026-02 has burst_allowance@1: a late event in minute 1 of a 5-minute window changes
    C(m) for the later minutes of that window, which hold no new event themselves."""
    evs = [event(event_id=f"a{i}", event_timestamp="2026-03-02T12:01:10Z") for i in range(120)]
    evs += [event(event_id=f"b{i}", event_timestamp="2026-03-02T12:03:10Z") for i in range(115)]
    ing = [T0 + timedelta(seconds=i) for i in range(len(evs))]
    lake = _lake(tmp_path, evs, ing, "2026-02")
    before = {r["window_start"]: r for r in lake.read(schemas.MINUTE).to_pylist()}
    late = [event(event_id=f"l{i}", event_timestamp="2026-03-02T12:01:20Z") for i in range(15)]
    _append(lake, late, [T0 + timedelta(hours=3, seconds=i) for i in range(15)],
            list(range(len(evs), len(evs) + 15)))
    step(lake, "2026-02")
    after = {r["window_start"]: r for r in lake.read(schemas.MINUTE).to_pylist()}
    m3 = [w for w in after if w.minute == 3][0]
    # free: limit 100, burst 30. Before: C(1)=20, C(3)=35 -> minute 3 over 5, burst 10.
    # After: C(1)=35, C(3)=50 -> minute 3 over 15, burst 0 (no new event in minute 3).
    assert (before[m3]["over_limit_count"], before[m3]["burst_allowance_used"]) == (5, 10)
    assert (after[m3]["over_limit_count"], after[m3]["burst_allowance_used"]) == (15, 0)
    assert_equals_full(lake, _all_bronze(lake), "2026-02")


def test_dedup2_copy_of_a_key_first_seen_days_ago_is_a_duplicate(tmp_path):
    e = event(event_id="old", event_timestamp="2026-03-02T12:00:00Z")
    lake = _lake(tmp_path, [e], [T0], "2026-02")
    _append(lake, [e], [T0 + timedelta(days=3)], [1])
    step(lake, "2026-02")
    assert lake.read(schemas.SILVER).num_rows == 1
    (dup,) = lake.read(schemas.DUPLICATES).to_pylist()
    assert dup["kept_kafka_offset"] == 0 and dup["rule"] == "dedup@2"
    assert_equals_full(lake, _all_bronze(lake), "2026-02")


def test_plan_reports_incremental_mode_rows_tenants_and_windows(tmp_path):
    lake = _lake(tmp_path, [event(event_id="a")], [T0])
    _append(lake, [event(event_id="b", tenant_id="beta", event_timestamp="2026-03-02T15:10:00Z")],
            [T0 + timedelta(hours=4)], [1])
    p = api.plan(lake, "2026-01")
    d = json.loads(json.dumps(p.to_dict(), default=str))
    assert d["mode"] == "incremental" and d["rows"] == 1 and d["files"] == 1
    assert d["touched"]["tenants"] == 1 and d["touched"]["tenant_sample"] == ["beta"]
    assert d["touched"]["event_time_from"].startswith("2026-03-02T15:10")
    assert d["tables"][-1] == schemas.DEDUP_STATE
    full = api.plan(lake, "2026-01", "full")
    assert full.mode == "full"


def test_incremental_refused_when_rules_changed_and_chosen_by_auto_only_when_exact(tmp_path):
    lake = _lake(tmp_path, [event(event_id="a")], [T0])
    _append(lake, [event(event_id="b")], [T0 + timedelta(minutes=1)], [1])
    with pytest.raises(UsageError, match="incremental is not possible"):
        api.plan(lake, "2026-02", "incremental")
    assert api.plan(lake, "2026-02").mode == "full"
    assert api.plan(lake, "2026-01", "incremental").mode == "incremental"


def test_rollback_of_a_step_restores_every_table_and_the_next_step_is_exact(tmp_path):
    e = event(event_id="k")
    lake = _lake(tmp_path, [e], [T0], "2026-01")
    _append(lake, [e, event(event_id="z")], [T0 + timedelta(minutes=30), T0 + timedelta(minutes=31)],
            [1, 2])
    res = step(lake, "2026-01")
    api.rollback(lake, res.plan.replay_id, "test")
    assert lake.read(schemas.SILVER).num_rows == 1
    assert api.plan(lake, "2026-01").mode == "incremental"
    step(lake, "2026-01")
    assert_equals_full(lake, _all_bronze(lake), "2026-01")


def test_key_index_is_rebuilt_after_a_full_replay_and_holds_no_clear_ids(tmp_path):
    e = event(event_id="k", tenant_id="acme-secret")
    lake = _lake(tmp_path, [e], [T0], "2026-02")
    _append(lake, [e], [T0 + timedelta(minutes=1)], [1])
    step(lake, "2026-02")
    idx = lake.read(schemas.DEDUP_STATE)
    # built from Silver at the first step (seq 1), then the step's row for the key (seq 2)
    assert sorted(idx.column("seq").to_pylist()) == [1, 2]
    assert len(set(idx.column("key").to_pylist())) == 1
    assert all(b"acme" not in k and len(k) == 16 for k in idx.column("key").to_pylist())
    api.run(lake, "2026-02", "full")
    assert not keystate.is_current(lake)
    _append(lake, [e], [T0 + timedelta(minutes=2)], [2])
    step(lake, "2026-02")
    assert keystate.is_current(lake)
    assert_equals_full(lake, _all_bronze(lake), "2026-02")


def test_compaction_of_unfolded_appends_falls_back_to_a_full_replay(tmp_path):
    lake = _lake(tmp_path, [event(event_id="a")], [T0], "2026-01")
    _append(lake, [event(event_id="b")], [T0 + timedelta(minutes=1)], [1])
    _append(lake, [event(event_id="c")], [T0 + timedelta(minutes=2)], [2])
    api.optimize(lake, tables=[schemas.BRONZE])
    p = api.plan(lake, "2026-01")
    assert p.mode == "full" and any("Bronze changed" in r for r in p.reasons)
    with pytest.raises(UsageError, match="compacted"):
        api.plan(lake, "2026-01", "incremental")
    step(lake, "2026-01", expect="full")
    assert pc.sum(lake.read(schemas.MINUTE).column("total_requests")).as_py() == 3


def test_readers_never_see_a_half_committed_rule_change(tmp_path):
    """A rule-change replay whose driver died after committing Silver's tables but not Gold's:
    `replay sql` and `diff --summary` read every table as it was before that replay."""
    import subprocess
    import sys

    from tests.lakes import ROOT

    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, generate(GeneratorConfig(events=3000, tenants=5, seed=2, days=0.1, dup_rate=0.3)),
               "t", {"source": "test"})
    api.run(lake, "2026-01")
    dups = lake.read(schemas.DUPLICATES).num_rows
    p = subprocess.run([sys.executable, "-m", "replay", "run", "--executor", "local", "--lake",
                        lake.root, "--ruleset", "2026-02", "--reason", "x"], cwd=ROOT,
                       capture_output=True, text=True,
                       env={**__import__("os").environ, "MEDALLION_FAULT_AFTER_COMMITS": "3"})
    assert p.returncode == 99, p.stderr
    assert lake.read(schemas.DUPLICATES).num_rows != dups  # dedup@2's duplicates are committed
    got = api.sql(lake, "SELECT count(*) AS n, count(*) FILTER (WHERE rule = 'dedup@2') AS v2 "
                        "FROM silver_duplicates").to_pylist()[0]
    assert got == {"n": dups, "v2": 0}
    api.recover(lake)  # settled: the half-committed tables are restored
    assert lake.read(schemas.DUPLICATES).num_rows == dups


def test_steps_continue_incrementally_after_an_erasure(tmp_path):
    b = generate(GeneratorConfig(events=4000, tenants=4, seed=3, days=0.2, dup_rate=0.1))
    n = b.num_rows
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, b.slice(0, n // 2), "t", {"source": "test"})
    api.run(lake, "2026-02")
    api.erase(lake, "tenant-00001", reason="gdpr")
    append_new(lake, b.slice(n // 2), "t", {"source": "test"})
    step(lake, "2026-02")  # the tenant's new rows are dropped at import; the rest is folded
    assert_equals_full(lake, _all_bronze(lake), "2026-02")
    assert "tenant-00001" not in lake.read(schemas.SILVER).column("tenant_id").to_pylist()


class BatchOnlyDedup(Rule):
    """A third-party dedup without ``apply_chunk`` (dedup@2's decisions, whole shards only)."""

    name, version, layer = "dedup", 90, "silver"
    Params = RuleParams

    @staticmethod
    def apply(params, valid):
        from rules.dedup_v2 import Dedup

        return Dedup.apply(Dedup.Params(), valid)


def test_a_dedup_rule_without_carried_state_recomputes_every_key_seen_before(tmp_path):
    from rules.registry import default_registry

    default_registry().register(BatchOnlyDedup)
    rs = load_ruleset("2026-02").with_rule("dedup", 90)
    b = generate(GeneratorConfig(events=1500, tenants=3, seed=5, days=0.1, dup_rate=0.3))
    lake = api.open_lake(tmp_path / "lake")
    n = b.num_rows
    for k, part in enumerate((b.slice(0, n // 2), b.slice(n // 2, n // 4), b.slice(3 * n // 4))):
        append_new(lake, part, "t", {"source": "test"})
        res = api.run(lake, rs)
        assert res.plan.mode == ("full" if k == 0 else "incremental")
    want = full_fold(_all_bronze(lake), "2026-02")
    for table in (schemas.SILVER, schemas.DUPLICATES, schemas.MINUTE):
        got = _sorted(lake.read(table), table)
        exp = _sorted(want[table], table)
        if table == schemas.DUPLICATES:  # the same rows, labelled with the rule that made them
            got, exp = got.drop_columns(["rule"]), exp.drop_columns(["rule"])
        assert got.equals(exp), table


def test_steps_after_optimize_stay_incremental_and_exact(tmp_path):
    b = generate(GeneratorConfig(events=3000, tenants=4, seed=6, days=0.2, dup_rate=0.1))
    n = b.num_rows
    lake = api.open_lake(tmp_path / "lake")
    append_new(lake, b.slice(0, n // 2), "t", {"source": "test"})
    api.run(lake, "2026-02")
    append_new(lake, b.slice(n // 2, n // 4), "t", {"source": "test"})
    step(lake, "2026-02")
    out = api.optimize(lake)  # folded Bronze files compacted; Gold ordered by window
    assert out[schemas.MINUTE]["zorder"] == ["window_start"]
    append_new(lake, b.slice(3 * n // 4), "t", {"source": "test"})
    step(lake, "2026-02")
    assert_equals_full(lake, _all_bronze(lake), "2026-02")


def test_a_scoped_replay_first_folds_what_bronze_gained_outside_its_scope(tmp_path):
    """A scoped replay records the Bronze version it read: rows appended before it for other
    tenants are folded first (a step with the active ruleset), never skipped."""
    lake = _lake(tmp_path, [event(event_id="a", tenant_id="acme")], [T0], "2026-01")
    _append(lake, [event(event_id="b", tenant_id="beta")], [T0 + timedelta(minutes=1)], [1])
    res = api.run(lake, "2026-01", tenants=["acme"], reason="acme only")
    assert res.plan.scope is not None
    kinds = [(r["mode"], r["reason"]) for r in api.history(lake) if r["kind"] == "replay"]
    assert ("incremental", "catch-up before a scoped replay") in kinds
    assert sorted(lake.read(schemas.SILVER).column("tenant_id").to_pylist()) == ["acme", "beta"]
    assert_equals_full(lake, _all_bronze(lake), "2026-01")
