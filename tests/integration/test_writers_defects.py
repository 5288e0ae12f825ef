"""Writers together (issue 22): one deterministic test per defect of the multi-table
writes, each written to fail before its fix."""

from __future__ import annotations

import pyarrow.parquet as pq

from engine.batch.plan import active_ruleset
from engine.contract import schemas
from engine.execution.local import LocalExecutor
from replay import api
from tests.lakes import FIXTURE, make_lake

TABLES = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)


def _lake(tmp_path):
    return make_lake(tmp_path / "lake", [pq.read_table(FIXTURE / "bronze.parquet")])


def test_rollback_onto_a_neutral_version_brings_back_its_ruleset(tmp_path):
    """A restore writes its own non-neutral commit describing the rows it brings back: a
    rollback onto a version an optimize, compaction or barrier wrote is not passed over."""
    lk = _lake(tmp_path)
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="a")
    for t in TABLES:  # the versions before the next replay are neutral commits
        lk.barrier(t, "maintenance")
    b = api.run(lk, "2026-02", executor=LocalExecutor(), reason="b")
    assert active_ruleset(lk).name == "2026-02"
    api.rollback(lk, b.plan.replay_id, reason="undo b")
    assert active_ruleset(lk).name == "2026-01"
    for t in TABLES:
        meta = lk.commit_metadata(t)
        assert meta["ruleset_name"] == "2026-01" and meta["restored_by"] and "neutral" not in meta, t
    assert api.plan(lk, "2026-01").up_to_date
