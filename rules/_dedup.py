"""Shared SQL of the dedup rules (ingestion order, kept-copy lineage, carried state).

A dedup rule can run over a whole shard at once, or over consecutive
ingestion-time chunks of it. Between chunks it carries a *state*: per key, the
last copy seen (its ingestion order position) and the lineage of the nearest kept
copy so far. The state enters the next chunk as one "prior" row per key that sits
before every row of the chunk in ingestion order, so the same window expressions
give the same answers as over the whole shard. Each rule says which keys it can
forget (dedup@1: keys whose last copy is older than its horizon; dedup@2: none).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.sql import run_sql

#: docs/semantics.md §2: the total ingestion order.
ORDER = "ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset"
KEY = "tenant_id, event_id"

#: The carried state: the key, the last copy's position in ingestion order, the kept lineage.
STATE_SCHEMA = pa.schema([
    ("tenant_id", pa.string()), ("event_id", pa.string()),
    ("ingestion_timestamp", schemas.TS), ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ("kept", pa.struct([("t", pa.string()), ("p", pa.int32()), ("o", pa.int64()), ("i", schemas.TS)])),
])

_SQL = f"""
WITH multi AS (
  -- only keys seen more than once (here or in the prior state) can hold duplicates: twice in
  -- the chunk, or in the chunk and the state (which holds a key once); the state is probed
  -- against the chunk's keys, never grouped or hashed whole
  SELECT {KEY} FROM valid GROUP BY ALL HAVING count(*) > 1
  UNION
  SELECT {KEY} FROM prior SEMI JOIN valid USING ({KEY})
), cand AS (
  SELECT v.*, false AS is_prior, NULL AS kept0 FROM valid v SEMI JOIN multi m USING ({KEY})
  UNION ALL BY NAME
  SELECT p.* EXCLUDE (kept), true AS is_prior, p.kept AS kept0 FROM prior p SEMI JOIN multi m USING ({KEY})
), o AS (
  SELECT *,
    struct_pack(t := kafka_topic, p := kafka_partition, o := kafka_offset, i := ingestion_timestamp) AS lin,
    ({{is_dup}}) AS is_dup
  FROM cand
), kl AS (
  -- the kept lineage each row contributes: a prior row its carried one, a kept row its own
  SELECT *, CASE WHEN is_prior THEN kept0 WHEN NOT is_dup THEN lin END AS klin FROM o
), k AS (
  SELECT *,
    last_value(klin IGNORE NULLS) OVER (
      PARTITION BY {KEY} ORDER BY {ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS kept
  FROM kl
)
SELECT * EXCLUDE (lin, kept, kept0, klin, is_prior),
  kept.t AS kept_kafka_topic, kept.p AS kept_kafka_partition,
  kept.o AS kept_kafka_offset, kept.i AS kept_ingestion_timestamp,
  coalesce(klin, kept) AS kept_after
FROM k WHERE NOT is_prior
UNION ALL BY NAME
SELECT *, false AS is_dup,
  struct_pack(t := kafka_topic, p := kafka_partition, o := kafka_offset, i := ingestion_timestamp) AS kept_after
FROM valid ANTI JOIN multi USING ({KEY})
"""

#: State after a chunk: each key's last copy (chunk or prior) with its kept lineage, minus what
#: the rule may forget. ``$until``: no later chunk holds a row ingested before it.
_STATE_SQL = f"""
WITH last AS (
  -- a key of the chunk: its last copy there (every prior row comes before the chunk's rows)
  SELECT {KEY}, arg_max(struct_pack({KEY}, ingestion_timestamp, kafka_topic, kafka_partition,
                                    kafka_offset, kept := kept_after), struct_pack({ORDER})) AS r
  FROM out GROUP BY {KEY}
  UNION ALL
  -- any other key: its prior row, as it was (keys compared as GROUP BY does: NULL = NULL)
  SELECT {KEY}, struct_pack({KEY}, ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset,
                            kept) AS r
  FROM prior p WHERE NOT EXISTS (
    SELECT 1 FROM out o WHERE o.tenant_id IS NOT DISTINCT FROM p.tenant_id
                          AND o.event_id IS NOT DISTINCT FROM p.event_id)
)
SELECT r.* FROM last WHERE {{retain}}
"""


def split_duplicates(valid: pa.Table, is_dup_sql: str, rule: str,
                     params: dict[str, object] | None = None, *, prior: pa.Table | None = None,
                     until: object = None, retain_sql: str = "true"
                     ) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """Mark duplicates with ``is_dup_sql`` (a window expression over ``valid``); split.

    ``prior`` is the state carried from earlier chunks (every row of ``valid`` comes later
    in ingestion order). With ``until`` set, also returns the state to carry into the next
    chunk, keeping the keys for which ``retain_sql`` holds (it may use ``$until`` and the
    rule's params).

    Returns (silver rows with ``event_date``, duplicate rows with the lineage of the
    nearest earlier kept copy of their key, the new state or None).
    """
    prior_t = prior if prior is not None else STATE_SCHEMA.empty_table()
    out = run_sql(_SQL.format(is_dup=is_dup_sql), {"valid": valid, "prior": prior_t}, params)
    state = None
    if until is not None:
        given = {**(params or {}), "until": until}
        sp = {k: v for k, v in given.items() if f"${k}" in retain_sql}  # bind only what it uses
        state = run_sql(_STATE_SQL.format(retain=f"({retain_sql})"),
                        {"out": out, "prior": prior_t}, sp or None)
        state = schemas.conform(state, STATE_SCHEMA)
    dup = out.column("is_dup")
    silver = out.filter(pc.invert(dup))
    silver = silver.append_column("event_date", pc.cast(silver.column("event_timestamp"), pa.date32()))
    dups = out.filter(dup)
    dups = dups.append_column("rule", pa.array([rule] * dups.num_rows, pa.string()))
    return (schemas.conform(silver, schemas.SILVER_SCHEMA),
            schemas.conform(dups, schemas.DUPLICATES_SCHEMA), state)
