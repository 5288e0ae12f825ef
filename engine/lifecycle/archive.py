"""``replay archive``: move Bronze rows ingested before a date to an archive location.

Every replay, plan and experiment keeps reading hot and archive together as one Bronze
(:mod:`engine.lake.bronze`), so results do not change (docs/semantics.md §10). The move, under the
lake's lease and one ledger row:

1. removes what a previous archive that died left in the archive past the old cutoff
   (never read: readers take archive rows below the cutoff only);
2. copies the hot rows with ingestion_date in [old cutoff, D) to the archive, one neutral
   commit per ingestion date;
3. the ledger row turns ``success`` with the location and the new cutoff D: the switch
   readers and importers see, in one step;
4. still under the lease, commits a barrier on hot Bronze (an import that routed its rows
   by the old cutoff loses its fenced commit and routes them again), copies to the archive
   any hot row below D it lacks (such an import's, landed before the barrier) and deletes
   the hot rows below D. If this process dies first, those rows are not read until the next
   archive settles them, first thing.

The archive is a Delta table ``bronze_api_usage`` under the given URI (a local directory
or an object store, reached with the lake's storage options); one lake has one archive.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from engine import txn
from engine.batch.apply import operator_name
from engine.batch.plan import new_replay_id
from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.bronze import archive_of
from engine.lake.tables import WRITER, Lake
from engine.lifecycle.catalog import neutral_commit


@dataclass(frozen=True)
class ArchivePlan:
    to: str
    before: date
    previous_cutoff: date | None
    dates: tuple[str, ...]  # hot ingestion dates that move
    rows: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["before"] = self.before.isoformat()
        d["previous_cutoff"] = self.previous_cutoff.isoformat() if self.previous_cutoff else None
        return d


def _dates(lake: Lake, below: date) -> dict[date, int]:
    """Hot Bronze rows per ingestion date below ``below`` (from the files' partition values)."""
    adds = pa.table(lake.table(schemas.BRONZE).get_add_actions(flatten=True))
    if not adds.num_rows:
        return {}
    out: dict[date, int] = {}
    col = "partition.ingestion_date" if "partition.ingestion_date" in adds.column_names \
        else "partition_values.ingestion_date"
    for d, n in zip(adds.column(col).to_pylist(), adds.column("num_records").to_pylist(), strict=True):
        day = d if isinstance(d, date) else date.fromisoformat(str(d))
        if day < below:
            out[day] = out.get(day, 0) + int(n or 0)
    return out


def plan_archive(lake: Lake, before: date | str, to: str) -> ArchivePlan:
    if isinstance(before, str):
        try:
            before = date.fromisoformat(before)
        except ValueError:
            raise UsageError(f"--before {before!r}: expected a date like 2026-03-01") from None
    if before > datetime.now(UTC).date():
        raise UsageError(f"--before {before}: must not be after today (rows ingested today stay hot)")
    if lake.bronze_root:
        raise UsageError("archive the production lake, not an experiment area")
    if not lake.exists(schemas.BRONZE):
        raise UsageError(f"no {schemas.BRONZE} table in lake {lake.root}")
    target = Lake.at(to, lake.storage_options)
    if target.root == lake.root or target.root.startswith(lake.root + "/"):
        raise UsageError(f"--to {to}: the archive must live outside the lake")
    current = archive_of(lake)
    if current is not None and current.lake.root != target.root:
        raise UsageError(f"this lake archives to {current.lake.root}; --to must name it")
    prev = current.cutoff if current else None
    if prev is not None and before < prev:
        raise UsageError(f"--before {before}: rows before {prev} are archived already")
    moving = _dates(lake, before)
    return ArchivePlan(target.root, before, prev, tuple(d.isoformat() for d in sorted(moving)),
                       sum(moving.values()))


def apply_archive(lake: Lake, plan: ArchivePlan, reason: str = "archive") -> dict[str, Any]:
    """Apply ``plan`` as one transaction of kind ``archive`` (see the module docstring)."""
    archive = Lake.at(plan.to, lake.storage_options)
    with txn.begin(lake, new_replay_id(), "archive", [schemas.BRONZE], reason, operator_name(),
                   target_id=archive.root) as tx:
        op_id = tx.op_id
        current = archive_of(lake)
        if (current.cutoff if current is not None else None) != plan.previous_cutoff:
            plan = plan_archive(lake, plan.before, plan.to)  # another archive ran meanwhile
        archive.ensure(schemas.BRONZE)
        if plan.previous_cutoff is not None:  # a previous archive that died after its switch
            settle_below_cutoff(lake, archive, plan.previous_cutoff, op_id, tx.guard)
        low = pc.field("ingestion_date") >= pa.scalar(plan.previous_cutoff or date.min, pa.date32())
        # 1. leftovers of an archive that died before its switch are never read: remove them
        stale = archive.table(schemas.BRONZE)
        if archive.read(schemas.BRONZE, columns=["ingestion_date"], filter=low).num_rows:
            tx.guard()
            _delete_dates(stale, plan.previous_cutoff or date.min, None, op_id)
        hot = lake.dataset(schemas.BRONZE)
        moved = 0
        for day in plan.dates:  # 2. one commit per ingestion date, neutral
            d = date.fromisoformat(day)
            if plan.previous_cutoff is not None and d < plan.previous_cutoff:
                continue  # below the old cutoff: already archived, only left to delete
            rows = hot.to_table(filter=pc.field("ingestion_date") == pa.scalar(d, pa.date32()))
            moved += _append(archive, rows, op_id, tx.guard)
        # 3. the switch: readers (and importers) take rows below the new cutoff from the archive
        tx.finish(details=json.dumps({"cutoff": plan.before.isoformat(), "rows": moved,
                                      "dates": list(plan.dates)}))
        # 4. under the lease still: a barrier fences every import that routed its rows by the
        # old cutoff; then the hot rows below it (with any such import's rows, copied first)
        # leave hot Bronze
        tx.commit(schemas.BRONZE, lambda: lake.barrier(schemas.BRONZE, op_id))
        moved += settle_below_cutoff(lake, archive, plan.before, op_id, tx.guard)
    return {"operation_id": op_id, "archive": archive.root, "cutoff": plan.before.isoformat(),
            "rows_moved": moved, "dates": list(plan.dates)}


def _append(archive: Lake, rows: pa.Table, op_id: str, guard: Callable[[], None]) -> int:
    if not rows.num_rows:
        return 0
    guard()  # an archive that lost the lake's lease writes nothing more
    write_deltalake(archive.uri(schemas.BRONZE), schemas.conform(rows, schemas.BRONZE_SCHEMA),
                    mode="append", partition_by=schemas.PARTITIONS[schemas.BRONZE],
                    storage_options=archive.storage.delta_options,
                    commit_properties=neutral_commit("archive", op_id), writer_properties=WRITER)
    return rows.num_rows


def settle_below_cutoff(lake: Lake, archive: Lake, cutoff: date, op_id: str,
                        guard: Callable[[], None]) -> int:
    """Move every hot row below ``cutoff`` that the archive lacks (an import that routed its
    rows by an older cutoff, or a copy that died) to the archive, then delete the hot rows
    below it. Idempotent: rows are matched by their Bronze key. Returns the rows copied."""
    below = lake.read(schemas.BRONZE, filter=pc.field("ingestion_date") < pa.scalar(cutoff, pa.date32()))
    if not below.num_rows:
        return 0
    dates = pc.unique(below.column("ingestion_date"))
    have = archive.read(schemas.BRONZE, columns=list(schemas.BRONZE_KEY),
                        filter=pc.field("ingestion_date").isin(dates))
    missing = below.join(have, list(schemas.BRONZE_KEY), join_type="left anti")
    copied = _append(archive, missing, op_id, guard)
    guard()
    _delete_dates(lake.table(schemas.BRONZE), date.min, cutoff, op_id)
    return copied


def _delete_dates(dt: Any, low: date, high: date | None, op_id: str) -> None:
    # the bounds are date objects, written as ISO dates: no user text reaches the predicate
    pred = f"ingestion_date >= '{low.isoformat()}'"
    if high is not None:
        pred += f" AND ingestion_date < '{high.isoformat()}'"
    dt.delete(pred, commit_properties=neutral_commit("archive", op_id))
