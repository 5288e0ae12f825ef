"""The Python API of medallion-replay: one facade over the engine, used by the CLI too."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from engine import audit, schemas
from engine.config import ReplayConfig, parse_size
from engine.diff import TableDiff, diff_table, entitlement_summary, gold_versions
from engine.errors import UsageError
from engine.executor import Executor, LocalExecutor, Progress
from engine.experiment import (
    ExperimentResult,
    drop_experiment,
    list_experiments,
    reusable,
    run_experiment,
)
from engine.generator import GeneratorConfig, generate, to_jsonl
from engine.importers import ImportResult, append_new, import_bronze_parquet, import_jsonl
from engine.lake import Lake
from engine.lease import lease_for
from engine.query import query
from engine.runner import (
    ModeArg,
    Plan,
    RunResult,
    build_plan,
    execute,
    new_replay_id,
    operator_name,
)
from engine.scope import Scope
from rules.base import Ruleset
from rules.rulesets import load_ruleset

__all__ = [
    "Lake", "Ruleset", "load_ruleset", "open_lake", "import_file", "plan", "run", "status", "sql",
    "generate_history", "make_executor", "recover", "rollback", "history", "diff", "summary",
    "Experiment", "experiments", "drop",
]


def open_lake(lake: str | os.PathLike[str] | Lake, storage_options: Mapping[str, str] | None = None) -> Lake:
    return lake if isinstance(lake, Lake) else Lake.at(lake, storage_options)


def import_file(lake: str | Lake, path: str | Path, fmt: Literal["jsonl", "bronze-parquet"] = "jsonl",
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
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from engine.ray_executor import RayExecutor

        return RayExecutor(address=address, num_cpus=num_cpus)
    raise UsageError(f"unknown executor {kind!r}; use local or ray")


def replay_config(shards: int | None = None, task_memory: int | str | None = None,
                  config: ReplayConfig | None = None) -> ReplayConfig:
    """``config`` with the shorthand overrides applied."""
    cfg = config or ReplayConfig()
    updates: dict[str, Any] = {}
    if shards is not None:
        updates["shards"] = shards
    if task_memory is not None:
        updates["task_memory"] = parse_size(task_memory)
    return ReplayConfig.model_validate({**cfg.model_dump(), **updates}) if updates else cfg


def plan(lake: str | Lake, ruleset: str | Path | Ruleset, mode: ModeArg = "auto",
         executor: Executor | None = None, shards: int | None = None,
         start: Any = None, end: Any = None, tenants: list[str] | None = None,
         task_memory: int | str | None = None, config: ReplayConfig | None = None) -> Plan:
    """What a replay would recompute and why (changes nothing).

    ``task_memory`` (bytes or ``"512MiB"``) bounds one reduce task's working set: a
    larger shard is folded in ingestion-time chunks.
    """
    ex = executor or LocalExecutor()
    lk, rs = open_lake(lake), load_ruleset(ruleset)
    p = build_plan(lk, rs, mode, executor=ex.name, cpus=ex.cpus(),
                   scope=Scope.of(start, end, tenants),
                   config=replay_config(shards, task_memory, config))
    return with_reuse(lk, rs, p)


def run(lake: str | Lake, ruleset: str | Path | Ruleset, mode: ModeArg = "auto",
        executor: Executor | None = None, shards: int | None = None,
        progress: Progress | None = None, reason: str = "python api", start: Any = None,
        end: Any = None, tenants: list[str] | None = None, checks: str | None = None,
        allow_failed_checks: bool = False, task_memory: int | str | None = None,
        config: ReplayConfig | None = None) -> RunResult:
    """Plan, then apply: recompute what the ruleset invalidates and commit it atomically.

    ``start``/``end`` (event time, widened to whole hours) and ``tenants`` restrict the
    replay: rows inside the scope equal a full replay's, rows outside stay as they were.
    """
    lk = open_lake(lake)
    rs = load_ruleset(ruleset)
    ex = executor or LocalExecutor()
    recover_if_needed(lk)  # plan on a consistent lake, not on a half-committed replay
    p = plan(lk, rs, mode, ex, shards, start, end, tenants, task_memory, config)
    return execute(lk, p, rs, ex, progress, reason, checks, allow_failed_checks)


def with_reuse(lake: Lake, ruleset: Ruleset, p: Plan) -> Plan:
    """Publish a finished experiment of this ruleset instead of recomputing (Bronze unchanged)."""
    if p.mode is None or p.scope is not None or lake.bronze_root:
        return p
    scratch = reusable(lake, ruleset)
    if scratch is None:
        return p
    name = scratch.root.rsplit("/", 1)[-1]
    return replace(p, reuse=name, mode="full", tables=(*schemas.SILVER_TABLES, *schemas.GOLD_TABLES),
                   reasons=(*p.reasons, f"reusing experiment {name}: same ruleset, Bronze unchanged since"))


class Experiment:
    """A candidate ruleset replayed into a scratch area and compared with a baseline.

    ``baseline`` defaults to the production tables; ``start``/``end``/``tenants`` restrict
    the experiment. Production tables are never written.
    """

    def __init__(self, lake: str | Lake, candidate: str | Path | Ruleset,
                 baseline: str | Path | Ruleset | None = None, start: Any = None, end: Any = None,
                 tenants: list[str] | None = None, name: str | None = None,
                 executor: Executor | None = None) -> None:
        self.lake = open_lake(lake)
        self.candidate = load_ruleset(candidate)
        self.baseline = load_ruleset(baseline) if baseline is not None else None
        self.scope = Scope.of(start, end, tenants)
        self.name = name
        self.executor = executor or LocalExecutor()

    def run(self) -> ExperimentResult:
        return run_experiment(self.lake, self.candidate, self.baseline, self.scope, self.name,
                              self.executor, run)


def experiments(lake: str | Lake) -> list[dict[str, Any]]:
    return list_experiments(open_lake(lake))


def drop(lake: str | Lake, name: str) -> None:
    drop_experiment(open_lake(lake), name)


def recover_if_needed(lake: str | Lake) -> list[dict[str, Any]]:
    lk = open_lake(lake)
    if lk.exists(schemas.AUDIT) and any(r["status"] == "running" for r in audit.rows(lk)):
        return recover(lk)
    return []


def recover(lake: str | Lake) -> list[dict[str, Any]]:
    """Settle replays a dead driver left half-committed: every table pre or post, never a mix."""
    lk = open_lake(lake)
    if not lk.exists(schemas.AUDIT):
        return []
    with lease_for(lk, "recover-" + new_replay_id()):
        return audit.recover(lk, operator_name())


def rollback(lake: str | Lake, replay_id: str, reason: str) -> dict[str, Any]:
    """Restore every table of ``replay_id`` to its version before, as one audited operation."""
    lk = open_lake(lake)
    if not lk.exists(schemas.AUDIT):
        raise UsageError(f"lake {lk.root} has no ledger yet; nothing to roll back")
    rid = new_replay_id()
    with lease_for(lk, rid):
        audit.recover(lk, operator_name())
        return audit.rollback(lk, replay_id, reason, operator_name(), rid)


def history(lake: str | Lake) -> list[dict[str, Any]]:
    """The audit ledger, oldest first."""
    return audit.rows(open_lake(lake))


def status(lake: str | Lake) -> list[dict[str, Any]]:
    """Each SPEC table: exists, version, rows, and the ruleset that made it."""
    lk = open_lake(lake)
    out = []
    for table in schemas.ALL_TABLES:
        if not lk.exists(table):
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
    return out


def sql(lake: str | Lake, text: str, params: Mapping[str, Any] | None = None) -> pa.Table:
    return query(open_lake(lake), text, dict(params) if params else None)


def generate_history(cfg: GeneratorConfig, *, out: str | Path | None = None,
                     fmt: Literal["jsonl", "bronze-parquet"] = "jsonl",
                     lake: str | Lake | None = None) -> dict[str, Any]:
    """Generate a history into a JSONL file, a Bronze Parquet archive, or a lake's Bronze."""
    if (out is None) == (lake is None):
        raise UsageError("give exactly one of --out FILE or --lake DIR")
    table = generate(cfg)
    info: dict[str, Any] = {"rows": table.num_rows, "config": {k: str(v) for k, v in asdict(cfg).items()}}
    if lake is not None:
        res = append_new(open_lake(lake), table, "generator", {"source": "generator", "seed": str(cfg.seed)})
        info["bronze_version"] = res.bronze_version
        info["rows_added"] = res.rows_added
        return info
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
    return info


def diff(lake: str | Lake, table: str, from_ref: str | int, to_ref: str | int | None = None,
         sample: int = 10) -> TableDiff:
    """Row and schema diff of one table between two versions (numbers or replay ids)."""
    return diff_table(open_lake(lake), table, from_ref, to_ref, sample)


def summary(lake: str | Lake, from_ref: str, to_ref: str | None = None, top: int = 10
            ) -> dict[str, pa.Table]:
    """Entitlement-level before/after: per plan, tenant flips, top changed tenants."""
    lk = open_lake(lake)
    return entitlement_summary(lk, gold_versions(lk, from_ref), gold_versions(lk, to_ref), top)
