"""replay import while other writers commit to Bronze: it finishes, and every row lands once.

Races are made deterministic with the test hook ``MEDALLION_FAULT_LOSE_RACES=N`` (the first
N fenced Bronze commits of the process lose their race: a neutral barrier commit lands right
before each), with a stand-in import that lands between an import's snapshot and its commit,
or with real processes committing in a loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import pytest

from engine.contract import schemas
from engine.execution import faults
from engine.ingest import importers
from engine.lake.tables import Lake
from replay import api
from tests.lakes import ROOT, orphans

KEY = ["kafka_topic", "kafka_partition", "kafka_offset"]


def jsonl(path, n, tag):
    path.write_text("".join(json.dumps({"event_id": f"{tag}{i}", "tenant_id": f"t{i % 5}",
                                        "pad": "x" * 50}) + "\n" for i in range(n)))
    return path


def assert_exactly_once(part_lakes, expected):
    """The keys of Bronze (hot and archive together) are exactly ``expected``, each once."""
    keys = []
    for lk in part_lakes:
        t = lk.read(schemas.BRONZE, columns=KEY)
        keys += list(zip(*(t.column(k).to_pylist() for k in KEY), strict=True))
    assert len(keys) == len(set(keys)), "a row landed twice"
    assert set(keys) == expected


def keys_of(topic, n):
    return {(topic, 0, i) for i in range(n)}


@pytest.fixture
def lose_races(monkeypatch):
    """Arm the hook in this process: the next ``n`` fenced Bronze commits lose their race."""
    def arm(n):
        monkeypatch.setattr(faults, "_races_lost", 0)
        monkeypatch.setenv("MEDALLION_FAULT_LOSE_RACES", str(n))
    yield arm
    monkeypatch.setattr(faults, "_races_lost", 0)


def test_import_outlasts_more_lost_races_than_it_used_to_allow(lake, tmp_path, lose_races):
    """Defect 3: an import gave up ("concurrent commit") after five lost races; steady
    ingest beats it that often. It now retries (re-reading the snapshot) until it commits."""
    f = jsonl(tmp_path / "a.jsonl", 500, "a")
    api.import_file(lake, jsonl(tmp_path / "seed.jsonl", 10, "s"))  # Bronze exists, holds rows
    lose_races(12)
    res = api.import_file(lake, f)
    assert (res.rows_read, res.rows_added, res.rows_skipped) == (500, 500, 0)
    assert faults._races_lost == 12
    assert_exactly_once([lake], keys_of("a.jsonl", 500) | keys_of("seed.jsonl", 10))
    assert res.bronze_version == lake.version(schemas.BRONZE)
    assert orphans(lake) == []


@pytest.fixture
def lands_first(monkeypatch):
    """``lands_first(fn)``: ``fn`` (another import) runs once, when the import under test first
    writes rows (stages its files, or writes them), i.e. after it checked which keys Bronze
    holds and before its commit."""
    def arm(fn):
        fired = []

        def wrap(real):
            def write_or_stage(self, *args, **kwargs):
                if not fired:
                    fired.append(None)
                    fired[0] = fn()
                return real(self, *args, **kwargs)
            return write_or_stage

        monkeypatch.setattr(Lake, "stage", wrap(Lake.stage))
        monkeypatch.setattr(Lake, "write", wrap(Lake.write))
        return fired
    return arm


def test_import_racing_an_import_of_the_same_file_adds_each_row_once(lake, tmp_path, lands_first):
    """The same file imported twice at once: the second lands between the first's key check
    and its commit. The first's retry checks the keys against the new snapshot: it adds
    only what is still missing (here: nothing), never a row twice."""
    f = jsonl(tmp_path / "same.jsonl", 400, "s")
    lake.ensure(schemas.BRONZE)
    other = lands_first(lambda: api.import_file(lake, f))
    res = api.import_file(lake, f)
    assert other[0].rows_added == 400
    assert (res.rows_added, res.rows_skipped) == (0, 400)
    assert_exactly_once([lake], keys_of("same.jsonl", 400))
    assert orphans(lake) == []


def test_erasure_landing_mid_import_is_honoured_by_the_retry(lake, tmp_path, lands_first):
    """An erasure records its tombstone and commits a barrier after the import read the
    tombstones: its commit loses the race, and the retry drops the subject's rows."""
    from engine.lifecycle import tombstones

    f = jsonl(tmp_path / "e.jsonl", 400, "e")
    lake.ensure(schemas.BRONZE)

    def erasure():
        tombstones.record(lake, "t1", None, datetime.now(UTC), "erase-t1")
        return lake.barrier(schemas.BRONZE, "erase-t1")

    lands_first(erasure)
    res = api.import_file(lake, f)
    assert (res.rows_added, res.rows_erased, res.rows_skipped) == (320, 80, 0)
    t = lake.read(schemas.BRONZE, columns=["tenant_id", "kafka_offset"])
    assert "t1" not in set(t.column("tenant_id").to_pylist())
    assert_exactly_once([lake], {("e.jsonl", 0, i) for i in range(400) if i % 5 != 1})
    assert orphans(lake) == []


