"""The fold of docs/semantics.md §3-§4: Bronze rows -> Silver -> Gold, through a ruleset's plugins.

Pure functions over Arrow tables. The executors call them inside shard workers;
a shard must hold every event of its tenants (dedup and windows are per tenant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.sql import run_sql
from rules.base import Registry
from rules.registry import default_registry
from rules.ruleset import Ruleset

FOLD_VERSION = 1
"""The version of the fold's own SQL and merging (minutes, hourly, alerts, chunk merges).

Bump it whenever a change here changes any output row (a rule change is a new rule version
instead): plans then see every Silver and Gold table built by the previous fold as stale
(``silver_fingerprint`` and the ``fold_version`` of Gold's commits), and the golden files of
tests/unit/test_golden_outputs.py are recorded anew for the new version.
"""

#: Greatest (event_timestamp, event_id); ties of both broken by ingestion order, latest wins.
LATEST = ("struct_pack(ts := event_timestamp, id := event_id, i := ingestion_timestamp, "
          "t := kafka_topic, p := kafka_partition, o := kafka_offset)")

#: Minutes are grouped as whole microseconds since the epoch (floored: a floor division that
#: is right for instants before 1970 too) and turned back into instants once per group: the
#: same windows as ``date_trunc`` on the UTC timestamp, at a third of its cost.
MINUTES_SQL = f"""
SELECT tenant_id, make_timestamptz(m) AS window_start,
  make_timestamptz(m + 60000000) AS window_end,
  subscription_plan, latest, total_requests, error_requests
FROM (
  SELECT tenant_id, us - ((us % 60000000) + 60000000) % 60000000 AS m,
    arg_max(subscription_plan, {LATEST}) AS subscription_plan,
    max({LATEST}) AS latest,
    count(*)::BIGINT AS total_requests,
    count(*) FILTER (WHERE status_code >= 500)::BIGINT AS error_requests
  FROM (SELECT *, epoch_us(event_timestamp) AS us FROM silver)
  GROUP BY ALL
)
"""

HOURLY_SQL = """
SELECT tenant_id, make_timestamptz(h) AS window_start, subscription_plan, total_requests,
  error_requests, over_limit_count, over_limit_minutes, burst_allowance_used
FROM (
  SELECT tenant_id, us - ((us % 3600000000) + 3600000000) % 3600000000 AS h,
    arg_max(subscription_plan, latest) AS subscription_plan,
    sum(total_requests)::BIGINT AS total_requests,
    sum(error_requests)::BIGINT AS error_requests,
    sum(over_limit_count)::BIGINT AS over_limit_count,
    count(*) FILTER (WHERE over_limit_count > 0)::BIGINT AS over_limit_minutes,
    sum(burst_allowance_used)::BIGINT AS burst_allowance_used
  FROM (SELECT *, epoch_us(window_start) AS us FROM minutes)
  GROUP BY ALL
)
"""

#: Partial 1-minute aggregates of several chunks -> one row per minute (all are mergeable).
MERGE_MINUTES_SQL = """
SELECT tenant_id, window_start, any_value(window_end) AS window_end,
  arg_max(subscription_plan, latest) AS subscription_plan, max(latest) AS latest,
  sum(total_requests)::BIGINT AS total_requests, sum(error_requests)::BIGINT AS error_requests
FROM parts
GROUP BY ALL
"""

#: Partial region-hour counts of several chunks -> one row per key (counts add; NULL is a region).
MERGE_REGION_SQL = """
SELECT tenant_id, window_start, any_value(window_end) AS window_end, data_residency_region,
  sum(total_requests)::BIGINT AS total_requests, sum(error_requests)::BIGINT AS error_requests
FROM parts
GROUP BY ALL
"""

OVER_LIMIT_SQL = """
SELECT tenant_id, 'over_limit' AS alert_type, window_start AS alert_time, window_start, window_end,
  subscription_plan, total_requests, plan_limit, over_limit_count
FROM minutes WHERE over_limit_count > 0
"""


@dataclass(frozen=True)
class Compiled:
    """A ruleset resolved against a registry: rule classes with typed params."""

    ruleset: Ruleset
    registry: Registry

    @classmethod
    def of(cls, ruleset: Ruleset, registry: Registry | None = None) -> Compiled:
        reg = registry or default_registry()
        for ref in ruleset.rules:
            ref.rule(reg)  # fail early on unknown rules
        return cls(ruleset, reg)

    def _slot(self, slot: str):  # -> tuple[type[Rule], RuleParams] | None
        ref = self.ruleset.get(slot)
        if ref is None:
            return None
        return ref.rule(self.registry), ref.typed_params(self.registry)

    @property
    def known_plans(self) -> frozenset[str]:
        rule, params = self._slot("plan_limits")
        return frozenset(rule.known_plans(params))

    def validate(self, bronze: pa.Table) -> tuple[pa.Table, pa.Table]:
        rule, params = self._slot("validate")
        return rule.apply(params, bronze, self.known_plans)

    def dedup(self, valid: pa.Table) -> tuple[pa.Table, pa.Table]:
        rule, params = self._slot("dedup")
        return rule.apply(params, valid)

    @property
    def can_chunk(self) -> bool:
        """Whether the dedup rule can run over ingestion-time chunks with carried state."""
        rule, _ = self._slot("dedup")
        return hasattr(rule, "apply_chunk")

    @property
    def dedup_horizon(self) -> int | None:
        """Seconds after which a key's last copy stops mattering to the dedup rule (None: never;
        a rule without ``state_horizon`` is taken to remember every key)."""
        rule, params = self._slot("dedup")
        fn = getattr(rule, "state_horizon", None)
        return None if fn is None else int(fn(params))

    def dedup_chunk(self, valid: pa.Table, prior: pa.Table | None,
                    until: Any) -> tuple[pa.Table, pa.Table, pa.Table | None]:
        rule, params = self._slot("dedup")
        if isinstance(until, pa.Scalar):
            until = until.as_py()
        return rule.apply_chunk(params, valid, prior, until)

    @property
    def has_region(self) -> bool:
        """Whether the ruleset makes ``tenant_usage_region_hourly`` (docs/semantics.md §8)."""
        return self.ruleset.get("region_usage") is not None

    def region(self, silver: pa.Table) -> pa.Table | None:
        """Silver rows -> partial region-hour counts (None: the ruleset has no region rule)."""
        slot = self._slot("region_usage")
        if slot is None:
            return None
        return schemas.conform(slot[0].apply(slot[1], silver), schemas.REGION_SCHEMA)

    @staticmethod
    def merge_region(parts: list[pa.Table]) -> pa.Table:
        if len(parts) == 1:
            return parts[0]
        merged = run_sql(MERGE_REGION_SQL, {"parts": pa.concat_tables(parts)})
        return schemas.conform(merged, schemas.REGION_SCHEMA)

    @staticmethod
    def minutes(silver: pa.Table) -> pa.Table:
        """Silver rows -> 1-minute counts and latest event (mergeable across chunks)."""
        return run_sql(MINUTES_SQL, {"silver": silver})

    @staticmethod
    def merge_minutes(parts: list[pa.Table]) -> pa.Table:
        if len(parts) == 1:
            return parts[0]
        return run_sql(MERGE_MINUTES_SQL, {"parts": pa.concat_tables(parts)})

    def gold(self, silver: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Silver rows (all events of their tenants) -> (1-minute, hourly, alerts)."""
        return self.gold_from_minutes(self.minutes(silver))

    def gold_from_minutes(self, minutes: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
        """Merged 1-minute counts of every event of their tenants -> (1-minute, hourly, alerts)."""
        rule, params = self._slot("plan_limits")
        minutes = rule.apply(params, minutes)
        burst = self._slot("burst_allowance")
        if burst is None:
            minutes = minutes.append_column("over_limit_count", minutes.column("raw_over"))
            minutes = minutes.append_column(
                "burst_allowance_used", pa.array([0] * minutes.num_rows, pa.int64()))
        else:
            minutes = burst[0].apply(burst[1], minutes)
        hourly = run_sql(HOURLY_SQL, {"minutes": minutes})
        alerts = [run_sql(OVER_LIMIT_SQL, {"minutes": minutes})]
        abuse = self._slot("abuse")
        if abuse is not None:
            alerts.append(abuse[0].apply(abuse[1], minutes))
        alerts_t = pa.concat_tables([schemas.conform(a, schemas.ALERTS_SCHEMA) for a in alerts])
        return (
            schemas.conform(minutes, schemas.MINUTE_SCHEMA),
            schemas.conform(hourly, schemas.HOURLY_SCHEMA),
            alerts_t,
        )


def bucket_of(tenant: pa.ChunkedArray | pa.Array, n: int) -> pa.Array:
    """Deterministic shard number of each tenant (stable across processes and runs)."""
    t = pa.table({"tenant_id": tenant})
    out = run_sql("SELECT (hash(tenant_id) % $n)::INTEGER AS b FROM t", {"t": t}, {"n": n})
    return out.column("b").combine_chunks()


def split_buckets(table: pa.Table, n: int) -> list[pa.Table]:
    if n == 1:
        return [table]
    b = bucket_of(table.column("tenant_id"), n)
    return [table.filter(pc.equal(b, i)) for i in range(n)]
