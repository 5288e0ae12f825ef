"""The validation gate: standard checks in DuckDB over the tables a replay just committed.

Each check is a query that returns failing rows (like a dbt test): none means pass.
Users add their own as ``*.sql`` files (``--checks DIR``); they see every table of docs/semantics.md
under its name at the new versions.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.errors import UsageError
from engine.lake.bronze import bronze_rows
from engine.lake.tables import Lake
from engine.query.duck import ARCHIVE, register_all

SAMPLE = 5
#: DuckDB's memory in the driver while the gate runs: past it, the checks' aggregates and
#: joins spill to a temporary directory (a whole-table check over 20M rows needs ~1.5 GiB
#: unbounded), so the driver stays small next to the workers.
GATE_MEMORY = 768 << 20


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    failing_rows: int
    sample: list[dict[str, Any]]
    info: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: An instant's window start as microseconds since the epoch (floored, also before 1970):
#: integer grouping, a third of ``date_trunc``'s cost on a UTC timestamp.
def _floor(us: str, width: int) -> str:
    return f"({us} - (({us} % {width}) + {width}) % {width})"


MINUTE_US, HOUR_US = 60_000_000, 3_600_000_000


def _dup_keys(table: str) -> str:
    """Keys held by more than one row: candidates by a 64-bit hash of the key (one integer
    to group by), then the exact keys among the candidates' rows."""
    keys = ", ".join(schemas.KEYS[table])
    on = ", ".join(f"t.{k}" for k in schemas.KEYS[table])
    return f"""WITH h AS (SELECT hash({keys}) AS h FROM {table} GROUP BY 1 HAVING count(*) > 1)
        SELECT {keys}, count(*) AS copies FROM {table} t SEMI JOIN h ON hash({on}) = h.h
        GROUP BY ALL HAVING count(*) > 1"""


STANDARD: dict[str, str] = {
    **{f"unique_keys:{t}": _dup_keys(t) for t in (*schemas.SILVER_TABLES, *schemas.GOLD_TABLES)},
    "minute_totals_equal_silver_counts": f"""
        WITH s AS (SELECT tenant_id, {_floor("us", MINUTE_US)} AS w,
                          count(*) AS n, count(*) FILTER (WHERE status_code >= 500) AS e
                   FROM (SELECT tenant_id, status_code, epoch_us(event_timestamp) AS us
                         FROM silver_api_usage) GROUP BY ALL),
             m AS (SELECT tenant_id, epoch_us(window_start) AS w, total_requests, error_requests
                   FROM tenant_usage_1min)
        SELECT coalesce(s.tenant_id, m.tenant_id) AS tenant_id,
               make_timestamptz(coalesce(s.w, m.w)) AS window_start,
               s.n AS silver_events, m.total_requests, s.e AS silver_errors, m.error_requests
        FROM s FULL JOIN m USING (tenant_id, w)
        WHERE s.n IS DISTINCT FROM m.total_requests OR s.e IS DISTINCT FROM m.error_requests""",
    "hourly_equals_sum_of_minutes": f"""
        WITH m AS (SELECT tenant_id, {_floor("us", HOUR_US)} AS w,
                          sum(total_requests) AS t, sum(error_requests) AS e,
                          sum(over_limit_count) AS o, count(*) FILTER (WHERE over_limit_count > 0) AS om,
                          sum(burst_allowance_used) AS b
                   FROM (SELECT *, epoch_us(window_start) AS us FROM tenant_usage_1min) GROUP BY ALL),
             h AS (SELECT *, epoch_us(window_start) AS w FROM tenant_usage_hourly)
        SELECT coalesce(m.tenant_id, h.tenant_id) AS tenant_id,
               make_timestamptz(coalesce(m.w, h.w)) AS window_start
        FROM m FULL JOIN h USING (tenant_id, w)
        WHERE m.t IS DISTINCT FROM h.total_requests OR m.e IS DISTINCT FROM h.error_requests
           OR m.o IS DISTINCT FROM h.over_limit_count OR m.om IS DISTINCT FROM h.over_limit_minutes
           OR m.b IS DISTINCT FROM h.burst_allowance_used""",
    "minute_arithmetic": """
        SELECT tenant_id, window_start FROM tenant_usage_1min
        WHERE over_limit_count < 0 OR burst_allowance_used < 0
           OR over_limit_count + burst_allowance_used <> greatest(0, total_requests - plan_limit)
           OR window_end <> window_start + INTERVAL 1 MINUTE
           OR error_requests > total_requests""",
    "alerts_match_minutes": """
        SELECT a.tenant_id, a.alert_type, a.window_start FROM enforcement_alerts a
        LEFT JOIN tenant_usage_1min m USING (tenant_id, window_start)
        WHERE m.tenant_id IS NULL OR a.total_requests <> m.total_requests
           OR a.plan_limit <> m.plan_limit OR a.over_limit_count <> m.over_limit_count
           OR a.subscription_plan <> m.subscription_plan OR a.alert_time <> a.window_start
           OR (a.alert_type = 'over_limit' AND m.over_limit_count <= 0)
           OR a.alert_type NOT IN ('over_limit', 'abuse')
        UNION ALL
        SELECT m.tenant_id, 'over_limit', m.window_start FROM tenant_usage_1min m
        LEFT JOIN enforcement_alerts a
          ON a.tenant_id = m.tenant_id AND a.window_start = m.window_start AND a.alert_type = 'over_limit'
        WHERE m.over_limit_count > 0 AND a.tenant_id IS NULL""",
}
REGION_CHECKS: dict[str, str] = {
    f"unique_keys:{schemas.REGION}": f"""
        SELECT tenant_id, window_start, data_residency_region, count(*) AS copies
        FROM {schemas.REGION} GROUP BY ALL HAVING count(*) > 1""",
    "region_hours_equal_silver_counts": f"""
        WITH s AS (SELECT tenant_id, {_floor("us", HOUR_US)} AS w, data_residency_region,
                          count(*) AS n, count(*) FILTER (WHERE status_code >= 500) AS e
                   FROM (SELECT tenant_id, data_residency_region, status_code,
                                epoch_us(event_timestamp) AS us FROM silver_api_usage) GROUP BY ALL),
             r AS (SELECT *, epoch_us(window_start) AS w FROM {schemas.REGION})
        SELECT coalesce(s.tenant_id, r.tenant_id) AS tenant_id,
               make_timestamptz(coalesce(s.w, r.w)) AS window_start
        FROM s FULL JOIN r
          ON s.tenant_id = r.tenant_id AND s.w = r.w
         AND s.data_residency_region IS NOT DISTINCT FROM r.data_residency_region
        WHERE s.n IS DISTINCT FROM r.total_requests OR s.e IS DISTINCT FROM r.error_requests
           OR r.window_end <> r.window_start + INTERVAL 1 HOUR""",
}


