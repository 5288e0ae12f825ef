"""Shard workers and the executors that run them.

A replay is a map/reduce over tenant buckets:

- map (one task per group of Bronze or Silver files): validate (full mode) and
  split the rows into ``n_buckets`` tenant buckets;
- reduce (one task per bucket): dedup (full mode) and Gold for every tenant of
  the bucket. Every event of a tenant meets in one reduce task, so dedup and
  windows are exact.

A reduce task whose input exceeds its memory budget folds it in ingestion-time
chunks: the dedup rule carries its per-key state from chunk to chunk (see
:mod:`rules._dedup`), and each chunk adds partial 1-minute counts that merge
exactly (counts add, the latest event wins), so late events that fall into an
earlier chunk's minute are counted in it. Plan limits, burst windows, hourly
rows and alerts run once over the merged minutes. A chunk's Silver and
duplicates leave the task as soon as they are computed: when the spec names a
lake, workers write their rows as uncommitted Parquet files of the target tables
(:mod:`engine.staging`) and return only small handles, which the driver commits.

Workers are top-level functions over picklable frozen specs; the local and Ray
executors share the :class:`Executor` interface and produce identical tables.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import schemas
from engine.lake import Lake
from engine.pipeline import Compiled, split_buckets
from engine.scope import Scope
from engine.staging import Staged
from rules._duck import set_threads
from rules.base import Ruleset

Mode = Literal["full", "gold"]
#: A table a task hands back: rows in memory, or files it staged in the lake.
Out = pa.Table | Staged
#: A chunk's working set (DuckDB windows, sorts, copies) relative to its Arrow input.
WORK_FACTOR = 4
MAP_COLUMNS: dict[str, list[str]] = {
    "full": ["raw_payload", "kafka_topic", "kafka_partition", "kafka_offset", "ingestion_timestamp"],
    "gold": schemas.SILVER_SCHEMA.names,
}


@dataclass(frozen=True)
class MapSpec:
    lake_root: str
    storage_options: tuple[tuple[str, str], ...]
    table: str
    version: int
    #: (file path, row group ids) units; every unit is read by exactly one task
    units: tuple[tuple[str, tuple[int, ...]], ...]
    mode: Mode
    ruleset: Ruleset
    n_buckets: int
    scope: Scope | None = None
    threads: int = 0
    bronze_root: str | None = None
    #: set: stage output files in the lake under this replay id instead of returning rows
    replay_id: str | None = None


@dataclass(frozen=True)
class MapResult:
    rows_in: int
    quarantine: Out
    buckets: tuple[pa.Table, ...]
    seconds: float
    node: str = ""
    #: rows per tenant bucket (what the reduce tasks will get from this map)
    bucket_rows: tuple[int, ...] = ()


@dataclass(frozen=True)
class Target:
    """Where a task stages its output: a lake, the replay id, and the replay's scope."""

    lake_root: str
    storage_options: tuple[tuple[str, str], ...]
    bronze_root: str | None
    replay_id: str
    scope: Scope | None = None

    def lake(self) -> Lake:
        return Lake(self.lake_root, dict(self.storage_options) or None, self.bronze_root)


@dataclass(frozen=True)
class ReduceSpec:
    bucket: int
    mode: Mode
    ruleset: Ruleset
    threads: int = 0
    #: bytes a task may use for one chunk's working set; 0: no limit (one chunk)
    memory_budget: int = 0
    target: Target | None = None


@dataclass(frozen=True)
class ReduceResult:
    bucket: int
    silver: Out | None
    duplicates: Out | None
    minute: Out
    hourly: Out
    alerts: Out
    seconds: float
    node: str = ""
    chunks: int = 1


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
    from rules.rulesets import load_ruleset

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


def _fault_kill_once(stage: str) -> None:
    """Test hook: ``MEDALLION_FAULT_KILL_ONCE=<stage>:<marker file>`` kills this worker process
    the first time ``stage`` runs (the marker makes the retry succeed)."""
    spec = os.environ.get("MEDALLION_FAULT_KILL_ONCE")
    if not spec:
        return
    want, _, marker = spec.partition(":")
    if want == stage and marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)


def read_files(spec: MapSpec) -> pa.Table:
    lake = Lake(spec.lake_root, dict(spec.storage_options) or None, spec.bronze_root)
    ds = lake.dataset(spec.table, spec.version)
    wanted: dict[str, list[int]] = {}
    for path, groups in spec.units:  # a file's row groups may be spread over several units
        wanted.setdefault(path, []).extend(groups)
    cols = MAP_COLUMNS[spec.mode]
    parts = []
    for frag in ds.get_fragments():
        if frag.path in wanted:
            part = frag.subset(row_group_ids=sorted(wanted[frag.path]))
            parts.append(part.to_table(columns=cols, schema=ds.schema))
    if not parts:
        return ds.schema.empty_table().select(cols)
    return pa.concat_tables(parts)


