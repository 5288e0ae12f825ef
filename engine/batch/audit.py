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
from typing import Any

from engine.contract.errors import UsageError
from engine.lake.tables import Lake, is_neutral
from engine.txn.ledger import (  # noqa: F401  (the ledger, as this module's callers know it)
    AUDIT_SCHEMA,
    ID_PATTERN,
    append,
    committed_by,
    fold_step,
    get,
    now,
    read,
    rewrite,
    rows,
    update,
)


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
    if not ID_PATTERN.match(rid):
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
