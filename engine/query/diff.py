"""A/B comparison in DuckDB: table diffs between versions and the entitlement summary.

Versions are given as a Delta version number, a replay id (the table as that replay
left it) or ``REPLAY_ID:before``. Rows are matched on each table's key (docs/semantics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.storage import Storage
from engine.lake.tables import Lake
from engine.query.duck import consistent_versions, resolve_version

NUMERIC = (pa.types.is_integer, pa.types.is_floating)


@dataclass(frozen=True)
class TableDiff:
    table: str
    from_version: int
    to_version: int
    schema: dict[str, Any]
    counts: dict[str, int]
    columns: dict[str, dict[str, Any]]
    samples: dict[str, list[dict[str, Any]]] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "from_version": self.from_version, "to_version": self.to_version,
                "schema": self.schema, "counts": self.counts, "columns": self.columns,
                "samples": self.samples}


def _con() -> duckdb.DuckDBPyConnection:
    return Storage.connect()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def diff_table(lake: Lake, table: str, from_ref: str | int, to_ref: str | int | None = None,
               sample: int = 10) -> TableDiff:
    """Schema diff and row diff (only-before, only-after, changed with per-column deltas)."""
    if table not in schemas.KEYS or table == schemas.BRONZE:
        choices = ", ".join(t for t in schemas.KEYS if t != schemas.BRONZE)
        raise UsageError(f"--table {table!r}: choose one of {choices}")
    v0 = resolve_version(lake, table, from_ref)
    v1 = lake.version(table) if to_ref is None else resolve_version(lake, table, to_ref)
    return diff_data(table, lake.dataset(table, v0), lake.dataset(table, v1), v0, v1, sample)


def diff_data(table: str, a: Any, b: Any, v0: int = -1, v1: int = -1, sample: int = 10) -> TableDiff:
    """Diff two versions of ``table`` given as Arrow datasets or tables (may come from two lakes)."""
    sa, sb = {f.name: f.type for f in a.schema}, {f.name: f.type for f in b.schema}
    schema = {
        "added": sorted(set(sb) - set(sa)), "removed": sorted(set(sa) - set(sb)),
        "type_changed": {c: [str(sa[c]), str(sb[c])] for c in sorted(set(sa) & set(sb)) if sa[c] != sb[c]},
    }
    keys = list(schemas.KEYS[table])
    values = [c for c in sa if c in sb and c not in keys and c not in schema["type_changed"]
              and not pa.types.is_binary(sa[c])]
    con = _con()
    con.register("a", a)
    con.register("b", b)
    on = " AND ".join(f"a.{_q(k)} = b.{_q(k)}" for k in keys)
    differs = " OR ".join(f"a.{_q(c)} IS DISTINCT FROM b.{_q(c)}" for c in values) or "false"
    con.execute(f"CREATE TEMP TABLE only_before AS SELECT a.* FROM a ANTI JOIN b ON {on}")
    con.execute(f"CREATE TEMP TABLE only_after AS SELECT b.* FROM b ANTI JOIN a ON {on}")
    pairs = ", ".join([f"a.{_q(k)}" for k in keys]
                      + [f"a.{_q(c)} AS {_q('before_' + c)}, b.{_q(c)} AS {_q('after_' + c)}" for c in values])
    con.execute(f"CREATE TEMP TABLE changed AS SELECT {pairs} FROM a JOIN b ON {on} WHERE {differs}")
    counts = {name: con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0]
              for name in ("only_before", "only_after", "changed")}
    counts["before"] = con.sql("SELECT count(*) FROM a").fetchall()[0][0]
    counts["after"] = con.sql("SELECT count(*) FROM b").fetchall()[0][0]
    columns: dict[str, dict[str, Any]] = {}
    for c in values:
        bc, ac = _q("before_" + c), _q("after_" + c)
        row: dict[str, Any] = {"changed_rows": con.sql(
            f"SELECT count(*) FROM changed WHERE {bc} IS DISTINCT FROM {ac}").fetchall()[0][0]}
        if any(t(sa[c]) for t in NUMERIC):
            row["sum_delta"] = con.sql(f"SELECT coalesce(sum({ac} - {bc}), 0) FROM changed").fetchall()[0][0]
            row["sum_before"] = con.sql(f"SELECT coalesce(sum({_q(c)}), 0) FROM a").fetchall()[0][0]
            row["sum_after"] = con.sql(f"SELECT coalesce(sum({_q(c)}), 0) FROM b").fetchall()[0][0]
        columns[c] = row
    samples = {name: con.sql(f"SELECT * FROM {name} LIMIT {int(sample)}").to_arrow_table().to_pylist()
               for name in ("only_before", "only_after", "changed")}
    con.close()
    return TableDiff(table, v0, v1, schema, counts, columns, samples)


def gold_versions(lake: Lake, ref: str | int | None) -> dict[str, int]:
    """The Gold tables' versions at a reference (a replay id, ``ID:before``, or None = now).

    ``tenant_usage_region_hourly`` is included where it was active at that reference.
    """
    if ref is None:  # now: a snapshot no replay is half-way through
        snap = consistent_versions(lake)
        out = {t: snap.get(t) for t in (schemas.MINUTE, schemas.ALERTS)}
        if lake.is_active(schemas.REGION):
            out[schemas.REGION] = snap.get(schemas.REGION)
        return out
    if str(ref).isdigit():
        raise UsageError("--summary compares replays: give replay ids (see 'replay history'), "
                         "not version numbers")
    out = {t: resolve_version(lake, t, ref) for t in (schemas.MINUTE, schemas.ALERTS)}
    if lake.exists(schemas.REGION):
        try:
            v = resolve_version(lake, schemas.REGION, ref)
        except UsageError:  # that replay did not write the region table
            v = None
        if v is not None and v >= 0 and not lake.commit_metadata(schemas.REGION, v).get("retired") \
                and lake.table(schemas.REGION, v).get_add_actions().num_rows:
            out[schemas.REGION] = v
    return out


PLAN_SQL = """
WITH m AS (
  SELECT 'before' AS side, * FROM minute_before UNION ALL BY NAME SELECT 'after' AS side, * FROM minute_after
), a AS (
  SELECT 'before' AS side, * FROM alerts_before UNION ALL BY NAME SELECT 'after' AS side, * FROM alerts_after
), pm AS (
  SELECT subscription_plan AS plan,
    count(*) FILTER (WHERE side = 'before' AND over_limit_count > 0) AS over_limit_minutes_before,
    count(*) FILTER (WHERE side = 'after' AND over_limit_count > 0) AS over_limit_minutes_after,
    coalesce(sum(over_limit_count) FILTER (WHERE side = 'before'), 0)::BIGINT AS overage_before,
    coalesce(sum(over_limit_count) FILTER (WHERE side = 'after'), 0)::BIGINT AS overage_after,
    coalesce(sum(burst_allowance_used) FILTER (WHERE side = 'before'), 0)::BIGINT AS burst_used_before,
    coalesce(sum(burst_allowance_used) FILTER (WHERE side = 'after'), 0)::BIGINT AS burst_used_after
  FROM m GROUP BY 1
), pa AS (
  SELECT subscription_plan AS plan,
    count(*) FILTER (WHERE side = 'before' AND alert_type = 'over_limit') AS over_limit_alerts_before,
    count(*) FILTER (WHERE side = 'after' AND alert_type = 'over_limit') AS over_limit_alerts_after,
    count(*) FILTER (WHERE side = 'before' AND alert_type = 'abuse') AS abuse_alerts_before,
    count(*) FILTER (WHERE side = 'after' AND alert_type = 'abuse') AS abuse_alerts_after
  FROM a GROUP BY 1
)
SELECT plan, over_limit_minutes_before, over_limit_minutes_after, overage_before, overage_after,
  coalesce(over_limit_alerts_before, 0) AS over_limit_alerts_before,
  coalesce(over_limit_alerts_after, 0) AS over_limit_alerts_after,
  coalesce(abuse_alerts_before, 0) AS abuse_alerts_before,
  coalesce(abuse_alerts_after, 0) AS abuse_alerts_after, burst_used_before, burst_used_after
