"""Plan: what a replay must recompute and why, as an immutable plan (the evaluator is apply)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any, Literal

import pyarrow as pa

from engine.batch.experiment import reusable
from engine.config import ReplayConfig
from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.execution.specs import Mode
from engine.execution.workers import file_units, scan_units
from engine.fold.chunks import WORK_FACTOR, working_budget
from engine.fold.pipeline import FOLD_VERSION, Compiled
from engine.fold.scope import Scope
from engine.lake.bronze import SourcePart, archive_of, bronze_parts
from engine.lake.tables import Lake
from engine.live.appends import Appended, appended_since, touched_summary
from rules.base import canonical_json
from rules.ruleset import Ruleset

ModeArg = Literal["auto", "full", "gold", "incremental"]
#: In-memory size of a validated event (Arrow; ~163 B measured on generated events), for
#: the plan's chunk estimate. The tasks themselves decide from the rows they hold.
ROW_BYTES = 170
#: Bytes of task memory to allow per row of a tenant shard when cutting a replay into shards.
#: Measured (5M generated events, Ray, 2 CPUs): a reduce task's process peaks at ~1.4 KB per
#: row of its shard on top of ~0.4 GiB (1.25M rows: 1.74 GiB RSS, of which 0.59 GiB were the
#: shard's pages in Ray's object store, now its shuffle files, mapped); 3 KB per row leaves room for skew and allocator retention, so a
#: 2 GiB task memory gives shards of at most ~715k rows and processes well under 2 GiB.
SHARD_ROW_BYTES = 3000


def shard_count(rows: int, cpus: int, task_memory: int) -> int:
    """Tenant shards of a replay over ``rows`` source rows: twice the CPUs, or more (whole
    waves) so that no shard needs more than ``task_memory``. A shard that still does (one
    tenant larger than the rest, say) is folded in ingestion-time chunks."""
    n = cpus * 2 if cpus > 1 else 1
    by_memory = -(-rows * SHARD_ROW_BYTES // task_memory)
    if by_memory > n:
        n = -(-by_memory // cpus) * cpus
    return max(1, n)


def silver_fingerprint(ruleset: Ruleset) -> str:
    """What Silver depends on: the silver-layer rules, the set of known plans (docs/semantics.md §5) and the
    fold's version (fold version 1 is implied: fingerprints recorded before it existed hold)."""
    plans = sorted(Compiled.of(ruleset).known_plans)
    parts: dict[str, object] = {"silver": ruleset.layer_fingerprint("silver"), "plans": plans}
    if FOLD_VERSION != 1:
        parts["fold"] = FOLD_VERSION
    payload = canonical_json(parts)
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
    #: the archive's Bronze version read with the hot one (None: the lake has no archive)
    archive_version: int | None = None
    #: the archive cutoff the plan read Bronze at (None: no archive)
    archive_cutoff: date | None = None
    #: incremental: the Bronze version Silver and Gold reflect (the new rows come after it),
    #: the Silver commit they were built by, and the tenants and hours the new rows touch
    since_version: int | None = None
    base_replay_id: str | None = None
    touched: dict[str, Any] | None = None
    #: the replay that built Gold when planned: another one since makes the plan stale
    gold_replay_id: str | None = None

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
               config: ReplayConfig | None = None, reuse: bool = True, follow: bool = False) -> Plan:
    """What a replay must recompute and why. ``buckets`` overrides ``config.shards``.

    Read-only: it settles nothing. With ``reuse``, a finished experiment of this ruleset
    on the current Bronze is published instead of recomputing (:func:`with_reuse`).

    ``follow`` (a follower's step): tables a scoped replay of this very ruleset left mixed
    (``replay run --start T`` while following: the seed's reprocessing from a checkpoint)
    stay as they are; only new Bronze rows are folded, never the whole history again.
    """
    cfg = config or ReplayConfig()
    buckets = buckets or cfg.shards
    compiled = Compiled.of(ruleset)
    sfp = silver_fingerprint(ruleset)
    if not lake.exists(schemas.BRONZE):
        raise UsageError(f"no {schemas.BRONZE} table in lake {lake.root}; run 'replay import' first")
    bronze_v = lake.version(schemas.BRONZE)
    arch = archive_of(lake)
    archive_v = arch.lake.version(schemas.BRONZE) if arch is not None else None
    reasons: list[str] = []
    chosen: Mode | None = None
    silver_meta = lake.commit_metadata(schemas.SILVER) if lake.exists(schemas.SILVER) else {}
    if not silver_meta.get("silver_fingerprint"):
        reasons.append("Silver has never been built by a replay")
        chosen = "full"
    elif silver_meta.get("mixed_with") and not (follow and silver_meta.get("silver_fingerprint") == sfp):
        reasons.append(f"Silver mixes rulesets since a scoped replay ({silver_meta.get('scope')})")
        chosen = "full"
    else:
        if silver_meta["silver_fingerprint"] != sfp:
            reasons += _changed_rules(silver_meta.get("rules"), ruleset, "silver")
            if silver_meta.get("fold_version", 1) != FOLD_VERSION:
                reasons.append(f"the fold changed since Silver was built (fold version "
                               f"{silver_meta.get('fold_version', 1)} -> {FOLD_VERSION})")
            old_plans = set(silver_meta.get("known_plans") or [])
            if old_plans != set(compiled.known_plans):
                reasons.append(
                    f"plan_limits changes the set of known plans ({', '.join(sorted(old_plans))} -> "
                    f"{', '.join(sorted(compiled.known_plans))}); validate depends on it (docs/semantics.md §5)")
            chosen = "full"
        if lake.data_changed(schemas.BRONZE, silver_meta.get("bronze_version")):
            reasons.append(f"Bronze changed since Silver was built (version "
                           f"{silver_meta.get('bronze_version')} -> {bronze_v})")
            chosen = "full"
        elif arch is not None and arch.lake.data_changed(schemas.BRONZE, silver_meta.get(
                "archive_version", NO_VERSION)):
            reasons.append("archived Bronze changed since Silver was built (rows imported into it)")
            chosen = "full"
    if chosen is None:
        gold_meta = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
        silver_id = silver_meta.get("replay_id")
        if not gold_meta.get("ruleset_fingerprint"):
            reasons.append("Gold has never been built by a replay")
            chosen = "gold"
        elif gold_meta.get("mixed_with") and not (
                follow and gold_meta.get("ruleset_fingerprint") == ruleset.fingerprint):
            reasons.append(f"Gold mixes rulesets since a scoped replay ({gold_meta.get('scope')})")
            chosen = "gold"
        else:
            if gold_meta["ruleset_fingerprint"] != ruleset.fingerprint:
                reasons += _changed_rules(gold_meta.get("rules"), ruleset, "gold") or [
                    "ruleset fingerprint changed"]
                chosen = "gold"
            if gold_meta.get("fold_version", 1) != FOLD_VERSION:  # none recorded: version 1
                reasons.append(f"the fold changed since Gold was built (fold version "
                               f"{gold_meta.get('fold_version', 1)} -> {FOLD_VERSION})")
                chosen = "gold"
            if gold_meta.get("silver_replay_id") != silver_id:
                reasons.append(f"Silver changed since Gold was built (Silver now from replay "
                               f"{silver_id}, Gold from {gold_meta.get('silver_replay_id')})")
                chosen = "gold"
    inc: Appended | None = None
    if mode in ("auto", "incremental") and chosen == "full" and scope is None:
        found = incremental_source(lake, ruleset, sfp, silver_meta, bronze_v, follow)
        if isinstance(found, Appended):
            inc, chosen = found, "incremental"
            reasons = [f"Bronze grew by {found.rows} rows in {len(found.files)} files since version "
                       f"{found.since}: folding only them (docs/semantics.md §11)"]
        elif mode == "incremental":
            raise UsageError(f"--mode incremental is not possible: {found}")
    elif mode == "incremental":
        raise UsageError("--mode incremental is not possible: "
                         + ("a scoped replay is never incremental" if scope is not None and chosen
                            else "; ".join(reasons) if chosen else "the lake is up to date"))
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
    if inc is not None:
        return _incremental_plan(lake, ruleset, inc, tuple(reasons), executor, cpus,
                                 buckets, cfg, silver_meta, archive_v, arch)
    # one read of Bronze's version for the whole plan: the version the tasks read is the one
    # its commits record and the gate counts (an ingest may commit while it plans)
    source_v = bronze_v if source == schemas.BRONZE else lake.version(source)
    files: list[str] = []
    rows = nbytes = n_units = 0
    flt = scope.source_filter(chosen) if scope is not None and chosen is not None else None
    parts = source_parts(lake, chosen, source_v, archive_v) if chosen is not None else []
    if chosen is not None and (flt is not None or len(parts) > 1):
        # scoped or archived: only the row groups the scope (and the archive cutoff) can touch
        units = [u for part in parts for u in scan_units(part.dataset(), part.scan_filter(flt))]
        files = sorted({u[0] for u in units})
        rows, nbytes, n_units = sum(u[2] for u in units), sum(u[3] for u in units), len(units)
    elif chosen is not None:
        for act in pa.table(lake.table(source, source_v).get_add_actions(flatten=True)).to_pylist():
            files.append(act["path"])
            nbytes += int(act.get("size_bytes") or 0)
            rows += int(act.get("num_records") or 0)
        n_units = len(file_units(lake.dataset(source, source_v)))
    n_buckets = buckets or shard_count(rows, cpus, cfg.task_memory)
    wanted = max(-(-rows // cfg.rows_per_map_task), cpus * 2 if cpus > 1 else 1)
    if cpus > 1:
        wanted = -(-wanted // cpus) * cpus  # whole waves: no CPU idles through the last one
    map_tasks = min(n_units, wanted)
    shard_bytes = rows * ROW_BYTES // max(1, n_buckets)
    chunks = max(1, -(-shard_bytes * WORK_FACTOR // working_budget(cfg.task_memory, shard_bytes)))
    if chosen == "full" and not compiled.can_chunk:
        chunks = 1
    tables = replaced_tables(lake, compiled, chosen, scope)
    plan = Plan(
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
        archive_version=archive_v,
        archive_cutoff=arch.cutoff if arch is not None else None,
        gold_replay_id=_gold_replay_id(lake),
    )
    return with_reuse(lake, ruleset, plan) if reuse else plan


def _gold_replay_id(lake: Lake) -> str | None:
    return (lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}).get("replay_id")


def incremental_source(lake: Lake, ruleset: Ruleset, sfp: str, silver_meta: dict[str, Any],
                       bronze_v: int | None, follow: bool = False) -> Appended | str:
    """The Bronze files to fold incrementally, or why the lake needs more than that (docs/semantics.md §11):
    Silver and Gold must be whole, of this ruleset and fold, and Bronze must only have grown."""
    if silver_meta.get("silver_fingerprint") != sfp or (silver_meta.get("mixed_with") and not follow):
        return "Silver was not built whole by this ruleset's silver rules"
    if silver_meta.get("fold_version", 1) != FOLD_VERSION:
        return "the fold changed since Silver was built"
    for table in replaced_tables(lake, Compiled.of(ruleset), "gold"):
        if not lake.exists(table):
            return f"{table} was never built"
        meta = lake.commit_metadata(table)
        if (meta.get("ruleset_fingerprint") != ruleset.fingerprint or (meta.get("mixed_with") and not follow)
                or meta.get("fold_version", 1) != FOLD_VERSION or meta.get("retired")
                or meta.get("silver_replay_id") != silver_meta.get("replay_id")):
            return f"{table} was not built whole by this ruleset from the current Silver"
    arch = archive_of(lake)
    if arch is not None and arch.lake.data_changed(schemas.BRONZE, silver_meta.get(
            "archive_version", NO_VERSION)):
        return "archived Bronze changed since Silver was built"
    if arch is not None and silver_meta.get("archive_cutoff") not in (None, str(arch.cutoff)):
        return "Bronze was archived since Silver was built"
    return appended_since(lake, silver_meta.get("bronze_version"), bronze_v)


def _incremental_plan(lake: Lake, ruleset: Ruleset, inc: Appended, reasons: tuple[str, ...],
                      executor: str, cpus: int, buckets: int | None, cfg: ReplayConfig,
                      silver_meta: dict[str, Any], archive_v: int | None, arch: Any) -> Plan:
    # a step's fixed cost (index lookup, reads of touched hours) is paid per tenant bucket:
    # small appends fold in one task, big ones in as many as a replay would use
    n_buckets = buckets or max(1, min(cpus * 2 if cpus > 1 else 1,
                                      -(-inc.rows // cfg.rows_per_map_task)))
    wanted = max(1, -(-inc.rows // cfg.rows_per_map_task))
    compiled = Compiled.of(ruleset)
    return Plan(
        replay_id=new_replay_id(), lake=lake.root, mode="incremental", reasons=reasons,
        ruleset_name=ruleset.name, ruleset_fingerprint=ruleset.fingerprint,
        silver_fingerprint=silver_fingerprint(ruleset), rules=tuple(ruleset.describe()),
        source_table=schemas.BRONZE, source_version=inc.version, bronze_version=inc.version,
        tables=(*replaced_tables(lake, compiled, "full"), schemas.DEDUP_STATE),
        files=inc.files, rows=inc.rows, bytes=inc.bytes,
        map_tasks=max(1, min(len(inc.files), wanted)), buckets=n_buckets, executor=executor,
        task_memory=cfg.task_memory, chunks_per_shard=1, archive_version=archive_v,
        archive_cutoff=arch.cutoff if arch is not None else None, since_version=inc.since,
        base_replay_id=silver_meta.get("replay_id"),
        touched=touched_summary(lake, inc), gold_replay_id=_gold_replay_id(lake))


#: what a Silver commit from before the lake had an archive "read" of it: nothing
NO_VERSION = -1


def stale_reason(lake: Lake, plan: Plan) -> str | None:
    """Why ``plan`` no longer describes the lake (None: it still does). Checked under the lease,
    right before a replay applies it: rows changed or moved in between must be planned again."""
    if plan.mode is None:
        return None
    if plan.mode == "incremental" and lake.commit_metadata(schemas.SILVER).get(
            "replay_id") != plan.base_replay_id:
        return "Silver changed since (another replay or step ran)"
    gold = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
    if gold.get("replay_id") != plan.gold_replay_id:
        return "Gold changed since (another replay, step or rollback ran)"
    if plan.mode == "incremental":  # pinned to its version: later appends are the next step's
        later = appended_since(lake, plan.source_version)
        if not isinstance(later, Appended):
            return later
    elif lake.data_changed(plan.source_table, plan.source_version):
        return f"{plan.source_table} changed since version {plan.source_version}"
    arch = archive_of(lake)
    if (arch.cutoff if arch is not None else None) != plan.archive_cutoff:
        return "Bronze was archived since"
    if arch is not None and plan.mode in ("full", "incremental") and \
            arch.lake.data_changed(schemas.BRONZE, plan.archive_version):
        return "the archived Bronze changed since"
    return None


def source_parts(lake: Lake, mode: Mode, source_version: int | None,
                 archive_version: int | None = None) -> list[SourcePart]:
    """The tables a replay in ``mode`` reads: Silver; or Bronze, hot and archived."""
    if mode == "gold":
        return [SourcePart(lake, source_version, table=schemas.SILVER)]
    return bronze_parts(lake, source_version, archive_version)


def active_ruleset(lake: Lake) -> Ruleset:
    """The ruleset the lake's current Gold was built with (recorded whole in its commits)."""
    meta = lake.commit_metadata(schemas.MINUTE) if lake.exists(schemas.MINUTE) else {}
    if meta.get("ruleset"):
        return Ruleset.model_validate(meta["ruleset"])
    name, fp = meta.get("ruleset_name"), meta.get("ruleset_fingerprint")
    if name:
        from rules.ruleset import load_ruleset

        try:
            rs = load_ruleset(name)
        except UsageError:
            rs = None
        if rs is not None and rs.fingerprint == fp:
            return rs
    raise UsageError(f"lake {lake.root} has no active ruleset (no Gold built by a replay that "
                     "recorded it); give --ruleset")


def replaced_tables(lake: Lake, compiled: Compiled, mode: Mode | None,
                    scope: Scope | None = None) -> tuple[str, ...]:
    """The tables a replay in ``mode`` replaces. An optional Gold table (docs/semantics.md §8) is made while
    the ruleset has its rule, and retired (emptied, marked) by an unscoped replay without it."""
    if mode is None:
        return ()
    if mode == "incremental":
        return (*replaced_tables(lake, compiled, "full", scope), schemas.DEDUP_STATE)
    gold = list(schemas.GOLD_TABLES)
    for table, slot in schemas.OPTIONAL_GOLD.items():
        if compiled.ruleset.get(slot) is not None or (scope is None and lake.is_active(table)):
            gold.append(table)
    return (*schemas.SILVER_TABLES, *gold) if mode == "full" else tuple(gold)


def new_replay_id() -> str:
    return datetime.now(UTC).strftime("r%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:8]


def with_reuse(lake: Lake, ruleset: Ruleset, p: Plan) -> Plan:
    """Publish a finished experiment of this ruleset instead of recomputing (Bronze unchanged)."""
    if p.mode is None or p.scope is not None or lake.bronze_root:
        return p
    scratch = reusable(lake, ruleset)
    if scratch is None:
        return p
    name = scratch.root.rsplit("/", 1)[-1]
    return replace(p, reuse=name, mode="full", tables=replaced_tables(lake, Compiled.of(ruleset), "full"),
                   reasons=(*p.reasons, f"reusing experiment {name}: same ruleset, Bronze unchanged since"))
