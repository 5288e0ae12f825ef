"""Map tasks split Bronze by row group: every row group is read exactly once."""

from __future__ import annotations

import pytest
from deltalake import WriterProperties, write_deltalake

from engine.batch.apply import map_specs
from engine.batch.plan import build_plan
from engine.contract import schemas
from engine.execution.local import LocalExecutor
from engine.ingest.generator import GeneratorConfig, generate
from replay import api
from rules.ruleset import load_ruleset


@pytest.mark.parametrize("cpus", [1, 3])
def test_many_row_groups_per_file(tmp_path, cpus):
    bronze = generate(GeneratorConfig(events=20_000, tenants=10, seed=2))
    lake = api.open_lake(tmp_path / "lake")
    lake.ensure(schemas.BRONZE)
    write_deltalake(lake.uri(schemas.BRONZE), bronze, mode="append", partition_by=["ingestion_date"],
                    writer_properties=WriterProperties(max_row_group_size=1000))
    rs = load_ruleset("2026-02")
    plan = build_plan(lake, rs, cpus=cpus)
    specs = map_specs(lake, plan, rs, cpus)
    units = [u for s in specs for u in s.units]
    assert len(units) == len(set(units)) > len({p for p, _ in units})  # several groups per file
    res = api.run(lake, rs, executor=LocalExecutor())
    assert res.conservation_ok and res.counts[schemas.BRONZE] == bronze.num_rows