FROM pm LEFT JOIN pa USING (plan) ORDER BY plan
"""

DAILY_SQL = """
WITH m AS (
  SELECT 'before' AS side, subscription_plan, window_start, over_limit_count FROM minute_before
  UNION ALL SELECT 'after', subscription_plan, window_start, over_limit_count FROM minute_after
), a AS (
  SELECT 'before' AS side, subscription_plan, window_start FROM alerts_before
  UNION ALL SELECT 'after', subscription_plan, window_start FROM alerts_after
), md AS (
  SELECT CAST(window_start AS DATE) AS day, subscription_plan AS plan,
    count(*) FILTER (WHERE side = 'before' AND over_limit_count > 0) AS over_limit_minutes_before,
    count(*) FILTER (WHERE side = 'after' AND over_limit_count > 0) AS over_limit_minutes_after
  FROM m GROUP BY ALL
), ad AS (
  SELECT CAST(window_start AS DATE) AS day, subscription_plan AS plan,
    count(*) FILTER (WHERE side = 'before') AS alerts_before, count(*) FILTER (WHERE side = 'after') AS alerts_after
  FROM a GROUP BY ALL
)
SELECT day, plan, over_limit_minutes_before, over_limit_minutes_after,
  coalesce(alerts_before, 0) AS alerts_before, coalesce(alerts_after, 0) AS alerts_after
