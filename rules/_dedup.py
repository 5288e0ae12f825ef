"""Shared SQL of the dedup rules (ingestion order, kept-copy lineage)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from engine import schemas
from rules._duck import run_sql

#: SPEC 2: the total ingestion order.
ORDER = "ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset"
KEY = "tenant_id, event_id"

_SQL = f"""
WITH multi AS (
  -- only keys seen more than once can hold duplicates; the window runs on those rows alone
  SELECT {KEY} FROM valid GROUP BY ALL HAVING count(*) > 1
), cand AS (
  SELECT v.* FROM valid v SEMI JOIN multi m USING ({KEY})
), o AS (
  SELECT *,
    struct_pack(t := kafka_topic, p := kafka_partition, o := kafka_offset, i := ingestion_timestamp) AS lin,
    ({{is_dup}}) AS is_dup
  FROM cand
), k AS (
  SELECT *,
    last_value(CASE WHEN NOT is_dup THEN lin END IGNORE NULLS) OVER (
      PARTITION BY {KEY} ORDER BY {ORDER} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
    ) AS kept
  FROM o
)
SELECT * EXCLUDE (lin, kept), kept.t AS kept_kafka_topic, kept.p AS kept_kafka_partition,
  kept.o AS kept_kafka_offset, kept.i AS kept_ingestion_timestamp
FROM k
UNION ALL BY NAME
SELECT *, false AS is_dup FROM valid ANTI JOIN multi USING ({KEY})
"""


def split_duplicates(valid: pa.Table, is_dup_sql: str, rule: str,
                     params: dict[str, object] | None = None) -> tuple[pa.Table, pa.Table]:
    """Mark duplicates with ``is_dup_sql`` (a window expression over ``valid``); split.

    Returns (silver rows with ``event_date``, duplicate rows with the lineage of the
    nearest earlier kept copy of their key).
    """
    out = run_sql(_SQL.format(is_dup=is_dup_sql), {"valid": valid}, params)
    dup = out.column("is_dup")
    silver = out.filter(pc.invert(dup))
    silver = silver.append_column("event_date", pc.cast(silver.column("event_timestamp"), pa.date32()))
    dups = out.filter(dup)
    dups = dups.append_column("rule", pa.array([rule] * dups.num_rows, pa.string()))
    return schemas.conform(silver, schemas.SILVER_SCHEMA), schemas.conform(dups, schemas.DUPLICATES_SCHEMA)
