"""dedup@1 (SPEC 3.2): the historical streaming dedup with a 10-minute horizon.

A copy is a duplicate iff the previous valid copy of its (tenant_id, event_id)
key in ingestion order, kept or not, was ingested at most ``horizon_seconds``
before it. Chains therefore extend the horizon: copies 8 minutes apart are all
duplicates of the first, however long the chain.
"""

from __future__ import annotations

import pyarrow as pa

from rules._dedup import KEY, ORDER, split_duplicates
from rules.base import Rule, RuleParams


class Dedup(Rule):
    name = "dedup"
    version = 1
    layer = "silver"
    description = "SPEC 3.2: duplicate iff the previous copy was ingested <= 10 min before"

    class Params(RuleParams):
        horizon_seconds: int = 600

    @staticmethod
    def apply(params: Dedup.Params, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        expr = (
            f"coalesce(ingestion_timestamp - lag(ingestion_timestamp) OVER "
            f"(PARTITION BY {KEY} ORDER BY {ORDER}) <= to_microseconds($horizon_us), false)"
        )
        return split_duplicates(valid, expr, "dedup@1", {"horizon_us": params.horizon_seconds * 1_000_000})
