"""Apply: run a plan as one atomic, audited replay (the evaluator of :mod:`engine.batch.plan`)."""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine import txn
from engine.batch import audit, checks
from engine.batch.plan import (
    NO_VERSION,
    ModeArg,
    Plan,
    active_ruleset,
    build_plan,
    new_replay_id,
    source_parts,
    stale_reason,
)
from engine.config import ReplayConfig, environment
from engine.contract import schemas
from engine.contract.errors import ChecksFailedError, StalePlanError, UsageError
from engine.execution.faults import die_after_commits
from engine.execution.specs import Executor, JobOutput, MapSpec, Out, Progress, ReduceSpec, Target
from engine.execution.workers import file_units
from engine.fold.pipeline import FOLD_VERSION, Compiled
from engine.fold.scope import Scope
from engine.lake.bronze import bronze_rows as count_bronze
from engine.lake.lease import lease_for
from engine.lake.staging import Staged
from engine.lake.tables import Lake, table_cache
from engine.live.step import commit_increment, increment_tasks, prepare_state
from rules.ruleset import Ruleset


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    versions: dict[str, int]
    counts: dict[str, int]
    conservation_ok: bool | None
    seconds: float
    operator: str
    checks: tuple[Any, ...] = ()
    #: time chunks the reduce tasks folded (= shards when every shard fit its memory budget)
    chunks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"replay_id": self.plan.replay_id, "mode": self.plan.mode, "versions": self.versions,
                "counts": self.counts, "conservation_ok": self.conservation_ok,
                "seconds": round(self.seconds, 3), "chunks": self.chunks, "plan": self.plan.to_dict(),
                "checks": [c.to_dict() for c in self.checks]}