def conservation(lake: Lake, pinned: dict[str, int]) -> CheckResult:
    """|bronze| = |silver| + |quarantine| + |duplicates| (docs/semantics.md §3), from the Parquet footers."""
    n = {t: lake.dataset(t, pinned.get(t)).count_rows() if lake.exists(t) else 0
         for t in schemas.SILVER_TABLES}
    # hot and archived, each at the version the replay read (an import may be adding to the
    # archive meanwhile: it is the next replay's)
    n[schemas.BRONZE] = bronze_rows(lake, pinned.get(schemas.BRONZE), pinned.get(ARCHIVE))
    ok = n[schemas.BRONZE] == sum(n[t] for t in schemas.SILVER_TABLES)
    sample = [] if ok else [{"bronze": n[schemas.BRONZE], "silver": n[schemas.SILVER],
                             "quarantine": n[schemas.QUARANTINE], "duplicates": n[schemas.DUPLICATES]}]
    return CheckResult("conservation", ok, 0 if ok else 1, sample)


def load_user_checks(directory: str | Path | None) -> dict[str, str]:
    if directory is None:
        return {}
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"--checks {d}: not a directory of .sql files")
    return {f"user:{p.stem}": p.read_text() for p in sorted(d.glob("*.sql"))}


def run_checks(lake: Lake, versions: dict[str, int], bronze_version: int | None, full: bool,
               user: dict[str, str] | None = None, previous: dict[str, int] | None = None,
               standard: bool = True, archive_version: int | None = None) -> list[CheckResult]:
    """Run the standard (and user) checks over the tables at ``versions``.

    ``standard=False`` (an incremental step: its cost must follow the append) skips the
    standard queries, which read whole tables; conservation (from the files' footers) and
    the user's checks still run."""
    with tempfile.TemporaryDirectory(prefix="medallion-gate-") as spill:
        con = lake.storage.connect(GATE_MEMORY, spill)
        try:
            pinned = {**versions, **({ARCHIVE: archive_version} if archive_version is not None
                                     and archive_version >= 0 else {})}
            return _run_checks(con, lake, pinned, bronze_version, full, user, previous, standard)
        finally:
            con.close()


