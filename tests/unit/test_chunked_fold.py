"""A shard over its memory budget is folded in ingestion-time chunks; the result must not change.

Each test folds the same rows once whole and once in as many chunks as the data allows
(a budget of 1 byte), and compares every table row for row.
"""

from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contract import schemas
from engine.execution.specs import ReduceSpec
from engine.execution.workers import reduce_shard
from engine.fold.chunks import PROCESS_BASE, time_chunks, working_budget
from engine.ingest.generator import GeneratorConfig, generate
from rules._dedup import STATE_SCHEMA, split_duplicates
from rules.ruleset import load_ruleset
from tests.helpers import T0, bronze, compiled, event

TABLES = ("silver", "duplicates", "minute", "hourly", "alerts", "region")


def _rows(table: pa.Table) -> list[str]:
    return sorted(map(repr, table.to_pylist()))


def fold_shard(bronze_rows: pa.Table, ruleset: str, budget: int) -> tuple[dict[str, pa.Table], int]:
    valid, _ = compiled(ruleset).validate(bronze_rows)
    half = valid.num_rows // 2  # two map pieces, as two map tasks would hand over
    res = reduce_shard(ReduceSpec(0, "full", load_ruleset(ruleset), memory_budget=budget),
                       valid.slice(0, half), valid.slice(half))
    return {t: getattr(res, t) for t in TABLES if getattr(res, t) is not None}, res.chunks


def assert_same_fold(bronze_rows: pa.Table, ruleset: str, budget: int = 1, min_chunks: int = 3) -> dict:
    whole, n1 = fold_shard(bronze_rows, ruleset, 0)
    chunked, n = fold_shard(bronze_rows, ruleset, budget)
    assert n1 == 1 and n >= min_chunks
    assert chunked.keys() == whole.keys()
    for t in chunked:
        assert _rows(chunked[t]) == _rows(whole[t]), t
    return chunked


def _ingested(minutes: list[float]) -> list:
    return [T0 + timedelta(minutes=m) for m in minutes]


@pytest.mark.parametrize("ruleset", ["2026-01", "2026-02"])
def test_dedup1_chain_crosses_every_chunk(ruleset):
    # 8 minutes apart: under dedup@1 every copy is a duplicate of the first, chunk after chunk
    out = assert_same_fold(bronze([event()] * 12, _ingested([8 * i for i in range(12)])), ruleset)
    assert out["silver"].num_rows == 1
    assert set(out["duplicates"].column("kept_kafka_offset").to_pylist()) == {0}


def test_dedup1_forgets_a_key_only_after_its_horizon():
    # gaps: 5 (dup), 11 (kept: more than 10 after the previous copy), 10 (dup, exactly 10)
    out = assert_same_fold(bronze([event()] * 4, _ingested([0, 5, 16, 26])), "2026-01")
    kept = {r["kafka_offset"]: r["kept_kafka_offset"] for r in out["duplicates"].to_pylist()}
    assert sorted(out["silver"].column("kafka_offset").to_pylist()) == [0, 2] and kept == {1: 0, 3: 2}


def test_dedup2_remembers_a_key_for_the_whole_history():
    out = assert_same_fold(bronze([event()] * 3, _ingested([0, 60 * 24, 60 * 48])), "2026-02")
    assert out["silver"].num_rows == 1 and out["duplicates"].num_rows == 2


def test_ties_at_a_chunk_boundary_stay_in_one_chunk():
    # three copies ingested at the same instant: partition, then offset decides
    ing = [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=1), T0 + timedelta(minutes=1)]
    rows = bronze([event(event_id="x"), event(), event(), event()], ing,
                  partitions=[0, 2, 1, 1], offsets=[0, 0, 9, 5])
    out = assert_same_fold(rows, "2026-02", min_chunks=2)
    assert [(r["kafka_partition"], r["kafka_offset"]) for r in out["silver"].to_pylist()
            if r["event_id"] == "e1"] == [(1, 5)]


def test_late_events_count_in_the_minute_of_an_earlier_chunk():
    # one minute of event time, its events ingested hours apart: counts, errors and plan merge
    evs = [event(event_id=f"e{i}", event_timestamp=f"2026-03-02T12:00:{i:02d}Z",
                 subscription_plan="free" if i < 4 else "starter", status_code=500 if i % 2 else 200)
           for i in range(6)]
    ing = _ingested([0, 90, 180, 240, 300, 5])  # the latest event (e5) is ingested second
    out = assert_same_fold(bronze(evs, ing), "2026-01")
    (minute,) = out["minute"].to_pylist()
    assert minute["total_requests"] == 6 and minute["error_requests"] == 3
    assert minute["subscription_plan"] == "starter"


