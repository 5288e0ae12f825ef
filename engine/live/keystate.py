"""The dedup key index (``_medallion_dedup_state``): the state an incremental step folds with.

Per (tenant_id, event_id) key it holds what the chunked fold carries between chunks
(:mod:`rules._dedup`): the position of the key's last valid copy in ingestion order
and the lineage of its nearest kept copy. A dedup rule with ``apply_chunk`` then
folds a key's new copies that all come after its last one as one more chunk.

- Keys are stored as a 128-bit hash (MD5 of the tenant's length, tenant and event id): the index holds
  no tenant or event id in clear, so an erasure never has to find them here (docs/semantics.md §9).
- Clustered by the last copy's ingestion time (a rebuild sorts by it, steps append recent
  keys), so a rule with a horizon (dedup@1) reads only the recent part of it.
- Append-only: a step appends one row per key it touched, tagged ``seq`` (the Bronze
  version folded); a key's row with the greatest ``seq`` is its state. Optimize
  compacts the files; a rebuild (:func:`rebuild`) rewrites it whole.
- Versioned with Silver: its commits record the replay ids of the Silver and
  duplicates commits it describes. When they differ (a full or scoped replay, an
  erasure, a rollback since), the index is rebuilt from Silver and duplicates before
  the step; it is a pure function of them (every valid copy is in one of the two).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.sql import run_sql
from engine.lake.tables import Lake
from rules._dedup import STATE_SCHEMA

TABLE = schemas.DEDUP_STATE
#: 128-bit key of (tenant_id, event_id): the tenant's length leads, so no pair can fake another
KEY_SQL = "unhex(md5(length(tenant_id)::VARCHAR || ':' || tenant_id || event_id))"
#: a copy's position in ingestion order (docs/semantics.md §2)
POS = "struct_pack(i := ingestion_timestamp, t := kafka_topic, p := kafka_partition, o := kafka_offset)"

#: Per key, from every copy given (rows: tenant_id, event_id, lineage, kept): the last copy's
#: position and the kept lineage it carries (a kept copy its own, a duplicate its kept copy's).
_STATE_SQL = f"""
SELECT {KEY_SQL} AS key, r.ingestion_timestamp, r.kafka_topic, r.kafka_partition, r.kafka_offset,
  r.kept, $seq::BIGINT AS seq, list_sort(list_distinct(flatten(ds))) AS event_dates
FROM (SELECT tenant_id, event_id, arg_max(copies, {POS}) AS r, list(dates) AS ds
      FROM copies GROUP BY ALL)
ORDER BY r.ingestion_timestamp
"""

_COPIES = """
SELECT tenant_id, event_id, ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset,
  struct_pack(t := kafka_topic, p := kafka_partition, o := kafka_offset, i := ingestion_timestamp) AS kept,
  [event_timestamp::DATE] AS dates
FROM silver
UNION ALL
SELECT tenant_id, event_id, ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset,
  struct_pack(t := kept_kafka_topic, p := kept_kafka_partition, o := kept_kafka_offset,
              i := kept_ingestion_timestamp) AS kept,
  [event_timestamp::DATE] AS dates
