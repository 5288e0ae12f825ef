"""Incremental steps on Ray: the same tables as the local executor and as a full fold, with
stragglers and several tenant buckets (one reduce task each)."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from engine.execution.local import LocalExecutor
from engine.ingest.importers import append_new
from replay import api
from tests.integration.test_incremental import assert_equals_full
from tests.lakes import assert_same_tables

pytestmark = pytest.mark.ray


def test_ray_steps_equal_local_steps_and_a_full_fold(tmp_path, history_parts, ray_ex):
    """dedup@1 (2026-01), whose stragglers change earlier decisions; the local property tests
    cover every ruleset."""
    ruleset = "2026-01"
    b = pa.concat_tables(history_parts)
    rnd = random.Random(7)
    owner = [0 if i < b.num_rows // 2 else rnd.randrange(1, 4) for i in range(b.num_rows)]
    lakes = {name: api.open_lake(tmp_path / name) for name in ("ray", "local")}
    execs = {"ray": ray_ex, "local": LocalExecutor(2)}
    for k in range(4):  # batches 1-3 interleave in ingestion time: each holds stragglers
        rows = b.take(pa.array([i for i in range(b.num_rows) if owner[i] == k]))
        for name, lake in lakes.items():
            append_new(lake, rows, "t", {"source": "test"})
            res = api.run(lake, ruleset, executor=execs[name], shards=3)
            assert res.plan.mode == ("full" if k == 0 else "incremental")
    assert_same_tables(lakes["ray"], lakes["local"])
    assert_equals_full(lakes["ray"], lakes["ray"].read("bronze_api_usage"), ruleset)
