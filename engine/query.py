"""DuckDB over the lake: every table registered under its SPEC name (read via delta-rs).

Tables are Arrow datasets from delta-rs, so DuckDB pushes filters and
projections down (a query on one tenant or day does not read every file).
No DuckDB extension is needed. Older versions: :func:`register_version`.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from engine import schemas
from engine.errors import UsageError
from engine.lake import Lake


class QueryError(UsageError):
    """A query the user wrote does not run (syntax, unknown table or column, missing parameter)."""

QUERYABLE = (*schemas.ALL_TABLES, schemas.AUDIT)


def connect(lake: Lake, versions: dict[str, int] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with each existing lake table registered by name."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in QUERYABLE:
        if lake.exists(table):
            con.register(table, lake.dataset(table, (versions or {}).get(table)))
    return con


def register_version(con: duckdb.DuckDBPyConnection, lake: Lake, table: str, version: int,
                     alias: str) -> None:
    """Register ``table`` at Delta ``version`` under ``alias`` (e.g. ``tenant_usage_1min_v3``)."""
    con.register(alias, lake.dataset(table, version))


def query(lake: Lake, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run ``sql`` over the lake; ``params`` are bound (``$name`` in SQL), never formatted in."""
    con = connect(lake)
    try:
        rel = con.sql(sql, params=params) if params else con.sql(sql)
        if rel is None:
            raise QueryError("the statement returned no rows; replay sql runs queries (SELECT ...)")
        return rel.to_arrow_table()
    except duckdb.Error as exc:
        first = " ".join(str(exc).split("\n")[0].split())
        raise QueryError(f"SQL: {first}") from None
    finally:
        con.close()