def map_specs(lake: Lake, plan: Plan, ruleset: Ruleset, cpus: int) -> list[MapSpec]:
    """Split the source's row groups into ``plan.map_tasks`` tasks of about equal size."""
    assert plan.mode is not None
    flt = plan.scope.source_filter(plan.mode) if plan.scope else None
    parts = source_parts(lake, plan.mode, plan.source_version, plan.archive_version)
    units = [(i, u) for i, part in enumerate(parts)
             for u in file_units(part.dataset(), part.scan_filter(flt))]
    n = max(1, min(plan.map_tasks, len(units)))
    groups: list[list[tuple[int, tuple[str, tuple[int, ...]]]]] = [[] for _ in range(n)]
    for i, u in enumerate(units):
        groups[i % n].append(u)
    opts = tuple(sorted((lake.storage_options or {}).items()))
    threads = max(1, cpus // n)  # DuckDB threads per task: the executor runs ~cpus at once
    specs = []
    for g in groups:
        for i, part in enumerate(parts):  # a task reads one table: split its group by part
            mine = tuple(u for j, u in g if j == i)
            if not mine:
                continue
            own = part.lake.root == lake.uri(part.table).rsplit("/", 1)[0]
            specs.append(MapSpec(lake.root, opts, part.table, part.version or 0, mine, plan.mode,
                                 ruleset, plan.buckets, plan.scope, threads, lake.bronze_root,
                                 plan.replay_id, None if own else part.lake.root, part.after,
                                 part.before))
    return specs


def execute(lake: Lake, plan: Plan, ruleset: Ruleset, executor: Executor,
            progress: Progress | None = None, reason: str | None = None,
            checks_dir: str | None = None, allow_failed_checks: bool = False,
            on_success: Callable[[], None] | None = None) -> RunResult:
    """Run ``plan`` as one atomic, audited replay (see :mod:`engine.audit`).

    Takes the lake's lease, settles interrupted replays, records a ``running``
    ledger row with every table's version before, computes, commits each table
    in one Delta commit carrying the replay id, then marks the row ``success``.
    A failure after some commits restores them before the error propagates.
    ``on_success`` runs under the lease once the row says ``success``. The
    validation gate (:mod:`engine.checks`) then runs over the new versions; a failed
    check rolls the replay back and raises, unless ``allow_failed_checks``.
    """
    t0 = time.perf_counter()
    if ruleset.fingerprint != plan.ruleset_fingerprint:
        raise UsageError("the plan was built for another ruleset")
    operator = operator_name()
    if plan.mode is None:
        return RunResult(plan, {}, {}, None, 0.0, operator)
    user_checks = checks.load_user_checks(checks_dir)
    with lease_for(lake, plan.replay_id, wait=environment().lease_wait) as lease:
        audit.recover(lake, operator)
        stale = stale_reason(lake, plan)
        if stale is not None:
            raise StalePlanError(f"the plan is stale ({stale}); plan again (replay run plans afresh)")
        for table in plan.tables:
            lake.ensure(table)
        state_v = None
        if plan.mode == "incremental":  # the key index must describe the current Silver
            state_v = prepare_state(lake, plan.since_version or 0,
                                    {"replay_id": plan.replay_id, "bronze_version": plan.since_version})
        prev = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
        with txn.start(lake, lease, plan.replay_id, "replay", plan.tables, reason or "", operator,
                       layer="gold" if plan.mode == "gold" else "silver+gold", mode=plan.mode,
                       ruleset_name=ruleset.name, ruleset_before=prev.get("ruleset_fingerprint"),
                       ruleset_after=ruleset.fingerprint, bronze_version=plan.bronze_version) as tx:
            try:
                out = compute(lake, plan, ruleset, executor, progress, state_v)
            except BaseException as exc:
                tx.abort(f"failed before any commit: {type(exc).__name__}: {exc}")
                for table in plan.tables:
                    lake.sweep(table, plan.replay_id)  # nothing was committed: drop staged files
                raise
            try:
                versions, counts, conservation = commit_replay(lake, plan, ruleset, out, operator, tx.guard)
                tx.record(versions)
            except BaseException as exc:
                # every table back to its version before, even when all were committed: the
                # validation gate never ran over them
                tx.abort(f"failed while committing: {type(exc).__name__}: {exc}")
                raise
            try:
                for table in plan.tables:
                    lake.sweep(table, plan.replay_id)  # files of killed and retried task attempts
                rng = _affected(out)
                whole = plan.scope is None or lake.bronze_root is None  # a scoped experiment holds a part
                if plan.mode == "incremental":  # conservation was counted at commit, from the log
                    results = [checks.CheckResult("conservation", bool(conservation),
                                                  0 if conservation else 1, [])]
                    results += checks.run_step_checks(lake, versions, out.touched)
                    if user_checks:
                        results += checks.run_checks(lake, versions, plan.bronze_version, False,
                                                     user_checks, None, standard=False)
                else:
                    results = checks.run_checks(lake, versions, plan.bronze_version,
                                                plan.mode == "full" and whole, user_checks, tx.before,
                                                archive_version=plan.archive_version)
            except BaseException as exc:  # the gate could not run: nothing unchecked is published
                tx.abort(f"failed after committing: {type(exc).__name__}: {exc}")
                raise
            failed = [r.name for r in results if not r.passed]
            record = dict(versions_after=json.dumps(versions), conservation_ok=conservation,
                          record_count=counts.get(schemas.SILVER, counts.get(schemas.MINUTE)),
                          affected_start=rng[0], affected_end=rng[1],
                          allow_failed_checks=allow_failed_checks,
                          checks=json.dumps([r.to_dict() for r in results], default=str))
            if failed and not allow_failed_checks:
                tx.abort(f"validation gate failed: {', '.join(failed)}; every table restored",
                         **{k: v for k, v in record.items() if k != "versions_after"})
                raise ChecksFailedError(
                    f"validation gate failed ({', '.join(failed)}); replay {plan.replay_id} rolled "
                    "back (see 'replay history --json'; --allow-failed-checks publishes anyway)",
                    failed=failed, replay_id=plan.replay_id)
            tx.finish(**record, details=f"published despite failed checks: {', '.join(failed)}"
                      if failed else None)
            if on_success is not None:  # still under the lease (a follower folds its step's row)
                on_success()
    return RunResult(plan, versions, counts, conservation, time.perf_counter() - t0, operator,
                     tuple(results), out.chunks)


def compute(lake: Lake, plan: Plan, ruleset: Ruleset, executor: Executor,
             progress: Progress | None, state_version: int | None = None) -> JobOutput:
    assert plan.mode is not None
    if plan.mode == "incremental":
        assert state_version is not None
        maps, reduces = increment_tasks(lake, plan, ruleset, executor.cpus(), state_version)
        return executor.run(maps, reduces, progress)
    if plan.reuse:
        from engine.batch.experiment import load_output

        return load_output(lake.scratch(plan.reuse), lake, plan.replay_id)
    maps = map_specs(lake, plan, ruleset, executor.cpus())
    cpus = executor.cpus()
    target = Target(lake.root, tuple(sorted((lake.storage_options or {}).items())), lake.bronze_root,
                    plan.replay_id, plan.scope)
    reduces = [ReduceSpec(b, plan.mode, ruleset, max(1, cpus // plan.buckets),
                          plan.task_memory, target)
               for b in range(plan.buckets)]
    return executor.run(maps, reduces, progress)


def _affected(out: JobOutput) -> tuple[Any, Any]:
    """The window range of the Gold minutes this replay computed (a step: the hours it touched)."""
    if out.touched is not None:
        if not out.touched.num_rows:
            return None, None
        hi = pc.max(out.touched.column("hour")).as_py()
        return pc.min(out.touched.column("hour")).as_py(), hi + timedelta(hours=1)
    if isinstance(out.minute, Staged):  # from the files' stats: minute bounds are exact there
        return out.minute.bounds("window_start", "window_end")
    if not out.minute.num_rows:
        return None, None
    return (pc.min(out.minute.column("window_start")).as_py(),
            pc.max(out.minute.column("window_end")).as_py())


def commit_replay(lake: Lake, plan: Plan, ruleset: Ruleset, out: JobOutput, operator: str,
                  guard: Callable[[], None] | None = None, count: bool = True
                  ) -> tuple[dict[str, int], dict[str, int], bool | None]:
    """Commit every table of the replay; ``guard`` runs before each commit (the lease's
    ``check``: a driver that lost the lake's lease stops before writing, never after).
    ``count=False``: no conservation count of Bronze (the plan's Bronze version is a label)."""
    meta: dict[str, Any] = {
        "replay_id": plan.replay_id,
        "ruleset_name": ruleset.name,
        "ruleset_fingerprint": ruleset.fingerprint,
        "ruleset": ruleset.model_dump(mode="json"),  # the whole ruleset: the lake's active one
        "silver_fingerprint": plan.silver_fingerprint,
        "known_plans": sorted(Compiled.of(ruleset).known_plans),
        "fold_version": FOLD_VERSION,
        "rules": list(plan.rules),
        "bronze_version": plan.bronze_version,
        "archive_version": plan.archive_version if plan.archive_version is not None else NO_VERSION,
        "archive_cutoff": str(plan.archive_cutoff) if plan.archive_cutoff else None,
        "mode": plan.mode,
        "operator": operator,
    }
    versions: dict[str, int] = {}
    counts: dict[str, int] = {}
    conservation: bool | None = None
    scope = plan.scope

    def write(table: str, data: Out, extra: dict[str, Any]) -> None:
        if guard is not None:
            guard()
        m = {**meta, **extra}
        if scope is not None:
            prev = lake.commit_metadata(table)
            mixed = set(prev.get("mixed_with") or []) | {prev.get("ruleset_fingerprint")}
            mixed.discard(ruleset.fingerprint)
            mixed.discard(None)
            m.update(scope=scope.describe(), mixed_with=sorted(mixed))
            if isinstance(data, pa.Table):
                data = lake.stage(table, data.filter(scope.mask(data, table)), f"{plan.replay_id}-s")
            # the rows outside the scope stay where they are: one commit removes the old rows
            # inside it (files without any are not read) and adds the new ones
            versions[table] = lake.rewrite(table, lambda t, n=table: scope.mask(t, n),
                                           tag=f"{plan.replay_id}-keep", metadata=m,
                                           prune=scope.table_filter(table), add=data)
            if versions[table] == lake.version(table) and \
                    lake.commit_metadata(table).get("replay_id") != plan.replay_id:
                # nothing in scope changed here: an empty commit still records the replay, so
                # every table names the Silver it reflects (incremental steps rely on it)
                versions[table] = lake.commit_staged(table, Staged(table), metadata=m, mode="append")
        elif isinstance(data, pa.Table):
            versions[table] = lake.write(table, data, mode="overwrite", metadata=m)
        else:
            versions[table] = lake.commit_staged(table, data, metadata=m)
        # a scoped replay added only its scope's rows: count the table it leaves
        counts[table] = (lake.dataset(table, versions[table]).count_rows() if scope is not None
                         else data.num_rows)
        die_after_commits(len(versions))

    if plan.mode == "incremental":
        def step_write(table: str, fn: Callable[[dict[str, Any]], int], extra: dict[str, Any]) -> int:
            if guard is not None:
                guard()
            prev = lake.commit_metadata(table)
            carried = {k: prev[k] for k in ("mixed_with", "scope") if prev.get("mixed_with")}
            v = fn({**meta, **extra, **carried})  # a mixed table stays marked mixed
            versions[table] = v
            die_after_commits(len(versions))
            return v

        commit_increment(lake, plan, out, meta, step_write)
        # every table the step committed, counted as a full replay counts it: the rows of
        # the version it made (from the log's statistics, no file read)
        counts = {t: lake.row_count(t, v) for t, v in versions.items()}
        bronze_n = (lake.row_count(schemas.BRONZE, plan.bronze_version)  # from the log's stats
                    if plan.archive_cutoff is None else
                    count_bronze(lake, plan.bronze_version, plan.archive_version))
        conservation = bronze_n == sum(counts[t] for t in schemas.SILVER_TABLES)
        counts[schemas.BRONZE] = bronze_n
        return versions, counts, conservation
    if plan.mode == "full":
        assert out.silver is not None and out.duplicates is not None
        for table, data in ((schemas.SILVER, out.silver), (schemas.QUARANTINE, out.quarantine),
                            (schemas.DUPLICATES, out.duplicates)):
            write(table, data, {"layer": "silver"})
        if not count:
            # an erasure recomputing a lagging Silver records the Bronze (and archive) version
            # Silver still reflects: that version may be unreadable (a forward-only delete) or
            # absent (an archive made since), and conservation is not expected there
            conservation = None
        else:
            # count Bronze itself, not what the tasks read: a lost file or row group must show
            bronze_rows = count_bronze(lake, plan.bronze_version, plan.archive_version)
            conservation = bronze_rows == sum(counts[t] for t in schemas.SILVER_TABLES)
            if scope is None:  # a scoped replay reads only the row groups its scope can touch
                conservation = conservation and bronze_rows == out.rows_in
            if scope is not None and lake.bronze_root:
                conservation = None  # a scoped experiment holds only its scope
            counts[schemas.BRONZE] = bronze_rows
    silver_meta = lake.commit_metadata(schemas.SILVER)
    gold_meta = {"layer": "gold", "silver_replay_id": silver_meta.get("replay_id")}
    for table, data in ((schemas.MINUTE, out.minute), (schemas.HOURLY, out.hourly),
                        (schemas.ALERTS, out.alerts)):
        write(table, data, gold_meta)
    if schemas.REGION in plan.tables:
        if out.region is None:  # the ruleset has no region rule: the table is retired (docs/semantics.md §8)
            write(schemas.REGION, schemas.empty(schemas.REGION_SCHEMA), {**gold_meta, "retired": True})
        else:
            write(schemas.REGION, out.region, gold_meta)
    return versions, counts, conservation


def operator_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def run(lake: Lake, ruleset: Ruleset, executor: Executor, mode: ModeArg = "auto", *,
        scope: Scope | None = None, config: ReplayConfig | None = None,
        progress: Progress | None = None, reason: str | None = None, checks_dir: str | None = None,
        allow_failed_checks: bool = False, follow: bool = False) -> RunResult:
    """Settle interrupted replays, plan on the consistent lake, then apply the plan
    (``follow``: a follower's step, see :func:`engine.batch.plan.build_plan`)."""
    for attempt in range(STALE_ATTEMPTS):
        with table_cache():  # the driver reuses table snapshots (brought up to date) while it runs
            recover_if_needed(lake)
            if scope is not None and not lake.bronze_root:
                _catch_up(lake, executor, config)
            p = build_plan(lake, ruleset, mode, executor=executor.name, cpus=executor.cpus(),
                           scope=scope, config=config, follow=follow)
            try:
                return execute(lake, p, ruleset, executor, progress, reason, checks_dir,
                               allow_failed_checks)
            except StalePlanError:
                # a follower's step (or another replay) landed while this one waited for the
                # lease: nothing was done; plan again on the new tables
                if follow or attempt == STALE_ATTEMPTS - 1:
                    raise
    raise AssertionError("unreachable")


#: Plans made afresh by :func:`run` when the lake changed while it waited for the lease.
STALE_ATTEMPTS = 5


def _catch_up(lake: Lake, executor: Executor, config: ReplayConfig | None) -> None:
    """Before a scoped replay: fold what Bronze gained since Silver was built, with the lake's
    active ruleset. A scoped replay records the Bronze version it read; rows appended before
    it but outside its scope would otherwise never be folded (docs/semantics.md §11)."""
    silver = lake.commit_metadata(schemas.SILVER) if lake.exists(schemas.SILVER) else {}
    if silver.get("bronze_version") is None or not lake.data_changed(
            schemas.BRONZE, silver.get("bronze_version")):
        return
    try:
        active = active_ruleset(lake)
    except UsageError:
        return  # no ruleset recorded: nothing was built that could miss rows
    p = build_plan(lake, active, "auto", executor=executor.name, cpus=executor.cpus(),
                   config=config, follow=True)
    if p.mode != "incremental":
        raise UsageError(
            f"a scoped replay needs the rows Bronze gained since Silver was built folded first, "
            f"and a step cannot fold them ({'; '.join(p.reasons)}); run a replay without "
            "--start/--end/--tenant first")
    execute(lake, p, active, executor, reason="catch-up before a scoped replay")


def recover_if_needed(lake: Lake) -> list[dict[str, Any]]:
    """Settle replays a dead driver left ``running`` (a no-op, and no lease, when there are none)."""
    if lake.exists(schemas.AUDIT) and any(r["status"] == "running" and r["kind"] != "follow"
                                          for r in audit.rows(lake)):
        return recover(lake)
    return []


def recover(lake: Lake, reason: str | None = None) -> list[dict[str, Any]]:
    """Settle replays a dead driver left half-committed: every table pre or post, never a mix."""
    if not lake.exists(schemas.AUDIT):
        return []
    with lease_for(lake, "recover-" + new_replay_id(), wait=environment().lease_wait):
        return audit.recover(lake, operator_name(), *([reason] if reason else []))


def rollback(lake: Lake, replay_id: str, reason: str) -> dict[str, Any]:
    """Restore every table of ``replay_id`` to its version before, as one audited operation."""
    if not lake.exists(schemas.AUDIT):
        raise UsageError(f"lake {lake.root} has no ledger yet; nothing to roll back")
    rid = new_replay_id()
    with lease_for(lake, rid, wait=environment().lease_wait):
        audit.recover(lake, operator_name())
        return audit.rollback(lake, replay_id, reason, operator_name(), rid)
