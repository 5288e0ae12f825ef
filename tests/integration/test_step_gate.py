"""An incremental step's validation gate: the standard checks over the tenant-hours the
step touched (engine/batch/checks.py:run_step_checks), never the whole tables."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.batch.checks import STEP_CHECKS, run_step_checks
from engine.contract import schemas
from engine.execution.local import LocalExecutor
from replay import api
from tests.lakes import FIXTURE, make_lake


def _touched(row: pa.Table) -> pa.Table:
    return pa.table({"tenant_id": row.column("tenant_id"),
                     "hour": pc.floor_temporal(row.column("window_start"), unit="hour")})


def test_the_step_gate_finds_a_broken_tenant_hour_and_only_there(tmp_path):
    lk = make_lake(tmp_path / "lake", [pq.read_table(FIXTURE / "bronze.parquet")])
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="t")
    minute = lk.read(schemas.MINUTE).sort_by([("tenant_id", "ascending"), ("window_start", "ascending")])
    row, elsewhere = minute.slice(0, 1), minute.slice(minute.num_rows - 1, 1)
    assert row["tenant_id"][0] != elsewhere["tenant_id"][0]
    versions = {t: lk.version(t) for t in (schemas.SILVER, *schemas.GOLD_TABLES)}
    ok = run_step_checks(lk, versions, _touched(row))
    assert [c.name for c in ok] == list(STEP_CHECKS) and all(c.passed for c in ok)

    # one minute row twice, with a wrong count: what a broken step could commit
    bad = row.set_column(row.schema.get_field_index("total_requests"), "total_requests",
                         pc.add(row.column("total_requests"), 1))
    lk.write(schemas.MINUTE, bad, mode="append", metadata={"replay_id": "tamper"})
    versions[schemas.MINUTE] = lk.version(schemas.MINUTE)
    res = {c.name: c for c in run_step_checks(lk, versions, _touched(row))}
    assert not res[f"unique_keys:{schemas.MINUTE}"].passed
    assert not res["minute_totals_equal_silver_counts"].passed
    assert not res["hourly_equals_sum_of_minutes"].passed
    # another tenant's hour is not what the step touched: its slice is fine
    assert all(c.passed for c in run_step_checks(lk, versions, _touched(elsewhere)))


def test_a_step_reports_the_standard_checks(tmp_path):
    whole = pq.read_table(FIXTURE / "bronze.parquet")
    half = whole.num_rows // 2
    lk = make_lake(tmp_path / "lake", [whole.slice(0, half)])
    api.run(lk, "2026-01", executor=LocalExecutor(), reason="t")
    make_lake(lk, [whole.slice(half)])
    res = api.run(lk, "2026-01", mode="incremental", executor=LocalExecutor(), reason="step")
    assert res.plan.mode == "incremental"
    names = [c.name for c in res.checks]
    assert names == ["conservation", *STEP_CHECKS] and all(c.passed for c in res.checks)
