"""burst_allowance@1 (docs/semantics.md §4.1): a per-5-minute allowance absorbs overage.

5-minute tumbling windows aligned to the epoch. B is the allowance of the plan
of the 5-minute window's latest event; C(m) the running sum of raw_over up to
minute m; over_limit_count(m) = max(0, C(m) - B) - max(0, C(m) - raw_over(m) - B).
A plan missing from the allowance table has an allowance of 0 (no burst credit
is invented for plans the rule does not know).
"""

from __future__ import annotations

import pyarrow as pa
from pydantic import Field, NonNegativeInt

from engine.contract.sql import run_sql
from rules._plans import plan_table
from rules.base import Rule, RuleParams

W5 = 300_000_000  # microseconds

SQL = f"""
WITH w AS (
  SELECT *, epoch_us(window_start) AS e FROM minutes
), b AS (
  SELECT *, e - (((e % {W5}) + {W5}) % {W5}) AS w5 FROM w
), hot AS (
  -- only 5-minute windows with some overage need the running sums; most have none
  SELECT DISTINCT tenant_id, w5 FROM b WHERE raw_over > 0
), h AS (
  SELECT * FROM b SEMI JOIN hot USING (tenant_id, w5)
), c AS (
  SELECT *,
    sum(raw_over) OVER (PARTITION BY tenant_id, w5 ORDER BY window_start ROWS UNBOUNDED PRECEDING) AS c_m,
    arg_max(subscription_plan, latest) OVER (PARTITION BY tenant_id, w5) AS plan5
  FROM h
), x AS (
  SELECT c.*, coalesce(a.allowance, 0) AS allowance FROM c LEFT JOIN allow a ON a.plan = c.plan5
)
SELECT * EXCLUDE (e, w5, c_m, plan5, allowance),
  CAST(greatest(0, c_m - allowance) - greatest(0, c_m - raw_over - allowance) AS BIGINT) AS over_limit_count,
  CAST(raw_over - (greatest(0, c_m - allowance) - greatest(0, c_m - raw_over - allowance)) AS BIGINT)
    AS burst_allowance_used
FROM x
UNION ALL BY NAME
-- a window without overage: nothing over the limit, no allowance used, whatever the plan
SELECT * EXCLUDE (e, w5), 0::BIGINT AS over_limit_count, 0::BIGINT AS burst_allowance_used
FROM b ANTI JOIN hot USING (tenant_id, w5)
"""


class BurstAllowance(Rule):
    name = "burst_allowance"
    version = 1
    layer = "gold"
    description = "per 5 minutes: free 30, starter 150, professional 500, enterprise 2500"

    class Params(RuleParams):
        allowances: dict[str, NonNegativeInt] = Field(
            default_factory=lambda: {"free": 30, "starter": 150, "professional": 500, "enterprise": 2500},
            min_length=1)

    @staticmethod
    def apply(params: BurstAllowance.Params, minutes: pa.Table) -> pa.Table:
        """Minutes with raw_over and ``latest`` -> + over_limit_count, burst_allowance_used."""
        return run_sql(SQL, {"minutes": minutes, "allow": plan_table(params.allowances, "allowance")})
