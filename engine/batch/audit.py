"""The audit ledger (``reprocessing_audit``), recovery of interrupted replays, and rollback.

A replay touches up to six tables and Delta has no multi-table transaction, so
a replay is made atomic by bookkeeping: before the first commit, the ledger
holds a ``running`` row with every table's version before; every commit
carries the replay id; after the last commit the row says ``success`` with the
versions after. :func:`recover` finds ``running`` rows left by dead drivers and
settles each: every table committed -> ``success``; a mix -> the committed ones
are restored to their version before and the row says ``failed``. Rollback
restores every table of a replay to its version before, as its own entry.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.tables import Lake, is_neutral

AUDIT_SCHEMA = schemas.AUDIT_SCHEMA

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


def now() -> datetime:
    return datetime.now(UTC)


def read(lake: Lake) -> pa.Table:
    if not lake.exists(schemas.AUDIT):
        return AUDIT_SCHEMA.empty_table()
    return lake.read(schemas.AUDIT).sort_by("start_time")


def rows(lake: Lake) -> list[dict[str, Any]]:
    return read(lake).to_pylist()


def get(lake: Lake, rid: str) -> dict[str, Any] | None:
    for r in rows(lake):
        if r["reprocessing_id"] == rid:
            return r
    return None


def _meta(rid: str, op: str) -> dict[str, Any]:
    return {"replay_id": rid, "op": op}


def append(lake: Lake, row: dict[str, Any]) -> None:
    full = {f.name: row.get(f.name) for f in AUDIT_SCHEMA}
    lake.write(schemas.AUDIT, pa.Table.from_pylist([full], schema=AUDIT_SCHEMA), mode="append",
               metadata=_meta(row["reprocessing_id"], "audit-append"))


def update(lake: Lake, rid: str, **changes: Any) -> None:
    """Rewrite the (small) ledger with one row changed: one commit, no SQL strings."""
    if not _rewrite(lake, rid, {rid: changes}, drop=None):
        raise UsageError(f"no ledger entry {rid}")


def rewrite(lake: Lake, op: str, changes: dict[str, dict[str, Any]],
            add: list[dict[str, Any]] | None = None) -> None:
    """Change rows (by id) and append ``add``, all in one ledger commit (the commit point of
    an operation that settles others: :func:`engine.txn.publish`)."""
    missing = set(changes) - {r["reprocessing_id"] for r in read(lake).to_pylist()}
    if missing:
        raise UsageError(f"no ledger entry {', '.join(sorted(missing))}")
    _rewrite(lake, op, changes, drop=None, add=add)


def _rewrite(lake: Lake, op: str, changes: dict[str, dict[str, Any]], drop: str | None,
             add: list[dict[str, Any]] | None = None) -> bool:
    """Overwrite the ledger in one commit with rows changed (by id), one row dropped and
    rows appended. Returns whether any row was changed."""
    out, hit = [], False
    for r in read(lake).to_pylist():
        if r["reprocessing_id"] == drop:
            continue
        if r["reprocessing_id"] in changes:
            r.update(changes[r["reprocessing_id"]])
            hit = True
        out.append(r)
    out += [{f.name: row.get(f.name) for f in AUDIT_SCHEMA} for row in add or []]
    if hit or drop is not None or add:
        lake.write(schemas.AUDIT, pa.Table.from_pylist(out, schema=AUDIT_SCHEMA), mode="overwrite",
                   metadata=_meta(op, "audit-update" if drop is None else "audit-fold-step"))
    return hit


def _committed_by(lake: Lake, table: str, rid: str, before: int) -> int | None:
    """The version of ``table`` that replay ``rid`` committed after ``before``, if any."""
    for entry in lake.history(table):
        v = entry.get("version")
        if v is not None and v > before and entry.get("medallion.replay_id") == rid \
                and entry.get("operation") != "RESTORE":
            return int(v)
    return None


def recover(lake: Lake, operator: str, reason: str = "recover an interrupted operation"
            ) -> list[dict[str, Any]]:
    """Settle every operation a dead process left ``running`` (see :mod:`engine.txn`)."""
    from engine.txn import recover as settle

    return settle(lake, operator, reason)


def _changed_by_more_than_steps(lake: Lake, table: str, since: int) -> bool:
    """Whether a commit after ``since`` changed ``table`` other than an incremental step.

    Steps only fold rows appended to Bronze since: rolling back the replay before them
    restores its versions before, and the next step folds everything appended since with
    the ruleset active again (docs/semantics.md §11), so they never block a rollback."""
    if not lake.data_changed(table, since):
        return False
    latest = lake.version(table)
    assert latest is not None
    for entry in lake.history(table, max(1, latest - since)):
        v = entry.get("version")
        if v is None or v <= since or is_neutral(entry):
            continue
        if entry.get("medallion.mode") != "incremental":
            return True
    return False


def fold_step(lake: Lake, step_id: str, session_id: str, **session: Any) -> None:
    """Drop a follower's successful step row and update its session row, in one commit: the
    ledger keeps one row per follower session, not one per step."""
    _rewrite(lake, session_id, {session_id: session}, drop=step_id)


#: Why an operation of each kind other than a replay cannot be rolled back.
_WHY_NOT = {
    "erasure": "an erasure is irreversible by design (docs/semantics.md §9: time travel and "
               "rollback to a version from before it are refused)",
    "rollback": "a rollback is not itself rolled back; run the rolled-back replay's ruleset "
                "again ('replay run --ruleset ...')",
    "follow": "a follower's steps only fold new Bronze rows; roll back the replay they followed",
    "vacuum": "vacuum removed files; nothing of it can be restored",
    "optimize": "optimize changed where rows are stored, never which rows (docs/semantics.md §10)",
    "compaction": "compaction changed where rows are stored, never which rows "
                  "(docs/semantics.md §10)",
    "archive": "archived rows are still read as part of Bronze (docs/semantics.md §10)",
    "recovery": "a recovery settled an interrupted operation; roll back that operation instead",
}


def rollback(lake: Lake, rid: str, reason: str, operator: str, new_id: str) -> dict[str, Any]:
    """Restore every table of replay ``rid`` to its version before, in one audited operation."""
    if not _ID.match(rid):
        raise UsageError(f"{rid!r} is not a replay id (see 'replay history')")
    r = get(lake, rid)
    if r is None:
        raise UsageError(f"no operation {rid} in the ledger (see 'replay history')")
    if r["kind"] != "replay":
        kind = str(r["kind"])
        raise UsageError(f"{rid} is {'an' if kind[:1] in 'aeiou' else 'a'} {kind} operation, not a "
                         f"replay: {_WHY_NOT.get(kind, 'only replays can be rolled back')}")
    if r["status"] != "success":
        raise UsageError(f"replay {rid} is {r['status']}; only a successful replay can be rolled back")
    tables = json.loads(r["tables"] or "[]")
    before = {k: int(v) for k, v in json.loads(r["versions_before"]).items()}
    after = {k: int(v) for k, v in json.loads(r["versions_after"]).items()}
    for t in tables:
        lake.check_readable(t, before[t])
    moved = [t for t in tables if _changed_by_more_than_steps(lake, t, after[t])]
    if moved:
        raise UsageError(f"cannot roll back {rid}: {', '.join(moved)} changed since (a later replay); "
                         "roll that one back first")
    start = now()
    append(lake, {"reprocessing_id": new_id, "kind": "rollback", "start_time": start,
                  "status": "running", "operator": operator, "reason": reason, "target_id": rid,
                  "tables": json.dumps(tables), "versions_before": json.dumps(before),
                  "layer": r["layer"], "mode": "rollback"})
    for t in tables:
        lake.restore(t, before[t], new_id)
    versions = {t: lake.version(t) for t in tables}
    # published in one ledger commit: the rollback succeeded and its target is rolled back
    rewrite(lake, new_id, {new_id: {"status": "success", "end_time": now(),
                                    "versions_after": json.dumps(versions)},
                           rid: {"status": "rolled_back"}})
    return {"rollback_id": new_id, "replay_id": rid, "restored": before, "versions": versions}
