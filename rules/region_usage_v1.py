"""region_usage@1 (docs/semantics.md §8): requests per tenant, hour and data-residency region.

One row per (tenant_id, hour window_start, data_residency_region) with at least one
Silver event; NULL is its own region (events from before the schema v2 field).
The counts of disjoint sets of Silver rows add up, so the engine may apply the rule
to parts of a tenant's rows (ingestion-time chunks) and sum the parts per key.
"""

from __future__ import annotations

import pyarrow as pa

from engine.contract.sql import run_sql
from rules.base import Rule, RuleParams

SQL = """
SELECT tenant_id, date_trunc('hour', event_timestamp) AS window_start,
  date_trunc('hour', event_timestamp) + INTERVAL 1 HOUR AS window_end,
  data_residency_region,
  count(*)::BIGINT AS total_requests,
  count(*) FILTER (WHERE status_code >= 500)::BIGINT AS error_requests
FROM silver
GROUP BY ALL
"""


class RegionUsage(Rule):
    name = "region_usage"
    version = 1
    layer = "gold"
    description = "requests and errors per tenant, hour and data_residency_region (NULL: no region)"

    class Params(RuleParams):
        pass

    @staticmethod
    def apply(params: RegionUsage.Params, silver: pa.Table) -> pa.Table:
        """Silver rows -> region-hour counts (additive across disjoint parts of the rows)."""
        return run_sql(SQL, {"silver": silver})