@pytest.fixture
def archived_lake(lake, tmp_path):
    """A lake whose rows ingested three days ago are archived (cutoff: yesterday)."""
    old = datetime.now(UTC) - timedelta(days=3)
    importers.import_jsonl(lake, jsonl(tmp_path / "old.jsonl", 50, "o"), now=old)
    importers.import_jsonl(lake, jsonl(tmp_path / "new.jsonl", 50, "n"))
    cutoff = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    out = api.archive(lake, cutoff, str(tmp_path / "cold"))
    assert out["rows_moved"] == 50
    arch = importers.archive_of(lake)
    assert arch is not None
    return lake, arch.lake, old


def test_archive_side_import_racing_the_same_file_adds_each_row_once(archived_lake, tmp_path,
                                                                     lands_first):
    """Rows older than the archive's cutoff go to the archive; that write is fenced like the
    hot one: an import of the same file landing first makes it re-check, not duplicate."""
    lake, cold, old = archived_lake
    f = jsonl(tmp_path / "late.jsonl", 300, "l")
    other = lands_first(lambda: importers.import_jsonl(lake, f, now=old))
    res = importers.import_jsonl(lake, f, now=old)
    assert other[0].rows_added == 300
    assert (res.rows_added, res.rows_skipped) == (0, 300)
    assert_exactly_once([lake, cold], keys_of("old.jsonl", 50) | keys_of("new.jsonl", 50)
                        | keys_of("late.jsonl", 300))
    cutoff = importers.archive_of(lake).cutoff
    hot_dates = set(lake.read(schemas.BRONZE, columns=["ingestion_date"]).column(0).to_pylist())
    assert all(d >= cutoff for d in hot_dates)  # the old rows went to the archive, not hot


def test_archive_side_import_outlasts_lost_races(archived_lake, tmp_path, lose_races):
    """Lost races on the archive's table (and on the hot one, for a file with both old and
    new rows) are retried until the import commits."""
    lake, cold, old = archived_lake
    f = jsonl(tmp_path / "late.jsonl", 200, "l")
    lose_races(9)
    res = importers.import_jsonl(lake, f, now=old)
    assert (res.rows_added, res.rows_skipped) == (200, 0)
    assert faults._races_lost == 9
    assert_exactly_once([lake, cold], keys_of("old.jsonl", 50) | keys_of("new.jsonl", 50)
                        | keys_of("late.jsonl", 200))
    assert orphans(lake) == [] and orphans(cold) == []


BARRIER_LOOP = textwrap.dedent("""
    import os, sys, time
    from engine.contract import schemas
    from engine.lake.tables import Lake
    lake, stop = Lake.at(sys.argv[1]), sys.argv[2]
    n = 0
    while not os.path.exists(stop):
        lake.barrier(schemas.BRONZE, "noise")
        n += 1
        time.sleep(0.005)
    print(n)
""")


def test_imports_finish_while_another_process_commits_in_a_tight_loop(lake, tmp_path):
    """Defect 3, with real processes: a writer commits to Bronze every few milliseconds
    while two imports of one file and one of another run. All three finish; each row
    lands once; the two imports of one file add it once between them."""
    lake.ensure(schemas.BRONZE)
    a, b = jsonl(tmp_path / "a.jsonl", 3000, "a"), jsonl(tmp_path / "b.jsonl", 2000, "b")
    stop = tmp_path / "stop"
    env = {**os.environ, "MEDALLION_COMMIT_WAIT": "120"}
    loop = subprocess.Popen([sys.executable, "-c", BARRIER_LOOP, lake.root, str(stop)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        while lake.version(schemas.BRONZE) < 5:  # the loop is committing
            time.sleep(0.05)
        t0 = time.monotonic()
        imports = [subprocess.Popen([sys.executable, "-m", "replay", "import", "--lake", lake.root,
                                     str(f), "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for f in (a, a, b)]
        outs = [p.communicate(timeout=240) for p in imports]
        took = time.monotonic() - t0
    finally:
        stop.touch()
        commits = int(loop.communicate(timeout=60)[0] or 0)
    assert [p.returncode for p in imports] == [0, 0, 0], [err for _, err in outs]
    res = [json.loads(out) for out, _ in outs]
    assert res[0]["rows_added"] + res[1]["rows_added"] == 3000
    assert res[2]["rows_added"] == 2000
    assert_exactly_once([lake], keys_of("a.jsonl", 3000) | keys_of("b.jsonl", 2000))
    assert commits > 10, "the other writer did not commit while the imports ran"
    assert orphans(lake) == []
    print(f"imports took {took:.1f}s against {commits} concurrent commits")


def test_erasure_landing_mid_import_of_archive_rows_is_honoured(archived_lake, tmp_path, lands_first):
    """An import whose rows all go to the archive never commits to hot Bronze, so the
    erasure's barrier there does not fence it: the erasure must fence the archive as well."""
    lake, cold, old = archived_lake
    f = tmp_path / "late.jsonl"
    f.write_text("".join(json.dumps({"event_id": f"x{i}", "tenant_id": "t9"}) + "\n" for i in range(30)))
    lands_first(lambda: api.erase(lake, "t9", reason="erasure request"))
    res = importers.import_jsonl(lake, f, now=old)
    tenants = [t for lk in (lake, cold) for t in lk.read(schemas.BRONZE, columns=["tenant_id"]).column(0).to_pylist()]
    assert "t9" not in tenants, f"{tenants.count('t9')} rows of an erased tenant came back"
    assert (res.rows_added, res.rows_erased) == (0, 30)
