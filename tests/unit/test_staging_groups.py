"""How staged rows are cut into files: partition values, clustering, input order."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from engine.contract import schemas
from engine.lake.staging import CLUSTER, _groups


def _rows(days: list[int | None]) -> pa.Table:
    base = date(2026, 3, 1)
    return pa.table({"i": list(range(len(days))),
                     "d": pa.array([None if d is None else base + timedelta(days=d) for d in days],
                                   pa.date32())})


def test_contiguous_partitions_are_sliced_in_input_order():
    out = _groups(_rows([0, 0, 1, 1, 1, None]), "d", None)
    assert [(p, t.column("i").to_pylist()) for p, t in out] == [
        ((("d", "2026-03-01"),), [0, 1]), ((("d", "2026-03-02"),), [2, 3, 4]), ((("d", None),), [5])]
    assert all("d" not in t.column_names for _, t in out)


def test_interleaved_partitions_keep_each_values_rows_in_input_order():
    out = _groups(_rows([1, 0, 1, None, 0, 1]), "d", None)
    assert sorted((p[0][1] or "", t.column("i").to_pylist()) for p, t in out) == [
        ("", [3]), ("2026-03-01", [1, 4]), ("2026-03-02", [0, 2, 5])]


def test_a_clustered_table_is_sorted_and_cut_per_day():
    t0 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
    ts = [t0 + timedelta(minutes=m) for m in (3, 0, 1, -5)]
    minute = pa.table({"i": [0, 1, 2, 3], "window_start": pa.array(ts, schemas.TS)})
    assert CLUSTER[schemas.MINUTE] == ("window_start", True)
    out = _groups(minute, None, CLUSTER[schemas.MINUTE])
    assert [t.column("i").to_pylist() for _, t in out] == [[3, 1], [2, 0]]
