"""An incremental step's tasks and commits (the batch evaluator runs them for mode incremental).

Map tasks read only the appended Bronze files; reduce tasks fold their tenant bucket
(:mod:`engine.live.increment`). The driver then commits, in one Delta commit per table:

- quarantine, and the Silver and duplicate rows of keys folded in order: appended;
- straggler keys: their old Silver and duplicate rows removed, the recomputed ones added
  (copy-on-write of the files holding them, pruned by tenant: :meth:`Lake.rewrite`);
- the key index: appended (after Silver and duplicates, recording the commits it describes);
- Gold: the rows of every touched (tenant, hour) removed, their recomputed rows added.

Every table gets a commit even when nothing in it changed, so each one records the step's
replay id and the Bronze version it now reflects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from engine.contract import schemas
from engine.execution.specs import JobOutput, MapSpec, ReduceSpec, Target
from engine.execution.workers import file_units
from engine.lake.bronze import bronze_parts
from engine.lake.staging import Staged
from engine.lake.tables import Lake
from engine.live import keystate
from engine.live.appends import _rel
from engine.live.increment import IncrementSpec, hours_filter
from rules.ruleset import Ruleset


def prepare_state(lake: Lake, seq_hint: int, metadata: dict[str, Any]) -> int:
    """The key index's version describing the current Silver: rebuilt first when it does not
    (its first step, or Silver changed since by a replay, an erasure or a rollback)."""
    if keystate.is_current(lake):
        v = lake.version(keystate.TABLE)
        assert v is not None
        return v
    return keystate.rebuild(lake, seq_hint, metadata)


def increment_tasks(lake: Lake, plan: Any, ruleset: Ruleset, cpus: int, state_version: int
                    ) -> tuple[list[MapSpec], list[ReduceSpec]]:
    """Map tasks over the appended files' row groups; one reduce task per tenant bucket."""
    (hot, *_) = bronze_parts(lake, plan.source_version, plan.archive_version)
    wanted = set(plan.files)
    units = [u for u in file_units(hot.dataset(), hot.filter()) if _rel(u[0], wanted) is not None]
    n = max(1, min(plan.map_tasks, len(units)))
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n)]
    for i, u in enumerate(units):
        groups[i % n].append(u)
    opts = tuple(sorted((lake.storage_options or {}).items()))
    threads = max(1, cpus // n)
    maps = [MapSpec(lake.root, opts, schemas.BRONZE, plan.source_version, tuple(g), "full", ruleset,
                    plan.buckets, None, threads, lake.bronze_root, plan.replay_id, None, hot.after,
                    hot.before) for g in groups if g]
    target = Target(lake.root, opts, lake.bronze_root, plan.replay_id)
    silver_v, dups_v = lake.version(schemas.SILVER), lake.version(schemas.DUPLICATES)
    assert silver_v is not None and dups_v is not None
    inc = IncrementSpec(silver_v, dups_v, state_version, plan.bronze_version)
    reduces = [ReduceSpec(b, "incremental", ruleset, max(1, cpus // plan.buckets), 0, target, inc)
               for b in range(plan.buckets)]
    return maps, reduces


def _key_column(t: pa.Table, cols: tuple[str, str], hour: bool = False) -> pa.Array:
    """One string per row for (cols[0], cols[1]) that no other pair can give: the first value's
    length leads (``5:acme:evt-1``), so a separator inside a tenant id cannot fake a key."""
    a, b = pc.cast(t.column(cols[0]), pa.string()), t.column(cols[1])
    if hour:
        b = pc.cast(pc.cast(pc.floor_temporal(b, unit="hour"), pa.int64()), pa.string())
    return pc.binary_join_element_wise(pc.cast(pc.utf8_length(a), pa.string()), a,
                                       pc.cast(b, pa.string()), ":")


def _key_set(t: pa.Table, cols: tuple[str, str], hour: bool = False) -> pa.Array:
    if not t.num_rows:
        return pa.array([], pa.string())
    keys = pc.unique(_key_column(t, cols, hour))
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def commit_increment(lake: Lake, plan: Any, out: JobOutput, meta: dict[str, Any],
                     write: Callable[[str, Any, dict[str, Any]], int]) -> dict[str, int]:
    """Commit every table of a step through ``write(table, fn, extra_meta)``, where ``fn(m)``
    makes the commit with metadata ``m`` and returns the new version. Returns the versions."""
    replaced = out.replaced if out.replaced is not None else pa.table(
        {"tenant_id": pa.array([], pa.string()), "event_id": pa.array([], pa.string())})
    touched = out.touched if out.touched is not None else pa.table(
        {"tenant_id": pa.array([], pa.string()), "hour": pa.array([], schemas.TS)})
    keys = _key_set(replaced, ("tenant_id", "event_id"))  # duplicates: every straggler key
    key_tenants = pc.unique(replaced.column("tenant_id")).to_pylist()
    changed = replaced.filter(replaced.column("silver_changed")) if "silver_changed" in \
        replaced.column_names else replaced
    silver_keys = _key_set(changed, ("tenant_id", "event_id"))  # Silver: where kept copies changed
    hours = _key_set(touched, ("tenant_id", "hour"), hour=True)
    hour_tenants = pc.unique(touched.column("tenant_id")).to_pylist()
    versions: dict[str, int] = {}

    def append(table: str, data: Staged | None) -> Callable[[dict[str, Any]], int]:
        staged = data if isinstance(data, Staged) else Staged(table)
        return lambda m: lake.commit_staged(table, staged, metadata=m, mode="append")

    def replace(table: str, data: Staged | None, hit: Callable[[pa.Table], pa.Array],
                prune: pds.Expression, any_hit: bool) -> Callable[[dict[str, Any]], int]:
        if not any_hit:
            return append(table, data)

        def go(m: dict[str, Any]) -> int:
            before = lake.version(table)
            v = lake.rewrite(table, hit, tag=f"{plan.replay_id}-keep", metadata=m, prune=prune,
                             add=data if isinstance(data, Staged) else None)
            return v if v != before else append(table, None)(m)
        return go

    def by_key(t: pa.Table) -> pa.Array:
        return pc.is_in(_key_column(t, ("tenant_id", "event_id")), value_set=keys)

    def by_silver_key(t: pa.Table) -> pa.Array:
        return pc.is_in(_key_column(t, ("tenant_id", "event_id")), value_set=silver_keys)

    key_prune = (pc.field("tenant_id").isin(key_tenants)
                 & pc.field("event_id").isin(pc.unique(replaced.column("event_id")).to_pylist()))
    dates = pc.unique(changed.column("event_date").drop_null()) if "event_date" in \
        changed.column_names else pa.array([], pa.date32())
    silver_prune = (pc.field("tenant_id").isin(pc.unique(changed.column("tenant_id")).to_pylist())
                    & pc.field("event_id").isin(pc.unique(changed.column("event_id")).to_pylist())
                    & pc.field("event_date").isin(dates.to_pylist()))
    versions[schemas.QUARANTINE] = write(schemas.QUARANTINE, append(schemas.QUARANTINE, out.quarantine),
                                         {"layer": "silver"})
    for table, data, hit, prune, n in (
            (schemas.SILVER, out.silver, by_silver_key, silver_prune, len(silver_keys)),
            (schemas.DUPLICATES, out.duplicates, by_key, key_prune, len(keys))):
        versions[table] = write(table, replace(table, data, hit, prune, n > 0), {"layer": "silver"})
    state_meta = keystate.meta_for(lake.commit_metadata(schemas.SILVER),
                                   lake.commit_metadata(schemas.DUPLICATES))
    versions[schemas.DEDUP_STATE] = write(schemas.DEDUP_STATE, append(schemas.DEDUP_STATE, out.state),
                                          {"layer": "state", **state_meta})
    gold_meta = {"layer": "gold", "silver_replay_id": lake.commit_metadata(schemas.SILVER).get("replay_id")}
    gold_prune = (pc.field("tenant_id").isin(hour_tenants)
                  & hours_filter("window_start", touched.column("hour")))

    def by_hour(t: pa.Table) -> pa.Array:
        return pc.is_in(_key_column(t, ("tenant_id", "window_start"), hour=True), value_set=hours)

    gold = [(schemas.MINUTE, out.minute), (schemas.HOURLY, out.hourly), (schemas.ALERTS, out.alerts)]
    if schemas.REGION in plan.tables:
        gold.append((schemas.REGION, out.region))
    for table, data in gold:
        versions[table] = write(table, replace(table, data, by_hour, gold_prune, len(hours) > 0),
                                gold_meta)
    return versions
