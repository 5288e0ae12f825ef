"""Ingestion-time chunks: a shard over its memory budget is folded in slices of docs/semantics.md §2's order.

Chunk bounds are ingestion_timestamp values, so rows of one instant stay in one
chunk and chunks follow the total ingestion order; the dedup rule carries its
per-key state from chunk to chunk (see :mod:`rules._dedup`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas

#: A chunk's working set (DuckDB windows, sorts, copies, the key state carried from the
#: chunks before) relative to its Arrow input (measured on a 3.5M-row shard of a 20M-event
#: history: ~5.5x a chunk's bytes over the base, the memory of one chunk freed before the next;
#: 8 leaves room for the key state, which grows chunk after chunk).
WORK_FACTOR = 8
#: A worker process's own footprint (interpreter, Arrow, DuckDB, Ray: ~0.3 GiB measured), which
#: the task memory also holds.
PROCESS_BASE = 512 << 20


def working_budget(task_memory: int, resident: int = 0) -> int:
    """Bytes a chunk's working set may use within ``task_memory`` (a process's budget) when
    ``resident`` bytes of input stay in memory all along (the shard's pieces, in memory or
    memory-mapped: every chunk reads all of them); a quarter of it at least."""
    return max(1, task_memory // 4, task_memory - PROCESS_BASE - resident)


def time_chunks(pieces: tuple[pa.Table, ...], budget: int) -> list[tuple[Any, Any]]:
    """Ingestion-time bounds [lo, hi) splitting ``pieces`` into chunks that fit ``budget``.

    Bounds are ingestion_timestamp values (None: unbounded), so rows of one instant
    stay in one chunk and chunks follow the total ingestion order of docs/semantics.md §2.
    """
    nbytes = sum(p.nbytes for p in pieces)
    n = -(-nbytes * WORK_FACTOR // working_budget(budget, nbytes)) if budget > 0 else 1
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


def chunk_rows(pieces: tuple[pa.Table, ...], lo: Any, hi: Any) -> pa.Table:
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
