"""Staged files: Parquet written by shard workers into a table's directory, committed later.

A worker writes its share of a table as Parquet files under the table's root
(invisible to readers: Delta only sees files a commit adds) and returns a small
:class:`Staged` handle. The driver commits every worker's files of a table in one
Delta version (``create_write_transaction``), so neither a worker nor the driver
ever holds a whole table, and a killed or retried worker leaves only uncommitted
files behind, which :meth:`engine.lake.tables.Lake.sweep` removes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.contract import schemas
from engine.lake.storage import Storage

#: File names of staged files start with this, then the replay id.
PREFIX = "part-mr-"
#: Low-cardinality columns, dictionary-encoded. Dictionary attempts on unique columns
#: (event ids, offsets, timestamps) cost write time and save nothing (measured: silver
#: writes 1.75x faster and 20% smaller than with every column tried).
DICTIONARY_COLUMNS = frozenset({
    "tenant_id", "subscription_plan", "endpoint", "method", "kafka_topic", "user_id",
    "data_residency_region", "reason", "rule", "alert_type", "kept_kafka_topic"})


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative to the table root
    size: int
    partition_values: tuple[tuple[str, str | None], ...]
    num_records: int
    stats: str


@dataclass(frozen=True)
class Staged:
    """Files of one table written by workers and not yet committed."""

    table: str
    files: tuple[StagedFile, ...] = ()

    @property
    def num_rows(self) -> int:
        return sum(f.num_records for f in self.files)

    def bounds(self, low: str, high: str) -> tuple[Any, Any]:
        """(min of ``low``, max of ``high``) over the files, from their stats (None if empty)."""
        lows, highs = [], []
        for f in self.files:
            st = json.loads(f.stats)
            if low in st["minValues"]:
                lows.append(st["minValues"][low])
            if high in st["maxValues"]:
                highs.append(st["maxValues"][high])
        if not lows or not highs:
            return None, None
        return _parse_stat(min(lows)), _parse_stat(max(highs))

    @staticmethod
    def merge(table: str, parts: list[Staged]) -> Staged:
        return Staged(table, tuple(f for p in parts for f in p.files))


def _parse_stat(text: str) -> dt.datetime:
    """A timestamp as :func:`_stat_value` writes it (ISO, milliseconds, Z) -> datetime."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stat_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


#: Delta truncates string statistics to this many characters.
STRING_PREFIX = 32


def _upper_bound(text: str) -> str:
    """A string >= every string that starts with ``text``'s first STRING_PREFIX characters."""
    if len(text) <= STRING_PREFIX:
        return text
    head = text[:STRING_PREFIX]
    for i in range(len(head) - 1, -1, -1):
        cp = ord(head[i]) + 1
        if cp == 0xD800:
            cp = 0xE000  # skip the surrogate block
        if cp <= 0x10FFFF:
            return head[:i] + chr(cp)
    return text  # all U+10FFFF: keep it whole


def file_stats(data: pa.Table) -> str:
    """Delta stats of a file, as delta-rs writes them: they become fragment guarantees.

    Every non-binary column gets its null count and, unless all null, its min and max
    (readers prune with them, so a column without them would look empty). Timestamps
    are rounded outward to milliseconds (Delta's precision), strings cut to 32
    characters with the max rounded up, so every bound holds.
    """
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name in data.column_names:
        col = data.column(name)
        typ = col.type
        if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_nested(typ):
            continue
        nulls[name] = col.null_count
        if col.null_count == len(col):
            continue
        mm = pc.min_max(col)
        lo, hi = mm["min"], mm["max"]
        if pa.types.is_timestamp(typ):
            lo = pc.floor_temporal(lo, unit="millisecond")
            hi = pc.ceil_temporal(hi, unit="millisecond")
        lo_v, hi_v = _stat_value(lo.as_py()), _stat_value(hi.as_py())
        if isinstance(lo_v, str) and pa.types.is_string(typ):
            lo_v, hi_v = lo_v[:STRING_PREFIX], _upper_bound(hi_v)
        mins[name], maxs[name] = lo_v, hi_v
    return json.dumps({"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs,
                       "nullCount": nulls})


#: Tables whose files are sorted by a time column (and, with True, cut into one file per day of
#: it): an incremental step reads and rewrites the recent hours it touches, and file and
#: row-group statistics on that column keep it from reading or rewriting the rest.
CLUSTER: dict[str, tuple[str, bool]] = {
    schemas.SILVER: ("event_timestamp", False),
    schemas.DEDUP_STATE: ("ingestion_timestamp", False),
    **{t: ("window_start", True) for t in schemas.WINDOWED},
}


def _partition_value(col: pa.ChunkedArray) -> str | None:
    """The partition value (as Delta writes it) of a partition column's rows, which share one."""
    key = col[0].as_py()
    return None if key is None else _stat_value(key)


