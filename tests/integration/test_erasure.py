"""docs/semantics.md §9 end to end: erase, equal to a replay without the rows, nothing comes back, purge."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.contract import schemas
from engine.contract.errors import VersionGoneError
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from tests.helpers import T0, bronze, event
from tests.lakes import assert_same_tables

R = "2026-03-02T12:30:00Z"


def crafted() -> pa.Table:
    """The subject's edge cases, around the request time R = T0 + 30 min."""
    ts = lambda m: (T0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    rows = [
        event(event_id="ERASE-ME-1", tenant_id="acme", user_id="u1", event_timestamp=ts(1)),
        event(event_id="ERASE-ME-2", tenant_id="acme", user_id="u2", event_timestamp=ts(2)),
        event(event_id="KEEP-AFTER-R", tenant_id="acme", user_id="u1", event_timestamp=ts(45)),
        event(event_id="KEEP-OTHER-TENANT", tenant_id="beta", user_id="u1", event_timestamp=ts(3)),
        # a copy of one key before R and one after R: the later copy survives and is kept
        event(event_id="ERASE-ME-DUP", tenant_id="acme", user_id="u1", event_timestamp=ts(4)),
        event(event_id="ERASE-ME-DUP", tenant_id="acme", user_id="u1", event_timestamp=ts(50)),
        b'{"event_id": "ERASE-ME-NAN", "tenant_id": "acme", "user_id": "u1", "latency_ms": NaN}',
        b'\xef\xbb\xbf{"event_id": "ERASE-ME-BOM", "tenant_id": "acme", "user_id": "u1"}',
        event(event_id="ERASE-ME-BADTS", tenant_id="acme", user_id="u1", event_timestamp="noon"),
        event(event_id="ERASE-ME-NUMTS", tenant_id="acme", user_id="u1", event_timestamp=5),
    ]
    ing = [T0 + timedelta(minutes=i) for i in range(len(rows))]
    ing[2], ing[5] = T0 + timedelta(minutes=46), T0 + timedelta(minutes=51)
    return bronze(rows, ing, topic="crafted")


@pytest.fixture
def lake(tmp_path):
    lk = api.open_lake(tmp_path / "lake")
    append_new(lk, generate(GeneratorConfig(events=8000, tenants=6, days=0.2, seed=4)), "gen",
               {"source": "gen"})
    append_new(lk, crafted(), "crafted", {"source": "crafted"})
    return lk


def replayed_without_erased(lake, tmp_path, ruleset: str):
    """A fresh lake holding the remaining Bronze, replayed in full: what the tables must equal."""
    ref = api.open_lake(tmp_path / "ref")
    append_new(ref, lake.read(schemas.BRONZE), "ref", {"source": "ref"})
    api.run(ref, ruleset, reason="reference")
    return ref


def event_ids(lake) -> set[str]:
    return set(api.sql(lake, "SELECT event_id FROM silver_api_usage").column("event_id").to_pylist())


@pytest.mark.parametrize("ruleset", ["2026-01", "2026-02"])
def test_person_erasure_equals_a_replay_without_the_rows(lake, tmp_path, ruleset):
    first = api.run(lake, ruleset, reason="before")
    exp = api.Experiment(lake, "2026-03" if ruleset == "2026-02" else "free-100").run()
    res = api.erase(lake, "acme", "u1", R, reason="art. 17 request")
    assert res["rows_erased"] == 6  # u1's rows at or before R, the NaN/BOM/bad-timestamp ones too
    assert res["experiments_dropped"] == [exp.name] and api.experiments(lake) == []
    assert_same_tables(lake, replayed_without_erased(lake, tmp_path, ruleset))
    ids = event_ids(lake)
    assert {"KEEP-AFTER-R", "KEEP-OTHER-TENANT", "ERASE-ME-2", "ERASE-ME-DUP"} <= ids  # DUP: later copy
    assert not {"ERASE-ME-1", "ERASE-ME-NAN", "ERASE-ME-BOM"} & ids
    assert api.plan(lake, ruleset).up_to_date
    # the ledger and the tombstone hold no clear identifier
    row = [r for r in api.history(lake) if r["kind"] == "erasure"][0]
    assert row["status"] == "success" and "acme" not in json.dumps(row, default=str)
    assert "acme" not in json.dumps(lake.read(schemas.ERASURES).to_pylist(), default=str)
    # rollback, time travel and diffs to a state before it are refused, naming it
    for refused in (lambda: api.rollback(lake, first.plan.replay_id, "undo"),
                    lambda: api.sql(lake, f'SELECT * FROM "silver_api_usage@{first.plan.replay_id}"'),
                    lambda: api.diff(lake, schemas.SILVER, f"{first.plan.replay_id}:before")):
        with pytest.raises(VersionGoneError, match=f"erasure {res['erasure_id']}"):
            refused()


def test_tenant_erasure_and_re_import_drops_the_subject(lake, tmp_path):
    api.run(lake, "2026-02", reason="before")
    res = api.erase(lake, "acme", requested_at=R, reason="tenant leaves")
    assert res["rows_erased"] == 7
    assert_same_tables(lake, replayed_without_erased(lake, tmp_path, "2026-02"))
    again = append_new(lake, crafted(), "crafted", {"source": "re-import of an old archive"})
    assert again.rows_erased == 7 and again.rows_added == 0  # the rest is already there
    assert api.plan(lake, "2026-02").up_to_date


def test_a_failed_erasure_keeps_its_deletes_restores_derived_tables_and_others_appends(lake, monkeypatch):
    """Policy of kind ``erasure`` (engine/txn): an erasure that fails midway keeps its deletes
    (Bronze is never restored: an ingest that committed meanwhile keeps its rows, and erased
    rows never come back), restores Silver and Gold, and records the new floors."""
    api.run(lake, "2026-01", reason="before")
    derived = {t: lake.version(t) for t in (schemas.SILVER, schemas.DUPLICATES, *schemas.GOLD_TABLES)}
    bronze_before = lake.version(schemas.BRONZE)
    import engine.lifecycle.erasure as erasure

    late = bronze([event(event_id=f"LATE-{i}", tenant_id="gamma") for i in range(5)], topic="late")

    def boom(*a, **k):  # an ingest commits while the erasure recomputes, then a worker dies
        append_new(lake, late, "late", {"source": "concurrent ingest"})
        raise RuntimeError("worker lost")

    monkeypatch.setattr(erasure, "compute", boom)
    with pytest.raises(RuntimeError, match="worker lost"):
        api.erase(lake, "acme", requested_at=R, reason="x")
    row = [r for r in api.history(lake) if r["kind"] == "erasure"][0]
    assert row["status"] == "failed"
    raw = b"\n".join(lake.read(schemas.BRONZE, columns=["raw_payload"]).column(0).to_pylist())
    ids = {i for i in [*(f"LATE-{i}" for i in range(5)), "ERASE-ME-1", "ERASE-ME-2"]
           if f'"{i}"'.encode() in raw}
    assert {f"LATE-{i}" for i in range(5)} <= ids  # the concurrent append survived
    assert not {"ERASE-ME-1", "ERASE-ME-2"} & ids  # the deletes stay
    for t, v in derived.items():  # Silver and Gold as they were
        assert lake.read(t).sort_by([(k, "ascending") for k in schemas.KEYS[t]]).equals(
            lake.read(t, v).sort_by([(k, "ascending") for k in schemas.KEYS[t]])), t
    with pytest.raises(VersionGoneError):  # Bronze before the deletes held the erased rows
        lake.check_readable(schemas.BRONZE, bronze_before)
    assert {r["status"] for r in api.history(lake)} == {"success", "failed"}
    monkeypatch.undo()
    api.erase(lake, "acme", requested_at=R, reason="again")  # running it again completes it
    assert not {"ERASE-ME-1", "ERASE-ME-2"} & event_ids(lake)
    api.run(lake, "2026-01", reason="fold the late rows")  # Silver lagged behind the ingest
    assert_same_tables(lake, replayed_without_erased(lake, lake_tmp(lake), "2026-01"))


def lake_tmp(lake):
    from pathlib import Path

    return Path(lake.root.removeprefix("file://")).parent


def test_after_vacuum_nothing_of_an_erased_row_is_left_under_the_lake(lake):
    api.run(lake, "2026-01", reason="before")
    api.optimize(lake)
    api.run(lake, "2026-02", reason="more versions")
    api.erase(lake, "acme", "u1", R, reason="purge")
    api.vacuum(lake, retain_hours=0)
    secrets = [b"ERASE-ME-1", b"ERASE-ME-NAN", b"ERASE-ME-BOM", b"ERASE-ME-BADTS"]
    scanned = 0
    for d, _, files in os.walk(lake.root):
        for f in files:
            path = os.path.join(d, f)
            data = open(path, "rb").read()  # noqa: SIM115
            assert not any(s in data for s in secrets), path
            if f.endswith(".parquet"):
                text = json.dumps(pq.read_table(path).to_pylist(), default=repr).encode()
                assert not any(s in text for s in secrets), path
                scanned += 1
    assert scanned > 5
    assert "ERASE-ME-2" in event_ids(lake)  # u2's rows are not the subject's


def test_rewritten_files_keep_plain_string_types_so_filters_push_down(lake):
    """Copy-on-write rewrites (erasure, scoped replays) store strings as Arrow strings: pyarrow
    cannot filter files of string views next to files of strings."""
    api.run(lake, "2026-02", reason="before")
    api.erase(lake, "acme", "u1", R, reason="x")
    api.run(lake, "2026-01", tenants=["beta"], reason="scoped")
    for table in (schemas.BRONZE, *schemas.SILVER_TABLES, *schemas.GOLD_TABLES):
        for path in lake.table(table).file_uris():
            assert "string_view" not in str(pq.read_schema(path)), (table, path)
    count = "SELECT count(*) AS n FROM {} WHERE {} = $v"
    assert api.sql(lake, count.format("bronze_api_usage", "kafka_topic"), {"v": "crafted"}
                   ).to_pylist()[0]["n"] == 4  # beta's row, u2's row, the two after R
    assert api.sql(lake, count.format("silver_api_usage", "tenant_id"), {"v": "acme"}
                   ).to_pylist()[0]["n"] == 3
    assert api.sql(lake, "SELECT count(*) AS n FROM enforcement_alerts WHERE tenant_id = $t",
                   {"t": "beta"}).num_rows == 1
