"""The Python API of medallion-replay: one thin facade over the engine, used by the CLI too.

Every function takes a lake as a path/URI or an opened :class:`Lake`. A path is
opened with :func:`open_lake`, which merges ``MEDALLION_STORAGE_OPTIONS`` with the
options given, exactly as the CLI does with ``--storage-option``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from engine.batch import apply as batch
from engine.batch import audit
from engine.batch.apply import RunResult
from engine.batch.experiment import (
    ExperimentResult,
    drop_experiment,
    list_experiments,
    run_experiment,
)
from engine.batch.plan import ModeArg, Plan, build_plan
from engine.config import ReplayConfig, parse_size, start_process, validated
from engine.contract import schemas
from engine.contract.errors import StalePlanError, UsageError
from engine.execution.local import LocalExecutor
from engine.execution.specs import Executor, Progress
from engine.fold.scope import Scope
from engine.ingest import kafka
from engine.ingest.generator import TOPIC, GeneratorConfig, generate, to_jsonl
from engine.ingest.importers import ImportResult, append_new, import_bronze_parquet, import_jsonl
from engine.lake.bronze import bronze_parts
from engine.lake.storage import storage_options
from engine.lake.tables import Lake
from engine.query.diff import TableDiff, diff_table, entitlement_summary, gold_versions
from engine.query.duck import query
from rules.registry import default_registry
from rules.ruleset import Ruleset, builtin_names, load_ruleset

__all__ = [
    "Lake", "Ruleset", "GeneratorConfig", "IngestConfig", "ReplayConfig", "load_ruleset",
    "open_lake", "import_file", "plan", "apply", "run", "status", "sql", "generate_history",
    "produce_history", "ingest", "make_executor", "recover", "recover_if_needed", "rollback",
    "history", "diff", "summary", "Experiment", "experiments", "drop", "rules_catalog",
    "StalePlanError", "executor_shape", "lake_exists",
]

IngestConfig = kafka.IngestConfig
LakeArg = str | os.PathLike[str] | Lake
RulesetArg = str | Path | Ruleset


def open_lake(lake: LakeArg, storage_options_: Mapping[str, str] | None = None) -> Lake:
    """A lake by path or URI; options = ``MEDALLION_STORAGE_OPTIONS`` + ``storage_options_``."""
    start_process()
    if isinstance(lake, Lake):
        return lake
    return Lake.at(lake, storage_options(storage_options_))


def lake_exists(lake: LakeArg) -> bool:
    """Whether ``lake`` holds a lake: a Bronze table or an audit ledger."""
    lk = open_lake(lake)
    return lk.exists(schemas.BRONZE) or lk.exists(schemas.AUDIT)


def import_file(lake: LakeArg, path: str | Path, fmt: Literal["jsonl", "bronze-parquet"] = "jsonl",
                topic: str | None = None) -> ImportResult:
    lk = open_lake(lake)
    if fmt == "jsonl":
        return import_jsonl(lk, path, topic)
    if fmt == "bronze-parquet":
        if topic:
            raise UsageError("--topic applies to --format jsonl only (a Bronze archive has its own topics)")
        return import_bronze_parquet(lk, path)
    raise UsageError(f"unknown import format {fmt!r}; use jsonl or bronze-parquet")


def make_executor(kind: str = "local", address: str | None = None, num_cpus: int | None = None) -> Executor:
    start_process()
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from engine.execution.ray_executor import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus)
    raise UsageError(f"unknown executor {kind!r}; use local or ray")


class ExecutorShape:
    """What a plan needs of an executor, its name and CPUs, without starting anything:
    ``replay plan`` (and ``run --dry-run``, or a ``run`` refused before it starts) runs
    nothing. A local Ray gets one worker per CPU this process may use, as ``ray.init``
    gives it; a cluster's CPUs are known only by joining it, so an ``address`` joins."""

    def __init__(self, name: str, workers: int) -> None:
        self.name, self.workers = name, workers

    def cpus(self) -> int:
        return self.workers


