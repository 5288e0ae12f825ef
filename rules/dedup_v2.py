"""dedup@2 (docs/semantics.md §3.2): the fix — every copy after the first in ingestion order is a duplicate."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from rules._dedup import KEY, ORDER, split_duplicates
from rules.base import Rule, RuleParams


class Dedup(Rule):
    name = "dedup"
    version = 2
    layer = "silver"
    description = "SPEC 3.2: global dedup, the first copy in ingestion order is kept"

    class Params(RuleParams):
        pass

    @staticmethod
    def apply(params: Dedup.Params, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        silver, dups, _ = Dedup.apply_chunk(params, valid, None, None)
        return silver, dups

    @staticmethod
    def apply_chunk(params: Dedup.Params, valid: pa.Table, prior: pa.Table | None,
                    until: datetime | None) -> tuple[pa.Table, pa.Table, pa.Table | None]:
        """One ingestion-time chunk, after the ``prior`` state; returns the state to carry.

        Global dedup never forgets a key: its state is one small row per key ever kept
        (key and lineage, no payload), the only part of a chunked shard that grows with history.
        """
        expr = f"row_number() OVER (PARTITION BY {KEY} ORDER BY {ORDER}) > 1"
        return split_duplicates(valid, expr, "dedup@2", prior=prior, until=until)
