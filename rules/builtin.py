"""The built-in rule versions of docs/semantics.md §5 and §8 and the built-in rulesets."""

from __future__ import annotations

from rules import (
    abuse_v1,
    abuse_v2,
    burst_allowance_v1,
    dedup_v1,
    dedup_v2,
    plan_limits_v1,
    plan_limits_v2,
    region_usage_v1,
    validate_v1,
)

RULES = (
    validate_v1.Validate,
    dedup_v1.Dedup,
    dedup_v2.Dedup,
    plan_limits_v1.PlanLimits,
    plan_limits_v2.PlanLimits,
    burst_allowance_v1.BurstAllowance,
    abuse_v1.Abuse,
    abuse_v2.Abuse,
    region_usage_v1.RegionUsage,
)

#: Built-in rulesets: name -> {rule: version}.
RULESETS: dict[str, dict[str, int]] = {
    "2026-01": {"validate": 1, "dedup": 1, "plan_limits": 1, "abuse": 1},
    "2026-02": {"validate": 1, "dedup": 2, "plan_limits": 2, "burst_allowance": 1, "abuse": 1},
    # docs/semantics.md §8: 2026-02 + the residency region in Gold (a gold-layer change)
    "2026-03": {"validate": 1, "dedup": 2, "plan_limits": 2, "burst_allowance": 1, "abuse": 1,
                "region_usage": 1},
}