def executor_shape(kind: str = "local", address: str | None = None) -> Executor | ExecutorShape:
    """The executor :func:`make_executor` would make, as far as a plan sees it."""
    if kind == "ray" and address is None:
        return ExecutorShape("ray", max(1, len(os.sched_getaffinity(0))))
    return make_executor(kind, address)


def replay_config(shards: int | None = None, task_memory: int | str | None = None,
                  config: ReplayConfig | None = None) -> ReplayConfig:
    """``config`` with the shorthand overrides applied."""
    cfg = config or ReplayConfig()
    updates: dict[str, Any] = {}
    if shards is not None:
        updates["shards"] = shards
    if task_memory is not None:
        updates["task_memory"] = parse_size(task_memory)
    return validated(ReplayConfig, **{**cfg.model_dump(), **updates}) if updates else cfg


def plan(lake: LakeArg, ruleset: RulesetArg, mode: ModeArg = "auto",
         executor: Executor | ExecutorShape | None = None, shards: int | None = None,
         start: Any = None, end: Any = None, tenants: list[str] | None = None,
         task_memory: int | str | None = None, config: ReplayConfig | None = None) -> Plan:
    """What a replay would recompute and why (read-only: it changes and settles nothing).

    ``task_memory`` (bytes or ``"512MiB"``) bounds one reduce task's working set: a
    larger shard is folded in ingestion-time chunks.
    """
    ex = executor or LocalExecutor()
    return build_plan(open_lake(lake), load_ruleset(ruleset), mode, executor=ex.name,
                      cpus=ex.cpus(), scope=Scope.of(start, end, tenants),
                      config=replay_config(shards, task_memory, config))


def apply(lake: LakeArg, plan_: Plan, ruleset: RulesetArg, executor: Executor | None = None,
          progress: Progress | None = None, reason: str | None = None, checks: str | None = None,
          allow_failed_checks: bool = False) -> RunResult:
    """Run exactly ``plan_`` (as printed by :func:`plan`) as one atomic, audited replay."""
    return batch.execute(open_lake(lake), plan_, load_ruleset(ruleset), executor or LocalExecutor(),
                         progress, reason, checks, allow_failed_checks)


def run(lake: LakeArg, ruleset: RulesetArg, mode: ModeArg = "auto",
        executor: Executor | None = None, shards: int | None = None,
        progress: Progress | None = None, reason: str = "python api", start: Any = None,
        end: Any = None, tenants: list[str] | None = None, checks: str | None = None,
        allow_failed_checks: bool = False, task_memory: int | str | None = None,
        config: ReplayConfig | None = None) -> RunResult:
    """Plan, then apply: recompute what the ruleset invalidates and commit it atomically.

    ``start``/``end`` (event time, widened to whole hours) and ``tenants`` restrict the
    replay: rows inside the scope equal a full replay's, rows outside stay as they were.
    """
    return batch.run(open_lake(lake), load_ruleset(ruleset), executor or LocalExecutor(), mode,
                     scope=Scope.of(start, end, tenants),
                     config=replay_config(shards, task_memory, config), progress=progress,
                     reason=reason, checks_dir=checks, allow_failed_checks=allow_failed_checks)


class Experiment:
    """A candidate ruleset replayed into a scratch area and compared with a baseline.

    ``baseline`` defaults to the production tables; ``start``/``end``/``tenants`` restrict
    the experiment. Production tables are never written.
    """

    def __init__(self, lake: LakeArg, candidate: RulesetArg, baseline: RulesetArg | None = None,
                 start: Any = None, end: Any = None, tenants: list[str] | None = None,
                 name: str | None = None, executor: Executor | None = None) -> None:
        self.lake = open_lake(lake)
        self.candidate = load_ruleset(candidate)
        self.baseline = load_ruleset(baseline) if baseline is not None else None
        self.scope = Scope.of(start, end, tenants)
        self.name = name
        self.executor = executor or LocalExecutor()

    def run(self) -> ExperimentResult:
        return run_experiment(self.lake, self.candidate, self.baseline, self.scope, self.name,
                              self.executor, run)


def experiments(lake: LakeArg) -> list[dict[str, Any]]:
    return list_experiments(open_lake(lake))


