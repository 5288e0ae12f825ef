"""In-memory DuckDB helper for rules: SQL over Arrow tables, no I/O."""

from __future__ import annotations

import os
from typing import Any

import duckdb
import pyarrow as pa


def threads() -> int:
    return int(os.environ.get("MEDALLION_DUCKDB_THREADS", "0")) or (os.cpu_count() or 1)


def run_sql(sql: str, tables: dict[str, pa.Table], params: dict[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` with each Arrow table registered under its name; values bound, never formatted."""
    con = duckdb.connect(config={"threads": threads()})
    try:
        con.execute("SET TimeZone = 'UTC'")
        for name, tbl in tables.items():
            con.register(name, _rechunk(tbl))
        rel = con.sql(sql, params=params or None) if params else con.sql(sql)
        return rel.to_arrow_table()
    finally:
        con.close()


def _rechunk(tbl: pa.Table, rows: int = 65_536) -> pa.Table:
    """Many moderate batches let DuckDB scan an Arrow table on every thread."""
    if tbl.num_rows <= rows:
        return tbl
    return pa.Table.from_batches(tbl.to_batches(max_chunksize=rows), schema=tbl.schema)
