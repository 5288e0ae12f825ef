"""The local executor: shard workers on a thread pool in this process."""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from typing import Any

import pyarrow as pa

from engine.execution.shuffle import read_ipc, write_ipc
from engine.execution.specs import (
    JobOutput,
    MapResult,
    MapSpec,
    Progress,
    ReduceResult,
    ReduceSpec,
    combine,
)
from engine.execution.workers import map_shard, reduce_shard


class LocalExecutor:
    """Runs the tasks in this process on a pool of threads, one per core by default.

    DuckDB, Arrow and Parquet release the GIL, so map tasks (then reduce tasks) run in
    parallel, each on one DuckDB thread, as Ray would run them, without Ray's startup.

    Map outputs wait in memory for the reduce tasks until they exceed the shard memory
    budget; from then on each map's buckets go to Arrow IPC files in a scratch directory
    and are read back memory-mapped (as the Ray executor's shuffle does,
    :mod:`engine.execution.shuffle`), so the process does not hold the whole history.
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
        write_ipc(table, path)
        out.append(read_ipc(path))
    return tuple(out)