def file_units(ds: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Every (file, row group) of a dataset, in a stable order."""
    units = []
    for frag in ds.get_fragments():
        frag.ensure_complete_metadata()
        units += [(frag.path, (rg.id,)) for rg in frag.row_groups]
    return sorted(units)


def _threads(n: int) -> None:
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
    _fault_kill_once("map")
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


def map_shard_parts(spec: MapSpec) -> tuple[object, ...]:
    """:func:`map_shard` as (summary, bucket 0, bucket 1, ...) so each bucket is its own object."""
    res = map_shard(spec)
    summary = MapResult(res.rows_in, res.quarantine, (), res.seconds, res.node, res.bucket_rows)
    return (summary, *res.buckets)


def time_chunks(pieces: tuple[pa.Table, ...], budget: int) -> list[tuple[Any, Any]]:
    """Ingestion-time bounds [lo, hi) splitting ``pieces`` into chunks that fit ``budget``.

    Bounds are ingestion_timestamp values (None: unbounded), so rows of one instant
    stay in one chunk and chunks follow the total ingestion order of SPEC 2.
    """
    nbytes = sum(p.nbytes for p in pieces)
    n = -(-nbytes * WORK_FACTOR // budget) if budget > 0 else 1
    if n <= 1:
        return [(None, None)]
    ts = pa.chunked_array([c for p in pieces for c in p.column("ingestion_timestamp").chunks],
                          schemas.TS)
    ints = np.sort(pc.cast(ts, pa.int64()).to_numpy())
    picks = ints[[i * len(ints) // n for i in range(1, n)]] if len(ints) else []
    cuts = sorted({int(q) for q in picks if q != ints[0]})
    bounds = [pa.scalar(c, pa.int64()).cast(schemas.TS) for c in cuts]
    edges: list[Any] = [None, *bounds, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _chunk(pieces: tuple[pa.Table, ...], lo: Any, hi: Any) -> pa.Table:
    if lo is None and hi is None:
        return pa.concat_tables(pieces)
    parts = []
    for p in pieces:
        ts = p.column("ingestion_timestamp")
        m = None
        if lo is not None:
            m = pc.greater_equal(ts, lo)
        if hi is not None:
            m2 = pc.less(ts, hi)
            m = m2 if m is None else pc.and_(m, m2)
        parts.append(p.filter(m))
    return pa.concat_tables(parts)


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
    full = spec.mode == "full"
    schema = schemas.VALID_SCHEMA if full else schemas.SILVER_SCHEMA
    pieces = tuple(p for p in pieces if p.num_rows) or (schemas.empty(schema),)
    chunkable = not full or compiled.can_chunk
    bounds = time_chunks(pieces, spec.memory_budget) if chunkable else [(None, None)]
    tag = f"b{spec.bucket}"
    silver_sink = _Sink(spec.target, schemas.SILVER, tag)
    dup_sink = _Sink(spec.target, schemas.DUPLICATES, tag)
    minutes: list[pa.Table] = []
    state = None
    for i, (lo, hi) in enumerate(bounds):
        rows = _chunk(pieces, lo, hi)
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
    minute, hourly, alerts = compiled.gold_from_minutes(compiled.merge_minutes(minutes))
    _fault_kill_once("reduce")
    outs: dict[str, Out] = {}
    for table, data in ((schemas.MINUTE, minute), (schemas.HOURLY, hourly), (schemas.ALERTS, alerts)):
        sink = _Sink(spec.target, table, tag)
        sink.add(data)
        outs[table] = sink.result()
    return ReduceResult(spec.bucket, silver_sink.result() if full else None,
                        dup_sink.result() if full else None, outs[schemas.MINUTE],
                        outs[schemas.HOURLY], outs[schemas.ALERTS], time.perf_counter() - t0,
                        where(), len(bounds))


@dataclass(frozen=True)
class JobOutput:
    rows_in: int
    quarantine: Out
    silver: Out | None
    duplicates: Out | None
    minute: Out
    hourly: Out
    alerts: Out
    task_seconds: dict[str, float] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()
    chunks: int = 0


Progress = Callable[[str, int, int], None]


class Executor(Protocol):
    name: str

    def cpus(self) -> int: ...

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput: ...


def _gather(table: str, parts: list[Out]) -> Out:
    if parts and all(isinstance(p, Staged) for p in parts):
        return Staged.merge(table, [p for p in parts if isinstance(p, Staged)])
    tables = [p for p in parts if isinstance(p, pa.Table)]
    if len(tables) != len(parts):
        raise TypeError(f"{table}: tasks returned both rows and staged files")
    return pa.concat_tables(tables) if tables else schemas.empty(schemas.SCHEMAS[table])


def combine(maps: list[MapResult], reduces: list[ReduceResult], mode: Mode) -> JobOutput:
    reduces = sorted(reduces, key=lambda r: r.bucket)

    def cat(name: str, table: str) -> Out:
        return _gather(table, [getattr(r, name) for r in reduces if getattr(r, name) is not None])

    full = mode == "full"
    return JobOutput(
        rows_in=sum(m.rows_in for m in maps),
        quarantine=_gather(schemas.QUARANTINE, [m.quarantine for m in maps]),
        silver=cat("silver", schemas.SILVER) if full else None,
        duplicates=cat("duplicates", schemas.DUPLICATES) if full else None,
        minute=cat("minute", schemas.MINUTE),
        hourly=cat("hourly", schemas.HOURLY),
        alerts=cat("alerts", schemas.ALERTS),
        task_seconds={"map": sum(m.seconds for m in maps), "reduce": sum(r.seconds for r in reduces)},
        nodes=tuple(sorted({m.node for m in maps} | {r.node for r in reduces})),
        chunks=sum(r.chunks for r in reduces),
    )


class LocalExecutor:
    """Runs the tasks in this process on a pool of threads, one per core by default.

    DuckDB, Arrow and Parquet release the GIL, so map tasks (then reduce tasks) run in
    parallel, each on one DuckDB thread, as Ray would run them, without Ray's startup.

    Map outputs wait in memory for the reduce tasks until they exceed the shard memory
    budget; from then on each map's buckets go to Arrow IPC files in a scratch directory
    and are read back memory-mapped (what Ray's object store does by spilling), so the
    process does not hold the whole history.
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        #: bytes of map output the last run wrote to scratch files
        self.spilled_bytes = 0

    def cpus(self) -> int:
        return self.workers

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput:
        total = len(maps) + len(reduces)
        done = 0

        def each(fn: Callable[[Any], Any], items: list[Any], stage: str) -> list[Any]:
            nonlocal done
            if self.workers == 1 or len(items) <= 1:
                out = []
                for item in items:
                    out.append(fn(item))
                    done += 1
                    if progress:
                        progress(stage, done, total)
                return out
            with ThreadPoolExecutor(self.workers, thread_name_prefix="medallion") as pool:
                futures = [pool.submit(fn, item) for item in items]
                for _ in as_completed(futures):
                    done += 1
                    if progress:
                        progress(stage, done, total)
                return [f.result() for f in futures]

        budget = min((r.memory_budget for r in reduces if r.memory_budget), default=0)
        held = 0
        lock = threading.Lock()
        self.spilled_bytes = 0
        with tempfile.TemporaryDirectory(prefix="medallion-shuffle-") as scratch:

            def run_map(spec: MapSpec) -> MapResult:
                nonlocal held
                res = map_shard(spec)
                size = sum(b.nbytes for b in res.buckets)
                with lock:
                    keep = not budget or held + size <= budget
                    held += size if keep else 0
                    self.spilled_bytes += 0 if keep else size
                return res if keep else replace(res, buckets=_spill(res.buckets, scratch))

            map_out: list[MapResult] = each(run_map, maps, "map")
            size = {s.bucket: sum(m.bucket_rows[s.bucket] for m in map_out if m.bucket_rows)
                    for s in reduces}
            order = sorted(reduces, key=lambda s: -size.get(s.bucket, 0))  # biggest shard first
            red_out: list[ReduceResult] = each(
                lambda s: reduce_shard(s, *[m.buckets[s.bucket] for m in map_out]), order, "reduce")
            # the summaries only: the buckets (maybe mapped files) end with the directory
            map_out = [replace(m, buckets=()) for m in map_out]
        return combine(map_out, red_out, reduces[0].mode if reduces else "full")


def _spill(buckets: tuple[pa.Table, ...], directory: str) -> tuple[pa.Table, ...]:
    """Write each bucket to an Arrow IPC file and read it back memory-mapped (zero-copy)."""
    out = []
    for table in buckets:
        path = os.path.join(directory, f"{uuid.uuid4().hex}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        out.append(pa.ipc.open_file(pa.memory_map(path)).read_all())
    return tuple(out)