def drop(lake: LakeArg, name: str) -> None:
    drop_experiment(open_lake(lake), name)


def recover_if_needed(lake: LakeArg) -> list[dict[str, Any]]:
    """Settle replays a dead driver left ``running``; [] when there are none."""
    return batch.recover_if_needed(open_lake(lake))


def recover(lake: LakeArg, reason: str | None = None) -> list[dict[str, Any]]:
    """Settle replays a dead driver left half-committed: every table pre or post, never a mix."""
    return batch.recover(open_lake(lake), reason)


def rollback(lake: LakeArg, replay_id: str, reason: str) -> dict[str, Any]:
    """Restore every table of ``replay_id`` to its version before, as one audited operation."""
    return batch.rollback(open_lake(lake), replay_id, reason)


def history(lake: LakeArg) -> list[dict[str, Any]]:
    """The audit ledger, oldest first."""
    return audit.rows(open_lake(lake))


def status(lake: LakeArg) -> list[dict[str, Any]]:
    """Each contract table: exists, version, rows, and the ruleset that made it."""
    lk = open_lake(lake)
    out = []
    for table in schemas.ALL_TABLES:
        if not lk.is_active(table):
            out.append({"table": table, "exists": False})
            continue
        dt = lk.table(table)
        meta = lk.commit_metadata(table)
        rows = pa.table(dt.get_add_actions(flatten=True)).column("num_records").to_pylist()
        out.append({
            "table": table, "exists": True, "version": dt.version(),
            "rows": int(sum(r or 0 for r in rows)),
            "ruleset": meta.get("ruleset_name"), "ruleset_fingerprint": meta.get("ruleset_fingerprint"),
            "replay_id": meta.get("replay_id"),
        })
        parts = bronze_parts(lk) if table == schemas.BRONZE else []
        if len(parts) > 1:  # hot and archived parts, as replays read them
            for name, part in zip(("bronze (hot)", "bronze (archive)"), parts, strict=True):
                out.append({"table": name, "exists": part.exists(), "version": part.version,
                            "rows": part.count_rows(), "location": part.lake.root,
                            "ingestion_dates": f">= {part.after}" if part.after else f"< {part.before}"})
    return out


def freshness(lake: LakeArg) -> dict[str, Any]:
    """Bronze's latest version and ingestion time against what Silver and Gold reflect, the lag
    in rows and seconds, and the live follower if one runs (docs/semantics.md §11)."""
    from engine.live.follow import follower_running
    from engine.live.freshness import freshness as fresh

    lk = open_lake(lake)
    out = fresh(lk)
    info = follower_running(lk)
    out["follower"] = ({"session": info.get("owner"), "pid": info.get("pid"), "host": info.get("host"),
                        "heartbeat": info.get("heartbeat")} if info else None)
    return out


def follow(lake: LakeArg, executor: Executor | None = None, ruleset: RulesetArg | None = None,
           interval: float = 1.0, until_idle: float | None = None, metrics_port: int | None = None,
           max_steps: int | None = None, out: Callable[[str], None] = print,
           compact_every: int = 500,
           on_step: Callable[[dict[str, Any]], None] | None = None,
           reason: str = "replay follow") -> dict[str, Any]:
    """Run a follower until signalled, idle for ``until_idle`` s, or ``max_steps`` steps folded;
    every ``compact_every`` steps it compacts the files its steps added (0: never).

    ``out`` gets a line of text per event, ``on_step`` a record per step. The summary's
    ``bronze_version`` is the Bronze version Silver and Gold reflect when it stopped (also
    when it had nothing to fold)."""
    from engine.live.follow import FollowConfig, Follower

    cfg = validated(FollowConfig, interval=interval, until_idle=until_idle,
                    metrics_port=metrics_port, max_steps=max_steps, compact_every=compact_every,
                    reason=reason)
    rs = load_ruleset(ruleset) if ruleset is not None else None
    lk = open_lake(lake)
    stats = Follower(lk, executor or make_executor("local"), cfg, rs, out, on_step).run()
    reflected = freshness(lk).get("silver_bronze_version")
    return {"session": stats.session_id, "steps": stats.steps, "rows_folded": stats.rows,
            "bronze_version": stats.last_version if stats.last_version is not None else reflected,
            "replays": stats.replays}


