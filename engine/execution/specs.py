"""Task specs and results: the picklable, immutable contract between the driver and shard tasks.

A replay is a map/reduce over tenant buckets:

- map (one task per group of Bronze or Silver files): validate (full mode) and
  split the rows into ``n_buckets`` tenant buckets;
- reduce (one task per bucket): dedup (full mode) and Gold for every tenant of
  the bucket. Every event of a tenant meets in one reduce task, so dedup and
  windows are exact.

Executors (:mod:`engine.execution.local`, :mod:`engine.execution.ray_executor`)
share the :class:`Executor` interface and produce identical tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol

import pyarrow as pa

from engine.contract import schemas
from engine.fold.scope import Scope
from engine.lake.staging import Staged
from engine.lake.tables import Lake
from engine.live.increment import IncrementSpec
from rules.ruleset import Ruleset

#: full: Bronze -> every table; gold: Silver -> Gold; incremental: new Bronze rows -> changed rows
Mode = Literal["full", "gold", "incremental"]
#: A table a task hands back: rows in memory, or files it staged in the lake.
Out = pa.Table | Staged


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
    #: where the table is read from when not the lake's own (an archive of Bronze)
    read_root: str | None = None
    #: rows read: ingestion_date in [after, before) (Bronze split at an archive cutoff)
    after: date | None = None
    before: date | None = None


@dataclass(frozen=True)
class MapResult:
    rows_in: int
    quarantine: Out
    #: each tenant bucket's rows: a table (local executor), or the handle of the shuffle file
    #: they were written to (Ray executor: :class:`engine.execution.shuffle.Piece`, None if empty)
    buckets: tuple[Any, ...]
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
    #: set: an incremental step's reduce (mode "incremental"), reading these versions
    increment: IncrementSpec | None = None


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
    #: tenant_usage_region_hourly rows (None: the ruleset has no region rule)
    region: Out | None = None
    #: incremental steps: key index rows, keys whose rows are replaced, (tenant, hour)s replaced
    state: Out | None = None
    replaced: pa.Table | None = None
    touched: pa.Table | None = None


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
    region: Out | None = None
    state: Out | None = None
    replaced: pa.Table | None = None
    touched: pa.Table | None = None


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

    full = mode in ("full", "incremental")
    inc = mode == "incremental"

    def small(name: str) -> pa.Table | None:
        parts = [getattr(r, name) for r in reduces if getattr(r, name) is not None]
        return pa.concat_tables(parts) if parts else None

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
        region=(cat("region", schemas.REGION) if any(r.region is not None for r in reduces)
                else None),
        state=cat("state", schemas.DEDUP_STATE) if inc else None,
        replaced=small("replaced") if inc else None,
        touched=small("touched") if inc else None,
    )
