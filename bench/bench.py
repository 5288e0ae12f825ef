"""Throughput benchmark: ``make bench``.

Prints, for one generated history (default 5M events) in one run on this machine:
- generator events/s;
- Bronze -> Gold events/s of a full replay (local executor) and of a Gold-only replay;
- the floor: DuckDB's own JSON parse of the same payloads (json_extract of the
  SPEC fields), and our full replay's time as a ratio of it.
Ratios, not absolute numbers, are what compare across machines.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import duckdb

from engine import schemas
from engine.generator import GeneratorConfig, generate
from engine.importers import append_new
from replay import api

FLOOR_SQL = """
SELECT count(*) FROM (
  SELECT json_extract_string(CAST(raw_payload AS VARCHAR),
    ['$.event_id','$.event_timestamp','$.tenant_id','$.subscription_plan','$.endpoint','$.status_code'])
  FROM bronze WHERE json_valid(CAST(raw_payload AS VARCHAR)) IS NOT NULL
)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--tenants", type=int, default=2000)
    ap.add_argument("--days", type=float, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    try:
        t0 = time.perf_counter()
        bronze = generate(GeneratorConfig(events=args.events, tenants=args.tenants, days=args.days,
                                          invalid_rate=0.0))
        gen_s = time.perf_counter() - t0
        n = bronze.num_rows
        lake = api.open_lake(tmp / "lake")
        append_new(lake, bronze, "bench", {"source": "bench"})
        clean = bronze.filter(bronze.column("raw_payload").is_valid())
        con = duckdb.connect()
        con.register("bronze", clean)
        t0 = time.perf_counter()
        con.sql(FLOOR_SQL).fetchall()
        floor_s = time.perf_counter() - t0
        del bronze, clean, con
        t0 = time.perf_counter()
        full = api.run(lake, "2026-02", mode="full")
        full_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        api.run(lake, "2026-02", mode="gold")
        gold_s = time.perf_counter() - t0
        print(f"history: {n:,} Bronze messages, {args.tenants} tenants, {args.days} days")
        print(f"generator:              {n / gen_s:12,.0f} events/s")
        print(f"duckdb json floor:      {n / floor_s:12,.0f} events/s  (parse only, {floor_s:.2f}s)")
        print(f"full replay (local):    {n / full_s:12,.0f} events/s  ({full_s:.2f}s, "
              f"{full_s / floor_s:.2f}x the floor)")
        silver_rows = full.counts[schemas.SILVER]
        print(f"gold-only replay:       {silver_rows / gold_s:12,.0f} silver events/s  ({gold_s:.2f}s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
