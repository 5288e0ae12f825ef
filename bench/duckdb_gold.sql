-- Baseline for `make bench`: ruleset 2026-02 (validate@1, dedup@2, plan_limits@2,
-- burst_allowance@1, abuse@1) from Bronze to Gold as one DuckDB script, reading the
-- `bronze` relation (registered by bench.py). It skips the engine's strict-JSON edge
-- handling (invalid UTF-8 is replaced, not rejected), which the generated histories do not
-- need. bench.py checks that its Gold equals the engine's before printing ratios.
CREATE OR REPLACE TEMP TABLE limits AS
  SELECT * FROM (VALUES ('free', 100, 30), ('starter', 300, 150), ('professional', 1000, 500),
                        ('enterprise', 5000, 2500)) t(plan, plan_limit, allowance);

CREATE OR REPLACE TEMP TABLE valid AS
WITH d AS (
  SELECT kafka_topic, kafka_partition, kafka_offset, ingestion_timestamp,
         decode(raw_payload, 'replace') AS raw FROM bronze
), j AS (
  SELECT *, CASE WHEN json_valid(raw) AND starts_with(raw, '{') THEN raw END AS o FROM d
), x AS MATERIALIZED (
  SELECT *, json_type(o, ['$.event_id', '$.event_timestamp', '$.tenant_id', '$.subscription_plan',
                          '$.endpoint', '$.status_code', '$.latency_ms', '$.request_bytes',
                          '$.response_bytes']) AS ty,
            json_extract_string(o, ['$.event_id', '$.event_timestamp', '$.tenant_id',
                                    '$.subscription_plan', '$.endpoint', '$.status_code',
                                    '$.latency_ms', '$.request_bytes', '$.response_bytes']) AS v
  FROM j WHERE o IS NOT NULL AND NOT regexp_matches(o, '[:,]\s*NaN')
)
SELECT v[1] AS event_id, TRY_CAST(v[2] AS TIMESTAMPTZ) AS event_timestamp, v[3] AS tenant_id,
       v[4] AS subscription_plan, CAST(v[6] AS INTEGER) AS status_code,
       kafka_topic, kafka_partition, kafka_offset, ingestion_timestamp
FROM x
WHERE ty[1] = 'VARCHAR' AND v[1] <> '' AND length(v[1]) <= 128
  AND ty[2] = 'VARCHAR' AND regexp_full_match(v[2], '[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})')
  AND TRY_CAST(v[2] AS TIMESTAMPTZ) IS NOT NULL
  AND ty[3] = 'VARCHAR' AND v[3] <> '' AND length(v[3]) <= 128
  AND ty[4] = 'VARCHAR' AND v[4] IN (SELECT plan FROM limits)
  AND ty[5] = 'VARCHAR' AND v[5] <> ''
  AND ty[6] IN ('BIGINT', 'UBIGINT') AND TRY_CAST(v[6] AS BIGINT) BETWEEN 100 AND 599
  AND (ty[7] IS NULL OR ty[7] = 'NULL' OR (ty[7] IN ('BIGINT', 'UBIGINT') AND TRY_CAST(v[7] AS BIGINT) >= 0))
  AND (ty[8] IS NULL OR ty[8] = 'NULL' OR (ty[8] IN ('BIGINT', 'UBIGINT') AND TRY_CAST(v[8] AS BIGINT) >= 0))
  AND (ty[9] IS NULL OR ty[9] = 'NULL' OR (ty[9] IN ('BIGINT', 'UBIGINT') AND TRY_CAST(v[9] AS BIGINT) >= 0))
  AND TRY_CAST(v[2] AS TIMESTAMPTZ) <= ingestion_timestamp + INTERVAL 1 HOUR;

CREATE OR REPLACE TEMP TABLE silver AS
SELECT * FROM valid
QUALIFY row_number() OVER (PARTITION BY tenant_id, event_id
                           ORDER BY ingestion_timestamp, kafka_topic, kafka_partition, kafka_offset) = 1;

CREATE OR REPLACE TEMP TABLE minute AS
WITH m AS (
  SELECT tenant_id, date_trunc('minute', event_timestamp) AS window_start,
    arg_max(subscription_plan, struct_pack(event_timestamp, event_id, ingestion_timestamp, kafka_topic,
                                           kafka_partition, kafka_offset)) AS subscription_plan,
    max(struct_pack(event_timestamp, event_id, ingestion_timestamp, kafka_topic, kafka_partition,
                    kafka_offset)) AS latest,
    count(*) AS total_requests, count(*) FILTER (WHERE status_code >= 500) AS error_requests
  FROM silver GROUP BY ALL
), l AS (
  SELECT m.*, limits.plan_limit, greatest(0, total_requests - limits.plan_limit) AS raw_over,
    time_bucket(INTERVAL 5 MINUTE, window_start, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS w5
  FROM m JOIN limits ON limits.plan = m.subscription_plan
), c AS (
  SELECT l.*, sum(raw_over) OVER (PARTITION BY tenant_id, w5 ORDER BY window_start) AS c_m,
    arg_max(subscription_plan, latest) OVER (PARTITION BY tenant_id, w5) AS plan5
  FROM l
)
SELECT tenant_id, window_start, window_start + INTERVAL 1 MINUTE AS window_end, c.subscription_plan,
  total_requests, error_requests, c.plan_limit,
  greatest(0, c_m - a.allowance) - greatest(0, c_m - raw_over - a.allowance) AS over_limit_count,
  raw_over - (greatest(0, c_m - a.allowance) - greatest(0, c_m - raw_over - a.allowance)) AS burst_allowance_used,
  latest
FROM c JOIN limits a ON a.plan = c.plan5;

CREATE OR REPLACE TEMP TABLE hourly AS
SELECT tenant_id, date_trunc('hour', window_start) AS window_start,
  arg_max(subscription_plan, latest) AS subscription_plan, sum(total_requests) AS total_requests,
  sum(error_requests) AS error_requests, sum(over_limit_count) AS over_limit_count,
  count(*) FILTER (WHERE over_limit_count > 0) AS over_limit_minutes,
  sum(burst_allowance_used) AS burst_allowance_used
FROM minute GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE alerts AS
SELECT tenant_id, 'over_limit' AS alert_type, window_start, over_limit_count FROM minute WHERE over_limit_count > 0
UNION ALL
SELECT tenant_id, 'abuse', window_start, over_limit_count FROM minute WHERE total_requests >= 10 * plan_limit;
