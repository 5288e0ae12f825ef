"""Bronze importers: JSONL files and Bronze Parquet archives (idempotent appends)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from engine.contract import schemas
from engine.contract.errors import CommitConflictError, InputError
from engine.contract.sql import run_sql
from engine.lake.bronze import archive_of, bronze_parts
from engine.lake.tables import Lake

EXTRACT_SQL = """
WITH j AS (SELECT CASE WHEN try(json_type(try(decode(raw)))) IS NOT NULL THEN try(decode(raw)) END AS j FROM t),
o AS (SELECT CASE WHEN json_type(j) = 'OBJECT' THEN j END AS o FROM j)
SELECT json_extract_string(o, '$.event_id') AS event_id,
  -- NULL where a duplicated key makes DuckDB's first value differ from SPEC's last: a row's
  -- tenant_id is then NULL or the tenant validate finds, so scoped replays may prune by it
  CASE WHEN len(list_filter(json_keys(o), lambda k: k = 'tenant_id')) <= 1
       THEN json_extract_string(o, '$.tenant_id') END AS tenant_id,
  TRY_CAST(json_extract_string(o, '$.event_timestamp') AS TIMESTAMPTZ) AS event_timestamp
FROM o
"""


@dataclass(frozen=True)
class ImportResult:
    source: str
    rows_read: int
    rows_added: int
    rows_skipped: int
    bronze_version: int | None
    #: rows dropped because they belong to an erased subject (docs/semantics.md §9)
    rows_erased: int = 0


def extract_fields(raw: pa.Array) -> pa.Table:
    """Best-effort event_id / tenant_id / event_timestamp of each payload (NULL if unparseable)."""
    out = run_sql(EXTRACT_SQL, {"t": pa.table({"raw": raw})})
    return pa.table({
        "event_id": out.column("event_id"),
        "tenant_id": out.column("tenant_id"),
        "event_timestamp": pc.cast(out.column("event_timestamp"), schemas.TS),
    })


def bronze_rows(raw: pa.Array, topic: str, partition: int | pa.Array, offsets: pa.Array,
                ingestion: datetime, kafka_timestamp: pa.Array | None = None,
                kafka_key: pa.Array | None = None) -> pa.Table:
    """Assemble docs/semantics.md §2 rows for raw messages (``partition``: one for all, or per row)."""
    n = len(raw)
    us = pa.scalar(ingestion, schemas.TS).cast(pa.int64()).as_py()  # as pa.array([ingestion]) reads it
    ing = pa.array(np.full(n, us, dtype=np.int64)).cast(schemas.TS)
    if isinstance(partition, int):
        partition = pa.array(np.full(n, partition, dtype=np.int32))
    extracted = extract_fields(raw)
    return pa.table({
        "raw_payload": raw,
        "kafka_topic": pa.array([topic], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32))),
        "kafka_partition": partition.cast(pa.int32()),
        "kafka_offset": offsets,
        "kafka_timestamp": kafka_timestamp if kafka_timestamp is not None else pa.nulls(n, schemas.TS),
        "kafka_key": kafka_key if kafka_key is not None else pa.nulls(n, pa.binary()),
        "ingestion_timestamp": ing,
        "ingestion_date": pc.cast(ing, pa.date32()),
        **{c: extracted.column(c) for c in extracted.column_names},
    }, schema=schemas.BRONZE_SCHEMA)


def _existing_keys(lake: Lake, rows: pa.Table, hot_version: int | None = None) -> pa.Table:
    """Keys Bronze (hot and archived) holds among the offset ranges of ``rows``.

    Only the row groups whose statistics overlap each (topic, partition)'s offset range are
    read, so the check costs what the new rows cover, not what Bronze holds.
    """
    ranges = rows.group_by(["kafka_topic", "kafka_partition"]).aggregate(
        [("kafka_offset", "min"), ("kafka_offset", "max")]).to_pylist()
    flt = None
    for r in ranges:
        one = ((pc.field("kafka_topic") == r["kafka_topic"])
               & (pc.field("kafka_partition") == r["kafka_partition"])
               & (pc.field("kafka_offset") >= r["kafka_offset_min"])
               & (pc.field("kafka_offset") <= r["kafka_offset_max"]))
        flt = one if flt is None else flt | one
    parts = [p.read(list(schemas.BRONZE_KEY), flt) for p in bronze_parts(lake, hot_version)]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


#: attempts of an import whose fenced append lost a race (another writer committed first)
IMPORT_ATTEMPTS = 5


def append_new(lake: Lake, rows: pa.Table, source: str, metadata: dict[str, str]) -> ImportResult:
    """Append the rows whose (topic, partition, offset) Bronze does not hold yet.

    The append is fenced on the Bronze snapshot the key check and the tombstones were read
    against (docs/semantics.md §9: an erasure's barrier commit makes a stale import read them again), so
    two imports of one file, or an import racing an erasure, never add a row twice or back.
    """
    for attempt in range(IMPORT_ATTEMPTS):
        try:
            return _append_once(lake, rows, source, metadata)
        except CommitConflictError:
            if attempt == IMPORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _append_once(lake: Lake, rows: pa.Table, source: str, metadata: dict[str, str]) -> ImportResult:
    from engine.lifecycle.tombstones import drop_erased

    snapshot = lake.ensure(schemas.BRONZE)  # tombstones and keys are read after it
    read = rows.num_rows
    rows, erased = drop_erased(lake, rows)
    rows = _first_per_key(rows)
    if rows.num_rows:
        existing = _existing_keys(lake, rows, snapshot.version())
        if existing.num_rows:
            rows = rows.join(existing, list(schemas.BRONZE_KEY), join_type="left anti")
            rows = rows.sort_by([(k, "ascending") for k in schemas.BRONZE_KEY])
    version = snapshot.version()
    added = rows.num_rows
    arch = archive_of(lake)
    if arch is not None and rows.num_rows:  # rows ingested before the archive's cutoff go there
        old = pc.less(rows.column("ingestion_date"), pa.scalar(arch.cutoff, pa.date32()))
        if pc.any(old).as_py():
            arch.lake.write(schemas.BRONZE, rows.filter(old), mode="append",
                            metadata={**metadata, "op": "import"})
            rows = rows.filter(pc.invert(old))
    if rows.num_rows:
        from engine.execution import faults
        faults.lose_race(lake, schemas.BRONZE)
        version = lake.append_fenced(snapshot, schemas.BRONZE, rows, {**metadata, "op": "import"}, [])
    return ImportResult(source, read, added, read - added - erased, version, erased)


def _first_per_key(rows: pa.Table) -> pa.Table:
    idx = pa.array(range(rows.num_rows), pa.int64())
    t = rows.select(list(schemas.BRONZE_KEY)).append_column("_i", idx)
    firsts = t.group_by(list(schemas.BRONZE_KEY), use_threads=False).aggregate([("_i", "min")])
    if firsts.num_rows == rows.num_rows:
        return rows
    firsts_idx = firsts.column("_i_min")
    return rows.take(pc.take(firsts_idx, pc.sort_indices(firsts_idx)))


def _readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (check its permissions)")


def split_lines(data: bytes) -> list[bytes]:
    """Lines of a JSONL file, byte for byte; a final newline does not start another line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def import_jsonl(lake: Lake, path: str | Path, topic: str | None = None,
                 now: datetime | None = None) -> ImportResult:
    """One message per line; topic = logical name, partition 0, offset = 0-based line number."""
    p = Path(path)
    _readable_file(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc.strerror}") from None
    lines = split_lines(data)
    raw = pa.array(lines, pa.binary())
    rows = bronze_rows(raw, topic or p.name, 0, pa.array(range(len(lines)), pa.int64()),
                       now or datetime.now(UTC))
    return append_new(lake, rows, str(p), {"source": str(p), "format": "jsonl"})


def import_bronze_parquet(lake: Lake, path: str | Path) -> ImportResult:
    """Parquet file(s) with exactly the docs/semantics.md §2 columns; known keys are skipped."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    try:
        files = sorted(str(f) for f in p.rglob("*.parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise InputError(f"{p}: no .parquet files in this directory")
        schema = pq.read_schema(files[0])
        _check_bronze_schema(schema, files[0])
        table = pds.dataset(files, format="parquet").to_table()
    except InputError:
        raise
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{p}: not a readable Parquet file ({exc})") from None
    try:
        rows = schemas.conform(table, schemas.BRONZE_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"{p}: columns do not cast to the Bronze schema: {exc}") from None
    for col in ("raw_payload", "kafka_topic", "kafka_partition", "kafka_offset", "ingestion_timestamp"):
        if rows.column(col).null_count:
            raise InputError(f"{p}: column {col} has NULLs; Bronze requires it on every row")
    return append_new(lake, rows, str(p), {"source": str(p), "format": "bronze-parquet"})


def _check_bronze_schema(schema: pa.Schema, where: str) -> None:
    want, have = set(schemas.BRONZE_SCHEMA.names), set(schema.names)
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise InputError(f"{where}: not a Bronze archive: {'; '.join(parts)} (SPEC section 2 columns)")
