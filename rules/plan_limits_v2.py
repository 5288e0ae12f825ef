"""plan_limits@2 (docs/semantics.md §5): the free plan's limit raised from 60 to 100 requests/minute."""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field, NonNegativeInt

from rules.base import Rule, RuleParams
from rules.plan_limits_v1 import LIMITS_V1, apply_limits


class PlanLimits(Rule):
    name = "plan_limits"
    version = 2
    layer = "gold"
    description = "free 100, starter 300, professional 1000, enterprise 5000 requests/minute"

    class Params(RuleParams):
        limits: dict[str, NonNegativeInt] = Field(
            default_factory=lambda: {**LIMITS_V1, "free": 100}, min_length=1)

    @staticmethod
    def known_plans(params: PlanLimits.Params) -> frozenset[str]:
        return frozenset(params.limits)

    @staticmethod
    def apply(params: PlanLimits.Params, minutes: pa.Table) -> pa.Table:
        return apply_limits(params.limits, minutes)
