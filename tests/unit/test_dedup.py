"""docs/semantics.md §3.2: dedup@1 (10-minute horizon, chains) vs dedup@2 (global), keyed per tenant."""

from __future__ import annotations

from datetime import timedelta

from tests.helpers import T0, event, fold


def _lineage(table):
    return sorted((r["kafka_partition"], r["kafka_offset"]) for r in table.to_pylist())


def test_copy_within_ten_minutes_is_a_duplicate_in_both():
    ing = [T0, T0 + timedelta(minutes=10)]  # exactly 10 minutes: still a duplicate
    for rs in ("2026-01", "2026-02"):
        out = fold([event(), event()], rs, ingestion=ing)
        assert out["silver"].num_rows == 1 and out["duplicates"].num_rows == 1


def test_copy_after_more_than_ten_minutes_is_kept_by_dedup1_only():
    ing = [T0, T0 + timedelta(minutes=10, microseconds=1)]
    assert fold([event(), event()], "2026-01", ingestion=ing)["silver"].num_rows == 2
    assert fold([event(), event()], "2026-02", ingestion=ing)["silver"].num_rows == 1


def test_dedup1_chain_counts_from_the_previous_copy_kept_or_not():
    # copies 8 minutes apart: each is within 10 min of the previous one, so all are duplicates
    ing = [T0 + timedelta(minutes=8 * i) for i in range(4)]
    out = fold([event()] * 4, "2026-01", ingestion=ing)
    assert out["silver"].num_rows == 1 and out["duplicates"].num_rows == 3
    kept = {(r["kept_kafka_partition"], r["kept_kafka_offset"]) for r in out["duplicates"].to_pylist()}
    assert kept == {(0, 0)}


def test_dedup1_nearest_earlier_kept_copy():
    # 0 kept; +5 dup of 0; +20 kept (15 > 10 after previous); +25 dup of the copy at +20
    ing = [T0 + timedelta(minutes=m) for m in (0, 5, 20, 25)]
    out = fold([event()] * 4, "2026-01", ingestion=ing)
    assert _lineage(out["silver"]) == [(0, 0), (0, 2)]
    kept = {r["kafka_offset"]: r["kept_kafka_offset"] for r in out["duplicates"].to_pylist()}
    assert kept == {1: 0, 3: 2}


def test_ingestion_ties_are_broken_by_partition_then_offset():
    ing = [T0, T0, T0]
    out = fold([event(endpoint="/a"), event(endpoint="/b"), event(endpoint="/c")], "2026-02",
               ingestion=ing, partitions=[2, 1, 1], offsets=[0, 9, 5])
    assert _lineage(out["silver"]) == [(1, 5)]
    assert out["silver"].column("endpoint").to_pylist() == ["/c"]


def test_kept_copy_fields_are_used_downstream():
    ing = [T0, T0 + timedelta(minutes=1)]
    out = fold([event(status_code=500), event(status_code=200)], "2026-02", ingestion=ing)
    assert out["minute"].column("error_requests").to_pylist() == [1]


def test_same_event_id_for_two_tenants_is_never_deduplicated():
    ing = [T0, T0 + timedelta(seconds=1)]
    for rs in ("2026-01", "2026-02"):
        out = fold([event(tenant_id="a"), event(tenant_id="b")], rs, ingestion=ing)
        assert out["silver"].num_rows == 2 and out["duplicates"].num_rows == 0


def test_invalid_copies_do_not_count_as_previous_copies():
    ing = [T0, T0 + timedelta(minutes=5), T0 + timedelta(minutes=12)]
    out = fold([event(), event(status_code=999), event()], "2026-01", ingestion=ing)
    # the invalid copy is quarantined; the previous *valid* copy is 12 minutes back: kept
    assert out["silver"].num_rows == 2 and out["quarantine"].num_rows == 1


def test_duplicates_table_carries_rule_and_lineage():
    out = fold([event(), event()], "2026-02", ingestion=[T0, T0 + timedelta(hours=5)])
    row = out["duplicates"].to_pylist()[0]
    assert row["rule"] == "dedup@2" and row["kept_ingestion_timestamp"] == T0
    assert row["event_id"] == "e1" and row["tenant_id"] == "acme"


def test_silver_event_date_is_the_utc_date_of_event_timestamp():
    e = event(event_timestamp="2026-03-02T00:30:00+01:00")  # 2026-03-01 23:30 UTC
    row = fold([e], "2026-02", ingestion=[T0])["silver"].to_pylist()[0]
    assert str(row["event_date"]) == "2026-03-01"
