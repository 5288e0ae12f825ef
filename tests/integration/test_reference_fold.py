"""Generated histories through the engine equal an independent implementation of docs/semantics.md (tests/reference.py)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contract import schemas
from engine.execution.local import LocalExecutor
from engine.ingest.generator import GeneratorConfig, generate
from engine.ingest.importers import append_new
from replay import api
from tests import reference


def _us(table: pa.Table) -> pa.Table:
    """Timestamps as integer microseconds, so rows compare with the reference's tuples."""
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        cols[name] = pc.cast(col, pa.int64()) if pa.types.is_timestamp(col.type) else col
    return pa.table(cols)


def _rows(table: pa.Table, cols: list[str]) -> set[tuple]:
    t = _us(table.select(cols))
    return set(zip(*[t.column(c).to_pylist() for c in cols], strict=True))


LIN = ["kafka_topic", "kafka_partition", "kafka_offset", "ingestion_timestamp"]
COLUMNS = {
    schemas.SILVER: [*LIN, "event_id", "tenant_id", "event_timestamp", "subscription_plan", "status_code"],
    schemas.QUARANTINE: [*LIN, "reason"],
    schemas.DUPLICATES: [*LIN, "kept_kafka_topic", "kept_kafka_partition", "kept_kafka_offset",
                         "kept_ingestion_timestamp"],
    schemas.MINUTE: schemas.MINUTE_SCHEMA.names,
    schemas.HOURLY: schemas.HOURLY_SCHEMA.names,
    schemas.ALERTS: schemas.ALERTS_SCHEMA.names,
    schemas.REGION: schemas.REGION_SCHEMA.names,
}
NAMES = {schemas.SILVER: "silver", schemas.QUARANTINE: "quarantine", schemas.DUPLICATES: "duplicates",
         schemas.MINUTE: "minute", schemas.HOURLY: "hourly", schemas.ALERTS: "alerts",
         schemas.REGION: "region"}


@given(seed=st.integers(0, 100_000), dup=st.floats(0.0, 0.4), late=st.floats(0.0, 0.2),
       burst=st.floats(0.0, 0.6))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_both_rulesets_equal_the_reference_row_for_row(tmp_path_factory, seed, dup, late, burst):
    bronze = generate(GeneratorConfig(events=2500, tenants=4, days=0.2, seed=seed, dup_rate=dup,
                                      late_rate=late, burst_share=burst, invalid_rate=0.05,
                                      plan_change_rate=0.5))
    rows = _us(bronze).to_pylist()
    for r in rows:
        r["ingestion_us"] = r["ingestion_timestamp"]
    lake = api.open_lake(tmp_path_factory.mktemp("ref") / "lake")
    append_new(lake, bronze, "test", {"source": "test"})
    for ruleset in ("2026-01", "2026-02", "2026-03"):
        api.run(lake, ruleset, executor=LocalExecutor(2), shards=3, mode="full")
        want = reference.fold(rows, ruleset)
        for table, cols in COLUMNS.items():
            got = _rows(lake.read(table), cols) if lake.is_active(table) else set()
            assert got == want[NAMES[table]], (ruleset, table)
