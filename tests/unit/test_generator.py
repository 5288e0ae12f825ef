"""The generator formats text with NumPy byte matrices: check it against Python, row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow.compute as pc

from engine.ingest.generator import US, GeneratorConfig, _fmt_ts, _ids, generate


def test_timestamps_match_python_formatting_across_calendar_edges():
    edges = [datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC),
             datetime(2100, 3, 1, 0, 0, 0, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 30, tzinfo=UTC),
             datetime(2000, 2, 29, 12, tzinfo=UTC), datetime(2026, 12, 31, 22, 0, tzinfo=UTC)]
    rng = np.random.default_rng(1)
    ts = np.array([int(d.timestamp()) * US + d.microsecond for d in edges]
                  + list(rng.integers(0, 4_000_000_000 * US, 2000)), dtype=np.int64)
    offsets = np.array([0, 330, -300, 60, 120, 330] + list(rng.choice([0, -300, 60, 120, 330], 2000)))
    got = _fmt_ts(ts, offsets).to_pylist()
    for t, off, text in zip(ts.tolist(), offsets.tolist(), got, strict=True):
        local = datetime.fromtimestamp(t // US, tz=timezone(timedelta(minutes=off))).replace(
            microsecond=t % US)
        want = local.strftime("%Y-%m-%dT%H:%M:%S.%f") + (
            "Z" if off == 0 else f"{'-' if off < 0 else '+'}{abs(off) // 60:02d}:{abs(off) % 60:02d}")
        assert text == want
        back = datetime.fromisoformat(text.replace("Z", "+00:00")) - datetime(1970, 1, 1, tzinfo=UTC)
        assert back // timedelta(microseconds=1) == t


def test_ids_are_zero_padded_and_nullable():
    out = _ids("evt-", np.array([0, 42, 9_999_999_999]), 10, np.array([True, False, True]))
    assert out.to_pylist() == ["evt-0000000000", None, "evt-9999999999"]


def test_payloads_agree_with_the_extracted_columns_and_ingestion_order():
    t = generate(GeneratorConfig(events=30_000, tenants=50, days=1, seed=9, invalid_rate=0.05))
    ing = t.column("ingestion_timestamp").to_pylist()
    assert ing == sorted(ing)
    v2_seen = 0
    for row in t.slice(0, 30_000).to_pylist():
        try:
            obj = json.loads(row["raw_payload"])
        except (ValueError, UnicodeDecodeError):
            obj = None
        if row["event_timestamp"] is None:  # an invalid message: nothing extracted
            assert row["event_id"] is None and row["tenant_id"] is None
            continue
        assert obj["event_id"] == row["event_id"] and obj["tenant_id"] == row["tenant_id"]
        ts = datetime.fromisoformat(obj["event_timestamp"].replace("Z", "+00:00"))
        assert ts == row["event_timestamp"]
        assert row["kafka_key"] == row["tenant_id"].encode()
        v2_seen += "user_id" in obj
    assert 0 < v2_seen < t.num_rows
    # offsets count up per partition in ingestion order
    for p in range(4):
        offs = t.filter(pc.equal(t.column("kafka_partition"), p)).column("kafka_offset").to_pylist()
        assert offs == list(range(len(offs)))
