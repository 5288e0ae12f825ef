"""The transaction protocol of every multi-table write: begin, commit, abort, publish, recover.

Delta commits one table at a time; an operation of this engine (a replay, a step, a
rollback, an erasure, a lifecycle operation) changes several. One protocol makes each of
them all-or-nothing to readers and to recovery:

- :func:`begin` (a :class:`Transaction`): under the lake's lease, settle what dead
  processes left (:func:`recover`), then append a ``running`` ledger row naming the
  operation, its kind and every table's version before.
- :meth:`Transaction.commit`: check the lease (a process that lost it stops before writing,
  never after), make one Delta commit tagged with the operation id, and record the version
  it made.
- :meth:`Transaction.publish`: the operation's ledger row (and any row it settles, e.g. a
  rollback's target) changes in **one** ledger commit: that commit is the operation's
  commit point.
- :meth:`Transaction.abort` and :func:`recover`: undo exactly what the operation committed,
  by the policy of its kind (:data:`POLICY`), and end its row ``failed``.

**Tables shared with writers outside the lease.** Kafka ingest and file import append to
Bronze (and an import to the archive's Bronze) without the lease, with fenced single-table
appends (``Lake.append_fenced``: each checks its own offsets against the snapshot it commits
on). So Bronze is never restored: a RESTORE would drop their commits and not their Kafka
offsets (``txn`` application transactions are not rolled back by a restore), losing
messages for good. The only operations that change Bronze other than by appending are
neutral (optimize, vacuum, an archive's move: rows move, never change) or an erasure's
delete, which is forward-only (erased rows never come back). :func:`undo` restores the
lease-guarded tables only.

**Policy per kind** (what an abort, or a recovery after SIGKILL, does):

========== =================================================================================
replay     all tables committed: run the validation gate the process would have run, then
           publish (``success``) or undo (``failed``); otherwise undo every committed table
rollback   complete it: restore the tables it had not restored yet, then publish it and mark
           its target ``rolled_back``, in one ledger commit
erasure    forward-only on Bronze, its archive and quarantine (erased rows never return;
           their versions before become unreadable); undo Silver and Gold; ``failed``: run
           the erasure again (the tombstone stays, so no writer brings the rows back)
optimize,  neutral: rows only moved; nothing to undo; ``failed``
vacuum,
archive,
compaction
========== =================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.config import environment
from engine.contract import schemas
from engine.lake.lease import lease_for
from engine.lake.tables import Lake
from engine.txn import ledger

#: Tables that writers outside the lease append to: never restored (see the module docstring).
SHARED = frozenset({schemas.BRONZE})
#: Operations that only move rows: an interrupted one leaves nothing to undo.
NEUTRAL_KINDS = frozenset({"optimize", "vacuum", "archive", "compaction"})
#: Tables an erasure changes forward-only: its deletes are never undone.
ERASURE_FORWARD = frozenset({schemas.BRONZE, schemas.QUARANTINE})

POLICY = {
    "replay": "gate-then-publish, else undo",
    "rollback": "complete",
    "erasure": "forward-only on Bronze and quarantine, undo Silver and Gold",
    **{k: "neutral" for k in NEUTRAL_KINDS},
}


def undo(lake: Lake, before: dict[str, int], by: str, keep: frozenset[str] = frozenset()) -> list[str]:
    """Restore every lease-guarded table of ``before`` that moved to its version there;
    tables in :data:`SHARED` or ``keep`` are left as they are. Returns the tables restored."""
    restored = []
    for table, version in before.items():
        if table in SHARED or table in keep or not lake.exists(table):
            continue
        if lake.version(table) != version:
            lake.restore(table, version, by)
            restored.append(table)
    return restored


def versions_after(lake: Lake, kind: str, before: dict[str, int]) -> dict[str, Any]:
    """The versions an operation that did not complete leaves: every table's current one and,
    for an erasure, the floors of the tables its forward-only deletes changed (their versions
    before hold the erased rows: reading them is refused, docs/semantics.md §9)."""
    after: dict[str, Any] = {t: lake.version(t) for t in before}
    if kind == "erasure":
        after["readable_from"] = {t: after[t] for t in ERASURE_FORWARD
                                  if t in before and after[t] != before[t]}
    return after


def publish(lake: Lake, op_id: str, changes: dict[str, dict[str, Any]],
            add: list[dict[str, Any]] | None = None) -> None:
    """One ledger commit: the rows of ``changes`` (by id) changed and the rows of ``add``
    appended. An operation that settles another (a rollback, a recovery) says so here, in
    the same commit as its own outcome."""
    ledger.rewrite(lake, op_id, changes, add=add)


@dataclass
class Transaction:
    """One running multi-table operation: see the module docstring."""

    lake: Lake
    op_id: str
    kind: str
    lease: Any
    before: dict[str, int]
    #: table -> the versions this operation committed, in order
    created: dict[str, list[int]] = field(default_factory=dict)
    #: published (``success``) or aborted (``failed``): the row is final
    settled: bool = False

    def guard(self) -> None:
        """Raise if the lease was lost: call right before any commit the operation makes."""
        self.lease.check()

    def commit(self, table: str, make: Callable[[], int]) -> int:
        """Make one commit of ``table`` (``make`` commits and returns the version) under the
        lease, and record it."""
        self.guard()
        version = make()
        self.created.setdefault(table, []).append(version)
        return version

    def record(self, versions: dict[str, int]) -> None:
        """Record commits made through another path (e.g. a replay's per-table writer)."""
        for t, v in versions.items():
            if v not in self.created.get(t, []):
                self.created.setdefault(t, []).append(v)

    def abort(self, details: str, keep: frozenset[str] = frozenset(),
              **fields: Any) -> list[str]:
        """Undo what this operation committed (by its kind's policy) and end its row
        ``failed``. A process that lost the lease touches nothing: the new owner settles."""
        if self.settled or self.lease.lost:
            return []
        self.settled = True
        keep = keep | (ERASURE_FORWARD if self.kind == "erasure" else frozenset())
        restored = [] if self.kind in NEUTRAL_KINDS else undo(self.lake, self.before, self.op_id, keep)
        publish(self.lake, self.op_id, {self.op_id: {
            "status": "failed", "end_time": ledger.now(), **fields,
            "versions_after": json.dumps(versions_after(self.lake, self.kind, self.before)),
            "details": details[:500]}})
        return restored

    def finish(self, *, settles: dict[str, dict[str, Any]] | None = None, **fields: Any) -> None:
        """Publish: this operation's row ``success`` (with ``fields``), and the rows it
        settles, in one ledger commit, after a last check of the lease."""
        self.guard()
        publish(self.lake, self.op_id, {self.op_id: {"status": "success", "end_time": ledger.now(),
                                                     **fields}, **(settles or {})})
        self.settled = True


@contextmanager
def begin(lake: Lake, op_id: str, kind: str, tables: list[str] | tuple[str, ...], reason: str,
          operator: str, wait: float | None = None, **fields: Any) -> Iterator[Transaction]:
    """Take the lake's lease, settle dead operations (:func:`recover`), then :func:`start`."""
    with lease_for(lake, op_id, wait=environment().lease_wait if wait is None else wait) as lease:
        recover(lake, operator)
        with start(lake, lease, op_id, kind, tables, reason, operator, **fields) as tx:
            yield tx


@contextmanager
def start(lake: Lake, lease: Any, op_id: str, kind: str, tables: list[str] | tuple[str, ...],
          reason: str, operator: str, **fields: Any) -> Iterator[Transaction]:
    """Under ``lease`` (held by the caller), record a ``running`` row with every table's
    version before and yield the :class:`Transaction`. An exception aborts it (by its kind's
    policy) unless it was settled; leaving the block unsettled is the caller's error,
    aborted the same way."""
    before = {t: lake.version(t) for t in tables if lake.exists(t)}
    ledger.append(lake, {"reprocessing_id": op_id, "kind": kind, "start_time": ledger.now(),
                        "status": "running", "operator": operator, "reason": reason,
                        "tables": json.dumps(sorted(before)), "versions_before": json.dumps(before),
                        **{"mode": kind, **fields}})
    tx = Transaction(lake, op_id, kind, lease, before)
    try:
        yield tx
    except BaseException as exc:
        tx.abort(f"{type(exc).__name__}: {exc}")
        raise
    if not tx.settled:
        tx.abort("ended without publishing")
        raise RuntimeError(f"operation {op_id} ended without publishing")


def recover(lake: Lake, operator: str, reason: str = "recover an interrupted operation"
            ) -> list[dict[str, Any]]:
    """Settle every operation a dead process left ``running``, by its kind's policy (the
    caller holds the lake's lease). Returns what was done."""
    from engine.batch.recovery import settle

    return settle(lake, operator, reason)
