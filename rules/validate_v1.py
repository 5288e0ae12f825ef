"""validate@1 (docs/semantics.md §3.1): parse and check every Bronze message.

Vectorized: one DuckDB query judges the bulk of rows. DuckDB's JSON reader is
more lenient than docs/semantics.md §1.2 (it accepts NaN, Infinity and trailing commas, keeps the
first of duplicated keys, and reads integers beyond uint64 as doubles), so rows
where that could matter are flagged by a cheap screen in the same query and
re-judged by the strict reference evaluator in :mod:`rules._event`.

Readings of docs/semantics.md chosen here (fair to a billing customer, stated once):
- A Kafka tombstone (NULL value) is ``malformed_json``.
- A timestamp must denote an instant from 0001-01-01 to 9999-12-31 UTC (what every
  timestamp consumer can hold): year 0000, or an offset that moves 0001-01-01 before
  it, is ``invalid_timestamp``.
- ``invalid_type`` looks only at present fields: absent and ``null`` optional
  fields are NULL, an optional ``""`` string stays ``""``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.sql import run_sql
from rules import _fastpath
from rules._event import (
    FIELDS,
    INT64_MAX,
    MAX_TS_US,
    MIN_TS_US,
    RANGE_ORDER,
    TS_PATTERN,
    US,
    Field,
    strict_validate,
)
from rules.base import Rule, RuleParams

#: Rows matching this are re-judged strictly (false positives only cost time).
SCREEN = r"[:\[,]\s*[-+]?(?i:nan|inf)|,\s*[\]}]|\\u[dD][89a-fA-F]"
NAME = "validate@1"


def _missing(i: int) -> str:
    return f"(t{i} IS NULL OR t{i} = 'NULL' OR (t{i} = 'VARCHAR' AND s{i} = ''))"


def _absent(i: int) -> str:
    return f"(t{i} IS NULL OR t{i} = 'NULL')"


def _fast_ok(f: Field, i: int, plan_i: int) -> str:
    """A compact test that field ``f`` passes every check (the common case skips the CASE).

    It may be stricter than the checks, never looser: a row it rejects is judged by the
    full reason cascade, which alone names reasons.
    """
    is_int = f"t{i} IN ('BIGINT', 'UBIGINT')"
    val = f"length(s{i})" if f.kind == "str" else f"TRY_CAST(s{i} AS BIGINT)"
    rng = []
    if f.min is not None:
        rng.append(f"{val} >= {f.min}")
    if f.max is not None:
        rng.append(f"{val} <= {f.max}")
    if f.name == "event_timestamp":
        return "ts_us IS NOT NULL"
    if f.required:
        ok = [f"t{i} = 'VARCHAR'", f"s{i} <> ''"] if f.kind == "str" else [is_int]
        if i == plan_i:
            ok.append(f"list_contains($plans, s{i})")
        return "(" + " AND ".join(ok + rng) + ")"
    present_ok = f"t{i} = 'VARCHAR'" if f.kind == "str" else is_int
    return f"(t{i} IS NULL OR t{i} = 'NULL' OR ({' AND '.join([present_ok, *rng])}))"


def _build_sql() -> str:
    paths = ", ".join(f"'$.\"{f.name}\"'" for f in FIELDS)
    idx = {f.name: i + 1 for i, f in enumerate(FIELDS)}
    cols = ",\n      ".join(f"ty[{i}] AS t{i}, sv[{i}] AS s{i}" for i in idx.values())
    reasons: list[str] = []
    for f in FIELDS:
        if f.required:
            reasons.append(f"WHEN {_missing(idx[f.name])} THEN 'missing_field:{f.name}'")
    for f in FIELDS:
        i = idx[f.name]
        ok = f"t{i} = 'VARCHAR'" if f.kind == "str" else f"t{i} IN ('BIGINT', 'UBIGINT')"
        reasons.append(f"WHEN NOT {_absent(i)} AND NOT ({ok}) THEN 'invalid_type:{f.name}'")
    reasons.append("WHEN ts_us IS NULL THEN 'invalid_timestamp'")
    reasons.append(f"WHEN NOT list_contains($plans, s{idx['subscription_plan']}) THEN 'unknown_plan'")
    by_name = {f.name: f for f in FIELDS}
    for name in RANGE_ORDER:
        f, i = by_name[name], idx[name]
        val = f"length(s{i})" if f.kind == "str" else f"TRY_CAST(s{i} AS BIGINT)"
        conds = [f"{val} IS NULL"] if f.kind == "int" else []
        if f.min is not None:
            conds.append(f"{val} < {f.min}")
        if f.max is not None:
            conds.append(f"{val} > {f.max}")
        reasons.append(f"WHEN NOT {_absent(i)} AND ({' OR '.join(conds)}) THEN 'out_of_range:{name}'")
    reasons.append("WHEN ts_us > ing_us + $tolerance THEN 'future_timestamp'")
    fast = " AND ".join(_fast_ok(f, idx[f.name], idx["subscription_plan"]) for f in FIELDS)
    int_fields = [idx[f.name] for f in FIELDS if f.kind == "int"]
    doubles = " OR ".join(f"t{i} = 'DOUBLE'" for i in int_fields)
    ts = idx["event_timestamp"]
    outputs = []
    for f in FIELDS:
        i = idx[f.name]
        if f.name == "event_timestamp":
            continue
        if f.kind == "int":
            typ = "INTEGER" if f.name == "status_code" else "BIGINT"
            outputs.append(f"CASE WHEN reason IS NULL THEN CAST(s{i} AS {typ}) END AS {f.name}")
        else:
            outputs.append(f"CASE WHEN reason IS NULL THEN s{i} END AS {f.name}")
    tenant_i = idx["tenant_id"]
    return f"""
