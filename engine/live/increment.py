"""The incremental fold of one tenant bucket (docs/semantics.md §11): new valid rows -> changed Silver and Gold.

A step's map tasks validate the new Bronze rows and split them by tenant bucket, as
a full replay's do; this is the reduce side. For the bucket's new valid copies:

1. Dedup. Each key's state comes from the key index (:mod:`engine.live.keystate`).
   A key whose new copies all come after its last folded copy in ingestion order is
   folded as one more chunk after that state (``apply_chunk``): earlier decisions
   cannot change, so its new rows are appended. A key with a new copy *before* its
   last folded one (a straggler: a re-imported archive, a slow partition) is
   recomputed from all its copies (its Silver and duplicate rows, which hold every
   typed field, plus the new ones), and its rows are replaced. A dedup rule without
   ``apply_chunk`` recomputes every key it has seen before.
2. Gold. Every (tenant, hour) whose Silver rows changed is recomputed from its Silver
   rows: the hour holds whole 1-minute and 5-minute burst windows, so minutes, burst
   allowance, hourly rows, alerts and region hours of other hours cannot change.
   Late events landing in old hours simply touch those hours.

Reads are bounded by the append: the index's key column, the Silver and duplicate
rows of straggler keys' tenants, and the Silver rows of the touched tenant-hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from engine.contract import schemas
from engine.contract.sql import run_sql
from engine.fold.pipeline import Compiled
from engine.lake.tables import Lake
from engine.live import keystate
from rules._dedup import STATE_SCHEMA

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class IncrementSpec:
    """The versions a step reads besides its new rows (pinned by the plan)."""

    silver_version: int
    duplicates_version: int
    state_version: int | None
    #: the Bronze version the step folds up to (the ``seq`` of the index rows it writes)
    seq: int


@dataclass(frozen=True)
class IncrementOutput:
    silver: pa.Table
    duplicates: pa.Table
    state: pa.Table
    #: keys whose old Silver and duplicate rows are replaced (tenant_id, event_id)
    replaced: pa.Table
    #: (tenant_id, hour) whose Gold rows are replaced, and the new Gold rows of them
    touched: pa.Table
    minute: pa.Table
    hourly: pa.Table
    alerts: pa.Table
    region: pa.Table | None


_KEYS = pa.schema([("tenant_id", pa.string()), ("event_id", pa.string())])
TOUCHED_SCHEMA = pa.schema([("tenant_id", pa.string()), ("hour", schemas.TS)])
#: straggler keys: their duplicate rows are replaced; their Silver rows too where they changed
REPLACED_SCHEMA = pa.schema([("tenant_id", pa.string()), ("event_id", pa.string()),
                             ("event_date", pa.date32()), ("silver_changed", pa.bool_())])

#: Straggler keys whose set of kept copies (Silver rows, by lineage) the recomputation changed.
_CHANGED = """
WITH a AS (SELECT tenant_id, event_id, list_sort(list(struct_pack(t := kafka_topic,
             p := kafka_partition, o := kafka_offset))) AS l FROM old GROUP BY ALL),
     b AS (SELECT tenant_id, event_id, list_sort(list(struct_pack(t := kafka_topic,
             p := kafka_partition, o := kafka_offset))) AS l FROM new GROUP BY ALL)
SELECT k.tenant_id, k.event_id FROM keys k
LEFT JOIN a USING (tenant_id, event_id) LEFT JOIN b USING (tenant_id, event_id)
WHERE a.l IS DISTINCT FROM b.l
"""

#: New copies split by their key's state: a straggler key has a new copy at or before its last one.
_STRAGGLERS = """
SELECT DISTINCT v.tenant_id, v.event_id FROM valid v JOIN prior p USING (tenant_id, event_id)
WHERE struct_pack(i := v.ingestion_timestamp, t := v.kafka_topic, p := v.kafka_partition,
                  o := v.kafka_offset)
   <= struct_pack(i := p.ingestion_timestamp, t := p.kafka_topic, p := p.kafka_partition,
                  o := p.kafka_offset)
