"""dedup@1 (docs/semantics.md §3.2): the historical streaming dedup with a 10-minute horizon.

A copy is a duplicate iff the previous valid copy of its (tenant_id, event_id)
key in ingestion order, kept or not, was ingested at most ``horizon_seconds``
before it. Chains therefore extend the horizon: copies 8 minutes apart are all
duplicates of the first, however long the chain.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from rules._dedup import KEY, ORDER, split_duplicates
from rules.base import Rule, RuleParams

_IS_DUP = (f"coalesce(ingestion_timestamp - lag(ingestion_timestamp) OVER "
           f"(PARTITION BY {KEY} ORDER BY {ORDER}) <= to_microseconds($horizon_us), false)")


class Dedup(Rule):
    name = "dedup"
    version = 1
    layer = "silver"
    description = "SPEC 3.2: duplicate iff the previous copy was ingested <= 10 min before"

    class Params(RuleParams):
        horizon_seconds: int = 600

    @staticmethod
    def state_horizon(params: Dedup.Params) -> int | None:
        """Seconds after which a key's last copy no longer decides anything: a later copy is
        kept whatever came before (an incremental step looks up only keys seen since)."""
        return params.horizon_seconds

    @staticmethod
    def apply(params: Dedup.Params, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        silver, dups, _ = Dedup.apply_chunk(params, valid, None, None)
        return silver, dups

    @staticmethod
    def apply_chunk(params: Dedup.Params, valid: pa.Table, prior: pa.Table | None,
                    until: datetime | None) -> tuple[pa.Table, pa.Table, pa.Table | None]:
        """One ingestion-time chunk, after the ``prior`` state; returns the state to carry.

        A key can be forgotten once its last copy is more than the horizon before
        ``until``: any later copy is then kept whatever came before it.
        """
        return split_duplicates(
            valid, _IS_DUP, "dedup@1", {"horizon_us": params.horizon_seconds * 1_000_000},
            prior=prior, until=until,
            retain_sql="r.ingestion_timestamp >= $until - to_microseconds($horizon_us)")
