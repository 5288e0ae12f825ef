"""What readers may see, from the ledger: a snapshot no operation is half-way through, the
oldest readable version of a table, and the archive Bronze is read with. The lake and query
layers ask here; only the transaction protocol reads the ledger."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pyarrow.compute as pc

from engine.contract import schemas
from engine.lake.tables import Lake
from engine.txn import ledger


def readable_from(lake: Lake, table: str) -> tuple[int, str] | None:
    """The oldest version of ``table`` that may still be read, and what removed the older
    ones: a vacuum past its retention, or an erasure (docs/semantics.md §9; an erasure that
    did not complete still recorded the floors of its forward-only deletes)."""
    if table == schemas.AUDIT or not lake.exists(schemas.AUDIT):
        return None
    flt = pc.field("kind").isin(["vacuum", "erasure"]) & pc.field("status").isin(["success", "failed"])
    rows = lake.read(schemas.AUDIT, columns=["reprocessing_id", "kind", "end_time", "versions_after"],
                     filter=flt).to_pylist()
    best: tuple[int, str] | None = None
    for r in rows:
        floor = (json.loads(r["versions_after"] or "{}").get("readable_from") or {}).get(table)
        if floor is not None and (best is None or floor > best[0]):
            when = r["end_time"].strftime("%Y-%m-%d %H:%M UTC") if r["end_time"] else "?"
            best = (int(floor), f"{r['kind']} {r['reprocessing_id']} ({when})")
    return best


def last_archive(lake: Lake) -> tuple[str, date, str] | None:
    """(location, cutoff, operation id) of the lake's last successful archive, or None: the
    archive's ledger row is its switch."""
    if not lake.exists(schemas.AUDIT):
        return None
    flt = (pc.field("kind") == "archive") & (pc.field("status") == "success")
    rows = lake.read(schemas.AUDIT, columns=["reprocessing_id", "end_time", "target_id", "details"],
                     filter=flt).to_pylist()
    if not rows:
        return None
    last = max(rows, key=lambda r: r["end_time"])
    return (last["target_id"], date.fromisoformat(json.loads(last["details"])["cutoff"]),
            last["reprocessing_id"])


def consistent_versions(lake: Lake, tables: tuple[str, ...]) -> dict[str, int]:
    """A snapshot of ``tables`` no operation is half-way through: each table's latest version,
    except the tables of an operation that may have been committing while the versions were
    read, which are read at their version before it. So readers never see Silver and Gold of
    different rulesets mixed while a replay commits table after table.

    The ledger is read before and after the versions: an operation ``running`` in either, or
    that started or ended in between, is pinned to its versions before (its ``running`` row is
    written before its first commit and is published after its last)."""
    versions = {t: v for t in tables if t != schemas.AUDIT and (v := lake.version(t)) is not None}
    if not lake.exists(schemas.AUDIT):
        return versions
    first = {r["reprocessing_id"]: r for r in ledger.rows(lake)}
    pinned = {t: v for t in tables if t != schemas.AUDIT and (v := lake.version(t)) is not None}
    second = {r["reprocessing_id"]: r for r in ledger.rows(lake)}
    for rid in first.keys() | second.keys():  # a follower's step row is gone once it succeeded
        r: dict[str, Any] = second.get(rid) or first[rid]
        before = first.get(rid)
        if r["kind"] == "follow":
            continue
        moving = (r["status"] == "running" or before is None or rid not in second
                  or before["status"] != r["status"])
        if not moving:
            continue
        for t, v in json.loads(r["versions_before"] or "{}").items():
            if t in pinned and isinstance(v, int) and v <= pinned[t]:
                pinned[t] = v
    return pinned
