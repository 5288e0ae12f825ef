"""Shared SQL of the abuse rules."""

from __future__ import annotations

import pyarrow as pa

from engine.contract.sql import run_sql

SQL = """
SELECT tenant_id, 'abuse' AS alert_type, window_start AS alert_time, window_start, window_end,
  subscription_plan, total_requests, plan_limit, over_limit_count
FROM minutes
WHERE total_requests >= $multiplier * plan_limit
"""


def abuse_alerts(multiplier: float, minutes: pa.Table) -> pa.Table:
    return run_sql(SQL, {"minutes": minutes}, {"multiplier": multiplier})
