"""Shard workers and the executors that run them.

A replay is a map/reduce over tenant buckets:

- map (one task per group of Bronze or Silver files): validate (full mode) and
  split the rows into ``n_buckets`` tenant buckets;
- reduce (one task per bucket): dedup (full mode) and Gold for every tenant of
  the bucket. Every event of a tenant meets in one reduce task, so dedup and
  windows are exact.

Workers are top-level functions over picklable frozen specs; the local and Ray
executors share the :class:`Executor` interface and produce identical tables.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from engine import schemas
from engine.lake import Lake
from engine.pipeline import Compiled, split_buckets
from engine.scope import Scope
from rules.base import Ruleset

Mode = Literal["full", "gold"]
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


@dataclass(frozen=True)
class MapResult:
    rows_in: int
    quarantine: pa.Table
    buckets: tuple[pa.Table, ...]
    seconds: float
    node: str = ""


@dataclass(frozen=True)
class ReduceSpec:
    bucket: int
    mode: Mode
    ruleset: Ruleset
    threads: int = 0


@dataclass(frozen=True)
class ReduceResult:
    bucket: int
    silver: pa.Table | None
    duplicates: pa.Table | None
    minute: pa.Table
    hourly: pa.Table
    alerts: pa.Table
    seconds: float
    node: str = ""


def where() -> str:
    """The Ray node id when running in a Ray worker, else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # ray missing or not in a worker: fall through
        pass
    return socket.gethostname()


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
    if n:
        os.environ["MEDALLION_DUCKDB_THREADS"] = str(n)


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
    _fault_kill_once("map")
    return MapResult(data.num_rows, quarantine, buckets, time.perf_counter() - t0, where())


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
    summary = MapResult(res.rows_in, res.quarantine, (), res.seconds, res.node)
    return (summary, *res.buckets)


def reduce_shard(spec: ReduceSpec, *pieces: pa.Table) -> ReduceResult:
    """All rows of one tenant bucket -> its Silver (full mode) and Gold rows."""
    t0 = time.perf_counter()
    _threads(spec.threads)
    compiled = Compiled.of(spec.ruleset)
    rows = pa.concat_tables(pieces) if pieces else None
    silver = duplicates = None
    if spec.mode == "full":
        valid = rows if rows is not None else schemas.empty(schemas.VALID_SCHEMA)
        silver, duplicates = compiled.dedup(schemas.conform(valid, schemas.VALID_SCHEMA))
        gold_in = silver
    else:
        gold_in = rows if rows is not None else schemas.empty(schemas.SILVER_SCHEMA)
    minute, hourly, alerts = compiled.gold(gold_in)
    _fault_kill_once("reduce")
    return ReduceResult(spec.bucket, silver, duplicates, minute, hourly, alerts,
                        time.perf_counter() - t0, where())


@dataclass(frozen=True)
class JobOutput:
    rows_in: int
    quarantine: pa.Table
    silver: pa.Table | None
    duplicates: pa.Table | None
    minute: pa.Table
    hourly: pa.Table
    alerts: pa.Table
    task_seconds: dict[str, float] = field(default_factory=dict)
    nodes: tuple[str, ...] = ()


Progress = Callable[[str, int, int], None]


class Executor(Protocol):
    name: str

    def cpus(self) -> int: ...

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput: ...


def combine(maps: list[MapResult], reduces: list[ReduceResult], mode: Mode) -> JobOutput:
    reduces = sorted(reduces, key=lambda r: r.bucket)

    def cat(name: str, schema: pa.Schema) -> pa.Table:
        parts = [getattr(r, name) for r in reduces if getattr(r, name) is not None]
        return pa.concat_tables(parts) if parts else schemas.empty(schema)

    full = mode == "full"
    return JobOutput(
        rows_in=sum(m.rows_in for m in maps),
        quarantine=pa.concat_tables([m.quarantine for m in maps])
        if maps else schemas.empty(schemas.QUARANTINE_SCHEMA),
        silver=cat("silver", schemas.SILVER_SCHEMA) if full else None,
        duplicates=cat("duplicates", schemas.DUPLICATES_SCHEMA) if full else None,
        minute=cat("minute", schemas.MINUTE_SCHEMA),
        hourly=cat("hourly", schemas.HOURLY_SCHEMA),
        alerts=cat("alerts", schemas.ALERTS_SCHEMA),
        task_seconds={"map": sum(m.seconds for m in maps), "reduce": sum(r.seconds for r in reduces)},
        nodes=tuple(sorted({m.node for m in maps} | {r.node for r in reduces})),
    )


class LocalExecutor:
    """Runs every task in this process, one after another (DuckDB uses all cores inside)."""

    name = "local"

    def cpus(self) -> int:
        return 1

    def run(self, maps: list[MapSpec], reduces: list[ReduceSpec],
            progress: Progress | None = None) -> JobOutput:
        total = len(maps) + len(reduces)
        map_out: list[MapResult] = []
        for spec in maps:
            map_out.append(map_shard(spec))
            if progress:
                progress("map", len(map_out), total)
        red_out: list[ReduceResult] = []
        for spec in reduces:
            red_out.append(reduce_shard(spec, *[m.buckets[spec.bucket] for m in map_out]))
            if progress:
                progress("reduce", len(map_out) + len(red_out), total)
        mode = reduces[0].mode if reduces else "full"
        return combine(map_out, red_out, mode)
