"""Recovery: settle each operation a dead process left ``running``, by the policy of its kind
(:data:`engine.txn.POLICY`), each in one ledger commit with its ``recovery`` row."""

from __future__ import annotations

import json
from typing import Any

from engine.batch import audit, checks
from engine.contract import schemas
from engine.lake.tables import Lake
from engine.txn import ERASURE_FORWARD, NEUTRAL_KINDS, publish, undo, versions_after


def _versions(text: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads(text or "{}").items() if not isinstance(v, dict)}


def _gate(lake: Lake, row: dict[str, Any], committed: dict[str, int],
          before: dict[str, int]) -> list[str]:
    """The validation gate the dead process would have run over its commits; the names of
    the checks that failed (user checks given with ``--checks`` are not known here)."""
    mode = row["mode"]
    silver = committed.get(schemas.SILVER)
    meta = lake.commit_metadata(schemas.SILVER, silver) if silver is not None else {}
    results = checks.run_checks(lake, committed, row["bronze_version"],
                                mode != "gold" and lake.bronze_root is None, None, before,
                                standard=mode != "incremental",
                                archive_version=meta.get("archive_version"))
    return [r.name for r in results if not r.passed]


def _settle_one(lake: Lake, r: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], str]:
    """(the ledger changes that settle ``r``, what was done)."""
    rid, kind = r["reprocessing_id"], r["kind"]
    before = _versions(r["versions_before"])
    tables = [t for t in json.loads(r["tables"] or "[]") if t in before]
    before = {t: before[t] for t in tables}
    now = audit.now()
    if kind in NEUTRAL_KINDS:
        return ({rid: {"status": "failed", "end_time": now,
                       "details": "interrupted; neutral operation left as it was (run it again)"}},
                "marked failed (neutral operation, nothing to undo)")
    if kind == "rollback":
        restored = undo(lake, before, rid)
        changes = {rid: {"status": "success", "end_time": now,
                         "versions_after": json.dumps({t: lake.version(t) for t in tables}),
                         "details": f"completed by recovery: restored {len(restored)} table(s)"}}
        if r["target_id"]:
            changes[r["target_id"]] = {"status": "rolled_back"}
        return changes, "rollback completed"
    if kind == "erasure":
        restored = undo(lake, before, rid, keep=ERASURE_FORWARD)
        return ({rid: {"status": "failed", "end_time": now,
                       "versions_after": json.dumps(versions_after(lake, kind, before)),
                       "details": f"interrupted; its deletes stay, {len(restored)} derived table(s) "
                                  "restored: run the erasure again"}},
                f"erasure kept its deletes, restored {len(restored)} table(s)")
    committed = {t: audit.committed_by(lake, t, rid, before[t]) for t in tables}
    done = {t: v for t, v in committed.items() if v is not None}
    if tables and len(done) == len(tables) and all(lake.version(t) == v for t, v in done.items()):
        failed = _gate(lake, r, done, before)
        if not failed:
            return ({rid: {"status": "success", "end_time": now, "versions_after": json.dumps(done),
                           "details": "settled by recovery: every table committed and the "
                                      "validation gate passed"}},
                    "published (every table committed, gate passed)")
        why, note = f"the validation gate failed ({', '.join(failed)})", f"; gate failed: {failed}"
    else:
        why, note = f"{len(done)} of {len(tables)} table(s) committed", ""
    restored = undo(lake, before, rid)
    return ({rid: {"status": "failed", "end_time": now,
                   "versions_after": json.dumps({t: lake.version(t) for t in tables}),
                   "details": f"interrupted; {why}: recovery restored {len(restored)} table(s)"}},
            f"rolled back {len(restored)} of {len(tables)} tables{note}")


def settle(lake: Lake, operator: str, reason: str) -> list[dict[str, Any]]:
    """Settle every ``running`` operation but follower sessions (see
    :mod:`engine.live.follow`); the caller holds the lake's lease."""
    out = []
    for r in audit.rows(lake):
        if r["status"] != "running" or r["kind"] == "follow":
            continue
        started = audit.now()
        changes, outcome = _settle_one(lake, r)
        rid = r["reprocessing_id"]
        entry = {"reprocessing_id": f"{rid}.recovery", "kind": "recovery", "start_time": started,
                 "end_time": audit.now(), "status": "success", "operator": operator,
                 "target_id": rid, "tables": r["tables"], "versions_before": r["versions_before"],
                 "versions_after": changes[rid].get("versions_after"), "reason": reason,
                 "details": outcome}
        publish(lake, f"{rid}.recovery", changes, add=[entry])
        out.append({"replay_id": rid, "outcome": outcome})
    return out
