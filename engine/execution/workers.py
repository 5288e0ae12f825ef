"""Shard workers: top-level functions over picklable specs, run by every executor.

A reduce task whose input exceeds its memory budget folds it in ingestion-time
chunks (:mod:`engine.fold.chunks`): each chunk adds partial 1-minute counts that
merge exactly (counts add, the latest event wins), so late events that fall into
an earlier chunk's minute are counted in it. Plan limits, burst windows, hourly
rows and alerts run once over the merged minutes. A chunk's Silver and
duplicates leave the task as soon as they are computed: when the spec names a
lake, workers write their rows as uncommitted Parquet files of the target tables
(:mod:`engine.lake.staging`) and return only small handles, which the driver commits.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import sys
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.config import start_process
from engine.contract import schemas
from engine.contract.sql import close_connection, set_threads
from engine.execution.faults import kill_once
from engine.execution.specs import (
    MapResult,
    MapSpec,
    Mode,
    Out,
    ReduceResult,
    ReduceSpec,
    Target,
)
from engine.fold.chunks import chunk_rows, time_chunks
from engine.fold.pipeline import Compiled, split_buckets
from engine.fold.scope import Scope
from engine.lake.bronze import SourcePart
from engine.lake.staging import Staged
from engine.lake.tables import Lake
from engine.live.increment import fold_increment

MAP_COLUMNS: dict[str, list[str]] = {
    "full": ["raw_payload", "kafka_topic", "kafka_partition", "kafka_offset", "ingestion_timestamp"],
    "gold": schemas.SILVER_SCHEMA.names,
}


def where() -> str:
    """The Ray node id when running in a Ray worker, else the host name."""
    ray = sys.modules.get("ray")  # never import Ray here: the local executor must not pay for it
    try:
        if ray is not None and ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # not in a worker: fall through
        pass
    return socket.gethostname()


def warm_up() -> None:
    """Fold one message through every stage, so a fresh worker process has loaded DuckDB's
    JSON functions, the rule plugins and the Arrow kernels before its first real task."""
    from rules.ruleset import load_ruleset

    payload = (b'{"event_id": "w", "event_timestamp": "2026-01-01T00:00:00Z", "tenant_id": "w", '
               b'"subscription_plan": "free", "endpoint": "/", "status_code": 200}')
    ts = pa.array([0], pa.int64()).cast(schemas.TS)
    bronze = pa.table({"raw_payload": pa.array([payload], pa.binary()), "kafka_topic": ["w"],
                       "kafka_partition": pa.array([0], pa.int32()), "kafka_offset": pa.array([0]),
                       "ingestion_timestamp": ts})
    compiled = Compiled.of(load_ruleset("2026-02"))
    valid, _ = compiled.validate(bronze)
    split_buckets(valid, 2)
    silver, _ = compiled.dedup(schemas.conform(valid, schemas.VALID_SCHEMA))
    compiled.gold(silver)


def read_files(spec: MapSpec) -> pa.Table:
    opts = dict(spec.storage_options) or None
    lake = Lake(spec.read_root, opts) if spec.read_root else Lake(spec.lake_root, opts, spec.bronze_root)
    ds = lake.dataset(spec.table, spec.version)
    flt = SourcePart(lake, spec.version, spec.after, spec.before, spec.table).filter()
    wanted: dict[str, list[int]] = {}
    for path, groups in spec.units:  # a file's row groups may be spread over several units
        wanted.setdefault(path, []).extend(groups)
    cols = MAP_COLUMNS[spec.mode]
    parts = []
    for frag in ds.get_fragments():
        if frag.path in wanted:
            part = frag.subset(row_group_ids=sorted(wanted[frag.path]))
            parts.append(part.to_table(columns=cols, schema=ds.schema, filter=flt))
    if not parts:
        return ds.schema.empty_table().select(cols)
    return pa.concat_tables(parts)


def file_units(ds: Any, flt: Any = None) -> list[tuple[str, tuple[int, ...]]]:
    """Every (file, row group) of a dataset that may hold rows matching ``flt``, stably ordered."""
    return sorted((path, (rg,)) for path, rg, _, _ in scan_units(ds, flt))


def scan_units(ds: Any, flt: Any = None) -> list[tuple[str, int, int, int]]:
    """(file, row group id, rows, compressed bytes) of the row groups that may match ``flt``.

    Files are pruned by partition values, row groups by their Parquet statistics, so a
    scoped replay over a Z-ordered table reads only the row groups its scope can touch.
    """
    out = []
    for frag in ds.get_fragments(filter=flt) if flt is not None else ds.get_fragments():
        frag.ensure_complete_metadata()
        sub = frag.subset(filter=flt, schema=ds.schema) if flt is not None else frag
        meta = frag.metadata
        for rg in sub.row_groups:
            group = meta.row_group(rg.id)
            size = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
            out.append((frag.path, rg.id, rg.num_rows, size))
    return out


def release_memory() -> None:
    """Give the memory a finished task freed back to the OS. A Ray worker runs task after
    task: without this, glibc keeps the freed heap pages of its arenas and the process's
    resident memory grows with the number of tasks it ran, not with the largest."""
    close_connection()  # DuckDB keeps its buffers for the next query otherwise
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(AttributeError, OSError):  # glibc; elsewhere there is no such call
        ctypes.CDLL(None).malloc_trim(0)


def _threads(n: int) -> None:
    start_process()  # a fresh worker process applies the process settings once
    set_threads(n)  # per thread: the local executor runs tasks on a thread pool


def map_shard(spec: MapSpec) -> MapResult:
    """Read a group of files; validate them (full mode); split rows into tenant buckets."""
    t0 = time.perf_counter()
    _threads(spec.threads)
    data = read_files(spec)
    compiled = Compiled.of(spec.ruleset)
    if spec.mode == "full":
        rows, quarantine = compiled.validate(data)
    else:
        rows, quarantine = data, schemas.empty(schemas.QUARANTINE_SCHEMA)
    rows = _restrict(rows, spec.scope, spec.mode)
    buckets = tuple(split_buckets(rows, spec.n_buckets))
    out_q: Out = quarantine
    if spec.replay_id is not None and spec.mode == "full":
        target = Target(spec.lake_root, spec.storage_options, spec.bronze_root, spec.replay_id, spec.scope)
        out_q = _stage(target, schemas.QUARANTINE, quarantine, "q")
    kill_once("map")
    return MapResult(data.num_rows, out_q, buckets, time.perf_counter() - t0, where(),
                     tuple(b.num_rows for b in buckets))


def _stage(target: Target, table: str, data: pa.Table, tag: str) -> Staged:
    if target.scope is not None:
        data = data.filter(target.scope.mask(data, table))
    return target.lake().stage(table, data, f"{target.replay_id}-{tag}")


def _restrict(rows: pa.Table, scope: Scope | None, mode: Mode) -> pa.Table:
    """Drop rows a scoped replay cannot need: other tenants; in gold mode, other hours too.

    In full mode the time range is not applied here: dedup must see every copy of a key.
    """
    if scope is None:
        return rows
    if scope.tenants:
        rows = rows.filter(pc.is_in(rows.column("tenant_id"), value_set=pa.array(scope.tenants)))
    if mode == "gold" and (scope.start or scope.end):
        rows = rows.filter(Scope(scope.start, scope.end).mask(rows, "silver_api_usage"))
    return rows


class _Sink:
    """Collects a table's rows from chunk after chunk: staged as files, or kept in memory."""

    def __init__(self, target: Target | None, table: str, tag: str) -> None:
        self.target, self.table, self.tag = target, table, tag
        self.parts: list[pa.Table] = []
        self.staged: list[Staged] = []

    def add(self, data: pa.Table) -> None:
        if self.target is None:
            self.parts.append(data)
        elif data.num_rows:
            self.staged.append(_stage(self.target, self.table, data, f"{self.tag}c{len(self.staged)}"))

    def result(self) -> Out:
        if self.target is not None:
            return Staged.merge(self.table, self.staged)
        if not self.parts:
            return schemas.empty(schemas.SCHEMAS[self.table])
        return pa.concat_tables(self.parts) if len(self.parts) > 1 else self.parts[0]


