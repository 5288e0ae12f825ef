"""In-memory DuckDB for rules and the fold: SQL over Arrow tables, values bound, no I/O."""

from __future__ import annotations

import os
import threading
from typing import Any

import duckdb
import pyarrow as pa

_local = threading.local()
_default_threads = 0


def set_default_threads(n: int) -> None:
    """DuckDB threads where a thread sets none (0: every core); set at process start-up."""
    global _default_threads
    _default_threads = n


def set_threads(n: int) -> None:
    """DuckDB threads for the queries of the calling thread (0: the process default)."""
    _local.n = n


def threads() -> int:
    """This thread's setting, else the process default, else every core."""
    return getattr(_local, "n", 0) or _default_threads or (os.cpu_count() or 1)


def _connection() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection (a new one costs ~10 ms: steps and rules run
    many small queries), with its thread count set to the caller's setting."""
    con = getattr(_local, "con", None)
    n = threads()
    if con is None:
        con = duckdb.connect(config={"threads": n})
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")  # rules and tasks print nothing
        _local.con, _local.con_threads = con, n
    elif _local.con_threads != n:
        con.execute(f"SET threads = {int(n)}")
        _local.con_threads = n
    return con


def close_connection() -> None:
    """Close this thread's DuckDB connection (its database and the memory it holds); the
    next query opens a new one. A worker process calls it between tasks."""
    con = getattr(_local, "con", None)
    if con is not None:
        _local.con = None
        con.close()


def run_sql(sql: str, tables: dict[str, Any], params: dict[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` with each Arrow table (or dataset, scanned lazily) registered under its name;
    values bound, never formatted."""
    con = _connection()
    try:
        for name, tbl in tables.items():
            con.register(name, _rechunk(tbl))
        rel = con.sql(sql, params=params or None) if params else con.sql(sql)
        return rel.to_arrow_table()
    except BaseException:
        _local.con = None  # a failed query may leave state behind: the next call starts afresh
        con.close()
        raise
    finally:
        if getattr(_local, "con", None) is con:
            for name in tables:
                con.unregister(name)


def _rechunk(tbl: Any, rows: int = 65_536) -> Any:
    """Many moderate batches let DuckDB scan an Arrow table on every thread."""
    if not isinstance(tbl, pa.Table) or tbl.num_rows <= rows:
        return tbl
    return pa.Table.from_batches(tbl.to_batches(max_chunksize=rows), schema=tbl.schema)
