"""docs/semantics.md §10: archived Bronze is still Bronze for every replay, plan, import and erasure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from tests.lakes import ROOT, assert_same_tables, make_lake


@pytest.fixture(scope="module")
def history():
    t = generate(GeneratorConfig(events=30_000, tenants=12, days=3, seed=21))
    return [t.slice(i * 10_000, 10_000) for i in range(3)]


def plan_work(lake, ruleset):
    d = api.plan(lake, ruleset).to_dict()
    return {k: d[k] for k in ("mode", "reasons", "tables", "rows", "up_to_date")}


def test_a_replay_after_archive_equals_one_before(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history)
    ref = make_lake(tmp_path / "ref", history)
    api.run(lake, "2026-01", reason="a")
    api.run(ref, "2026-01", reason="a")
    before = {rs: plan_work(lake, rs) for rs in ("2026-01", "2026-02")}
    dates = sorted({d.isoformat() for d in lake.read(schemas.BRONZE).column("ingestion_date").to_pylist()})
    assert len(dates) >= 3
    dry = api.archive(lake, dates[2], str(tmp_path / "cold"), dry_run=True)
    assert list(dry["dates"]) == dates[:2] and dry["rows"] > 0
    out = api.archive(lake, dates[2], str(tmp_path / "cold"))
    assert out["rows_moved"] == dry["rows"] and out["dates"] == dates[:2]
    hot = lake.read(schemas.BRONZE)
    assert min(hot.column("ingestion_date").to_pylist()).isoformat() == dates[2]
    assert {rs: plan_work(lake, rs) for rs in before} == before  # neutral
    status = {r["table"]: r for r in api.status(lake)}
    assert status["bronze (archive)"]["rows"] == out["rows_moved"]
    assert status["bronze (hot)"]["rows"] + out["rows_moved"] == sum(p.num_rows for p in history)
    assert api.sql(lake, "SELECT count(*) AS n FROM bronze_api_usage").to_pylist()[0]["n"] == \
        sum(p.num_rows for p in history)
    for rs in ("2026-02", "2026-01"):
        res = api.run(lake, rs, mode="full", reason="after archive")
        api.run(ref, rs, mode="full", reason="reference")
        assert res.conservation_ok and all(c.passed for c in res.checks)
        assert_same_tables(lake, ref)
    # re-importing archived rows adds nothing; rows older than the cutoff go to the archive
    again = append_new(lake, history[0], "again", {"source": "again"})
    assert again.rows_added == 0
    assert api.plan(lake, "2026-01").up_to_date


def test_archive_refusals_and_the_cli(tmp_path, history):
    lake = make_lake(tmp_path / "lake", history[:1])
    api.run(lake, "2026-01", reason="a")
    with pytest.raises(UsageError, match="after today"):
        api.archive(lake, "2999-01-01", str(tmp_path / "cold"))
    with pytest.raises(UsageError, match="outside the lake"):
        api.archive(lake, "2026-03-02", str(tmp_path / "lake" / "cold"))
    p = subprocess.run([sys.executable, "-m", "replay", "archive", "--lake", lake.root, "--before",
                        "2026-03-02", "--to", str(tmp_path / "cold"), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["cutoff"] == "2026-03-02"
    with pytest.raises(UsageError, match="archives to"):
        api.archive(lake, "2026-03-03", str(tmp_path / "elsewhere"))
    # an erasure reaches archived rows too
    tenant = lake.read(schemas.SILVER).column("tenant_id")[0].as_py()
    res = api.erase(lake, tenant, reason="gdpr")
    assert res["rows_erased"] > 0
    left = api.sql(lake, "SELECT count(*) AS n FROM bronze_api_usage WHERE tenant_id = $t",
                   {"t": tenant}).to_pylist()[0]["n"]
    assert left == 0
