"""Deterministic synthetic API-usage histories (vectorized with NumPy and Arrow).

What a history holds, for a seed:
- tenants with Zipf-skewed activity, plans spread over the four plans, and a
  share of tenants that change plan mid-history;
- steady traffic plus burst minutes at 0.9x-1.7x the plan limit (free tenants
  at 61-100 requests/minute: Scenario 1) and a few abusive minutes (>= 10x);
- re-deliveries (``dup_rate``) with ingestion gaps under and over 10 minutes,
  some in chains of three;
- late events ingested hours after they happened, non-UTC offsets, schema v2
  fields (``user_id``, ``data_residency_region``) in the second half;
- invalid messages (``invalid_rate``) covering every SPEC quarantine reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine import schemas

US = 1_000_000
MINUTE = 60 * US
PLANS = np.array(["free", "starter", "professional", "enterprise"])
PLAN_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
LIMITS = np.array([60, 300, 1000, 5000])
ENDPOINTS = np.array(["/v1/items", "/v1/orders", "/v1/users", "/v2/search", "/v2/reports"])
METHODS = np.array(["GET", "POST", "PUT", "DELETE"])
REGIONS = np.array(["eu-west-1", "us-east-1", "ap-south-1"])
PARTITIONS = 4
TOPIC = "api-usage-events"

#: One template per SPEC quarantine reason; ``{id}``/``{ts}``/``{t}`` are filled in.
INVALID_TEMPLATES: tuple[bytes, ...] = (
    b"{not json",
    b"",
    b"\xff\xfe{\"event_id\": \"{id}\"}",
    b'{"event_id": "{id}", "latency_ms": NaN}',
    b"[1, 2, 3]",
    b'{"event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "", "status_code": 200}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items"}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": "200"}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200.0}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200, "latency_ms": true}',
    b'{"event_id": "{id}", "event_timestamp": "2026-02-30T10:00:00Z", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200}',
    b'{"event_id": "{id}", "event_timestamp": "2026-03-02 10:00:00", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "platinum", "endpoint": "/v1/items", "status_code": 200}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 700}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200, "latency_ms": -5}',
    b'{"event_id": "{id}", "event_timestamp": "{ts}", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200, "response_bytes": 99999999999999999999}',
    b'{"event_id": "{id}", "event_timestamp": "2099-01-01T00:00:00Z", "tenant_id": "{t}", "subscription_plan": "free", "endpoint": "/v1/items", "status_code": 200}',
)


@dataclass(frozen=True)
class GeneratorConfig:
    events: int = 100_000
    tenants: int = 200
    days: float = 1.0
    seed: int = 42
    dup_rate: float = 0.02
    invalid_rate: float = 0.01
    late_rate: float = 0.01
    burst_share: float = 0.15
    plan_change_rate: float = 0.1
    start: datetime = datetime(2026, 3, 1, tzinfo=UTC)


def _ids(prefix: str, idx: np.ndarray, width: int) -> pa.Array:
    s = pc.utf8_lpad(pa.array(idx).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, s, "")


def _offset_text(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _fmt_ts(ts_us: np.ndarray, offset_min: np.ndarray) -> pa.Array:
    """RFC 3339 text of each instant, written in its local offset (``Z`` for UTC)."""
    if len(ts_us) == 0:
        return pa.array([], pa.string())
    local = (ts_us + offset_min.astype(np.int64) * MINUTE).astype("datetime64[us]")
    body = pa.array(np.datetime_as_string(local, unit="us"))
    uniq, inv = np.unique(offset_min, return_inverse=True)
    suffix = pa.array([_offset_text(int(m)) for m in uniq]).take(pa.array(inv))
    return pc.binary_join_element_wise(body, suffix, "")


#: Events generated per chunk: bounded working set, so the rate holds for long histories.
CHUNK_EVENTS = 1_000_000


@dataclass(frozen=True)
class _Chunk:
    sources: pa.Array  # payloads: base events, then invalid messages
    event_id: pa.Array  # aligned with sources (NULL for invalid messages)
    event_ts: np.ndarray  # aligned with sources (-1 for invalid messages)
    tenant: np.ndarray  # aligned with sources
    row_src: np.ndarray  # one per output row: index into sources (re-deliveries repeat one)
    row_ing: np.ndarray  # one per output row: ingestion time (us)


def generate(cfg: GeneratorConfig) -> pa.Table:
    """A Bronze table (SPEC section 2) in ingestion order, built in chunks of events."""
    trng = np.random.default_rng([cfg.seed, 0])  # tenants' plans: the same for every chunk
    T = max(1, cfg.tenants)
    start_us = int(cfg.start.timestamp()) * US
    span_us = int(cfg.days * 86400 * US)
    plan0 = trng.choice(len(PLANS), size=T, p=PLAN_WEIGHTS)
    plan1 = np.where(trng.random(T) < cfg.plan_change_rate, trng.integers(0, len(PLANS), T), plan0)
    change_at = start_us + (trng.random(T) * span_us).astype(np.int64)
    tenant_names = pa.array([f"tenant-{i:05d}" for i in range(T)])  # T is small next to events
    n_chunks = max(1, -(-cfg.events // CHUNK_EVENTS))
    chunks, offset = [], 0
    for i in range(n_chunks):
        # chunk i covers the i-th slice of the time span, so chunks come out nearly in order
        events = cfg.events // n_chunks + (1 if i < cfg.events % n_chunks else 0)
        sub = replace(cfg, events=events, days=cfg.days / n_chunks,
                      start=cfg.start + timedelta(days=cfg.days * i / n_chunks))
        chunk = _chunk(sub, np.random.default_rng([cfg.seed, i + 1]), tenant_names, plan0, plan1,
                       change_at, offset)
        offset += len(chunk.sources)
        chunks.append(chunk)
    base = np.cumsum([0] + [len(c.sources) for c in chunks[:-1]])
    row_src = np.concatenate([c.row_src + b for c, b in zip(chunks, base, strict=True)])
    row_ing = np.concatenate([c.row_ing for c in chunks])
    order = np.argsort(row_ing, kind="stable")
    src = row_src[order]
    take = pa.array(src)
    tenant = np.concatenate([c.tenant for c in chunks])[src]
    ts = np.concatenate([c.event_ts for c in chunks])[src]
    ok = pa.array(ts != -1)
    known = pa.table({
        "event_id": pa.concat_arrays([c.event_id for c in chunks]).take(take),
        "tenant_id": pc.if_else(ok, tenant_names.take(pa.array(tenant)), pa.scalar(None, pa.string())),
        "event_timestamp": pc.if_else(ok, pa.array(ts, pa.int64()).cast(schemas.TS),
                                      pa.scalar(None, schemas.TS)),
    })
    payload = pa.concat_arrays([c.sources for c in chunks]).take(take)
    return _assemble(payload, tenant_names, tenant, row_ing[order], known)


def _chunk(cfg: GeneratorConfig, rng: np.random.Generator, tenant_names: pa.Array, plan0: np.ndarray,
           plan1: np.ndarray, change_at: np.ndarray, id_offset: int) -> _Chunk:
    n_inv = int(round(cfg.events * cfg.invalid_rate))
    n_valid = max(0, cfg.events - n_inv)
    n_dup = int(round(n_valid * cfg.dup_rate))
    n_base = max(0, n_valid - n_dup)
    start_us = int(cfg.start.timestamp()) * US
    span_us = int(cfg.days * 86400 * US)
    T = max(1, cfg.tenants)

    weights = 1.0 / np.power(np.arange(1, T + 1), 1.1)
    weights /= weights.sum()

    # steady traffic
    n_burst_target = int(n_base * cfg.burst_share)
    n_steady = n_base - n_burst_target
    tenant = rng.choice(T, size=n_steady, p=weights)
    ts = start_us + (rng.random(n_steady) * span_us).astype(np.int64)
    # burst minutes: counts at 0.9x-1.7x the plan limit, 2% of them abusive (10x-11x)
    # bursts favour small plans, whose limits a burst of a few hundred requests can cross
    bw = weights * np.array([4.0, 2.0, 1.0, 0.2])[plan0]
    bw /= bw.sum()
    b_t, b_ts = [], []
    made = 0
    while made < n_burst_target:
        bt = int(rng.choice(T, p=bw))
        minute = start_us + int(rng.integers(0, max(1, span_us // MINUTE))) * MINUTE
        p = plan0[bt] if minute < change_at[bt] else plan1[bt]
        factor = rng.uniform(10.0, 11.0) if rng.random() < 0.02 else rng.uniform(0.9, 1.7)
        k = min(int(LIMITS[p] * factor), n_burst_target - made)
        b_t.append(np.full(k, bt))
        b_ts.append(minute + rng.integers(0, MINUTE, k))
        made += k
        if k == 0:
            break
    if b_t:
        tenant = np.concatenate([tenant, *b_t])
        ts = np.concatenate([ts, *b_ts])
    n_base = len(tenant)
    plan = np.where(ts < change_at[tenant], plan0[tenant], plan1[tenant])

    lag = rng.integers(50_000, 2 * US, n_base)
    late = rng.random(n_base) < cfg.late_rate
    lag = np.where(late, rng.integers(1 * 3600 * US, 6 * 3600 * US, n_base), lag)
    ing = ts + lag
    offset_min = np.where(rng.random(n_base) < 0.05, rng.choice([-300, 60, 120, 330], n_base), 0)
    status = rng.choice([200, 201, 204, 400, 404, 429, 500, 503], n_base,
                        p=[0.7, 0.05, 0.03, 0.05, 0.05, 0.04, 0.05, 0.03])
    v2 = ts >= start_us + span_us // 2

    ev = _ids("evt-", id_offset + np.arange(n_base), 10)
    parts = [
        '{"event_id": "', ev,
        '", "event_timestamp": "', _fmt_ts(ts, offset_min),
        '", "tenant_id": "', tenant_names.take(pa.array(tenant)),
        '", "subscription_plan": "', _pick(PLANS, plan),
        '", "endpoint": "', _pick(ENDPOINTS, rng.integers(0, len(ENDPOINTS), n_base)),
        '", "method": "', _pick(METHODS, rng.integers(0, len(METHODS), n_base)),
        '", "status_code": ', pa.array(status).cast(pa.string()),
        ', "latency_ms": ', pa.array(rng.integers(1, 2000, n_base)).cast(pa.string()),
        ', "request_bytes": ', pa.array(rng.integers(0, 4096, n_base)).cast(pa.string()),
        ', "response_bytes": ', pa.array(rng.integers(0, 65536, n_base)).cast(pa.string()),
        pc.if_else(pa.array(v2), pc.binary_join_element_wise(
            ', "user_id": "', _ids("user-", rng.integers(0, 10 * T, n_base), 7),
            '", "data_residency_region": "', _pick(REGIONS, rng.integers(0, 3, n_base)), '"', ""), ""),
        "}",
    ]
    payload = pc.binary_join_element_wise(*parts, "")
    if isinstance(payload, pa.ChunkedArray):
        payload = payload.combine_chunks()

    # re-deliveries: half within 10 minutes, half later; a tenth of them get a third copy
    src = rng.choice(n_base, size=min(n_dup, n_base), replace=False) if n_base else np.array([], int)
    gap = np.where(rng.random(len(src)) < 0.5, rng.integers(1 * MINUTE, 9 * MINUTE, len(src)),
                   rng.integers(11 * MINUTE, 90 * MINUTE, len(src)))
    chain = src[: len(src) // 10]
    chain_gap = gap[: len(chain)] + rng.integers(1 * MINUTE, 9 * MINUTE, len(chain))
    dup_idx = np.concatenate([src, chain]).astype(np.int64)
    dup_ing = np.concatenate([ing[src] + gap, ing[chain] + chain_gap])

    # every output row names its source: a base event (0..n_base-1) or an invalid one (n_base..)
    row_src = np.concatenate([np.arange(n_base), dup_idx])
    row_ing = np.concatenate([ing, dup_ing])
    sources = [payload.cast(pa.binary())]
    event_ids = [ev.cast(pa.string())]
    event_ts = [ts]
    if n_inv:
        inv_payload, inv_tenant, inv_ing = _invalid(rng, n_inv, tenant_names, start_us, span_us, id_offset)
        sources.append(inv_payload)
        event_ids.append(pa.nulls(n_inv, pa.string()))
        event_ts.append(np.full(n_inv, -1, dtype=np.int64))
        row_src = np.concatenate([row_src, n_base + np.arange(n_inv)])
        row_ing = np.concatenate([row_ing, inv_ing])
        tenant = np.concatenate([tenant, inv_tenant])
    # rows in local ingestion order (a gather within the chunk): the global merge stays local
    order = np.argsort(row_ing, kind="stable")
    src = row_src[order]
    take = pa.array(src)
    return _Chunk(pa.concat_arrays(sources).take(take), pa.concat_arrays(event_ids).take(take),
                  np.concatenate(event_ts)[src], tenant[src], np.arange(len(src), dtype=np.int64),
                  row_ing[order])


def _invalid(rng: np.random.Generator, n: int, tenant_names: pa.Array, start_us: int, span_us: int,
             id_offset: int = 0):
    tmpl = np.arange(n) % len(INVALID_TEMPLATES)
    rng.shuffle(tmpl)
    tenant = rng.integers(0, len(tenant_names), n)
    ts = start_us + (rng.random(n) * span_us).astype(np.int64)
    ts_text = _fmt_ts(ts, np.zeros(n, dtype=np.int64)).to_pylist()
    out = []
    for i in range(n):  # n = invalid_rate x events: small next to the vectorized bulk
        t = INVALID_TEMPLATES[tmpl[i]]
        t = t.replace(b"{id}", f"bad-{id_offset + i:010d}".encode()).replace(b"{ts}", ts_text[i].encode())
        out.append(t.replace(b"{t}", tenant_names[int(tenant[i])].as_py().encode()))
    return pa.array(out, pa.binary()), tenant, ts + rng.integers(50_000, 2 * US, n)


def _pick(values: np.ndarray, idx: np.ndarray) -> pa.Array:
    return pa.array(values.tolist()).take(pa.array(idx))


def _assemble(payload: pa.Array, tenant_names: pa.Array, tenant: np.ndarray, ing_us: np.ndarray,
              known: pa.Table) -> pa.Table:
    """Rows already in ingestion order -> the Bronze table."""
    n = len(ing_us)
    extracted = known
    keys = tenant_names.take(pa.array(tenant))
    part_np = _partition_of(tenant_names)[tenant]
    offsets = np.empty(n, dtype=np.int64)
    for p in range(PARTITIONS):
        m = part_np == p
        offsets[m] = np.arange(int(m.sum()))
    ing = pa.array(ing_us, pa.int64()).cast(schemas.TS)
    return pa.table({
        "raw_payload": payload,
        "kafka_topic": pa.array([TOPIC]).take(pa.array(np.zeros(n, dtype=np.int64))),
        "kafka_partition": pa.array(part_np, pa.int32()),
        "kafka_offset": pa.array(offsets),
        "kafka_timestamp": ing,
        "kafka_key": keys.cast(pa.binary()),
        "ingestion_timestamp": ing,
        "ingestion_date": pc.cast(ing, pa.date32()),
        "event_id": extracted.column("event_id"),
        "tenant_id": extracted.column("tenant_id"),
        "event_timestamp": extracted.column("event_timestamp"),
    }, schema=schemas.BRONZE_SCHEMA)


def _partition_of(names: pa.Array) -> np.ndarray:
    """Kafka-like partitioning by key: a stable hash of each tenant name."""
    return np.array([int.from_bytes(hashlib.md5(n.encode()).digest()[:4], "little") % PARTITIONS
                     for n in names.to_pylist()], dtype=np.int64)


def to_jsonl(table: pa.Table) -> bytes:
    """The payloads, one per line, in ingestion order (newline-free by construction)."""
    return b"\n".join(table.column("raw_payload").to_pylist()) + b"\n"