def sql(lake: LakeArg, text: str, params: Mapping[str, Any] | None = None, *,
        allow_local_files: bool = False) -> pa.Table:
    """Run one read-only SELECT over the lake's tables (``params`` bound as ``$name``).

    Anything else (COPY, CREATE, SET, ATTACH..., several statements) and reading files are
    refused with :class:`~engine.contract.errors.QueryRefusedError` (exit code 1);
    ``allow_local_files`` lets the SELECT read local files (``read_csv('/path')``), still
    never write."""
    return query(open_lake(lake), text, dict(params) if params else None,
                 allow_local_files=allow_local_files)


def generator_config(**fields: Any) -> GeneratorConfig:
    """A :class:`GeneratorConfig` whose bad values are one-line usage errors naming the flag."""
    return validated(GeneratorConfig, **fields)


def generate_history(cfg: GeneratorConfig, *, out: str | Path | None = None,
                     fmt: Literal["jsonl", "bronze-parquet"] = "jsonl",
                     lake: LakeArg | None = None, topic: str | None = None) -> dict[str, Any]:
    """Generate a history into a JSONL file, a Bronze Parquet archive, or a lake's Bronze.

    ``topic`` names the rows' source (``kafka_topic``): Bronze keeps one row per (topic,
    partition, offset), so a second history for the same lake needs a topic of its own."""
    start_process()
    if (out is None) == (lake is None):
        raise UsageError("give exactly one of --out FILE or --lake DIR")
    t0 = time.perf_counter()
    table = generate(cfg)
    if topic is not None and topic != TOPIC:
        table = table.set_column(table.schema.get_field_index("kafka_topic"), "kafka_topic",
                                 pa.array([topic] * table.num_rows, pa.string()))
    info: dict[str, Any] = {"rows": table.num_rows,
                            "config": {k: str(v) for k, v in cfg.model_dump().items()}}
    if lake is not None:
        res = append_new(open_lake(lake), table, "generator", {"source": "generator", "seed": str(cfg.seed)})
        info["bronze_version"] = res.bronze_version
        info["rows_added"] = res.rows_added
    else:
        path = Path(out)  # type: ignore[arg-type]
        if path.parent and not path.parent.exists():
            raise UsageError(f"{path.parent}: no such directory for --out")
        if fmt == "jsonl":
            path.write_bytes(to_jsonl(table))
        elif fmt == "bronze-parquet":
            pq.write_table(table, path)
        else:
            raise UsageError(f"unknown output format {fmt!r}; use jsonl or bronze-parquet")
        info["out"] = str(path)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return info


def produce_history(cfg: GeneratorConfig, bootstrap_servers: str, topic: str,
                    kafka_config: str | Path | None = None) -> dict[str, Any]:
    """Generate a history and send it to Kafka (idempotent producer, key = tenant)."""
    start_process()
    t0 = time.perf_counter()
    n = kafka.produce(generate(cfg), bootstrap_servers, topic, kafka.read_kafka_config(kafka_config))
    return {"produced": n, "topic": topic, "seconds": round(time.perf_counter() - t0, 3)}


def ingest_config(kafka_config_file: str | Path | None = None, **fields: Any) -> kafka.IngestConfig:
    """An :class:`IngestConfig`; ``kafka_config_file`` is a librdkafka ``key=value`` file."""
    return validated(kafka.IngestConfig, **fields,
                     kafka_config=kafka.read_kafka_config(kafka_config_file))


def redacted(cfg: kafka.IngestConfig) -> dict[str, Any]:
    """The client settings of ``cfg`` with secrets masked, for printing."""
    return kafka.redact({"bootstrap.servers": cfg.bootstrap_servers, "group.id": cfg.group_id,
                         **cfg.kafka_config})