def _failing(con: Any, rel: Any) -> tuple[int, list[dict[str, Any]]]:
    """(failing rows, a sample of them) of a check; a check that cannot finish within the
    gate's memory (not every DuckDB operator spills) runs again without the cap, rather
    than failing a replay whose tables are fine."""
    def run() -> tuple[int, list[dict[str, Any]]]:
        n = rel.aggregate("count(*)").fetchall()[0][0]
        return n, rel.limit(SAMPLE).to_arrow_table().to_pylist() if n else []

    try:
        return run()
    except duckdb.OutOfMemoryException:
        con.execute("RESET memory_limit")
        try:
            return run()
        finally:
            con.execute("SET memory_limit = ?", [f"{GATE_MEMORY >> 20}MiB"])


def _run_checks(con: Any, lake: Lake, versions: dict[str, int], bronze_version: int | None,
                full: bool, user: dict[str, str] | None, previous: dict[str, int] | None,
                standard: bool) -> list[CheckResult]:
    pinned = {**versions}
    if bronze_version is not None:
        pinned[schemas.BRONZE] = bronze_version
    register_all(con, lake, pinned)
    queries: dict[str, str] = dict(STANDARD) if standard else {}
    if standard and schemas.REGION in versions and lake.is_active(schemas.REGION):
        queries.update(REGION_CHECKS)
    queries.update(user or {})
    out = [conservation(lake, pinned)] if full else []
    for name, sql in queries.items():
        try:
            kinds = [s.type for s in duckdb.extract_statements(sql)]
            rel = con.sql(sql) if kinds == [duckdb.StatementType.SELECT] else None
            if rel is None:  # a statement, not one query: it cannot say which rows fail
                out.append(CheckResult(name, False, -1, [], "not a query: a check is one SELECT "
                                       "returning the failing rows (nothing was run)"))
                continue
            n, sample = _failing(con, rel)
            out.append(CheckResult(name, n == 0, int(n), sample))
        except duckdb.Error as exc:
            out.append(CheckResult(name, False, -1, [], f"query error: {str(exc).splitlines()[0]}"))
    if previous:
        for table, v in versions.items():
            before = previous.get(table)
            if before is not None and lake.exists(table):
                n_new = lake.dataset(table, v).count_rows()
                n_old = lake.dataset(table, before).count_rows()
                out.append(CheckResult(f"row_count:{table}", True, 0, [],
                                       f"{n_old} -> {n_new} rows ({n_new - n_old:+d})"))
    return out


#: The standard checks an incremental step runs over what it rewrote: every check that
#: compares rows of one (tenant, minute or hour) holds on any set of whole tenant-hours.
STEP_CHECKS = (*(f"unique_keys:{t}" for t in (schemas.SILVER, *schemas.GOLD_TABLES)),
               "minute_totals_equal_silver_counts", "hourly_equals_sum_of_minutes",
               "minute_arithmetic", "alerts_match_minutes")


def run_step_checks(lake: Lake, versions: dict[str, int], touched: Any) -> list[CheckResult]:
    """The standard checks of :data:`STEP_CHECKS` over the (tenant, hour)s a step touched.

    A step rewrites Silver and Gold only there, so that is where it can have broken them;
    its gate reads those tenant-hours of the new versions (files and row groups pruned by
    their statistics), a cost that follows the append, never the whole tables. The slice
    is every touched tenant in every touched hour, a set of whole tenant-hours, so each
    check's comparison (within one tenant's minute or hour) holds on it exactly as on the
    whole table. ``touched`` is the step's (tenant_id, hour) table."""
    from engine.live.increment import hours_filter

    if touched is None or not touched.num_rows:
        return [CheckResult(n, True, 0, [], "no tenant-hour touched") for n in STEP_CHECKS]
    tenants = pc.unique(touched.column("tenant_id")).to_pylist()
    hours = touched.column("hour")
    where = {schemas.SILVER: pc.field("tenant_id").isin(tenants)
             & hours_filter("event_timestamp", hours)}
    for t in schemas.GOLD_TABLES:
        where[t] = pc.field("tenant_id").isin(tenants) & hours_filter("window_start", hours)
    info = f"over the {touched.num_rows} tenant-hours the step touched"
    with tempfile.TemporaryDirectory(prefix="medallion-gate-") as spill:
        con = lake.storage.connect(GATE_MEMORY, spill)
        try:
            for t, expr in where.items():
                con.register(t, lake.dataset(t, versions.get(t)).to_table(filter=expr))
            out = []
            for name in STEP_CHECKS:
                n, sample = _failing(con, con.sql(STANDARD[name]))
                out.append(CheckResult(name, n == 0, int(n), sample, info))
            return out
        finally:
            con.close()
