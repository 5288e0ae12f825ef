"""dedup@2 (SPEC 3.2): the fix — every copy after the first in ingestion order is a duplicate."""

from __future__ import annotations

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
        expr = f"row_number() OVER (PARTITION BY {KEY} ORDER BY {ORDER}) > 1"
        return split_duplicates(valid, expr, "dedup@2")
