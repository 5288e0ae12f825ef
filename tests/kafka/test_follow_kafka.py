"""End to end on the real broker: `replay ingest` and `replay follow` run together while events
are produced; at the end Gold equals a full replay of the same Bronze."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.contract import schemas
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.kafka import produce
from replay import api
from tests.integration.test_incremental import assert_equals_full
from tests.kafka.conftest import ingest_cli
from tests.lakes import ROOT

pytestmark = pytest.mark.kafka


@pytest.mark.slow
def test_ingest_and_follow_together_end_exact(lake, broker, topic):
    hist = generate(GeneratorConfig(events=8_000, tenants=10, seed=4, days=0.2, dup_rate=0.1))
    first = hist.slice(0, 3000)
    produce(first, broker.bootstrap, topic)
    p = ingest_cli(lake.root, broker, topic, "--until-idle", "3")
    assert p.returncode == 0, p.stderr
    api.run(lake, "2026-01", reason="first build")
    ingester = ingest_cli(lake.root, broker, topic, "--until-idle", "4", "--max-batch-seconds", "0.5",
                          wait=False)
    follower = subprocess.Popen(
        [sys.executable, "-m", "replay", "follow", "--lake", lake.root, "--interval", "0.3",
         "--until-idle", "6"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MEDALLION_LEASE_WAIT": "60"})
    try:
        for i in range(3000, hist.num_rows, 1700):  # bursts while both run
            produce(hist.slice(i, 1700), broker.bootstrap, topic)
            time.sleep(0.8)
        ingester.communicate(timeout=180)
        out, err = follower.communicate(timeout=180)
    finally:
        ingester.kill()
        follower.kill()
    assert ingester.returncode == 0
    assert follower.returncode == 0, err
    assert out.count("(incremental, 2026-01)") >= 2, out
    assert lake.read(schemas.BRONZE).num_rows == hist.num_rows
    f = api.freshness(lake)
    assert f["lag_rows"] == 0 and f["gold_bronze_version"] == f["bronze_version"]
    assert_equals_full(lake, lake.read(schemas.BRONZE), "2026-01")
