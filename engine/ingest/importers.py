"""Bronze importers: JSONL files and Bronze Parquet archives (idempotent appends)."""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake.exceptions import CommitFailedError

from engine.config import environment
from engine.contract import schemas
from engine.contract.errors import CommitConflictError, InputError
from engine.contract.sql import run_sql
from engine.execution import faults
from engine.lake.bronze import archive_of
from engine.lake.staging import Staged, add_actions
from engine.lake.tables import Lake, encode_metadata

EXTRACT_SQL = """
WITH j AS (SELECT CASE WHEN try(json_type(try(decode(raw)))) IS NOT NULL THEN try(decode(raw)) END AS j FROM t),
o AS (SELECT CASE WHEN json_type(j) = 'OBJECT' THEN j END AS o FROM j)
SELECT json_extract_string(o, '$.event_id') AS event_id,
  -- NULL where a duplicated key makes DuckDB's first value differ from the contract's last: a row's
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


# --- fenced commits (shared with the Kafka ingester) ----------------------------------------

def stage_rows(lake: Lake, table: str, rows: pa.Table) -> Staged:
    """``rows`` written as uncommitted Parquet files of ``table`` (no file for no rows)."""
    return lake.stage(table, rows, f"append-{uuid.uuid4().hex[:12]}")


def discard(lake: Lake, table: str, staged: Staged | None) -> None:
    """Delete staged files no commit references (best effort: ``replay vacuum`` finds the rest)."""
    if staged is None or not staged.files:
        return
    fs, base = lake.table_storage(table).filesystem()
    for f in staged.files:
        with contextlib.suppress(OSError):
            fs.delete_file(f"{base}/{f.path}" if base else f.path)


def commit_fenced(lake: Lake, dt: DeltaTable, table: str, staged: Staged, metadata: Mapping[str, Any],
                  app_transactions: list[Any]) -> int:
    """Commit ``staged`` on top of exactly the snapshot ``dt``: no rebase, no retry.

    :meth:`Lake.append_fenced` with the rows staged beforehand: a caller whose commit lost
    the race (CommitConflictError: anyone committed since ``dt``) checks what changed and
    commits the same files on the new snapshot, without writing them again. The files stay
    until a commit references them or the caller discards them (:func:`discard`). On success
    ``dt`` is at the new version, which is returned.
    """
    faults.lose_race(lake, table)  # test hook (MEDALLION_FAULT_LOSE_RACES); a no-op unless set
    version = dt.version() + 1  # no rebase: the commit lands right after the snapshot, or fails
    props = CommitProperties(custom_metadata=encode_metadata(metadata),
                             app_transactions=app_transactions, max_commit_retries=0)
    try:
        dt.create_write_transaction(add_actions(staged), mode="append", schema=schemas.SCHEMAS[table],
                                    partition_by=schemas.PARTITIONS.get(table), commit_properties=props)
    except CommitFailedError as exc:
        raise CommitConflictError(f"concurrent commit on {table}: {exc}", table=table) from None
    with contextlib.suppress(Exception):  # a log cleanup since: the next snapshot() reopens
        dt.load_as_version(version)
    return version


def backoff(attempt: int, cap: float = 0.25) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...) of a lost race: "full jitter" over
    an exponential ramp from 10 ms, so that writers that collided do not collide again."""
    return random.uniform(0, min(cap, 0.005 * 2 ** attempt))


# --- import ------------------------------------------------------------------------------------

KEY_SCHEMA = pa.schema([schemas.BRONZE_SCHEMA.field(k) for k in schemas.BRONZE_KEY])
#: attempts an import makes at the least before it gives up on lost races; after that it
#: keeps retrying until ``MEDALLION_COMMIT_WAIT`` seconds (engine.config) have passed
IMPORT_ATTEMPTS = 5