def _groups(data: pa.Table, part_col: str | None, clustered: tuple[str, bool] | None
            ) -> list[tuple[tuple[tuple[str, str | None], ...], pa.Table]]:
    """``data`` as (partition values, rows) per file. A clustered table: one sort (by
    partition value, then the cluster column), then contiguous slices per partition value
    (and day, for a table cut per day); within a file rows are in cluster order, ties in
    their input order (the sort is stable). Otherwise rows keep their order: slices where
    each partition value's rows are contiguous already (Bronze in ingestion order), else one
    filter per value (never a sorted copy of the whole batch)."""
    if clustered is not None:
        data = data.sort_by([(c, "ascending") for c in (part_col, clustered[0]) if c])  # NULLs last
    elif part_col is not None:
        enc = data.column(part_col).combine_chunks().dictionary_encode()
        codes = np.asarray(enc.indices.fill_null(len(enc.dictionary)))  # NULL: a code of its own
        if np.any(codes[1:] < codes[:-1]):  # values interleave: one filter per value
            parts = (data.filter(codes == k) for k in range(len(enc.dictionary) + 1))
            return [(((part_col, _partition_value(part.column(part_col))),), part.drop_columns([part_col]))
                    for part in parts if part.num_rows]
    n = data.num_rows
    cut = np.zeros(n, dtype=bool)
    cut[0] = True
    runs = []
    if part_col is not None:  # dictionary indices: equal values, equal codes (NULL: -1)
        runs.append(data.column(part_col).combine_chunks().dictionary_encode().indices.fill_null(-1))
    if clustered is not None and clustered[1]:
        runs.append(pc.floor_temporal(data.column(clustered[0]), unit="day").cast(pa.int64()).fill_null(0))
    for run in runs:
        v = np.asarray(run)
        cut[1:] |= v[1:] != v[:-1]
    starts = np.flatnonzero(cut).tolist()
    out = []
    for lo, hi in zip(starts, [*starts[1:], n], strict=True):
        part = data.slice(lo, hi - lo)
        pvals: tuple[tuple[str, str | None], ...] = ()
        if part_col is not None:
            pvals = ((part_col, _partition_value(part.column(part_col))),)
            part = part.drop_columns([part_col])
        out.append((pvals, part))
    return out


def stage(where: Storage, table: str, data: pa.Table, tag: str, row_group_rows: int) -> Staged:
    """Write ``data`` (conformed to the table's schema) as Parquet under the table root ``where``.

    One file per partition value (and day, :data:`CLUSTER`); names carry ``tag`` (the replay id, stage and shard)
    plus a random suffix, so a retried task never overwrites a file of another attempt.
    """
    data = schemas.conform(data, schemas.SCHEMAS[table])
    if data.num_rows == 0:
        return Staged(table)
    fs, base = where.filesystem()
    parts = schemas.PARTITIONS.get(table) or []
    groups = _groups(data, parts[0] if parts else None, CLUSTER.get(table))
    out = []
    for pvals, part in groups:
        rel, full = _new_file(fs, base, pvals, tag)
        with fs.open_output_stream(full) as sink:
            pq.write_table(part, sink, compression="zstd", compression_level=1,
                           row_group_size=row_group_rows,
                           use_dictionary=[c for c in part.column_names if c in DICTIONARY_COLUMNS])
        size = fs.get_file_info(full).size
        out.append(StagedFile(rel, int(size or 0), pvals, part.num_rows, file_stats(part)))
    return Staged(table, tuple(out))


def _new_file(fs: pafs.FileSystem, base: str, pvals: tuple[tuple[str, str | None], ...],
              tag: str) -> tuple[str, str]:
    """(path relative to the table root, path in ``fs``) of a new staged file of a partition."""
    sub = "/".join(f"{k}={'__HIVE_DEFAULT_PARTITION__' if v is None else v}" for k, v in pvals)
    name = f"{PREFIX}{tag}-{uuid.uuid4().hex[:12]}.zstd.parquet"
    rel = f"{sub}/{name}" if sub else name
    full = f"{base}/{rel}" if base else rel
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(full), exist_ok=True)
    return rel, full


def copy_files(src: Storage, dst: Storage, table: str, adds: pa.Table, tag: str) -> Staged:
    """Copy a table's data files (``get_add_actions(flatten=True)`` rows) from one table root to
    another as staged files, byte for byte, with their Delta statistics: files move, rows are
    never read."""
    sfs, sbase = src.filesystem()
    dfs, dbase = dst.filesystem()
    parts = [c[len("partition."):] for c in adds.column_names if c.startswith("partition.")]
    out = []
    for act in adds.to_pylist():
        pvals = tuple((c, None if act[f"partition.{c}"] is None else _stat_value(act[f"partition.{c}"]))
                      for c in parts)
        rel, full = _new_file(dfs, dbase, pvals, tag)
        source = f"{sbase}/{act['path']}" if sbase else act["path"]
        with sfs.open_input_stream(source) as fin, dfs.open_output_stream(full) as fout:
            while chunk := fin.read(8 << 20):
                fout.write(chunk)
        stats = {"numRecords": act["num_records"], "minValues": {}, "maxValues": {}, "nullCount": {}}
        for key, val in act.items():
            for prefix, field in (("min.", "minValues"), ("max.", "maxValues"), ("null_count.", "nullCount")):
                if key.startswith(prefix) and val is not None:
                    stats[field][key[len(prefix):]] = _stat_value(val)
        out.append(StagedFile(rel, int(act["size_bytes"]), pvals, int(act["num_records"] or 0),
                              json.dumps(stats)))
    return Staged(table, tuple(out))


def add_actions(staged: Staged) -> list[Any]:
    from deltalake.transaction import AddAction

    now = int(time.time() * 1000)
    return [AddAction(f.path, f.size, dict(f.partition_values), now, True, f.stats) for f in staged.files]