WITH d AS (
  SELECT _i, ing_us, {{raw_expr}} AS raw FROM input
), p AS (
  -- json_valid is vectorized; try() would fall back to row-by-row on every batch holding a bad row
  SELECT *, CASE WHEN json_valid(raw) THEN raw END AS j,
    starts_with(raw, '{{') OR regexp_matches(raw, '^[ \t\r\n]+[{{]') AS brace
  FROM d
), e AS (
  SELECT _i, ing_us,
    raw IS NULL AS is_null,
    raw IS NOT NULL AND j IS NULL AS bad_json,
    coalesce(j IS NOT NULL AND brace, false) AS is_obj,
    coalesce(regexp_matches(raw, $screen), false) AS suspicious,
    json_type(o, [{paths}]) AS ty,
    json_extract_string(o, [{paths}]) AS sv,
    json_keys(o) AS k
  FROM (SELECT *, CASE WHEN brace THEN j END AS o FROM p)
), t AS (
  SELECT _i, ing_us, is_null, bad_json, is_obj, suspicious, k,
      {cols}
  FROM e
), g AS (
  SELECT *, t{ts} = 'VARCHAR' AND regexp_full_match(s{ts}, $ts_pattern) AS ts_grammar FROM t
), tv AS (
  -- The grammar is checked by the regex and the clock fields here; DuckDB's own parser then
  -- converts (fast, truncating to µs). What it still refuses (an impossible date, lowercase
  -- t/z, year 0000) goes to the strict evaluator.
  SELECT *,
    CASE WHEN ts_grammar AND s{ts}[12:13] <= '23' AND s{ts}[15:16] <= '59' AND s{ts}[18:19] <= '59'
      AND (upper(right(s{ts}, 1)) = 'Z' OR (right(s{ts}, 5)[1:2] <= '23' AND right(s{ts}, 2) <= '59'))
    THEN epoch_us(TRY_CAST(s{ts} AS TIMESTAMPTZ)) END AS ts_raw,
    ts_grammar AND s{ts}[12:13] <= '23' AND s{ts}[15:16] <= '59' AND s{ts}[18:19] <= '59'
      AND (upper(right(s{ts}, 1)) = 'Z' OR (right(s{ts}, 5)[1:2] <= '23' AND right(s{ts}, 2) <= '59'))
      AS ts_clock_ok
  FROM g
), tr AS (
  SELECT *, CASE WHEN ts_raw BETWEEN {MIN_TS_US} AND {MAX_TS_US} THEN ts_raw END AS ts_us FROM tv
), r AS (
  SELECT *,
    NOT is_null AND (bad_json OR suspicious OR (is_obj AND len(k) <> len(list_distinct(k)))
      OR coalesce({doubles}, false) OR (coalesce(ts_clock_ok, false) AND ts_raw IS NULL)) AS needs_strict,
    CASE WHEN coalesce(is_obj AND {fast} AND ts_us <= ing_us + $tolerance, false) THEN NULL
      WHEN is_null OR NOT is_obj THEN 'malformed_json'
      {chr(10).join('      ' + r for r in reasons)}
    END AS reason
  FROM tr
)
SELECT _i, needs_strict, reason, ts_us,
  CASE WHEN t{tenant_i} = 'VARCHAR' AND s{tenant_i} <> '' THEN s{tenant_i} END AS q_tenant_id,
  {", ".join(outputs)}
