"""The ledger (``reprocessing_audit``): one row per operation, its kind, status and the
versions it moved. The transaction protocol (:mod:`engine.txn.protocol`) writes it; every
change is one Delta commit of the (small) table, made by the lake's lease holder."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.tables import Lake

AUDIT_SCHEMA = schemas.AUDIT_SCHEMA

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")


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


def committed_by(lake: Lake, table: str, rid: str, before: int) -> int | None:
    """The version of ``table`` that replay ``rid`` committed after ``before``, if any."""
    for entry in lake.history(table):
        v = entry.get("version")
        if v is not None and v > before and entry.get("medallion.replay_id") == rid \
                and entry.get("operation") != "RESTORE":
            return int(v)
    return None


def fold_step(lake: Lake, step_id: str, session_id: str, **session: Any) -> None:
    """Drop a follower's successful step row and update its session row, in one commit: the
    ledger keeps one row per follower session, not one per step."""
    _rewrite(lake, session_id, {session_id: session}, drop=step_id)