FROM md LEFT JOIN ad USING (day, plan) ORDER BY day, plan
"""

TENANT_SQL = """
WITH t AS (
  SELECT coalesce(b.tenant_id, a.tenant_id) AS tenant_id,
    coalesce(b.overage, 0) AS overage_before, coalesce(a.overage, 0) AS overage_after,
    coalesce(b.minutes, 0) AS over_minutes_before, coalesce(a.minutes, 0) AS over_minutes_after,
    coalesce(a.plan, b.plan) AS plan
  FROM (SELECT tenant_id, sum(over_limit_count)::BIGINT AS overage, count(*) FILTER (WHERE over_limit_count > 0) AS minutes,
               arg_max(subscription_plan, window_start) AS plan FROM minute_before GROUP BY 1) b
  FULL JOIN (SELECT tenant_id, sum(over_limit_count)::BIGINT AS overage,
                    count(*) FILTER (WHERE over_limit_count > 0) AS minutes,
                    arg_max(subscription_plan, window_start) AS plan FROM minute_after GROUP BY 1) a
  USING (tenant_id)
)
SELECT *, overage_after - overage_before AS overage_delta,
  CASE WHEN over_minutes_before > 0 AND over_minutes_after = 0 THEN 'over_limit -> compliant'
       WHEN over_minutes_before = 0 AND over_minutes_after > 0 THEN 'compliant -> over_limit'
       ELSE 'unchanged' END AS flip
FROM t
"""


REGION_SQL = """
WITH r AS (
  SELECT 'before' AS side, * FROM region_before UNION ALL BY NAME SELECT 'after' AS side, * FROM region_after
)
SELECT data_residency_region,
  coalesce(sum(total_requests) FILTER (WHERE side = 'before'), 0)::BIGINT AS requests_before,
  coalesce(sum(total_requests) FILTER (WHERE side = 'after'), 0)::BIGINT AS requests_after,
  coalesce(sum(error_requests) FILTER (WHERE side = 'before'), 0)::BIGINT AS errors_before,
  coalesce(sum(error_requests) FILTER (WHERE side = 'after'), 0)::BIGINT AS errors_after,
  count(DISTINCT tenant_id) FILTER (WHERE side = 'after') AS tenants_after
FROM r GROUP BY 1 ORDER BY 1 NULLS FIRST
"""


def entitlement_summary(lake: Lake, before: dict[str, int], after: dict[str, int],
                        top: int = 10) -> dict[str, pa.Table]:
    """Per plan before vs after; tenants that flip; top tenants by change in overage."""
    data = {"minute_before": lake.dataset(schemas.MINUTE, before[schemas.MINUTE]),
            "alerts_before": lake.dataset(schemas.ALERTS, before[schemas.ALERTS]),
            "minute_after": lake.dataset(schemas.MINUTE, after[schemas.MINUTE]),
            "alerts_after": lake.dataset(schemas.ALERTS, after[schemas.ALERTS])}
    if schemas.REGION in before or schemas.REGION in after:
        for side, versions in (("before", before), ("after", after)):
            v = versions.get(schemas.REGION)
            data[f"region_{side}"] = (lake.dataset(schemas.REGION, v) if v is not None
                                      else schemas.empty(schemas.REGION_SCHEMA))
    return summarize(data, top)


def summarize(data: dict[str, Any], top: int = 10) -> dict[str, pa.Table]:
    """The entitlement summary over minute/alerts data before and after (datasets or tables)."""
    con = _con()
    for name, rel in data.items():
        con.register(name, rel)
    tenants = con.sql(TENANT_SQL).to_arrow_table()
    con.register("tenants", tenants)
    out = {
        "plans": con.sql(PLAN_SQL).to_arrow_table(),
        "flips": con.sql("SELECT flip, plan, count(*) AS tenants FROM tenants WHERE flip <> 'unchanged' "
                         "GROUP BY ALL ORDER BY 1, 2").to_arrow_table(),
        "top_tenants": con.sql("SELECT * FROM tenants WHERE overage_delta <> 0 "
                               "ORDER BY abs(overage_delta) DESC, tenant_id LIMIT $n",
                               params={"n": top}).to_arrow_table(),
        "tenant_changes": tenants,
        "daily": con.sql(DAILY_SQL).to_arrow_table(),
    }
    if "region_after" in data:
        out["regions"] = con.sql(REGION_SQL).to_arrow_table()
    con.close()
    return out
