"""plan_limits@1 (docs/semantics.md §4.1, §5): per-minute request limits per plan.

The set of plans here is also the set ``validate`` accepts (``unknown_plan``).
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field, NonNegativeInt

from engine.contract.errors import RuleError
from engine.contract.sql import run_sql
from rules._plans import plan_table
from rules.base import Rule, RuleParams

LIMITS_V1 = {"free": 60, "starter": 300, "professional": 1000, "enterprise": 5000}

SQL = """
SELECT m.*, l.plan_limit, greatest(0, m.total_requests - l.plan_limit) AS raw_over
FROM minutes m JOIN limits l ON l.plan = m.subscription_plan
"""


def apply_limits(limits: dict[str, int], minutes: pa.Table) -> pa.Table:
    """Join each minute to its plan's limit; raw_over = max(0, total - limit)."""
    out = run_sql(SQL, {"minutes": minutes, "limits": plan_table(limits, "plan_limit")})
    if out.num_rows != minutes.num_rows:
        # Silver holds only known plans; this means Silver was built with another plan set.
        raise RuleError("minute rows with a plan unknown to plan_limits; replay Silver first")
    return out


class PlanLimits(Rule):
    name = "plan_limits"
    version = 1
    layer = "gold"
    description = "free 60, starter 300, professional 1000, enterprise 5000 requests/minute"

    class Params(RuleParams):
        limits: dict[str, NonNegativeInt] = Field(default_factory=lambda: dict(LIMITS_V1), min_length=1)

    @staticmethod
    def known_plans(params: PlanLimits.Params) -> frozenset[str]:
        return frozenset(params.limits)

    @staticmethod
    def apply(params: PlanLimits.Params, minutes: pa.Table) -> pa.Table:
        return apply_limits(params.limits, minutes)
