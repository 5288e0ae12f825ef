"""abuse@1 (docs/semantics.md §4.3): an `abuse` alert where total_requests >= 10 x plan_limit."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from rules._abuse import abuse_alerts
from rules.base import Rule, RuleParams


class Abuse(Rule):
    name = "abuse"
    version = 1
    layer = "gold"
    description = "abuse alert at total_requests >= 10 x plan_limit (inclusive)"

    class Params(RuleParams):
        multiplier: float = Field(default=10, gt=0)

    @staticmethod
    def apply(params: Abuse.Params, minutes: pa.Table) -> pa.Table:
        return abuse_alerts(params.multiplier, minutes)