FROM r
"""


SQL = _build_sql()
#: Input as text (Arrow validated the UTF-8), or as bytes decoded row by row (NULL if invalid).
SQL_TEXT = SQL.replace("{raw_expr}", "raw")


def utf8_or_null(raw: pa.Array) -> pa.Array:
    """Binary -> string, with messages that are not valid UTF-8 (malformed) as NULL.

    Arrow validates a whole array at once (cheap); bad rows are found by bisection,
    so a batch with a few bad messages costs a few more validations, not a row loop.
    """
    bad: list[int] = []

    def scan(lo: int, hi: int) -> None:
        try:
            raw.slice(lo, hi - lo).cast(pa.string())
        except pa.ArrowInvalid:
            if hi - lo == 1:
                bad.append(lo)
            else:
                mid = (lo + hi) // 2
                scan(lo, mid)
                scan(mid, hi)

    if len(raw):
        scan(0, len(raw))
    if bad:
        mask = np.zeros(len(raw), dtype=bool)
        mask[bad] = True
        raw = pc.if_else(pa.array(mask), pa.scalar(None, raw.type), raw)
    return raw.cast(pa.string())


class Validate(Rule):
    name = "validate"
    version = 1
    layer = "silver"
    description = "SPEC 3.1: strict JSON, required fields, types, timestamp, plan, ranges, future"

    class Params(RuleParams):
        future_tolerance_seconds: int = 3600

    @staticmethod
    def apply(params: Validate.Params, bronze: pa.Table, known_plans: frozenset[str]
              ) -> tuple[pa.Table, pa.Table]:
        """Bronze rows -> (valid typed events with lineage, quarantine rows).

        The common, well-formed event is accepted by :mod:`rules._fastpath`; the rest
        is judged by the DuckDB query (+ strict reference). Rows come in no promised
        order (fast-path rows, then the others'); callers order by ingestion order.
        """
        tolerance = params.future_tolerance_seconds * US
        if not _fastpath.enabled or not bronze.num_rows:
            return Validate._judge(bronze, known_plans, tolerance)
        fast, accepted = _fastpath.accept(bronze, known_plans, tolerance)
        if accepted.all():
            return fast, schemas.empty(schemas.QUARANTINE_SCHEMA)
        valid, quarantine = Validate._judge(bronze.filter(pa.array(~accepted)), known_plans, tolerance)
        return pa.concat_tables([fast, valid]), quarantine

    @staticmethod
    def _judge(bronze: pa.Table, known_plans: frozenset[str], tolerance: int
              ) -> tuple[pa.Table, pa.Table]:
        """The DuckDB query (+ strict reference for the rows it cannot judge), every row."""
        n = bronze.num_rows
        raw_bin = bronze.column("raw_payload").combine_chunks()
        ing_us = pc.cast(pc.cast(bronze.column("ingestion_timestamp"), schemas.TS), pa.int64())
        raw, sql = utf8_or_null(raw_bin), SQL_TEXT
        row_ids = pa.array(np.arange(n, dtype=np.int64))
        judged = run_sql(
            sql,
            {"input": pa.table({"_i": row_ids, "raw": raw, "ing_us": ing_us})},
            {"screen": SCREEN, "ts_pattern": TS_PATTERN, "plans": sorted(known_plans),
             "tolerance": tolerance},
        )
        if not pc.all(pc.equal(judged.column("_i"), row_ids)).as_py():
            judged = judged.sort_by("_i")  # DuckDB keeps insertion order; never rely on it blindly
        strict = judged.column("needs_strict")
        strict_idx = pc.indices_nonzero(strict).to_pylist()
        if not strict_idx:
            return _split(judged, bronze, None)
        # the few rows DuckDB cannot judge get the strict verdicts and are split on their own
        patch = _rejudge(judged, strict_idx, raw_bin, ing_us, known_plans, tolerance)
        v1, q1 = _split(judged, bronze, pc.invert(strict))
        v2, q2 = _split(patch, bronze.take(pa.array(strict_idx)), None)
        return pa.concat_tables([v1, v2]), pa.concat_tables([q1, q2])


def _split(judged: pa.Table, bronze: pa.Table, keep: pa.Array | None) -> tuple[pa.Table, pa.Table]:
    """Verdicts (aligned with ``bronze``) -> (valid rows, quarantine rows), among ``keep`` rows."""
    reason = judged.column("reason")
    ok = pc.is_null(reason)
    bad = pc.invert(ok)
    if keep is not None:
        ok, bad = pc.and_(ok, keep), pc.and_(bad, keep)
    ts = pc.cast(judged.column("ts_us"), schemas.TS)
    lineage = {c: bronze.column(c) for c in ("kafka_topic", "kafka_partition", "kafka_offset")}
    lineage["ingestion_timestamp"] = pc.cast(bronze.column("ingestion_timestamp"), schemas.TS)
    valid_cols = {f.name: judged.column(f.name) for f in FIELDS if f.name != "event_timestamp"}
    valid_cols["event_timestamp"] = ts
    valid = schemas.conform(pa.table({**valid_cols, **lineage}), schemas.VALID_SCHEMA).filter(ok)
    quarantine = schemas.conform(
        pa.table({
            **lineage,
            "raw_payload": bronze.column("raw_payload"),
            "reason": reason,
            "rule": pa.array([NAME] * judged.num_rows, pa.string()),
            "tenant_id": judged.column("q_tenant_id"),
            "event_timestamp": ts,
        }),
        schemas.QUARANTINE_SCHEMA,
    ).filter(bad)
    return valid, quarantine


def _rejudge(judged: pa.Table, idx: list[int], raw: pa.Array, ing_us: pa.Array,
             plans: frozenset[str], tolerance: int) -> pa.Table:
    """The strict evaluator's verdicts for the rows at ``idx`` (same columns as ``judged``)."""
    raws = raw.take(pa.array(idx)).to_pylist()
    ings = ing_us.take(pa.array(idx)).to_pylist()
    cols: dict[str, list] = {name: [] for name in judged.column_names}
    for b, ing in zip(raws, ings, strict=True):
        reason, vals = strict_validate(b, ing, plans, tolerance)
        cols["needs_strict"].append(False)
        cols["reason"].append(reason)
        cols["ts_us"].append(vals["event_timestamp_us"])
        cols["q_tenant_id"].append(vals["tenant_id"])
        for f in FIELDS:
            if f.name != "event_timestamp":
                v = vals.get(f.name) if reason is None else None
                cols[f.name].append(v if not (isinstance(v, int) and v > INT64_MAX) else None)
    cols["_i"] = idx
    return pa.table({n: pa.array(cols[n], judged.schema.field(n).type) for n in judged.column_names})
