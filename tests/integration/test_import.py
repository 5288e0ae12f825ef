"""replay import: JSONL byte for byte, idempotent; Bronze archives; clear errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.contract import schemas
from engine.contract.errors import InputError
from replay import api


def test_jsonl_lines_land_byte_for_byte(lake, tmp_path):
    lines = [b'{"event_id": "a"}', b"", b"\xff\xfe not utf8", b"not json", b'{"x": NaN}\r']
    f = tmp_path / "events.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    res = api.import_file(lake, f)
    assert (res.rows_read, res.rows_added) == (5, 5)
    got = lake.read(schemas.BRONZE).sort_by("kafka_offset")
    assert got.column("raw_payload").to_pylist() == lines
    assert set(got.column("kafka_topic").to_pylist()) == {"events.jsonl"}
    assert got.column("kafka_offset").to_pylist() == [0, 1, 2, 3, 4]
    assert set(got.column("kafka_partition").to_pylist()) == {0}
    assert got.column("event_id").to_pylist()[0] == "a"
    again = api.import_file(lake, f)
    assert again.rows_added == 0 and lake.read(schemas.BRONZE).num_rows == 5


def test_jsonl_file_grown_later_adds_only_new_lines(lake, tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"a\nb\n")
    api.import_file(lake, f, topic="src")
    f.write_bytes(b"a\nb\nc\n")
    assert api.import_file(lake, f, topic="src").rows_added == 1


def test_file_without_final_newline(lake, tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"a\nb")
    assert api.import_file(lake, f).rows_added == 2


def test_bronze_parquet_wrong_columns_is_refused_and_writes_nothing(lake, tmp_path):
    f = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"raw_payload": [b"x"], "foo": [1]}), f)
    with pytest.raises(InputError, match="not a Bronze archive: missing"):
        api.import_file(lake, f, "bronze-parquet")
    assert not lake.exists(schemas.BRONZE)


def test_missing_and_unreadable_files(lake, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        api.import_file(lake, tmp_path / "nope.jsonl")
    g = tmp_path / "garbage.parquet"
    g.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="Parquet"):
        api.import_file(lake, g, "bronze-parquet")
    assert not lake.exists(schemas.BRONZE)


def test_bronze_archive_skips_existing_keys(lake, tmp_path):
    from tests.helpers import bronze, event

    t = bronze([event(event_id=str(i)) for i in range(5)])
    f = tmp_path / "a.parquet"
    pq.write_table(t.slice(0, 3), f)
    assert api.import_file(lake, f, "bronze-parquet").rows_added == 3
    pq.write_table(t, f)
    res = api.import_file(lake, f, "bronze-parquet")
    assert (res.rows_added, res.rows_skipped) == (2, 3)
