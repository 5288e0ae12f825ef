"""``replay erase``: docs/semantics.md §9 right-to-erasure, as one audited, atomic operation.

Plan, then apply. :func:`plan_erasure` finds the Bronze rows that belong to the subject
(a tenant, or one person of a tenant, as of the request time R) and says what will be
recomputed. :func:`apply_erasure`, under the lake's lease and one ledger row of kind
``erasure`` (holding only hashes):

1. records the tombstone (no clear identifier), so every later write into Bronze drops
   the subject's rows (file import, Kafka ingest);
2. deletes those rows from Bronze and its archive (a copy-on-write commit that removes the
   files holding them and writes their other rows again: Bronze's only non-append change)
   and their quarantine rows (whose tenant may be unknown);
3. recomputes Silver and Gold for the subject's tenant only, with the lake's active
   ruleset (a tenant-scoped replay whose commits name the erasure, not the tenant);
4. drops every experiment area (scratch copies may hold the rows);
5. records, per table, the first version after it: older versions are refused in one line.

A failure (or a recovery after SIGKILL) keeps its deletes from Bronze, the archive and
quarantine (forward-only: erased rows never come back, and Bronze is never restored under
the appends of ingest and import), restores Silver and Gold, records the new versions'
floors and leaves the row ``failed``: run the erasure again (the tombstone stays, so no
writer brings the rows back meanwhile).
After ``replay vacuum --retain-hours 0`` nothing of an erased row is left under the lake.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import txn
from engine.batch.apply import commit_replay, compute, operator_name
from engine.batch.experiment import drop_experiment, list_experiments
from engine.batch.plan import active_ruleset, build_plan, new_replay_id
from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.execution.specs import Executor
from engine.fold.scope import Scope
from engine.lake.bronze import archive_of
from engine.lake.tables import Lake
from engine.lifecycle import tombstones

KEY = list(schemas.BRONZE_KEY)


@dataclass(frozen=True)
class ErasurePlan:
    """What an erasure will do (holds the clear subject in memory only, never in the lake)."""

    tenant_id: str
    user_id: str | None
    requested_at: datetime
    subject_hash: str
    rows: int  # Bronze rows that belong to the subject
    bronze_version: int | None
    ruleset_name: str
    experiments: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("tenant_id"), d.pop("user_id")
        d["subject"] = "person of a tenant" if self.user_id is not None else "tenant"
        return d


def _keys(lake: Lake, stone: tombstones.Tombstone, table_lake: Lake | None = None) -> pa.Table:
    """The keys of the rows of a Bronze table (the lake's, or an archive's) that belong to
    ``stone``'s subject: a scan of every raw payload, hot and archived, read or not."""
    src = table_lake or lake
    parts = []
    batches = src.dataset(schemas.BRONZE).to_batches(columns=[*KEY, "raw_payload"]) \
        if src.exists(schemas.BRONZE) else []
    for batch in batches:
        mask = tombstones.belonging_mask(batch.column("raw_payload"), [stone])
        if pc.any(mask).as_py():
            parts.append(pa.Table.from_batches([batch]).filter(mask).select(KEY))
    if not parts:
        return pa.table({k: pa.array([], schemas.BRONZE_SCHEMA.field(k).type) for k in KEY})
    return pa.concat_tables(parts)


def plan_erasure(lake: Lake, tenant_id: str, user_id: str | None = None,
                 requested_at: datetime | None = None) -> ErasurePlan:
    if not tenant_id:
        raise UsageError("--tenant must not be empty")
    if user_id == "":
        raise UsageError("--user must not be empty")
    if not lake.exists(schemas.BRONZE):
        raise UsageError(f"no {schemas.BRONZE} table in lake {lake.root}")
    if lake.bronze_root:
        raise UsageError("erase in the production lake; its experiment areas are dropped")
    r = (requested_at or datetime.now(UTC)).astimezone(UTC)
    stone = tombstones.Tombstone(tombstones.subject_hash(tenant_id, user_id),
                                 tombstones.subject_hash(tenant_id), "",
                                 int(r.timestamp()) * 1_000_000 + r.microsecond)
    arch = archive_of(lake)
    rows = _keys(lake, stone).num_rows + (_keys(lake, stone, arch.lake).num_rows if arch else 0)
    return ErasurePlan(tenant_id, user_id, r, stone.subject_hash, rows, lake.version(schemas.BRONZE),
                       active_ruleset(lake).name if lake.exists(schemas.MINUTE) else "",
                       tuple(e["name"] for e in list_experiments(lake)))