@dataclass
class _Side:
    """One Bronze table an import writes: the hot table (rows at or after the archive's
    cutoff), or the archive's (rows before it); what it holds and what the import adds."""

    lake: Lake
    after: date | None = None  # this side holds the rows with ingestion_date >= after ...
    before: date | None = None  # ... and < before
    dt: DeltaTable | None = None
    files: set[str] | None = None  # data files of dt whose keys are in ``keys``
    keys: pa.Table | None = None  # keys of dt's rows within the import's offset ranges
    rows: pa.Table | None = None  # what the staged files hold
    staged: Staged | None = None

    def snapshot(self) -> None:
        """Open the table, or bring the snapshot to its latest version."""
        if self.dt is None:
            self.dt = self.lake.ensure(schemas.BRONZE)
        else:
            self.dt = self.lake.refresh(schemas.BRONZE, self.dt)

    def read_keys(self, ranges: pds.Expression | None) -> None:
        """Bring ``keys`` up to date with the snapshot: only the files added since the last
        call are read, unless files were removed (a compaction, an erasure: then all are)."""
        assert self.dt is not None
        ds = self.dt.to_pyarrow_dataset()
        frags = {f.path: f for f in ds.get_fragments()}
        if self.files is None or self.keys is None or not self.files <= frags.keys():
            new, self.keys = list(frags.values()), KEY_SCHEMA.empty_table()
        else:
            new = [f for path, f in frags.items() if path not in self.files]
        self.files = set(frags)
        if not new:
            return
        flt = ranges
        col = pc.field("ingestion_date")
        for bound in ((col >= pa.scalar(self.after, pa.date32())) if self.after else None,
                      (col < pa.scalar(self.before, pa.date32())) if self.before else None):
            if bound is not None:
                flt = bound if flt is None else flt & bound
        found = pds.FileSystemDataset(new, ds.schema, ds.format, ds.filesystem).to_table(
            columns=list(schemas.BRONZE_KEY), filter=flt)
        if found.num_rows:
            self.keys = pa.concat_tables([self.keys, schemas.conform(found, KEY_SCHEMA)])

    def stage(self, rows: pa.Table) -> None:
        """Stage ``rows`` for this side's commit, unless the staged files already hold them
        (then they are committed as they are, not written again)."""
        key = list(schemas.BRONZE_KEY)
        if self.rows is not None and self.rows.select(key).equals(rows.select(key)):
            return
        discard(self.lake, schemas.BRONZE, self.staged)
        self.rows, self.staged = rows, None
        self.staged = stage_rows(self.lake, schemas.BRONZE, rows) if rows.num_rows else None

    def commit(self, metadata: Mapping[str, Any]) -> int:
        """Commit the staged rows fenced on the snapshot; how many rows it added."""
        if self.staged is None or self.dt is None or self.rows is None:
            return 0
        staged, self.staged = self.staged, None  # a commit that fails otherwise than by a lost
        try:  # race may have landed all the same: its files must stay
            commit_fenced(self.lake, self.dt, schemas.BRONZE, staged, metadata, [])
        except CommitConflictError:
            self.staged = staged  # nothing references them: the next attempt may commit them
            raise
        added, self.rows = self.rows.num_rows, None
        return added

    def drop(self) -> None:
        discard(self.lake, schemas.BRONZE, self.staged)
        self.rows = self.staged = None


def _key_ranges(rows: pa.Table) -> pds.Expression | None:
    """A filter for each (topic, partition)'s offset range among ``rows``: only the row groups
    whose statistics overlap it are read, so a key check costs what the rows cover, not what
    Bronze holds."""
    ranges = rows.group_by(["kafka_topic", "kafka_partition"]).aggregate(
        [("kafka_offset", "min"), ("kafka_offset", "max")]).to_pylist()
    flt = None
    for r in ranges:
        one = ((pc.field("kafka_topic") == r["kafka_topic"])
               & (pc.field("kafka_partition") == r["kafka_partition"])
               & (pc.field("kafka_offset") >= r["kafka_offset_min"])
               & (pc.field("kafka_offset") <= r["kafka_offset_max"]))
        flt = one if flt is None else flt | one
    return flt