def reduce_shard(spec: ReduceSpec, *pieces: pa.Table) -> ReduceResult:
    """All rows of one tenant bucket -> its Silver (full mode) and Gold rows.

    Folds the rows in ingestion-time chunks when they exceed ``spec.memory_budget``
    (full mode needs a dedup rule with ``apply_chunk``; otherwise one chunk).
    """
    t0 = time.perf_counter()
    _threads(spec.threads)
    compiled = Compiled.of(spec.ruleset)
    if spec.increment is not None:
        return _reduce_increment(spec, compiled, pieces, t0)
    full = spec.mode == "full"
    schema = schemas.VALID_SCHEMA if full else schemas.SILVER_SCHEMA
    pieces = tuple(p for p in pieces if p.num_rows) or (schemas.empty(schema),)
    chunkable = not full or compiled.can_chunk
    bounds = time_chunks(pieces, spec.memory_budget) if chunkable else [(None, None)]
    tag = f"b{spec.bucket}"
    silver_sink = _Sink(spec.target, schemas.SILVER, tag)
    dup_sink = _Sink(spec.target, schemas.DUPLICATES, tag)
    minutes: list[pa.Table] = []
    regions: list[pa.Table] = []
    state = None
    for i, (lo, hi) in enumerate(bounds):
        rows = chunk_rows(pieces, lo, hi)
        if full:
            valid = schemas.conform(rows, schemas.VALID_SCHEMA)
            if len(bounds) == 1:
                silver, duplicates = compiled.dedup(valid)
            else:
                last = i == len(bounds) - 1
                silver, duplicates, state = compiled.dedup_chunk(valid, state, None if last else hi)
            silver_sink.add(silver)
            dup_sink.add(duplicates)
            rows = silver
        minutes.append(compiled.minutes(rows))
        region = compiled.region(rows)
        if region is not None:
            regions.append(region)
        if len(bounds) > 1:  # the chunk's rows and DuckDB's buffers go before the next chunk
            rows = valid = silver = duplicates = None
            release_memory()
    minute, hourly, alerts = compiled.gold_from_minutes(compiled.merge_minutes(minutes))
    kill_once("reduce")
    gold = [(schemas.MINUTE, minute), (schemas.HOURLY, hourly), (schemas.ALERTS, alerts)]
    if regions:
        gold.append((schemas.REGION, compiled.merge_region(regions)))
    outs: dict[str, Out] = {}
    for table, data in gold:
        sink = _Sink(spec.target, table, tag)
        sink.add(data)
        outs[table] = sink.result()
    return ReduceResult(spec.bucket, silver_sink.result() if full else None,
                        dup_sink.result() if full else None, outs[schemas.MINUTE],
                        outs[schemas.HOURLY], outs[schemas.ALERTS], time.perf_counter() - t0,
                        where(), len(bounds), outs.get(schemas.REGION))


def _reduce_increment(spec: ReduceSpec, compiled: Compiled, pieces: tuple[pa.Table, ...],
                      t0: float) -> ReduceResult:
    """An incremental step's reduce: this bucket's new valid rows -> its changed rows, staged."""
    assert spec.increment is not None and spec.target is not None
    rows = [p for p in pieces if p.num_rows]
    valid = pa.concat_tables(rows) if rows else schemas.empty(schemas.VALID_SCHEMA)
    out = fold_increment(spec.target.lake(), compiled, spec.increment, valid)
    kill_once("reduce")
    tag = f"b{spec.bucket}"

    def staged(table: str, data: pa.Table | None) -> Out | None:
        if data is None:
            return None
        sink = _Sink(spec.target, table, tag)
        sink.add(data)
        return sink.result()

    return ReduceResult(
        spec.bucket, staged(schemas.SILVER, out.silver), staged(schemas.DUPLICATES, out.duplicates),
        staged(schemas.MINUTE, out.minute), staged(schemas.HOURLY, out.hourly),
        staged(schemas.ALERTS, out.alerts), time.perf_counter() - t0, where(), 1,
        staged(schemas.REGION, out.region), staged(schemas.DEDUP_STATE, out.state),
        out.replaced, out.touched)
