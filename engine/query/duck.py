"""DuckDB over the lake: every table registered under its contract name (read via delta-rs).

Tables are Arrow datasets from delta-rs, so DuckDB pushes filters and
projections down (a query on one tenant or day does not read every file).
No DuckDB extension is needed. :func:`query` (``replay sql``) runs one SELECT on a
connection locked to the registered tables: no COPY ... TO, no file or URL reads.

Older versions, by name in SQL (registered on demand when a query mentions them):
- ``tenant_usage_1min__v42``: the table at Delta version 42;
- ``"tenant_usage_1min@42"``: the same;
- ``"tenant_usage_1min@r20261127T001500-1a2b3c4d"``: as that replay left it;
- ``"tenant_usage_1min@r20261127T001500-1a2b3c4d:before"``: as it was before that replay.
"""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb
import pyarrow as pa

from engine.contract import schemas
from engine.contract.errors import LakeError, QueryError, QueryRefusedError
from engine.lake.bronze import bronze_parts
from engine.lake.tables import Lake

QUERYABLE = (*schemas.ALL_TABLES, schemas.AUDIT)


def consistent_versions(lake: Lake) -> dict[str, int]:
    """The lake's queryable tables at versions no operation is half-way through
    (:func:`engine.txn.snapshots.consistent_versions`)."""
    from engine.txn.snapshots import consistent_versions as snapshot

    return snapshot(lake, QUERYABLE)


def connect(lake: Lake, versions: dict[str, int] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with each existing lake table registered by name, at ``versions``
    (default: a consistent snapshot, :func:`consistent_versions`)."""
    con = lake.storage.connect()
    register_all(con, lake, consistent_versions(lake) if versions is None else versions)
    return con


#: The key of ``versions`` that pins the archive's Bronze version (default: its latest).
ARCHIVE = "archive:" + schemas.BRONZE


def register_all(con: duckdb.DuckDBPyConnection, lake: Lake, versions: dict[str, int]) -> None:
    """Register every active table at ``versions`` (default: current). Bronze is the hot table
    and its archive together, split at the archive's cutoff, as replays read it."""
    for table in QUERYABLE:
        if table == schemas.BRONZE and lake.exists(table):
            parts = bronze_parts(lake, versions.get(table), versions.get(ARCHIVE))
            if len(parts) == 1:
                con.register(table, parts[0].dataset())
                continue
            hot, archived = parts
            con.register("_bronze_hot", hot.dataset())
            con.register("_bronze_archive", archived.dataset())
            cutoff = hot.after.isoformat()  # a date from the ledger: no user text in the SQL
            con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM _bronze_hot WHERE "
                        f"ingestion_date >= DATE '{cutoff}' UNION ALL BY NAME SELECT * FROM "
                        f"_bronze_archive WHERE ingestion_date < DATE '{cutoff}'")
        elif lake.is_active(table):
            con.register(table, lake.dataset(table, versions.get(table)))


def register_version(con: duckdb.DuckDBPyConnection, lake: Lake, table: str, version: int,
                     alias: str) -> None:
    """Register ``table`` at Delta ``version`` under ``alias`` (e.g. ``tenant_usage_1min_v3``)."""
    try:
        con.register(alias, lake.dataset(table, version))
    except LakeError as exc:
        raise QueryError(f"{alias}: {exc}") from None


_AT = re.compile(r'"(' + "|".join(QUERYABLE) + r')@([A-Za-z0-9_.:-]+)"')
_V = re.compile(r"\b(" + "|".join(QUERYABLE) + r")__v(\d+)\b")


def resolve_version(lake: Lake, table: str, ref: str | int) -> int:
    """A Delta version from ``42``, ``REPLAY_ID`` (after it) or ``REPLAY_ID:before``."""
    text = str(ref)
    if text.isdigit():
        return int(text)
    from engine.txn import ledger

    rid, _, which = text.partition(":")
    row = ledger.get(lake, rid)
    if row is None:
        raise QueryError(f"no replay {rid} in the ledger (see 'replay history')")
    versions = json.loads(row["versions_before" if which == "before" else "versions_after"] or "{}")
    if table not in versions:
        raise QueryError(f"replay {rid} did not write {table}")
    return int(versions[table])


def register_mentioned_versions(con: duckdb.DuckDBPyConnection, lake: Lake, sql: str) -> None:
    """Register every ``table__vN`` / ``"table@REF"`` the query mentions."""
    for m in _V.finditer(sql):
        register_version(con, lake, m.group(1), int(m.group(2)), m.group(0))
    for m in _AT.finditer(sql):
        v = resolve_version(lake, m.group(1), m.group(2))
        register_version(con, lake, m.group(1), v, f"{m.group(1)}@{m.group(2)}")


def select_only(sql: str) -> None:
    """Refuse (:class:`QueryRefusedError`) anything but one SELECT, as DuckDB's own parser
    classifies it: ``SELECT``/``WITH``/``FROM``/``VALUES``/``DESCRIBE``/``SHOW``/``SUMMARIZE``
    pass; COPY, CREATE, INSERT, UPDATE, DELETE, ATTACH, INSTALL, LOAD, EXPORT, SET, PRAGMA,
    CALL, EXPLAIN, PIVOT (which DuckDB parses as several statements) and a second statement
    do not."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL: {_first_line(exc)}") from None
    if not statements:
        raise QueryError("SQL: the query is empty")
    if len(statements) > 1:
        raise QueryRefusedError(f"SQL refused: {len(statements)} statements; replay sql runs "
                                "one query (SELECT ...)")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefusedError(f"SQL refused: {kind.name} is not a query; replay sql runs one "
                                "read-only SELECT over the lake's tables")


def lock_down(con: duckdb.DuckDBPyConnection, allow_local_files: bool = False) -> None:
    """Make ``con`` read only what is registered in it, for good: no file or URL access (with
    ``allow_local_files``: local files only, never a URL), no extension loaded on demand, no
    Python variables scanned by name, then the configuration locked so a query cannot turn
    any of it back. Registered Arrow datasets (and views over them) still read: delta-rs and
    pyarrow read the lake, local or object store, from Python, not DuckDB."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET python_enable_replacements = false")
    if allow_local_files:
        con.execute("SET allowed_directories = ['/']")  # any local path; never http(s)://, s3://
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def query(lake: Lake, sql: str, params: dict[str, Any] | None = None, *,
          allow_local_files: bool = False) -> pa.Table:
    """Run one read-only ``sql`` query over the lake's tables; ``params`` are bound (``$name``
    in SQL), never formatted in.

    Only one SELECT runs (:func:`select_only`), on a connection locked once the lake's tables
    are registered (:func:`lock_down`): it reads those tables and nothing else, unless
    ``allow_local_files`` (then local files too). A refusal is a :class:`QueryRefusedError`
    (exit code 1); a query that does not run, a :class:`QueryError` (exit code 2)."""
    select_only(sql)
    con = connect(lake)
    try:
        register_mentioned_versions(con, lake, sql)
        lock_down(con, allow_local_files)
        try:
            rel = con.sql(sql, params=params) if params else con.sql(sql)
            if rel is None:
                raise QueryError("the statement returned no rows; replay sql runs queries (SELECT ...)")
            return rel.to_arrow_table()
        except duckdb.PermissionException as exc:
            hint = (" (--allow-local-files reads local files, never URLs)" if allow_local_files
                    else " (reading local files needs --allow-local-files)")
            raise QueryRefusedError(f"SQL refused: {_first_line(exc)}{hint}") from None
        except duckdb.Error as exc:
            raise QueryError(f"SQL: {_first_line(exc)}") from None
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[0].split())