"""


def _in_keys(rows: pa.Table, keys: pa.Table, keep: bool) -> pa.Table:
    if not keys.num_rows:
        return rows if not keep else rows.schema.empty_table()
    join = "SEMI" if keep else "ANTI"
    return run_sql(f"SELECT * FROM rows {join} JOIN keys USING (tenant_id, event_id)",
                   {"rows": rows, "keys": keys})


def _old_copies(lake: Lake, spec: IncrementSpec, keys: pa.Table,
                dates: list[object] | None) -> tuple[pa.Table, pa.Table]:
    """The Silver and duplicate rows of ``keys``: Silver read in the event-date partitions
    ``dates`` (None: all), both tables filtered by tenant and event id, then by key."""
    tenants = pc.unique(keys.column("tenant_id")).to_pylist()
    ids = pc.unique(keys.column("event_id")).to_pylist()
    flt = pc.field("tenant_id").isin(tenants) & pc.field("event_id").isin(ids)
    silver = lake.read(schemas.SILVER, spec.silver_version,
                       filter=flt if dates is None else flt & pc.field("event_date").isin(dates))
    dups = lake.read(schemas.DUPLICATES, spec.duplicates_version, filter=flt)
    return _in_keys(silver, keys, True), _in_keys(dups, keys, True)


def _hours(rows: pa.Table) -> pa.Table:
    return run_sql("SELECT DISTINCT tenant_id, date_trunc('hour', event_timestamp) AS hour FROM rows",
                   {"rows": rows.select(["tenant_id", "event_timestamp"])})


def hours_filter(column: str, hours: pa.Array | pa.ChunkedArray) -> pds.Expression:
    """``column`` falls in one of ``hours`` (hour starts): an OR of ranges, adjacent hours merged,
    so file and row-group statistics skip everything between touched hours."""
    starts = sorted({h for h in pc.cast(hours, pa.int64()).to_pylist() if h is not None})
    col = pc.field(column)
    expr: pds.Expression | None = None
    i = 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and starts[j + 1] == starts[j] + HOUR_US:
            j += 1
        lo = pa.scalar(starts[i], pa.int64()).cast(schemas.TS)
        hi = pa.scalar(starts[j] + HOUR_US, pa.int64()).cast(schemas.TS)
        part = (col >= lo) & (col < hi)
        expr = part if expr is None else expr | part
        i = j + 1
    return expr if expr is not None else pc.scalar(False)


def _silver_of_hours(lake: Lake, spec: IncrementSpec, touched: pa.Table) -> pa.Table:
    """Silver rows of the touched (tenant, hour)s at the pinned version."""
    if not touched.num_rows:
        return schemas.empty(schemas.SILVER_SCHEMA)
    days = pc.unique(pc.cast(touched.column("hour"), pa.date32())).to_pylist()
    flt = (pc.field("event_date").isin(days)
           & pc.field("tenant_id").isin(pc.unique(touched.column("tenant_id")).to_pylist())
           & hours_filter("event_timestamp", touched.column("hour")))
    rows = lake.read(schemas.SILVER, spec.silver_version, filter=flt)
    return run_sql("""SELECT r.* FROM rows r SEMI JOIN touched t
                      ON r.tenant_id = t.tenant_id AND date_trunc('hour', r.event_timestamp) = t.hour""",
                   {"rows": rows, "touched": touched})


def fold_increment(lake: Lake, compiled: Compiled, spec: IncrementSpec, valid: pa.Table) -> IncrementOutput:
    """Fold one bucket's new valid copies (``VALID_SCHEMA``) into its changed rows."""
    valid = schemas.conform(valid, schemas.VALID_SCHEMA)
    keys = run_sql("SELECT DISTINCT tenant_id, event_id FROM valid", {"valid": valid})
    horizon = compiled.dedup_horizon
    since = None
    if horizon is not None and valid.num_rows:
        first = pc.min(valid.column("ingestion_timestamp")).as_py()
        since = first - timedelta(seconds=horizon)
    found = keystate.lookup(lake, spec.state_version, keys, since)
    prior = schemas.conform(found, STATE_SCHEMA)
    if compiled.can_chunk:
        stragglers = run_sql(_STRAGGLERS, {"valid": valid, "prior": prior})
    else:  # no carried state: every key seen before is recomputed from all its copies
        stragglers = prior.select(["tenant_id", "event_id"])
    stragglers = schemas.conform(stragglers, _KEYS)
    # keys in order: one more chunk after their state; earlier decisions stand
    fresh = _in_keys(valid, stragglers, False)
    fresh_prior = _in_keys(prior, stragglers, False)
    if compiled.can_chunk:
        silver_a, dups_a, _ = compiled.dedup_chunk(fresh, fresh_prior, None)
    else:
        silver_a, dups_a = compiled.dedup(fresh)
    state_a = keystate.state_of(silver_a, dups_a, spec.seq, _in_keys(found, stragglers, False))
    # straggler keys: every copy again
    # where their old Silver rows are: the index lists every copy's date of a key it always
    # looks up (no horizon); a rule with a horizon skips old keys, so their lists may miss dates
    dates = (pc.unique(pc.list_flatten(_in_keys(found, stragglers, True).column("event_dates")))
             .to_pylist() if horizon is None else None)
    old_silver, old_dups = _old_copies(lake, spec, stragglers, dates) \
        if stragglers.num_rows else (
        schemas.empty(schemas.SILVER_SCHEMA), schemas.empty(schemas.DUPLICATES_SCHEMA))
    if stragglers.num_rows:
        copies = pa.concat_tables([schemas.conform(t, schemas.VALID_SCHEMA) for t in (
            old_silver, old_dups, _in_keys(valid, stragglers, True))])
        silver_s, dups_s = compiled.dedup(copies)
        state_s = keystate.state_of(silver_s, dups_s, spec.seq)
        # keys whose kept copies did not change keep their Silver rows (and Gold its hours)
        changed = schemas.conform(run_sql(_CHANGED, {"keys": stragglers, "old": old_silver,
                                                     "new": silver_s}), _KEYS)
    else:
        silver_s, dups_s = schemas.empty(schemas.SILVER_SCHEMA), schemas.empty(schemas.DUPLICATES_SCHEMA)
        state_s = schemas.empty(schemas.DEDUP_STATE_SCHEMA)
        changed = stragglers
    old_silver = _in_keys(old_silver, changed, True)
    silver_new = pa.concat_tables([schemas.conform(silver_a, schemas.SILVER_SCHEMA),
                                   schemas.conform(_in_keys(silver_s, changed, True),
                                                   schemas.SILVER_SCHEMA)])
    dups_new = pa.concat_tables([schemas.conform(dups_a, schemas.DUPLICATES_SCHEMA),
                                 schemas.conform(dups_s, schemas.DUPLICATES_SCHEMA)])
    # Gold: every hour whose Silver rows changed, from its Silver rows after the step
    touched = pa.concat_tables([_hours(silver_new), _hours(old_silver)])
    touched = schemas.conform(run_sql("SELECT DISTINCT * FROM t", {"t": touched}), TOUCHED_SCHEMA)
    kept_old = _in_keys(_silver_of_hours(lake, spec, touched), changed, False)
    silver_after = pa.concat_tables([schemas.conform(kept_old, schemas.SILVER_SCHEMA), silver_new])
    minute, hourly, alerts = compiled.gold(silver_after)
    region = compiled.region(silver_after)
    # the keys replaced, with the event dates of their old Silver rows (the partitions to rewrite)
    replaced = run_sql("""SELECT s.tenant_id, s.event_id, o.event_date,
                            (c.tenant_id IS NOT NULL) AS silver_changed FROM stragglers s
                          LEFT JOIN (SELECT DISTINCT tenant_id, event_id, event_date FROM old) o
                          USING (tenant_id, event_id)
                          LEFT JOIN changed c USING (tenant_id, event_id)""",
                       {"stragglers": stragglers, "changed": changed, "old": old_silver.select(
                           ["tenant_id", "event_id", "event_date"])})
    return IncrementOutput(silver_new, dups_new, pa.concat_tables([state_a, state_s]),
                           schemas.conform(replaced, REPLACED_SCHEMA), touched, minute, hourly,
                           alerts, region)
