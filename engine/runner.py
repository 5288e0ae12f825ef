"""Plan, then apply: what a replay must recompute and why, then an evaluator that runs it."""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from engine import audit, checks, schemas
from engine.config import ReplayConfig
from engine.errors import UsageError
from engine.executor import (
    WORK_FACTOR,
    Executor,
    JobOutput,
    MapSpec,
    Mode,
    Out,
    Progress,
    ReduceSpec,
    Target,
    file_units,
)
from engine.lake import Lake
from engine.lease import lease_for
from engine.pipeline import Compiled
from engine.scope import Scope
from engine.staging import Staged
from rules.base import Ruleset, canonical_json

ModeArg = Literal["auto", "full", "gold"]
#: In-memory size of a validated event (Arrow; ~163 B measured on generated events), for
#: the plan's chunk estimate. The tasks themselves decide from the rows they hold.
ROW_BYTES = 170


def silver_fingerprint(ruleset: Ruleset) -> str:
    """What Silver depends on: the silver-layer rules and the set of known plans (SPEC 5)."""
    plans = sorted(Compiled.of(ruleset).known_plans)
    payload = canonical_json({"silver": ruleset.layer_fingerprint("silver"), "plans": plans})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Plan:
    """An immutable replay plan: what to recompute, why, and how it will be sharded."""

    replay_id: str
    lake: str
    mode: Mode | None  # None: up to date
    reasons: tuple[str, ...]
    ruleset_name: str
    ruleset_fingerprint: str
    silver_fingerprint: str
    rules: tuple[dict[str, Any], ...]
    source_table: str
    source_version: int | None
    bronze_version: int | None
    tables: tuple[str, ...]
    files: tuple[str, ...] = field(repr=False)
    rows: int
    bytes: int
    map_tasks: int
    buckets: int
    executor: str
    #: bytes a reduce task may use per chunk, and how many time chunks a shard is expected to need
    task_memory: int = ReplayConfig().task_memory
    chunks_per_shard: int = 1
    scope: Scope | None = None
    #: an experiment whose output this replay publishes instead of recomputing it
    reuse: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.mode is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("files")
        d["scope"] = self.scope.describe() if self.scope else None
        d["files"] = len(self.files)
        d["up_to_date"] = self.up_to_date
        return d


def _changed_rules(old: list[dict[str, Any]] | None, new: Ruleset, layer: str) -> list[str]:
    before = {r["name"]: r for r in (old or []) if r.get("layer") == layer}
    after = {r["name"]: r for r in new.describe() if r["layer"] == layer}
    out = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b is None:
            out.append(f"{name}@{a['version']} added ({layer} layer)")
        elif a is None:
            out.append(f"{name}@{b['version']} removed ({layer} layer)")
        elif b["fingerprint"] != a["fingerprint"]:
            what = "parameters" if b["version"] == a["version"] else f"@{b['version']} -> @{a['version']}"
            out.append(f"{name} {what} changed ({layer} layer)")
    return out


