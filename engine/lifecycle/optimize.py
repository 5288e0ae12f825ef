"""``replay optimize``: compact small files and Z-order tables (docs/semantics.md §10: rows move, never change).

Plan, then apply: :func:`plan_optimize` lists per table the files and bytes now and
what will be done; :func:`apply_optimize` runs delta-rs ``optimize.compact`` or
``optimize.z_order`` in neutral commits (marked ``medallion.neutral``), so ``replay plan``
reports the same work after it as before.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from deltalake import WriterProperties

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.tables import WRITER, Lake
from engine.lifecycle.catalog import lifecycle_operation, neutral_commit

#: The seed's OPTIMIZE ... ZORDER BY (tenant_id, event_timestamp) for Bronze. Silver is already
#: partitioned by event_date, so clustering its files by tenant alone makes both tenant and
#: day scopes prune (delta-rs's Z-curve over ids that share a long prefix, like the
#: generator's ``tenant-00042``, is led by the timestamp and barely separates tenants).
DEFAULT_ZORDER = {schemas.BRONZE: ("tenant_id", "event_timestamp"),
                  schemas.SILVER: ("tenant_id",),
                  # Gold is not partitioned: plain compaction would merge files of every day into
                  # one, and an incremental step touching a recent hour would rewrite all of it;
                  # ordered by window, each file keeps to a stretch of time (docs/semantics.md §11)
                  **{t: ("window_start",) for t in schemas.WINDOWED}}
OPTIMIZABLE = (*schemas.ALL_TABLES, schemas.DEDUP_STATE)
#: Z-ordered files get small row groups: their min/max statistics are what scoped replays
#: prune by, so a row group should hold few tenants.
ZORDER_WRITER = WriterProperties(max_row_group_size=16_384, compression="ZSTD")


@dataclass(frozen=True)
class TableWork:
    table: str
    files: int
    bytes: int
    zorder: tuple[str, ...]


@dataclass(frozen=True)
class OptimizePlan:
    tables: tuple[TableWork, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tables": [asdict(t) for t in self.tables]}


def plan_optimize(lake: Lake, tables: list[str] | None = None,
                  zorder: list[str] | None = None) -> OptimizePlan:
    """What ``optimize`` would do: per table, its files now and the Z-order columns (if any)."""
    chosen = tables or [t for t in OPTIMIZABLE if lake.exists(t)]
    work = []
    for t in chosen:
        if t not in OPTIMIZABLE:
            raise UsageError(f"--table {t!r}: choose from {', '.join(OPTIMIZABLE)}")
        if not lake.exists(t):
            raise UsageError(f"--table {t}: no such table in lake {lake.root}")
        cols = tuple(zorder) if zorder else DEFAULT_ZORDER.get(t, ())
        bad = [c for c in cols if c not in schemas.SCHEMAS[t].names or c in schemas.PARTITIONS.get(t, [])]
        if bad:
            raise UsageError(f"--zorder {','.join(cols)}: {', '.join(bad)} is not a data column of {t}")
        adds = pa.table(lake.table(t).get_add_actions(flatten=True))
        work.append(TableWork(t, adds.num_rows, int(sum(adds.column("size_bytes").to_pylist() or [0])),
                              cols))
    return OptimizePlan(tuple(work))


#: A file with fewer rows than this is small: a follower merges such files.
SMALL_FILE_ROWS = 200_000


def _groups(lake: Lake, table: str) -> list[list[str]]:
    """Small files of ``table`` that belong together: same partition, and for Gold (not
    partitioned, time-clustered) the same day of window_start."""
    adds = pa.table(lake.table(table).get_add_actions(flatten=True)).to_pylist()
    groups: dict[Any, list[str]] = {}
    for a in adds:
        if (a.get("num_records") or 0) >= SMALL_FILE_ROWS:
            continue
        key: tuple[Any, ...] = tuple(sorted((k, str(v)) for k, v in a.items() if k.startswith("partition.")))
        if table in schemas.WINDOWED:
            lo = a.get("min.window_start")
            key += (lo.date() if lo is not None else None,)
        groups.setdefault(key, []).append(a["path"])
    return [g for g in groups.values() if len(g) > 1]


def compact_live(lake: Lake, reason: str) -> dict[str, Any]:
    """What a follower runs every so many steps: merge the small files its steps add to Silver,
    the key index and Gold, per partition and (Gold) per day, keeping each table's time
    order, and touching no other file (delta-rs's compaction would merge Gold's days into one
    file, and a Z-order rewrites every file). Bronze is left alone: compacting files not
    folded yet would make the next step a full replay. One neutral, audited operation."""
    tables = [t for t in (*schemas.SILVER_TABLES, schemas.DEDUP_STATE, *schemas.WINDOWED)
              if lake.is_active(t)]
    out: dict[str, Any] = {}
    with lifecycle_operation(lake, "optimize", reason, tables=tables) as (op_id, finish, guard):
        before = {t: lake.version(t) for t in tables}
        meta = {"op": "optimize", "replay_id": op_id, "neutral": "true"}
        for t in tables:
            merged = 0
            for i, group in enumerate(_groups(lake, t)):
                guard()
                lake.merge_files(t, group, tag=f"{op_id}-m{i}", metadata=meta)
                merged += len(group)
            out[t] = {"files_merged": merged, "files_after": len(lake.files(t))}
        finish(versions_before=json.dumps(before),
               versions_after=json.dumps({t: lake.version(t) for t in tables}),
               details=json.dumps(out)[:2000])
        out["operation_id"] = op_id
    return out


def apply_optimize(lake: Lake, plan: OptimizePlan, reason: str = "optimize") -> dict[str, Any]:
    """Run the plan under the lake's lease; one neutral commit per table that changed."""
    out: dict[str, Any] = {}
    with lifecycle_operation(lake, "optimize", reason, tables=[w.table for w in plan.tables]) as (
            op_id, finish, guard):
        before = {w.table: lake.version(w.table) for w in plan.tables}
        for w in plan.tables:
            guard()  # an optimize that lost the lake's lease commits nothing more
            dt = lake.table(w.table)
            props = neutral_commit("optimize", op_id)
            if w.zorder:
                metrics = dt.optimize.z_order(list(w.zorder), commit_properties=props,
                                              writer_properties=ZORDER_WRITER)
            else:
                metrics = dt.optimize.compact(commit_properties=props, writer_properties=WRITER)
            adds = pa.table(lake.table(w.table).get_add_actions(flatten=True))
            out[w.table] = {"files_before": w.files, "files_after": adds.num_rows,
                            "files_removed": metrics.get("numFilesRemoved", 0),
                            "files_added": metrics.get("numFilesAdded", 0), "zorder": list(w.zorder)}
        finish(versions_before=json.dumps(before),
               versions_after=json.dumps({w.table: lake.version(w.table) for w in plan.tables}),
               details=json.dumps(out)[:2000])
        out["operation_id"] = op_id
    return out
