"""Every Delta table a lake holds (its own, its experiment areas', its archives') and the
bookkeeping every lifecycle operation shares: the lease, a ledger row, neutral commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from deltalake import CommitProperties

from engine import txn
from engine.batch.apply import operator_name
from engine.batch.experiment import list_experiments
from engine.batch.plan import new_replay_id
from engine.contract import schemas
from engine.lake.bronze import archive_of
from engine.lake.tables import Lake, encode_metadata

#: Tables of the lake besides those of docs/semantics.md: the erasure tombstones and the lease.
TOMBSTONES = schemas.ERASURES
LEASE_TABLE = "_medallion_lease"
#: the lease a `replay follow` process holds for its life (object-store lakes)
FOLLOWER_LEASE_TABLE = "_medallion_follower"
LEASE_TABLES = (LEASE_TABLE, FOLLOWER_LEASE_TABLE)
LAKE_TABLES = (*schemas.ALL_TABLES, schemas.AUDIT, TOMBSTONES, *LEASE_TABLES, schemas.DEDUP_STATE)
AREA_TABLES = (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES, schemas.REGION, schemas.AUDIT)


@dataclass(frozen=True)
class TableRef:
    """One Delta table somewhere under (or registered with) the lake."""

    label: str  # e.g. "silver_api_usage", "_experiments/x/silver_api_usage", "archive:bronze_api_usage"
    lake: Lake
    table: str


def all_tables(lake: Lake) -> list[TableRef]:
    """Every existing Delta table: the lake's, each experiment area's and the archive's."""
    out = [TableRef(t, lake, t) for t in LAKE_TABLES if lake.exists(t)]
    for exp in list_experiments(lake):
        area = lake.scratch(exp["name"])
        out += [TableRef(f"_experiments/{exp['name']}/{t}", area, t) for t in AREA_TABLES
                if area.exists(t)]
    arch = archive_of(lake)
    if arch is not None and arch.lake.exists(schemas.BRONZE):
        out.append(TableRef(f"archive:{arch.lake.root}", arch.lake, schemas.BRONZE))
    return out


def neutral_commit(op: str, op_id: str) -> CommitProperties:
    """Commit properties of a lifecycle commit that moves rows without changing them (docs/semantics.md §10)."""
    return CommitProperties(custom_metadata=encode_metadata(
        {"op": op, "replay_id": op_id, "neutral": "true"}))


@contextmanager
def lifecycle_operation(lake: Lake, kind: str, reason: str, *, tables: list[str] | None = None,
                        **fields: Any) -> Iterator[tuple[str, Callable[..., None], Callable[[], None]]]:
    """One transaction of kind ``kind`` (:mod:`engine.txn`): lease, a ``running`` ledger row
    that ends ``success`` or ``failed`` (never ``running``), undone by its kind's policy.

    Yields (operation id, ``finish(**fields)``, the lease's ``check``); fields passed to
    ``finish`` land in the row when it is published.
    """
    done: dict[str, Any] = {}
    with txn.begin(lake, new_replay_id(), kind, tables or [], reason, operator_name(),
                   **fields) as tx:
        yield tx.op_id, done.update, tx.guard
        tx.finish(**done)