def test_burst_window_spanning_chunks():
    # 5-minute burst window: 120 free events (limit 100) per minute, ingested minute by minute
    evs, ing = [], []
    for m in range(5):
        for i in range(120):
            evs.append(event(event_id=f"m{m}-{i}", event_timestamp=f"2026-03-02T12:0{m}:{i % 60:02d}Z"))
            ing.append(T0 + timedelta(minutes=m, microseconds=i))
    out = assert_same_fold(bronze(evs, ing), "2026-02", budget=20_000)
    used = out["minute"].sort_by("window_start").column("burst_allowance_used").to_pylist()
    assert used == [20, 10, 0, 0, 0]  # the free allowance of 30 per 5 minutes, used up in minute 2


def test_region_hours_add_up_across_chunks_with_null_as_its_own_region():
    regions = ["eu-west-1", None, "eu-west-1", "us-east-1", None, "eu-west-1"] * 3
    evs = [event(event_id=str(i), **({"data_residency_region": r} if r else {}),
                 status_code=503 if i % 4 == 0 else 200) for i, r in enumerate(regions)]
    out = assert_same_fold(bronze(evs, _ingested(list(range(len(evs))))), "2026-03")
    got = {r["data_residency_region"]: (r["total_requests"], r["error_requests"])
           for r in out["region"].to_pylist()}
    assert got == {"eu-west-1": (9, 3), None: (6, 2), "us-east-1": (3, 0)}


def test_chunk_bounds_split_by_ingestion_time():
    rows = bronze([event(event_id=str(i)) for i in range(100)],
                  [T0 + timedelta(seconds=i // 10) for i in range(100)])
    valid, _ = compiled().validate(rows)
    bounds = time_chunks((valid,), valid.nbytes)  # a quarter of it for the work: 16 chunks
    assert bounds[0][0] is None and bounds[-1][1] is None and len(bounds) >= 3
    for (_, hi), (lo, _) in zip(bounds[:-1], bounds[1:], strict=True):
        assert hi == lo
    assert time_chunks((valid,), 0) == [(None, None)]
    assert time_chunks((valid,), PROCESS_BASE + 5 * valid.nbytes) == [(None, None)]


def test_the_working_budget_leaves_room_for_the_process_and_the_resident_input():
    """A task's memory holds the process, its shard's pieces (in memory or mapped: every
    chunk reads them) and one chunk's work; the work gets a quarter of it at least."""
    gib, mib = 1 << 30, 1 << 20
    assert working_budget(2 * gib) == 2 * gib - PROCESS_BASE
    assert working_budget(2 * gib, 700 * mib) == 2 * gib - PROCESS_BASE - 700 * mib
    assert working_budget(2 * gib, 3 * gib) == working_budget(2 * gib, 2 * gib) == gib // 2


@given(seed=st.integers(0, 10_000), dup=st.floats(0, 0.5), ruleset=st.sampled_from(["2026-01", "2026-02", "2026-03"]))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.slow
def test_generated_history_folds_the_same_in_chunks(seed, dup, ruleset):
    cfg = GeneratorConfig(events=600, tenants=5, days=1, seed=seed, dup_rate=dup, invalid_rate=0.02)
    rows = generate(cfg)
    valid, _ = compiled(ruleset).validate(rows)
    budget = max(1, valid.nbytes * 4 // 6)  # about six chunks
    assert_same_fold(rows, ruleset, budget=budget, min_chunks=3)


def test_the_carried_state_holds_one_row_per_key_null_keys_included():
    """The state after each chunk: a key's last copy, once, however many chunks saw it; a key
    with a NULL part (a custom validate rule may let one through) is one key, as GROUP BY
    has it, not a new row per chunk."""

    rows = bronze([event(event_id=str(i % 3)) for i in range(9)], _ingested(list(range(9))))
    valid = schemas.conform(compiled().validate(rows)[0], schemas.VALID_SCHEMA)
    ids = pa.array(["a", None, "b"] * 3, pa.string())
    valid = valid.set_column(valid.schema.get_field_index("event_id"), "event_id", ids)
    state = STATE_SCHEMA.empty_table()
    for lo in range(0, 9, 3):  # three chunks, each with every key once
        chunk = valid.slice(lo, 3)
        until = chunk.column("ingestion_timestamp")[-1]
        _, _, state = split_duplicates(chunk, "false", "dedup@t", prior=state, until=until)
        keys = sorted(state.select(["tenant_id", "event_id"]).to_pylist(), key=str)
        assert len(keys) == 3 and len({(k["tenant_id"], k["event_id"]) for k in keys}) == 3
        last = {r["event_id"]: r["kafka_offset"] for r in state.to_pylist()}
        assert last == {k: o for k, o in zip(["a", None, "b"], chunk.column("kafka_offset").to_pylist(),
                                             strict=True)}