FROM dups
"""


#: a key's state as a step uses it: what the dedup rule carries, and where its copies are
PRIOR_SCHEMA = STATE_SCHEMA.append(schemas.DEDUP_STATE_SCHEMA.field("event_dates"))


def state_of(silver: Any, dups: Any, seq: int, prior: pa.Table | None = None) -> pa.Table:
    """Index rows of every key in ``silver`` / ``dups`` (Arrow tables or datasets) and ``prior``
    (what :func:`lookup` returns), at ``seq``."""
    sql = _COPIES
    tables = {"silver": silver, "dups": dups}
    if prior is not None:
        tables["prior"] = prior
        sql += """UNION ALL SELECT tenant_id, event_id, ingestion_timestamp, kafka_topic,
            kafka_partition, kafka_offset, kept, event_dates AS dates FROM prior"""
    out = run_sql(f"WITH copies AS ({sql}) {_STATE_SQL}", tables, {"seq": seq})
    return schemas.conform(out, schemas.DEDUP_STATE_SCHEMA)


def lookup(lake: Lake, version: int | None, keys: pa.Table, since: datetime | None = None) -> pa.Table:
    """The state of each key of ``keys`` (tenant_id, event_id) that the index knows: the
    columns of ``rules._dedup.STATE_SCHEMA`` (what a dedup rule carries) plus ``event_dates``.

    Reads the index's 16-byte key column, then only the row groups holding a key asked for.
    ``since``: only keys whose last copy was ingested at or after it (a dedup rule with a
    horizon, dedup@1: older keys decide nothing); the index is clustered by that time, so
    files and row groups before it are not read at all."""
    if version is None or not keys.num_rows:
        return PRIOR_SCHEMA.empty_table()
    wanted = run_sql(f"SELECT DISTINCT tenant_id, event_id, {KEY_SQL} AS key FROM keys",
                     {"keys": keys.select(["tenant_id", "event_id"])})
    values = wanted.column("key").combine_chunks()
    ds = lake.dataset(TABLE, version)
    flt = pc.field("ingestion_timestamp") >= pa.scalar(since, schemas.TS) if since is not None else None
    hits = [part for frag in ds.get_fragments(filter=flt) for part in _hits(frag, ds.schema, values, flt)]
    if not hits:
        return PRIOR_SCHEMA.empty_table()
    out = run_sql(f"""
        WITH last AS (SELECT key, arg_max(hit, struct_pack(s := seq, p := {POS})) AS r
                      FROM hit GROUP BY key)
        SELECT w.tenant_id, w.event_id, r.ingestion_timestamp, r.kafka_topic, r.kafka_partition,
          r.kafka_offset, r.kept, r.event_dates
        FROM last JOIN wanted w USING (key)""", {"hit": pa.concat_tables(hits), "wanted": wanted})
    return schemas.conform(out, PRIOR_SCHEMA)


def _hits(frag: Any, schema: pa.Schema, values: pa.Array, flt: Any) -> list[pa.Table]:
    """The index rows of one file whose key is among ``values``: its key column first, then
    only the row groups with a match (the others are never decoded)."""
    frag.ensure_complete_metadata()
    groups = frag.subset(filter=flt, schema=schema).row_groups if flt is not None else frag.row_groups
    if not groups:
        return []
    sub = frag.subset(row_group_ids=[g.id for g in groups])
    mask = pc.is_in(sub.to_table(columns=["key"], schema=schema).column("key"), value_set=values)
    if not pc.any(mask).as_py():
        return []
    picked, start = [], 0
    flags = mask.to_numpy(zero_copy_only=False)
    for g in groups:
        if flags[start:start + g.num_rows].any():
            picked.append(g.id)
        start += g.num_rows
    data = frag.subset(row_group_ids=picked).to_table(schema=schema)
    return [data.filter(pc.is_in(data.column("key"), value_set=values))]


def meta_for(silver_meta: dict[str, Any], dups_meta: dict[str, Any]) -> dict[str, Any]:
    """What an index commit records: the Silver and duplicates commits it describes."""
    return {"silver_replay_id": silver_meta.get("replay_id"),
            "duplicates_replay_id": dups_meta.get("replay_id")}


def is_current(lake: Lake) -> bool:
    """Whether the index describes the lake's current Silver and duplicates."""
    if not lake.exists(TABLE) or not lake.exists(schemas.SILVER):
        return False
    meta = lake.commit_metadata(TABLE)
    want = meta_for(lake.commit_metadata(schemas.SILVER), lake.commit_metadata(schemas.DUPLICATES)
                    if lake.exists(schemas.DUPLICATES) else {})
    return bool(meta) and all(meta.get(k) == v and v for k, v in want.items())


def rebuild(lake: Lake, seq: int, metadata: dict[str, Any]) -> int:
    """Write the index anew from the current Silver and duplicates (one overwrite commit)."""
    silver = lake.dataset(schemas.SILVER)
    dups = lake.dataset(schemas.DUPLICATES) if lake.exists(schemas.DUPLICATES) else \
        schemas.empty(schemas.DUPLICATES_SCHEMA)
    state = state_of(silver, dups, seq)
    meta = {**metadata, **meta_for(lake.commit_metadata(schemas.SILVER),
                                   lake.commit_metadata(schemas.DUPLICATES)
                                   if lake.exists(schemas.DUPLICATES) else {}), "op": "rebuild"}
    return lake.write(TABLE, state, mode="overwrite", metadata=meta)