def build_plan(lake: Lake, ruleset: Ruleset, mode: ModeArg = "auto", *, executor: str = "local",
               cpus: int = 1, buckets: int | None = None, scope: Scope | None = None,
               config: ReplayConfig | None = None) -> Plan:
    """What a replay must recompute and why. ``buckets`` overrides ``config.shards``."""
    cfg = config or ReplayConfig()
    buckets = buckets or cfg.shards
    compiled = Compiled.of(ruleset)
    sfp = silver_fingerprint(ruleset)
    if not lake.exists(schemas.BRONZE):
        raise UsageError(f"no {schemas.BRONZE} table in lake {lake.root}; run 'replay import' first")
    bronze_v = lake.version(schemas.BRONZE)
    reasons: list[str] = []
    chosen: Mode | None = None
    silver_meta = lake.commit_metadata(schemas.SILVER) if lake.exists(schemas.SILVER) else {}
    if not silver_meta.get("silver_fingerprint"):
        reasons.append("Silver has never been built by a replay")
        chosen = "full"
    elif silver_meta.get("mixed_with"):
        reasons.append(f"Silver mixes rulesets since a scoped replay ({silver_meta.get('scope')})")
        chosen = "full"
    else:
        if silver_meta["silver_fingerprint"] != sfp:
            reasons += _changed_rules(silver_meta.get("rules"), ruleset, "silver")
            old_plans = set(silver_meta.get("known_plans") or [])
            if old_plans != set(compiled.known_plans):
                reasons.append(
                    f"plan_limits changes the set of known plans ({', '.join(sorted(old_plans))} -> "
                    f"{', '.join(sorted(compiled.known_plans))}); validate depends on it (SPEC 5)")
            chosen = "full"
        if silver_meta.get("bronze_version") != bronze_v:
            reasons.append(f"Bronze changed since Silver was built (version "
                           f"{silver_meta.get('bronze_version')} -> {bronze_v})")
            chosen = "full"
    if chosen is None:
        gold_meta = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
        silver_id = silver_meta.get("replay_id")
        if not gold_meta.get("ruleset_fingerprint"):
            reasons.append("Gold has never been built by a replay")
            chosen = "gold"
        elif gold_meta.get("mixed_with"):
            reasons.append(f"Gold mixes rulesets since a scoped replay ({gold_meta.get('scope')})")
            chosen = "gold"
        else:
            if gold_meta["ruleset_fingerprint"] != ruleset.fingerprint:
                reasons += _changed_rules(gold_meta.get("rules"), ruleset, "gold") or [
                    "ruleset fingerprint changed"]
                chosen = "gold"
            if gold_meta.get("silver_replay_id") != silver_id:
                reasons.append(f"Silver changed since Gold was built (Silver now from replay "
                               f"{silver_id}, Gold from {gold_meta.get('silver_replay_id')})")
                chosen = "gold"
    if mode == "full" and chosen != "full":
        reasons.append("full replay requested (--mode full)")
        chosen = "full"
    elif mode == "gold":
        if chosen == "full" and (not silver_meta or silver_meta.get("silver_fingerprint") != sfp):
            raise UsageError(
                "--mode gold needs Silver built with the same silver rules and plan set; "
                "run without --mode (or --mode full) to rebuild Silver first")
        if chosen != "gold":
            reasons.append("Gold-only replay requested (--mode gold)")
        chosen = "gold"
    source = schemas.BRONZE if chosen != "gold" else schemas.SILVER
    source_v = lake.version(source)
    files: list[str] = []
    rows = nbytes = 0
    if chosen is not None:
        for act in pa.table(lake.table(source, source_v).get_add_actions(flatten=True)).to_pylist():
            files.append(act["path"])
            nbytes += int(act.get("size_bytes") or 0)
            rows += int(act.get("num_records") or 0)
    n_buckets = buckets or max(1, cpus * 2 if cpus > 1 else 1)
    n_units = len(file_units(lake.dataset(source, source_v))) if chosen is not None else 0
    wanted = max(-(-rows // cfg.rows_per_map_task), cpus * 2 if cpus > 1 else 1)
    if cpus > 1:
        wanted = -(-wanted // cpus) * cpus  # whole waves: no CPU idles through the last one
    map_tasks = min(n_units, wanted)
    shard_bytes = rows * ROW_BYTES // max(1, n_buckets)
    chunks = max(1, -(-shard_bytes * WORK_FACTOR // cfg.task_memory))
    if chosen == "full" and not compiled.can_chunk:
        chunks = 1
    tables = (
        (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES) if chosen == "full"
        else schemas.GOLD_TABLES if chosen == "gold" else ()
    )
    return Plan(
        replay_id=new_replay_id(),
        lake=lake.root,
        mode=chosen,
        reasons=tuple(reasons) if chosen else ("up to date: every table matches this ruleset and Bronze",),
        ruleset_name=ruleset.name,
        ruleset_fingerprint=ruleset.fingerprint,
        silver_fingerprint=sfp,
        rules=tuple(ruleset.describe()),
        source_table=source,
        source_version=source_v,
        bronze_version=bronze_v,
        tables=tables,
        files=tuple(files),
        rows=rows,
        bytes=nbytes,
        map_tasks=map_tasks,
        buckets=n_buckets,
        executor=executor,
        scope=scope,
        task_memory=cfg.task_memory,
        chunks_per_shard=chunks if chosen is not None else 0,
    )


def new_replay_id() -> str:
    return datetime.now(UTC).strftime("r%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8]


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
    units = file_units(lake.dataset(plan.source_table, plan.source_version))
    n = max(1, min(plan.map_tasks, len(units)))
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n)]
    for i, u in enumerate(units):
        groups[i % n].append(u)
    opts = tuple(sorted((lake.storage_options or {}).items()))
    threads = max(1, cpus // n)  # DuckDB threads per task: the executor runs ~cpus at once
    return [MapSpec(lake.root, opts, plan.source_table, plan.source_version or 0, tuple(g), plan.mode,
                    ruleset, plan.buckets, plan.scope, threads, lake.bronze_root, plan.replay_id)
            for g in groups if g]


def _fault_hook(committed: int) -> None:
    """Test hook: ``MEDALLION_FAULT_AFTER_COMMITS=N`` kills the driver after N table commits."""
    limit = os.environ.get("MEDALLION_FAULT_AFTER_COMMITS")
    if limit is not None and committed >= int(limit):
        os._exit(99)


def execute(lake: Lake, plan: Plan, ruleset: Ruleset, executor: Executor,
            progress: Progress | None = None, reason: str | None = None,
            checks_dir: str | None = None, allow_failed_checks: bool = False) -> RunResult:
    """Run ``plan`` as one atomic, audited replay (see :mod:`engine.audit`).

    Takes the lake's lease, settles interrupted replays, records a ``running``
    ledger row with every table's version before, computes, commits each table
    in one Delta commit carrying the replay id, then marks the row ``success``.
    A failure after some commits restores them before the error propagates. The
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
    with lease_for(lake, plan.replay_id):
        audit.recover(lake, operator)
        for table in plan.tables:
            lake.ensure(table)
        before = {t: lake.version(t) for t in plan.tables}
        prev = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
        audit.append(lake, {
            "reprocessing_id": plan.replay_id, "kind": "replay", "start_time": audit.now(),
            "layer": "silver+gold" if plan.mode == "full" else "gold", "mode": plan.mode,
            "reason": reason or "", "status": "running", "operator": operator,
            "ruleset_name": ruleset.name, "ruleset_before": prev.get("ruleset_fingerprint"),
            "ruleset_after": ruleset.fingerprint, "bronze_version": plan.bronze_version,
            "tables": json.dumps(list(plan.tables)), "versions_before": json.dumps(before),
        })
        try:
            out = _compute(lake, plan, ruleset, executor, progress)
        except BaseException as exc:
            audit.update(lake, plan.replay_id, status="failed", end_time=audit.now(),
                         details=f"failed before any commit: {type(exc).__name__}: {exc}"[:500])
            for table in plan.tables:
                lake.sweep(table, plan.replay_id)  # nothing was committed: drop staged files
            raise
        try:
            versions, counts, conservation = _commit(lake, plan, ruleset, out, operator)
        except BaseException as exc:
            audit.recover(lake, operator)  # restores whatever this replay had committed
            audit.update(lake, plan.replay_id,
                         details=f"failed while committing: {type(exc).__name__}: {exc}"[:500])
            raise
        for table in plan.tables:
            lake.sweep(table, plan.replay_id)  # files of killed and retried task attempts
        rng = _affected(out)
        whole = plan.scope is None or lake.bronze_root is None  # a scoped experiment holds a part
        results = checks.run_checks(lake, versions, plan.bronze_version, plan.mode == "full" and whole,
                                    user_checks, before)
        failed = [r.name for r in results if not r.passed]
        record = dict(versions_after=json.dumps(versions), conservation_ok=conservation,
                      record_count=counts.get(schemas.SILVER, counts.get(schemas.MINUTE)),
                      affected_start=rng[0], affected_end=rng[1], allow_failed_checks=allow_failed_checks,
                      checks=json.dumps([r.to_dict() for r in results], default=str))
        if failed and not allow_failed_checks:
            for table in plan.tables:
                lake.restore(table, before[table], plan.replay_id)
            audit.update(lake, plan.replay_id, status="failed", end_time=audit.now(), **{
                **record, "versions_after": json.dumps({t: lake.version(t) for t in plan.tables})},
                details=f"validation gate failed: {', '.join(failed)}; every table restored")
            raise checks.ChecksFailedError(
                f"validation gate failed ({', '.join(failed)}); replay {plan.replay_id} rolled back "
                "(see 'replay history --json'; --allow-failed-checks publishes anyway)",
                failed=failed, replay_id=plan.replay_id)
        audit.update(lake, plan.replay_id, status="success", end_time=audit.now(), **record,
                     details=f"published despite failed checks: {', '.join(failed)}" if failed else None)
    return RunResult(plan, versions, counts, conservation, time.perf_counter() - t0, operator,
                     tuple(results), out.chunks)


def _compute(lake: Lake, plan: Plan, ruleset: Ruleset, executor: Executor,
             progress: Progress | None) -> JobOutput:
    assert plan.mode is not None
    if plan.reuse:
        from engine.experiment import load_output

        return load_output(lake.scratch(plan.reuse))
    maps = map_specs(lake, plan, ruleset, executor.cpus())
    cpus = executor.cpus()
    target = Target(lake.root, tuple(sorted((lake.storage_options or {}).items())), lake.bronze_root,
                    plan.replay_id, plan.scope)
    reduces = [ReduceSpec(b, plan.mode, ruleset, max(1, cpus // plan.buckets),
                          plan.task_memory, target)
               for b in range(plan.buckets)]
    return executor.run(maps, reduces, progress)


def _affected(out: JobOutput) -> tuple[Any, Any]:
    """The window range of the Gold minutes this replay computed."""
    if isinstance(out.minute, Staged):  # from the files' stats: minute bounds are exact there
        return out.minute.bounds("window_start", "window_end")
    if not out.minute.num_rows:
        return None, None
    return (pc.min(out.minute.column("window_start")).as_py(),
            pc.max(out.minute.column("window_end")).as_py())


def _commit(lake: Lake, plan: Plan, ruleset: Ruleset, out: JobOutput,
            operator: str) -> tuple[dict[str, int], dict[str, int], bool | None]:
    meta: dict[str, Any] = {
        "replay_id": plan.replay_id,
        "ruleset_name": ruleset.name,
        "ruleset_fingerprint": ruleset.fingerprint,
        "silver_fingerprint": plan.silver_fingerprint,
        "known_plans": sorted(Compiled.of(ruleset).known_plans),
        "rules": list(plan.rules),
        "bronze_version": plan.bronze_version,
        "mode": plan.mode,
        "operator": operator,
    }
    versions: dict[str, int] = {}
    counts: dict[str, int] = {}
    conservation: bool | None = None
    scope = plan.scope

    def write(table: str, data: Out, extra: dict[str, Any]) -> None:
        m = {**meta, **extra}
        if scope is not None:
            prev = lake.commit_metadata(table)
            mixed = set(prev.get("mixed_with") or []) | {prev.get("ruleset_fingerprint")}
            mixed.discard(ruleset.fingerprint)
            mixed.discard(None)
            m.update(scope=scope.describe(), mixed_with=sorted(mixed))
            if isinstance(data, pa.Table):
                data = scope.merge(lake.read(table), data, table)
            else:  # the tasks staged only rows inside the scope; keep the old rows outside it
                old = lake.read(table)
                keep = lake.stage(table, old.filter(pc.invert(scope.mask(old, table))),
                                  f"{plan.replay_id}-keep")
                data = Staged.merge(table, [data, keep])
        if isinstance(data, pa.Table):
            versions[table] = lake.write(table, data, mode="overwrite", metadata=m)
        else:
            versions[table] = lake.commit_staged(table, data, metadata=m)
        counts[table] = data.num_rows
        _fault_hook(len(versions))

    if plan.mode == "full":
        assert out.silver is not None and out.duplicates is not None
        for table, data in ((schemas.SILVER, out.silver), (schemas.QUARANTINE, out.quarantine),
                            (schemas.DUPLICATES, out.duplicates)):
            write(table, data, {"layer": "silver"})
        # count Bronze itself, not what the tasks read: a lost file or row group must show
        bronze_rows = lake.dataset(schemas.BRONZE, plan.bronze_version).count_rows()
        conservation = bronze_rows == out.rows_in == sum(counts[t] for t in schemas.SILVER_TABLES)
        if scope is not None and lake.bronze_root:
            conservation = None  # a scoped experiment holds only its scope
        counts[schemas.BRONZE] = bronze_rows
    silver_meta = lake.commit_metadata(schemas.SILVER)
    for table, data in ((schemas.MINUTE, out.minute), (schemas.HOURLY, out.hourly),
                        (schemas.ALERTS, out.alerts)):
        write(table, data, {"layer": "gold", "silver_replay_id": silver_meta.get("replay_id")})
    return versions, counts, conservation


def operator_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
