"""``replay vacuum``: remove what no version within the retention needs, in every table.

For each Delta table under the lake (its own, each experiment area's, each archive's):
- files no version within the last H hours references, staged files of replays that
  never committed included (delta-rs ``vacuum(full=True)``);
- log files and checkpoints older than H, after writing a checkpoint (log retention set
  to H on the table, then ``cleanup_metadata``).

Also shuffle areas (``_shuffle/<run>``, :mod:`engine.execution.shuffle`) that a killed
driver left behind (they hold copies of event rows): the lake's own, all (no replay of the
lake runs while vacuum holds its lease); an experiment area's, past the grace of
uncommitted files.

H defaults to 168 (a week); 0 purges everything but the current version (docs/semantics.md §9: after an
erasure, nothing of an erased row can be read anywhere under the lake). The horizon is
recorded in the ledger; reading, diffing or rolling back to a version before it is then
refused in one line (``Lake.check_readable``).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from deltalake import CommitProperties

from engine.batch import audit
from engine.batch.experiment import AREA as EXPERIMENTS
from engine.batch.experiment import list_experiments
from engine.contract.errors import LeaseHeldError, UsageError
from engine.execution.shuffle import stale_areas
from engine.lake.lease import lease_for
from engine.lake.tables import Lake
from engine.lifecycle.catalog import (
    LEASE_TABLES,
    TableRef,
    all_tables,
    lifecycle_operation,
    neutral_commit,
)

DEFAULT_RETAIN_HOURS = 168


@dataclass(frozen=True)
class VacuumTable:
    label: str
    files: int  # files vacuum would delete now
    version: int


@dataclass(frozen=True)
class VacuumPlan:
    retain_hours: int
    tables: tuple[VacuumTable, ...]
    #: shuffle areas of runs that ended without removing theirs (their roots)
    shuffle_areas: tuple[str, ...] = ()

    @property
    def files(self) -> int:
        return sum(t.files for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {"retain_hours": self.retain_hours, "files": self.files,
                "tables": [asdict(t) for t in self.tables], "shuffle_areas": list(self.shuffle_areas)}


#: Files no commit ever referenced (staged by a replay that never committed) are removed only
#: past this age: a writer outside the lake's lease (Kafka ingest, an import) may be about to
#: commit one, and removing it would lose that commit's rows.
UNCOMMITTED_GRACE_HOURS = 1


def _vacuum(ref: TableRef, hours: int, dry_run: bool, op_id: str = "") -> list[str]:
    """Files removed by commits older than ``hours``; then files never committed, past the grace."""
    out: list[str] = []
    for full, age in ((False, hours), (True, max(hours, UNCOMMITTED_GRACE_HOURS))):
        kwargs: dict[str, Any] = {"retention_hours": age, "dry_run": dry_run,
                                  "enforce_retention_duration": False, "full": full}
        if not dry_run:
            kwargs["commit_properties"] = neutral_commit("vacuum", op_id)
        out += [f for f in ref.lake.table(ref.table).vacuum(**kwargs) if f not in out]
    return out


def plan_vacuum(lake: Lake, retain_hours: int = DEFAULT_RETAIN_HOURS) -> VacuumPlan:
    """What ``vacuum`` would delete now, table by table (changes nothing)."""
    if retain_hours < 0:
        raise UsageError("--retain-hours must be 0 or more")
    # the lease table's files are never vacuumed (apply_vacuum leaves them): not counted
    tables = tuple(VacuumTable(ref.label, len(_vacuum(ref, retain_hours, True)),
                               ref.lake.version(ref.table) or 0) for ref in all_tables(lake)
                   if ref.table not in LEASE_TABLES)
    return VacuumPlan(retain_hours, tables, tuple(a.root for a in _stale_shuffles(lake)))


def _stale_shuffles(lake: Lake) -> list[Any]:
    """Shuffle areas no run is using: every one of the lake's own (vacuum holds the lake's
    lease, which every replay and step of this lake holds while it runs), and each
    experiment area's past the grace of uncommitted files (an experiment replays under its
    area's lease, not the lake's: its driver touches its area every few minutes)."""
    areas = lake.storage.child(EXPERIMENTS)  # every experiment area, its first run failed too
    grace = UNCOMMITTED_GRACE_HOURS * 3600
    return [*stale_areas(lake.storage, None),
            *(a for name in areas.list_dirs() for a in stale_areas(areas.child(name), grace))]


def _readable_from(ref: TableRef, horizon: Any) -> int:
    """The oldest version whose commit is within the retention (the latest one at least)."""
    latest = ref.lake.version(ref.table) or 0
    oldest = latest
    for entry in ref.lake.history(ref.table):
        ts = entry.get("timestamp")
        v = entry.get("version")
        if v is None or ts is None:
            continue
        if ts / 1000 >= horizon.timestamp():
            oldest = min(oldest, int(v))
    return oldest


def _hold_areas(lake: Lake, op_id: str, held: ExitStack) -> list[str]:
    """Take each experiment area's lease for the vacuum (an experiment replays under it);
    returns the areas whose lease another process holds: they are left for the next vacuum."""
    busy = []
    for exp in list_experiments(lake):
        try:
            held.enter_context(lease_for(lake.scratch(exp["name"]), op_id))
        except LeaseHeldError:
            busy.append(exp["name"])
    return busy


def apply_vacuum(lake: Lake, plan: VacuumPlan, reason: str = "vacuum") -> dict[str, Any]:
    """Vacuum every table under the lease; the horizon goes into the ledger."""
    hours = plan.retain_hours
    removed: dict[str, int] = {}
    floors: dict[str, int] = {}
    with lifecycle_operation(lake, "vacuum", reason) as (op_id, finish, guard), ExitStack() as held:
        horizon = audit.now() - timedelta(hours=hours)
        busy = _hold_areas(lake, op_id, held)
        for ref in all_tables(lake):
            guard()  # a vacuum that lost the lake's lease changes nothing more
            if ref.label.split("/")[:2] in ([EXPERIMENTS, b] for b in busy):
                continue  # an experiment runs there: its area waits for the next vacuum
            dt = ref.lake.table(ref.table)
            if ref.table in LEASE_TABLES:  # in use: no commit here, only the log's tail
                dt.create_checkpoint()
                dt.cleanup_metadata()
                continue
            removed[ref.label] = len(_vacuum(ref, hours, False, op_id))
            dt = ref.lake.table(ref.table)
            # the log's retention is H too; this commit also carries the metadata of the last
            # data commit forward (plans read it), since the cleanup may remove that commit
            dt.alter.set_table_properties(
                {"delta.logRetentionDuration": f"interval {hours} hours"}, raise_if_not_exists=False,
                commit_properties=CommitProperties(custom_metadata=ref.lake.carry_metadata(ref.table)))
            dt = ref.lake.table(ref.table)
            dt.create_checkpoint()
            dt.cleanup_metadata()
            if ref.lake is lake:
                floors[ref.table] = _readable_from(ref, horizon)
        shuffles = _stale_shuffles(lake)
        for area in shuffles:
            area.delete()
        finish(details=json.dumps({"retain_hours": hours, "horizon": horizon.isoformat(),
                                   "files_removed": removed, "shuffle_areas_removed": len(shuffles),
                                   "experiment_areas_busy": busy},
                                  sort_keys=True)[:4000],
               versions_after=json.dumps({"readable_from": floors}, sort_keys=True))
    return {"operation_id": op_id, "retain_hours": hours, "horizon": horizon.isoformat(),
            "files_removed": sum(removed.values()), "tables": removed, "readable_from": floors,
            "shuffle_areas_removed": len(shuffles)}