def ingest(lake: LakeArg, cfg: kafka.IngestConfig,
           report: Callable[[kafka.IngestStats], None] | None = None) -> kafka.IngestStats:
    """Consume Kafka into Bronze, exactly once, until idle/limit or SIGINT/SIGTERM."""
    return kafka.ingest(open_lake(lake), cfg, report)


def diff(lake: LakeArg, table: str, from_ref: str | int, to_ref: str | int | None = None,
         sample: int = 10) -> TableDiff:
    """Row and schema diff of one table between two versions (numbers or replay ids)."""
    return diff_table(open_lake(lake), table, from_ref, to_ref, sample)


def summary(lake: LakeArg, from_ref: str, to_ref: str | None = None, top: int = 10
            ) -> dict[str, pa.Table]:
    """Entitlement-level before/after: per plan, tenant flips, top changed tenants."""
    lk = open_lake(lake)
    return entitlement_summary(lk, gold_versions(lk, from_ref), gold_versions(lk, to_ref), top)


def optimize(lake: LakeArg, tables: list[str] | None = None, zorder: list[str] | None = None,
             dry_run: bool = False, reason: str = "optimize") -> dict[str, Any]:
    """Compact small files; Z-order Bronze (and Silver) by (tenant_id, event_timestamp) unless
    ``zorder`` names other columns. Neutral (docs/semantics.md §10): plans and replays do not change."""
    from engine.lifecycle.optimize import apply_optimize, plan_optimize

    lk = open_lake(lake)
    p = plan_optimize(lk, tables, zorder)
    return {"dry_run": True, **p.to_dict()} if dry_run else apply_optimize(lk, p, reason)


def vacuum(lake: LakeArg, retain_hours: int = 168, dry_run: bool = False,
           reason: str = "vacuum") -> dict[str, Any]:
    """Remove files and log entries no version within ``retain_hours`` needs, everywhere
    under the lake; older versions can no longer be read (a one-line error says so)."""
    from engine.lifecycle.vacuum import apply_vacuum, plan_vacuum

    lk = open_lake(lake)
    p = plan_vacuum(lk, retain_hours)
    return {"dry_run": True, **p.to_dict()} if dry_run else apply_vacuum(lk, p, reason)


def erase(lake: LakeArg, tenant: str, user: str | None = None, requested_at: Any = None,
          reason: str = "erasure request", executor: Executor | None = None,
          dry_run: bool = False) -> dict[str, Any]:
    """docs/semantics.md §9: erase a tenant (or one person of it) as of ``requested_at`` (default now):
    tombstone, Bronze delete, the tenant's Silver and Gold recomputed, one audited operation."""
    from engine.fold.scope import parse_time
    from engine.lifecycle.erasure import apply_erasure, plan_erasure

    lk = open_lake(lake)
    when = parse_time(requested_at, "--requested-at") if isinstance(requested_at, str) else requested_at
    p = plan_erasure(lk, tenant, user, when)
    if dry_run:
        return {"dry_run": True, **p.to_dict()}
    return apply_erasure(lk, p, executor or LocalExecutor(), reason)


def archive(lake: LakeArg, before: Any, to: str, dry_run: bool = False,
            reason: str = "archive") -> dict[str, Any]:
    """Move Bronze rows ingested before ``before`` (a date) to the archive at ``to``; every
    replay keeps reading hot and archive as one Bronze (docs/semantics.md §10)."""
    from engine.lifecycle.archive import apply_archive, plan_archive

    lk = open_lake(lake)
    p = plan_archive(lk, before, to)
    return {"dry_run": True, **p.to_dict()} if dry_run else apply_archive(lk, p, reason)


def rules_catalog() -> dict[str, Any]:
    """Every registered rule version and every built-in ruleset with its fingerprint."""
    reg = default_registry()
    rules = [{"name": n, "version": v, "layer": reg.get(n, v).layer,
              "description": reg.get(n, v).description} for n, v in reg.versions()]
    rulesets = {}
    for name in builtin_names():
        rs = load_ruleset(name)
        rulesets[name] = {"fingerprint": rs.fingerprint,
                          "rules": {r.name: r.version for r in rs.rules}}
    return {"rules": rules, "rulesets": rulesets}