def _delete_keys(lake: Lake, table: str, keys: pa.Table, op_id: str,
                 guard: Callable[[], None]) -> None:
    """Delete the rows with these Bronze keys from ``table`` (one copy-on-write commit, made
    only while ``guard`` says the lease is still held)."""
    if not keys.num_rows or not lake.exists(table):
        return
    guard()
    keys = keys.select(KEY)

    def hit(data: pa.Table) -> pa.Array:
        rows = data.select(KEY).append_column("_i", pa.array(np.arange(data.num_rows)))
        found = rows.join(keys, KEY, join_type="inner").column("_i").to_numpy()
        mask = np.zeros(data.num_rows, dtype=bool)
        mask[found] = True
        return pa.array(mask)

    offsets = pc.min_max(keys.column("kafka_offset"))
    prune = (pc.field("kafka_topic").isin(pc.unique(keys.column("kafka_topic")))
             & (pc.field("kafka_offset") >= offsets["min"]) & (pc.field("kafka_offset") <= offsets["max"]))
    lake.rewrite(table, hit, tag=f"{op_id}-erase", prune=prune,
                 metadata={"op": "erasure", "replay_id": op_id})


def apply_erasure(lake: Lake, plan: ErasurePlan, executor: Executor, reason: str) -> dict[str, Any]:
    """Apply ``plan`` (see the module docstring) as one transaction (:mod:`engine.txn`, kind
    ``erasure``); returns what was done (hashes only)."""
    tables = list(dict.fromkeys((schemas.BRONZE, schemas.QUARANTINE, *schemas.SILVER_TABLES,
                                 *schemas.GOLD_TABLES, schemas.REGION)))
    with txn.begin(lake, new_replay_id(), "erasure", tables, reason, operator_name(),
                   tenants=plan.subject_hash) as tx:
        op_id, before = tx.op_id, tx.before
        silver_meta = lake.commit_metadata(schemas.SILVER) if lake.exists(schemas.SILVER) else {}
        # Silver already behind Bronze (rows ingested since the last replay)? It stays behind
        # for the other tenants: the recomputation records the Bronze version Silver reflects
        lagging = lake.data_changed(schemas.BRONZE, silver_meta.get("bronze_version"))
        arch = archive_of(lake)
        tx.guard()
        stone = tombstones.record(lake, plan.tenant_id, plan.user_id, plan.requested_at, op_id)
        # a neutral barrier commit: a writer that read Bronze before the tombstone existed
        # cannot commit on top of its snapshot any more (Kafka ingest and import are fenced)
        tx.commit(schemas.BRONZE, lambda: lake.barrier(schemas.BRONZE, op_id))
        if arch is not None:  # an import writing only archive rows is fenced there
            arch.lake.barrier(schemas.BRONZE, op_id)
        hot = _keys(lake, stone)
        archived = _keys(lake, stone, arch.lake) if arch is not None else hot.slice(0, 0)
        keys = pa.concat_tables([hot, archived])
        # forward-only (docs/semantics.md §9): an abort or a recovery never brings these back
        _delete_keys(lake, schemas.BRONZE, hot, op_id, tx.guard)
        if arch is not None:  # archived rows of the subject go too
            _delete_keys(arch.lake, schemas.BRONZE, archived, op_id, tx.guard)
        _delete_keys(lake, schemas.QUARANTINE, keys, op_id, tx.guard)
        versions: dict[str, int] = {}
        if lake.exists(schemas.MINUTE):
            ruleset = active_ruleset(lake)
            scope = Scope(tenants=(plan.tenant_id,),
                          label=f"erasure {op_id} (subject {plan.subject_hash[:16]})")
            replay = build_plan(lake, ruleset, "full", executor=executor.name, cpus=executor.cpus(),
                                scope=scope, reuse=False)
            replay = replace(replay, replay_id=op_id)
            out = compute(lake, replay, ruleset, executor, None)
            if lagging:  # Silver keeps saying which Bronze it reflects: a plan sees the rest
                replay = replace(replay, bronze_version=silver_meta.get("bronze_version"),
                                 archive_version=silver_meta.get("archive_version"))
            versions, _, conservation = commit_replay(lake, replay, ruleset, out, operator_name(),
                                                      tx.guard, count=not lagging)
            tx.record(versions)
            if conservation is False and not lagging:
                raise RuntimeError("conservation failed after the recomputation")
            for table in replay.tables:
                lake.sweep(table, op_id)
        dropped = []
        for exp in list_experiments(lake):  # listed under the lease: none can start meanwhile
            drop_experiment(lake, exp["name"])
            dropped.append(exp["name"])
        after = {t: lake.version(t) for t in before}
        # every version before this one, of every table, may hold the subject's rows
        tx.finish(versions_before=json.dumps(before), versions_after=json.dumps(
            {**after, "readable_from": after}, sort_keys=True), record_count=keys.num_rows,
            ruleset_name=plan.ruleset_name,
            details=json.dumps({"rows_erased": keys.num_rows, "experiments_dropped": len(dropped),
                                "requested_at": plan.requested_at.isoformat()}))
    return {"erasure_id": op_id, "subject_hash": plan.subject_hash, "rows_erased": keys.num_rows,
            "requested_at": plan.requested_at.isoformat(), "versions": versions,
            "experiments_dropped": dropped}
