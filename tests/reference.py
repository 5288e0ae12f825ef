"""An independent, row-by-row Python implementation of docs/semantics.md §3-§4 and §8, for tests only.

It shares nothing with the engine's fold but the strict per-message validator
(``rules._event.strict_validate``, itself checked against docs/semantics.md edge by edge): dedup,
minutes, burst windows, hourly rows and alerts are written here again, plainly, from
the text of docs/semantics.md. Slow by design; used on small histories.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rules._event import strict_validate

US = 1_000_000
MINUTE = 60 * US
HOUR = 60 * MINUTE
W5 = 5 * MINUTE
LIMITS = {1: {"free": 60, "starter": 300, "professional": 1000, "enterprise": 5000},
          2: {"free": 100, "starter": 300, "professional": 1000, "enterprise": 5000}}
ALLOWANCE = {"free": 30, "starter": 150, "professional": 500, "enterprise": 2500}
RULESETS = {"2026-01": {"dedup": 1, "limits": 1, "burst": False, "abuse": 10},
            "2026-02": {"dedup": 2, "limits": 2, "burst": True, "abuse": 10},
            "2026-03": {"dedup": 2, "limits": 2, "burst": True, "abuse": 10, "region": True}}


def fold(bronze: list[dict[str, Any]], ruleset: str) -> dict[str, set[tuple]]:
    """Bronze rows (dicts with ``ingestion_us``) -> each table as a set of tuples."""
    rs = RULESETS[ruleset]
    limits = LIMITS[rs["limits"]]
    valid, quarantine = [], set()
    for b in bronze:
        reason, vals = strict_validate(b["raw_payload"], b["ingestion_us"], frozenset(limits), HOUR)
        lin = (b["kafka_topic"], b["kafka_partition"], b["kafka_offset"], b["ingestion_us"])
        if reason is None:
            valid.append({**vals, "lin": lin})
        else:
            quarantine.add((*lin, reason))
    # docs/semantics.md §3.2, in ingestion order
    valid.sort(key=lambda v: (v["lin"][3], v["lin"][0], v["lin"][1], v["lin"][2]))
    prev_ing: dict[tuple, int] = {}
    kept: dict[tuple, tuple] = {}
    silver, dups = [], set()
    for v in valid:
        key = (v["tenant_id"], v["event_id"])
        ing = v["lin"][3]
        if rs["dedup"] == 1:
            is_dup = key in prev_ing and ing - prev_ing[key] <= 10 * MINUTE
        else:
            is_dup = key in kept
        prev_ing[key] = ing
        if is_dup:
            dups.add((*v["lin"], *kept[key]))
        else:
            kept[key] = v["lin"]
            silver.append(v)
    # docs/semantics.md §4.1: minutes
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for v in silver:
        groups[(v["tenant_id"], v["event_timestamp_us"] // MINUTE * MINUTE)].append(v)

    def latest(rows: list[dict]) -> dict:
        return max(rows, key=lambda v: (v["event_timestamp_us"], v["event_id"], v["lin"][3],
                                        v["lin"][0], v["lin"][1], v["lin"][2]))

    minutes = {}
    for (tenant, ws), rows in groups.items():
        top = latest(rows)
        total = len(rows)
        minutes[(tenant, ws)] = {
            "plan": top["subscription_plan"], "latest": top, "total": total,
            "errors": sum(1 for r in rows if r["status_code"] >= 500),
            "limit": limits[top["subscription_plan"]],
            "raw": max(0, total - limits[top["subscription_plan"]])}
    windows: dict[tuple, list[tuple]] = defaultdict(list)
    for tenant, ws in minutes:
        windows[(tenant, ws // W5 * W5)].append((tenant, ws))
    for members in windows.values():
        members.sort()
        if not rs["burst"]:
            for k in members:
                minutes[k]["over"], minutes[k]["used"] = minutes[k]["raw"], 0
            continue
        plan5 = latest([minutes[k]["latest"] for k in members])["subscription_plan"]
        allowance = ALLOWANCE.get(plan5, 0)
        c = 0
        for k in members:
            m = minutes[k]
            c += m["raw"]
            m["over"] = max(0, c - allowance) - max(0, c - m["raw"] - allowance)
            m["used"] = m["raw"] - m["over"]
    minute_rows = {(t, ws, ws + MINUTE, m["plan"], m["total"], m["errors"], m["limit"], m["over"],
                    m["used"]) for (t, ws), m in minutes.items()}
    # docs/semantics.md §4.2
    hours: dict[tuple, list[dict]] = defaultdict(list)
    for (t, ws), m in minutes.items():
        hours[(t, ws // HOUR * HOUR)].append(m)
    hourly = {(t, hs, latest([m["latest"] for m in ms])["subscription_plan"],
               sum(m["total"] for m in ms), sum(m["errors"] for m in ms),
               sum(m["over"] for m in ms), sum(1 for m in ms if m["over"] > 0),
               sum(m["used"] for m in ms)) for (t, hs), ms in hours.items()}
    # docs/semantics.md §4.3
    alerts = set()
    for (t, ws), m in minutes.items():
        row = (ws, ws, ws + MINUTE, m["plan"], m["total"], m["limit"], m["over"])
        if m["over"] > 0:
            alerts.add((t, "over_limit", *row))
        if m["total"] >= rs["abuse"] * m["limit"]:
            alerts.add((t, "abuse", *row))
    # docs/semantics.md §8: per tenant, hour and region (NULL is its own region)
    regions: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for v in silver:
        hs = v["event_timestamp_us"] // HOUR * HOUR
        c = regions[(v["tenant_id"], hs, v.get("data_residency_region"))]
        c[0] += 1
        c[1] += 1 if v["status_code"] >= 500 else 0
    region_rows = {(t, hs, hs + HOUR, r, n, e) for (t, hs, r), (n, e) in regions.items()}
    return {
        "region": region_rows if rs.get("region") else set(),
        "silver": {(*v["lin"], v["event_id"], v["tenant_id"], v["event_timestamp_us"],
                    v["subscription_plan"], v["status_code"]) for v in silver},
        "quarantine": quarantine, "duplicates": dups, "minute": minute_rows, "hourly": hourly,
        "alerts": alerts,
    }
