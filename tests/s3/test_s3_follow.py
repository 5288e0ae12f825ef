"""Incremental steps and `replay follow` on an S3 lake (SeaweedFS): the Delta log is read through
the lake's storage options, the follower lease is a Delta table, the result is exact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from tests.integration.test_incremental import assert_equals_full
from tests.lakes import ROOT
from tests.s3.test_s3_lake import clean_env

pytestmark = pytest.mark.s3


@pytest.mark.slow
def test_steps_and_follow_on_s3(s3, s3_lake_uri, monkeypatch):
    monkeypatch.setenv("MEDALLION_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    lake = api.open_lake(s3_lake_uri)
    hist = generate(GeneratorConfig(events=4000, tenants=5, seed=8, days=0.2, dup_rate=0.15))
    n = hist.num_rows
    append_new(lake, hist.slice(0, n // 3), "t", {"source": "test"})
    api.run(lake, "2026-02")
    append_new(lake, hist.slice(n // 3, n // 3), "t", {"source": "test"})
    p = api.plan(lake, "2026-02")
    assert p.mode == "incremental" and p.rows == n // 3
    assert api.run(lake, "2026-02").plan.mode == "incremental"
    assert_equals_full(lake, lake.read(schemas.BRONZE), "2026-02")
    append_new(lake, hist.slice(2 * (n // 3)), "t", {"source": "test"})
    env = clean_env(MEDALLION_STORAGE_OPTIONS=json.dumps(s3.storage_options()),
                    MEDALLION_LEASE_WAIT="60")
    proc = subprocess.run([sys.executable, "-m", "replay", "follow", "--lake", s3_lake_uri,
                           "--until-idle", "2", "--interval", "0.3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(incremental, 2026-02): folded" in proc.stdout
    assert_equals_full(lake, lake.read(schemas.BRONZE), "2026-02")
    assert [r["kind"] for r in api.history(lake)][-1] == "follow"
