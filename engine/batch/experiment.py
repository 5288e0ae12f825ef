"""Experiments: a candidate ruleset replayed into a scratch area, compared with a baseline.

The scratch area ``<lake>/_experiments/<name>`` has its own Silver, Gold and ledger and
reads the production Bronze; production tables are never written. A later ``replay run``
with the same ruleset reuses the experiment's output when Bronze has not changed since.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from engine.config import environment
from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.execution.specs import Executor, JobOutput
from engine.fold.pipeline import FOLD_VERSION
from engine.fold.scope import Scope
from engine.lake.lease import lease_for
from engine.lake.staging import Staged, copy_files
from engine.lake.tables import Lake
from engine.query.diff import TableDiff, diff_data, summarize
from rules.ruleset import Ruleset

OUTPUTS = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)
#: Experiment areas live under ``<lake>/_experiments/<name>``.
AREA = "_experiments"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"experiment name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    return name


def default_name(ruleset: Ruleset) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", ruleset.name)[:40] + "-" + ruleset.fingerprint[:8]


def list_experiments(lake: Lake) -> list[dict[str, Any]]:
    """The scratch areas under ``<lake>/_experiments`` (listed with the lake's storage options)."""
    out = []
    for name in lake.storage.child(AREA).list_dirs():
        scratch = lake.scratch(name)
        if not any(scratch.exists(t) for t in OUTPUTS):
            continue  # an emptied folder an object store still lists, or an area never written
        meta = scratch.commit_metadata(schemas.SILVER) if scratch.exists(schemas.SILVER) else {}
        out.append({"name": name, "uri": scratch.root, "ruleset": meta.get("ruleset_name"),
                    "ruleset_fingerprint": meta.get("ruleset_fingerprint"),
                    "bronze_version": meta.get("bronze_version"), "scope": meta.get("scope"),
                    "replay_id": meta.get("replay_id")})
    return out


def drop_experiment(lake: Lake, name: str) -> None:
    """Delete an experiment area under its own lease (an experiment replays under it): a
    running experiment is waited for (``MEDALLION_LEASE_WAIT``), never cut off mid-write.
    Everything but the lease goes while it is held; then the rest."""
    check_name(name)
    area = lake.storage.child(AREA, name)
    if name not in lake.storage.child(AREA).list_dirs():
        raise UsageError(f"no experiment {name!r} (see 'replay experiment --list')")
    with lease_for(lake.scratch(name), f"drop-{name}", wait=environment().lease_wait):
        for d in area.list_dirs():
            if d not in LEASE_DIRS:
                area.child(d).delete()
    area.delete()


#: Where an area's lease lives (a local area's lock file, an object-store area's table).
LEASE_DIRS = ("_medallion", "_medallion_lease")


def reusable(lake: Lake, ruleset: Ruleset) -> Lake | None:
    """A finished, unscoped experiment of exactly this ruleset on the current Bronze."""
    for exp in list_experiments(lake):
        scratch = lake.scratch(exp["name"])
        if exp["ruleset_fingerprint"] != ruleset.fingerprint \
                or lake.data_changed(schemas.BRONZE, exp["bronze_version"]) \
                or exp["scope"] or not all(scratch.exists(t) for t in OUTPUTS):
            continue
        gold = scratch.commit_metadata(schemas.MINUTE)
        if gold.get("ruleset_fingerprint") == ruleset.fingerprint and not gold.get("scope") \
                and gold.get("silver_replay_id") == exp["replay_id"] \
                and gold.get("fold_version", 1) == FOLD_VERSION:  # built by this fold
            return scratch
    return None


def load_output(scratch: Lake, lake: Lake, replay_id: str) -> JobOutput:
    """An experiment's tables as a replay's output, for promotion without recomputing: their
    files are copied into ``lake``'s tables as staged files (rows are never read)."""
    def files(table: str) -> Staged:
        adds = pa.table(scratch.table(table).get_add_actions(flatten=True))
        return copy_files(scratch.table_storage(table), lake.table_storage(table), table, adds,
                          f"{replay_id}-promote")

    return JobOutput(
        rows_in=scratch.dataset(schemas.BRONZE).count_rows(),
        quarantine=files(schemas.QUARANTINE), silver=files(schemas.SILVER),
        duplicates=files(schemas.DUPLICATES), minute=files(schemas.MINUTE),
        hourly=files(schemas.HOURLY), alerts=files(schemas.ALERTS),
        region=files(schemas.REGION) if scratch.is_active(schemas.REGION) else None)


@dataclass
class ExperimentResult:
    name: str
    scratch: Lake
    candidate: Ruleset
    baseline: str
    scope: Scope | None
    base_data: dict[str, Any] = field(repr=False)
    cand_data: dict[str, Any] = field(repr=False)

    def diff(self, table: str, sample: int = 10) -> TableDiff:
        return diff_data(table, self.base_data[table], self.cand_data[table], sample=sample)

    def summary(self, top: int = 10) -> dict[str, pa.Table]:
        data = {"minute_before": self.base_data[schemas.MINUTE],
                "alerts_before": self.base_data[schemas.ALERTS],
                "minute_after": self.cand_data[schemas.MINUTE],
                "alerts_after": self.cand_data[schemas.ALERTS]}
        if schemas.REGION in self.base_data or schemas.REGION in self.cand_data:
            empty = schemas.empty(schemas.REGION_SCHEMA)
            data["region_before"] = self.base_data.get(schemas.REGION, empty)
            data["region_after"] = self.cand_data.get(schemas.REGION, empty)
        return summarize(data, top)

    def connect(self) -> Any:
        """DuckDB with ``baseline_<table>`` and ``candidate_<table>`` registered."""
        con = self.scratch.storage.connect()
        for t in OUTPUTS:
            con.register(f"baseline_{t}", self.base_data[t])
            con.register(f"candidate_{t}", self.cand_data[t])
        return con


def _restricted(lake: Lake, scope: Scope | None) -> dict[str, Any]:
    tables = [*OUTPUTS, *(t for t in schemas.OPTIONAL_GOLD if lake.is_active(t))]
    if scope is None:
        return {t: lake.dataset(t) for t in tables}
    out = {}
    for t in tables:
        data = lake.read(t)
        out[t] = data.filter(scope.mask(data, t))
    return out


def _scope_kwargs(scope: Scope | None) -> dict[str, Any]:
    return {"start": scope.start, "end": scope.end, "tenants": list(scope.tenants)} if scope else {}


def run_experiment(lake: Lake, candidate: Ruleset, baseline: Ruleset | None, scope: Scope | None,
                   name: str | None, executor: Executor, run: Any) -> ExperimentResult:
    """Replay ``candidate`` into a scratch area; baseline = production (or ``baseline`` replayed)."""
    if lake.bronze_root:
        raise UsageError("an experiment runs on a production lake, not inside another experiment")
    name = check_name(name or default_name(candidate))
    scratch = lake.scratch(name)
    existing = scratch.commit_metadata(schemas.SILVER) if scratch.exists(schemas.SILVER) else {}
    fresh = (existing.get("ruleset_fingerprint") == candidate.fingerprint
             and not lake.data_changed(schemas.BRONZE, existing.get("bronze_version"))
             and existing.get("scope") == (scope.describe() if scope else None))
    if not fresh:
        if scratch.exists(schemas.SILVER):
            drop_experiment(lake, name)
            scratch = lake.scratch(name)
        run(scratch, candidate, mode="full", executor=executor, reason=f"experiment {name}",
            **_scope_kwargs(scope))
    prod_fp = lake.commit_metadata(schemas.MINUTE).get("ruleset_fingerprint") \
        if lake.exists(schemas.MINUTE) else None
    if baseline is None or baseline.fingerprint == prod_fp:
        if prod_fp is None:
            raise UsageError("the lake has no Gold yet: run a replay first or give --baseline")
        base_lake, label = lake, f"production ({prod_fp})"
    else:
        base_name = check_name(f"{name}.baseline")
        base_lake = lake.scratch(base_name)
        meta = base_lake.commit_metadata(schemas.SILVER) if base_lake.exists(schemas.SILVER) else {}
        if meta.get("ruleset_fingerprint") != baseline.fingerprint \
                or lake.data_changed(schemas.BRONZE, meta.get("bronze_version")):
            run(base_lake, baseline, mode="full", executor=executor,
                reason=f"experiment {name} baseline", **_scope_kwargs(scope))
        label = f"{baseline.name} ({baseline.fingerprint})"
    return ExperimentResult(name, scratch, candidate, label, scope,
                            _restricted(base_lake, scope), _restricted(scratch, None))
