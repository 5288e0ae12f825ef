"""Arrow schemas of every table of docs/semantics.md §2-§4 and the ledger (pure: no I/O)."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

BRONZE = "bronze_api_usage"
SILVER = "silver_api_usage"
QUARANTINE = "silver_quarantine"
DUPLICATES = "silver_duplicates"
MINUTE = "tenant_usage_1min"
HOURLY = "tenant_usage_hourly"
ALERTS = "enforcement_alerts"
#: docs/semantics.md §8: exists only while the active ruleset has region_usage
REGION = "tenant_usage_region_hourly"
AUDIT = "reprocessing_audit"
#: docs/semantics.md §9: the tombstones of erasure requests (hashed subjects, no clear identifier)
ERASURES = "_medallion_erasures"

#: docs/semantics.md §11: the dedup key index of incremental folding (one row per key and step, hashed keys)
DEDUP_STATE = "_medallion_dedup_state"
SILVER_TABLES = (SILVER, QUARANTINE, DUPLICATES)
GOLD_TABLES = (MINUTE, HOURLY, ALERTS)
#: Gold tables that only some rulesets make, by the rule slot that makes them
OPTIONAL_GOLD: dict[str, str] = {REGION: "region_usage"}
#: Tables keyed by a time window (scopes select their rows by window_start)
WINDOWED = (*GOLD_TABLES, REGION)
ALL_TABLES = (BRONZE, *SILVER_TABLES, *GOLD_TABLES, REGION)

BRONZE_SCHEMA = pa.schema(
    [
        ("raw_payload", pa.binary()),
        ("kafka_topic", pa.string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_timestamp", TS),
        ("kafka_key", pa.binary()),
        ("ingestion_timestamp", TS),
        ("ingestion_date", pa.date32()),
        ("event_id", pa.string()),
        ("tenant_id", pa.string()),
        ("event_timestamp", TS),
    ]
)
BRONZE_KEY = ("kafka_topic", "kafka_partition", "kafka_offset")

LINEAGE = [
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("ingestion_timestamp", TS),
]

EVENT_FIELDS = [
    ("event_id", pa.string()),
    ("event_timestamp", TS),
    ("tenant_id", pa.string()),
    ("subscription_plan", pa.string()),
    ("endpoint", pa.string()),
    ("status_code", pa.int32()),
    ("method", pa.string()),
    ("latency_ms", pa.int64()),
    ("request_bytes", pa.int64()),
    ("response_bytes", pa.int64()),
    ("user_id", pa.string()),
    ("data_residency_region", pa.string()),
]

#: Output of validate: typed event + lineage (before dedup).
VALID_SCHEMA = pa.schema([*EVENT_FIELDS, *LINEAGE])

SILVER_SCHEMA = pa.schema([*EVENT_FIELDS, *LINEAGE, ("event_date", pa.date32())])

QUARANTINE_SCHEMA = pa.schema(
    [
        *LINEAGE,
        ("raw_payload", pa.binary()),
        ("reason", pa.string()),
        ("rule", pa.string()),
        # best effort: set when the payload had a valid timestamp / tenant string
        ("tenant_id", pa.string()),
        ("event_timestamp", TS),
    ]
)

DUPLICATES_SCHEMA = pa.schema(
    [
        *EVENT_FIELDS,
        *LINEAGE,
        ("kept_kafka_topic", pa.string()),
        ("kept_kafka_partition", pa.int32()),
        ("kept_kafka_offset", pa.int64()),
        ("kept_ingestion_timestamp", TS),
        ("rule", pa.string()),
    ]
)

MINUTE_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("window_start", TS),
        ("window_end", TS),
        ("subscription_plan", pa.string()),
        ("total_requests", pa.int64()),
        ("error_requests", pa.int64()),
        ("plan_limit", pa.int64()),
        ("over_limit_count", pa.int64()),
        ("burst_allowance_used", pa.int64()),
    ]
)

HOURLY_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("window_start", TS),
        ("subscription_plan", pa.string()),
        ("total_requests", pa.int64()),
        ("error_requests", pa.int64()),
        ("over_limit_count", pa.int64()),
        ("over_limit_minutes", pa.int64()),
        ("burst_allowance_used", pa.int64()),
    ]
)

ALERTS_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("alert_type", pa.string()),
        ("alert_time", TS),
        ("window_start", TS),
        ("window_end", TS),
        ("subscription_plan", pa.string()),
        ("total_requests", pa.int64()),
        ("plan_limit", pa.int64()),
        ("over_limit_count", pa.int64()),
    ]
)

REGION_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("window_start", TS),
        ("window_end", TS),
        ("data_residency_region", pa.string()),
        ("total_requests", pa.int64()),
        ("error_requests", pa.int64()),
    ]
)

#: The audit ledger (``reprocessing_audit``): one row per replay, rollback, recovery.
AUDIT_SCHEMA = pa.schema([
    ("reprocessing_id", pa.string()),
    ("kind", pa.string()),  # replay | rollback | recovery
    ("start_time", TS),
    ("end_time", TS),
    ("layer", pa.string()),
    ("mode", pa.string()),
    ("reason", pa.string()),
    ("affected_start", TS),
    ("affected_end", TS),
    ("tenants", pa.string()),
    ("record_count", pa.int64()),
    ("status", pa.string()),  # running | success | failed | rolled_back
    ("operator", pa.string()),
    ("ruleset_name", pa.string()),
    ("ruleset_before", pa.string()),
    ("ruleset_after", pa.string()),
    ("bronze_version", pa.int64()),
    ("tables", pa.string()),  # JSON list
    ("versions_before", pa.string()),  # JSON {table: version}
    ("versions_after", pa.string()),
    ("conservation_ok", pa.bool_()),
    ("checks", pa.string()),  # JSON list of validation-gate results
    ("allow_failed_checks", pa.bool_()),
    ("target_id", pa.string()),  # rollback/recovery: the replay acted on
    ("details", pa.string()),
])

#: The dedup key index: per (tenant_id, event_id) key (as a 128-bit hash: the index holds no
#: tenant or event id in clear), the position of its last valid copy in ingestion order and
#: the lineage of its nearest kept copy, as of the step ``seq`` (the Bronze version folded).
#: Append-only between full rebuilds: a key's row of the greatest ``seq`` is its state.
DEDUP_STATE_SCHEMA = pa.schema([
    ("key", pa.binary()),
    ("ingestion_timestamp", TS),
    ("kafka_topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
    ("kept", pa.struct([("t", pa.string()), ("p", pa.int32()), ("o", pa.int64()), ("i", TS)])),
    ("seq", pa.int64()),
    #: the event dates of the key's copies (Silver's partitions to read when it is recomputed)
    ("event_dates", pa.list_(pa.date32())),
])
ERASURES_SCHEMA = pa.schema([
    ("subject_hash", pa.string()),
    ("tenant_hash", pa.string()),
    ("kind", pa.string()),  # tenant | user
    ("requested_at", TS),
    ("erasure_id", pa.string()),
    ("recorded_at", TS),
])

SCHEMAS: dict[str, pa.Schema] = {
    BRONZE: BRONZE_SCHEMA,
    SILVER: SILVER_SCHEMA,
    QUARANTINE: QUARANTINE_SCHEMA,
    DUPLICATES: DUPLICATES_SCHEMA,
    MINUTE: MINUTE_SCHEMA,
    HOURLY: HOURLY_SCHEMA,
    ALERTS: ALERTS_SCHEMA,
    REGION: REGION_SCHEMA,
    AUDIT: AUDIT_SCHEMA,
    ERASURES: ERASURES_SCHEMA,
    DEDUP_STATE: DEDUP_STATE_SCHEMA,
}

PARTITIONS: dict[str, list[str]] = {BRONZE: ["ingestion_date"], SILVER: ["event_date"]}

KEYS: dict[str, tuple[str, ...]] = {
    BRONZE: BRONZE_KEY,
    SILVER: BRONZE_KEY,
    QUARANTINE: BRONZE_KEY,
    DUPLICATES: BRONZE_KEY,
    MINUTE: ("tenant_id", "window_start"),
    HOURLY: ("tenant_id", "window_start"),
    ALERTS: ("tenant_id", "alert_type", "window_start"),
    REGION: ("tenant_id", "window_start", "data_residency_region"),
}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast ``table`` to exactly ``schema`` (column order included)."""
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