class _Import:
    """One import's attempts: each brings its snapshots of Bronze (hot, and the archive's)
    up to date, reads the tombstones after them, drops the rows Bronze holds by then, and
    commits what is left, fenced on those snapshots (docs/semantics.md §9: an erasure's
    barrier commit makes an import that read the tombstones before it try again)."""

    def __init__(self, lake: Lake, rows: pa.Table, metadata: dict[str, str]) -> None:
        self.lake, self.given, self.metadata = lake, rows, {**metadata, "op": "import"}
        self.ranges = _key_ranges(rows) if rows.num_rows else None
        self.hot = _Side(lake)
        self.archive: _Side | None = None
        self.arch_id: tuple[str, date] | None = None
        self.stones: int | None = -1  # the tombstones' table version the rows were filtered at
        self.rows = rows
        self.erased = 0
        self.added = 0  # rows committed by earlier attempts (an archive part whose hot part lost)

    def attempt(self) -> tuple[int, int]:
        """One try; (rows added, hot Bronze version) or CommitConflictError."""
        from engine.lifecycle.tombstones import TABLE as TOMBSTONES
        from engine.lifecycle.tombstones import drop_erased

        self.hot.snapshot()  # the snapshots first, the tombstones after them
        arch = archive_of(self.lake)
        arch_id = (arch.lake.root, arch.cutoff) if arch is not None else None
        if arch_id != self.arch_id:  # (a new) archive: rows change sides, keys are read again
            self.close()
            self.hot = _Side(self.lake, dt=self.hot.dt, after=arch.cutoff if arch else None)
            self.archive = _Side(arch.lake, before=arch.cutoff) if arch is not None else None
            self.arch_id = arch_id
        if self.archive is not None:
            self.archive.snapshot()
        stones = self.lake.version(TOMBSTONES)
        if stones != self.stones:
            self.rows, self.erased = drop_erased(self.lake, self.given)
            self.rows = _first_per_key(self.rows)
            self.stones = stones
        for side in (self.hot, self.archive):
            if side is not None and self.ranges is not None:  # no rows: no key to look up
                side.read_keys(self.ranges)
        rows = self.rows
        present = [s.keys for s in (self.hot, self.archive) if s is not None and s.keys is not None
                   and s.keys.num_rows]
        if rows.num_rows and present:
            known = pa.concat_tables(present) if len(present) > 1 else present[0]
            rows = rows.join(known, list(schemas.BRONZE_KEY), join_type="left anti")
            rows = rows.sort_by([(k, "ascending") for k in schemas.BRONZE_KEY])
        if self.archive is not None and self.archive.before is not None:
            old = pc.less(rows.column("ingestion_date"), pa.scalar(self.archive.before, pa.date32()))
            self.archive.stage(rows.filter(old))  # rows ingested before the cutoff go there
            self.hot.stage(rows.filter(pc.invert(old)))
        else:
            self.hot.stage(rows)
        for side in (self.archive, self.hot):  # a part that commits stays: a retry finds its keys
            if side is not None:
                self.added += side.commit(self.metadata)
        assert self.hot.dt is not None
        return self.added, self.hot.dt.version()

    def close(self) -> None:
        for side in (self.hot, self.archive):
            if side is not None:
                side.drop()


def append_new(lake: Lake, rows: pa.Table, source: str, metadata: dict[str, str]) -> ImportResult:
    """Append the rows whose (topic, partition, offset) Bronze does not hold yet.

    Each commit is fenced on the Bronze snapshot the key check and the tombstones were read
    against (docs/semantics.md §9), so two imports of one file, or an import racing an
    erasure, never add a row twice or back. A commit that lost its race to another writer
    (an ingester, another import, maintenance) is tried again on the new snapshot, against
    which the keys are checked again (reading only the files added since), after a jittered
    backoff: at least :data:`IMPORT_ATTEMPTS` times and until ``MEDALLION_COMMIT_WAIT``
    seconds have passed.
    """
    read = rows.num_rows
    started = time.monotonic()
    deadline = started + environment().commit_wait
    imp = _Import(lake, rows, metadata)
    try:
        attempt = 0
        while True:
            attempt += 1
            try:
                added, version = imp.attempt()
            except CommitConflictError as exc:
                if attempt >= IMPORT_ATTEMPTS and time.monotonic() >= deadline:
                    raise CommitConflictError(
                        f"{exc}; other writers committed first {attempt} times in "
                        f"{time.monotonic() - started:.0f} s (MEDALLION_COMMIT_WAIT)",
                        table=schemas.BRONZE) from None
                time.sleep(backoff(attempt))
                continue
            return ImportResult(source, read, added, read - added - imp.erased, version, imp.erased)
    finally:
        imp.close()


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
        raise InputError(f"{where}: not a Bronze archive: {'; '.join(parts)} (docs/semantics.md §2 columns)")
