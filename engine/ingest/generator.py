"""Deterministic synthetic API-usage histories (vectorized with NumPy and Arrow).

What a history holds, for a seed:
- tenants with Zipf-skewed activity, plans spread over the four plans, and a
  share of tenants that change plan mid-history;
- steady traffic plus burst minutes at 0.9x-1.7x the plan limit (free tenants
  at 61-100 requests/minute: Scenario 1) and a few abusive minutes (>= 10x);
- re-deliveries (``dup_rate``) with ingestion gaps under and over 10 minutes,
  some in chains of three;
- late events ingested hours after they happened, non-UTC offsets, schema v2
  fields (``user_id``, ``data_residency_region``) in the second half, or from
  ``v2_start`` on for a ``v2_share`` of the events;
- invalid messages (``invalid_rate``) covering every quarantine reason of docs/semantics.md §3.1.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from engine.contract import schemas
from engine.ingest.textfmt import MINUTE, US, PayloadFormat, _fmt_ts, _ids, fresh

PLANS = np.array(["free", "starter", "professional", "enterprise"])
PLAN_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
LIMITS = np.array([60, 300, 1000, 5000])
ENDPOINTS = np.array(["/v1/items", "/v1/orders", "/v1/users", "/v2/search", "/v2/reports"])
METHODS = np.array(["GET", "POST", "PUT", "DELETE"])
PARTITIONS = 4
DAY = 86400 * US
TOPIC = "api-usage-events"
#: Arrow's pool for output columns: the system allocator, whose large blocks are ordinary
#: pages (the default pool, mimalloc, gets huge pages, slow to touch first: see ``fresh``)
OUT_POOL = pa.system_memory_pool()

#: One template per quarantine reason (docs/semantics.md §3.1); ``{id}``/``{ts}``/``{t}`` are filled in.
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


class GeneratorConfig(BaseModel):
    """What history to generate (frozen; unknown keys and out-of-range values refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: int = Field(default=100_000, ge=0)
    tenants: int = Field(default=200, ge=1)
    days: float = Field(default=1.0, gt=0)
    seed: int = 42
    dup_rate: float = Field(default=0.02, ge=0, le=1)
    invalid_rate: float = Field(default=0.01, ge=0, le=1)
    late_rate: float = Field(default=0.01, ge=0, le=1)
    burst_share: float = Field(default=0.15, ge=0, le=1)
    plan_change_rate: float = Field(default=0.1, ge=0, le=1)
    start: AwareDatetime = datetime(2026, 3, 1, tzinfo=UTC)
    #: schema v2 traffic (user_id, data_residency_region): events from this time on (None: the
    #: second half of the history), a ``v2_share`` of them
    v2_start: AwareDatetime | None = None
    v2_share: float = Field(default=1.0, ge=0, le=1)


def _us(t: datetime) -> int:
    return int(t.timestamp()) * US + t.microsecond


def _v2_mask(cfg: GeneratorConfig, ts: np.ndarray, v2_from: int, salt: int) -> np.ndarray:
    """Events carrying the schema v2 fields: from ``v2_from`` on, a ``v2_share`` of them (drawn
    from a generator of their own, so the rest of the history does not change with the share)."""
    v2 = ts >= v2_from
    if cfg.v2_share < 1:
        v2 &= np.random.default_rng([cfg.seed, salt, 2]).random(len(ts)) < cfg.v2_share
    return v2


#: Events generated per chunk: bounded working set, so the rate holds for long histories.
CHUNK_EVENTS = 1_000_000
#: Output rows formatted at a time (the payload text is built once, in ingestion order).
BLOCK_ROWS = 500_000

#: Numeric attributes of a base event; its payload text is formatted from them.
ATTRS = ("ts", "offset_min", "tenant", "plan", "endpoint", "method", "status", "latency",
         "request_bytes", "response_bytes", "v2", "user", "region")


@dataclass(frozen=True)
class _Chunk:
    """A chunk's draws, which depend on no other chunk (chunks are drawn in parallel); the v2
    mask and the invalid messages' text, which depend on the events before the chunk, are
    added in chunk order as the chunks come in."""

    attrs: dict[str, np.ndarray]  # one entry per base event (no "v2" yet)
    invalid_tmpl: np.ndarray  # per invalid message: its template, tenant and timestamp
    invalid_tenant: np.ndarray
    invalid_ts: np.ndarray
    row_src: np.ndarray  # one per output row: base event index, or -1 - invalid index
    row_ing: np.ndarray  # one per output row: ingestion time (us)


def generate(cfg: GeneratorConfig) -> pa.Table:
    """A Bronze table (docs/semantics.md §2) in ingestion order.

    Events are drawn in chunks (bounded working set) as numbers only; after one global
    ordering by ingestion time, the payload text is formatted block by block straight into
    its final place, so no payload is ever copied by a gather.
    """
    trng = np.random.default_rng([cfg.seed, 0])  # tenants' plans: the same for every chunk
    T = max(1, cfg.tenants)
    start_us = int(cfg.start.timestamp()) * US
    span_us = int(cfg.days * 86400 * US)
    plan0 = trng.choice(len(PLANS), size=T, p=PLAN_WEIGHTS)
    plan1 = np.where(trng.random(T) < cfg.plan_change_rate, trng.integers(0, len(PLANS), T), plan0)
    change_at = start_us + (trng.random(T) * span_us).astype(np.int64)
    tenant_names = pa.array([f"tenant-{i:05d}" for i in range(T)])  # T is small next to events
    n_chunks = max(1, -(-cfg.events // CHUNK_EVENTS))
    v2_from = start_us + span_us // 2 if cfg.v2_start is None else _us(cfg.v2_start)
    subs = []
    for i in range(n_chunks):
        events = cfg.events // n_chunks + (1 if i < cfg.events % n_chunks else 0)
        subs.append(cfg.model_copy(update={"events": events, "days": cfg.days / n_chunks,
                                           "start": cfg.start + timedelta(days=cfg.days * i / n_chunks)}))
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        rows = _draw(cfg, subs, pool, (plan0, plan1, change_at), tenant_names, v2_from)
        n = len(rows["src"])
        tenant = np.empty(n, dtype=np.int32)  # each row's tenant, filled in by the blocks
        fmt = PayloadFormat(PLANS.tolist(), ENDPOINTS.tolist(), METHODS.tolist(), T)
        # blocks are independent: format them on every core (NumPy and Arrow release the GIL)
        blocks = list(pool.map(
            lambda lo: _block(rows["src"][lo:lo + BLOCK_ROWS], rows["attrs"], rows["inv_payloads"],
                              rows["inv_tenant"], tenant_names, tenant[lo:lo + BLOCK_ROWS], fmt),
            list(range(0, n, BLOCK_ROWS)) or [0]))
        ing = rows["ing"]
        rows.clear()  # free the events' attributes before the last columns are built
        return _assemble(blocks, tenant_names, tenant, ing, pool)


def _draw(cfg: GeneratorConfig, subs: list[GeneratorConfig], pool: ThreadPoolExecutor,
          plans: tuple[np.ndarray, np.ndarray, np.ndarray], tenant_names: pa.Array, v2_from: int) -> dict:
    """Every chunk's draws, in ingestion order: the base events' attributes ("attrs", indexed
    by event id), the invalid messages (payload, tenant) and per output row its source ("src":
    base event, or -1 - invalid index) and ingestion time ("ing")."""
    # chunks are drawn on every core (each from its own generator; NumPy releases the GIL);
    # each is fixed up here as soon as it and the ones before it are drawn
    chunks, base, inv_base = [], 0, 0
    row_src, invalid = [], []
    draws = pool.map(lambda i: _chunk(subs[i], np.random.default_rng([cfg.seed, i + 1]), *plans),
                     range(len(subs)))
    for sub, chunk in zip(subs, draws, strict=True):  # ids follow the events before
        chunk.attrs["v2"] = _v2_mask(sub, chunk.attrs["ts"], v2_from, base)
        invalid.append(_invalid_text(chunk.invalid_tmpl, chunk.invalid_tenant, chunk.invalid_ts,
                                     tenant_names, base))
        src = chunk.row_src
        row_src.append(np.where(src >= 0, src + base, src - inv_base))
        base += len(chunk.attrs["ts"])
        inv_base += len(chunk.invalid_tmpl)
        chunks.append(chunk)
    attrs = {k: np.concatenate([c.attrs[k] for c in chunks]) for k in ATTRS}
    inv_tenant = np.concatenate([c.invalid_tenant for c in chunks])
    all_ing = np.concatenate([c.row_ing for c in chunks])
    del chunks
    src, ing = _ingestion_order(np.concatenate(row_src), all_ing)
    return {"attrs": attrs, "inv_payloads": pa.concat_arrays(invalid), "inv_tenant": inv_tenant,
            "src": src, "ing": ing}


def _ingestion_order(src: np.ndarray, ing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``src``, ``ing``) ordered by ingestion time, ties in row order: what
    ``np.argsort(ing, kind="stable")`` gives, by one sort of (time, row) packed in an int64
    (no stable argsort needed: the keys are distinct) when the times' range leaves room."""
    n = len(ing)
    bits = max(1, (n - 1).bit_length())
    lo = int(ing.min()) if n else 0
    if n and int(ing.max()) - lo >= 1 << (62 - bits):  # too wide a range to pack
        order = np.argsort(ing, kind="stable")
        return src[order], ing[order]
    key = np.subtract(ing, lo, out=fresh(n, np.int64))  # becomes the ingestion times
    key <<= bits
    key |= np.arange(n, dtype=np.int64)
    key.sort()
    order = key & ((1 << bits) - 1)
    key >>= bits
    key += lo
    return src[order], key


def _block(src: np.ndarray, attrs: dict[str, np.ndarray], invalid: pa.Array, inv_tenant: np.ndarray,
           tenant_names: pa.Array, tenant: np.ndarray, fmt: PayloadFormat) -> tuple[pa.Array, ...]:
    """Rows ``src`` (base events, or -1 - invalid index) -> (payload, event_id, event_timestamp,
    tenant_id) columns; each row's tenant index is written to ``tenant``."""
    n = len(src)
    inv = src < 0
    inv_pos = np.flatnonzero(inv)
    inv_payload = invalid.take(pa.array(-1 - src[inv_pos]))
    tenant[inv_pos] = inv_tenant[-1 - src[inv_pos]]
    if len(inv_pos) == n:  # only invalid messages
        return (inv_payload, pa.nulls(n, pa.string()), pa.nulls(n, schemas.TS),
                pc.if_else(pa.array(np.zeros(n, dtype=bool)), tenant_names.take(pa.array(tenant)),
                           pa.scalar(None, pa.string()), memory_pool=OUT_POOL))
    ev = np.where(inv, 0, src)  # each row's base event (its index is its id), 0 at invalid rows
    f = {k: np.take(col, ev, out=fresh(n, col.dtype)) if k == "ts" else col[ev]  # ts: an output column
         for k, col in attrs.items()}
    f["ev"] = ev
    tenant[:] = np.where(inv, tenant, f["tenant"])
    return (fmt.format(f, inv_pos, inv_payload), _ids("evt-", ev, 10, ~inv),
            pa.array(f["ts"], pa.int64(), mask=inv).cast(schemas.TS),
            pc.if_else(pa.array(~inv), tenant_names.take(pa.array(tenant)), pa.scalar(None, pa.string()),
                       memory_pool=OUT_POOL))


def _chunk(cfg: GeneratorConfig, rng: np.random.Generator, plan0: np.ndarray, plan1: np.ndarray,
           change_at: np.ndarray) -> _Chunk:
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
    attrs = {  # narrow types: these arrays are concatenated and gathered once per history
        "ts": ts,
        "offset_min": np.where(rng.random(n_base) < 0.05, rng.choice([-300, 60, 120, 330], n_base),
                               0).astype(np.int16),
        "tenant": tenant.astype(np.int32),
        "plan": plan.astype(np.int8),
        "status": rng.choice([200, 201, 204, 400, 404, 429, 500, 503], n_base,
                             p=[0.7, 0.05, 0.03, 0.05, 0.05, 0.04, 0.05, 0.03]).astype(np.int16),
        "endpoint": rng.integers(0, len(ENDPOINTS), n_base, dtype=np.int8),
        "method": rng.integers(0, len(METHODS), n_base, dtype=np.int8),
        "latency": rng.integers(1, 2000, n_base, dtype=np.int16),
        "request_bytes": rng.integers(0, 4096, n_base, dtype=np.int16),
        "response_bytes": rng.integers(0, 65536, n_base, dtype=np.int32),
        "user": rng.integers(0, 10 * T, n_base, dtype=np.int32),
        "region": rng.integers(0, 3, n_base, dtype=np.int8),
    }

    # re-deliveries: half within 10 minutes, half later; a tenth of them get a third copy
    src = rng.choice(n_base, size=min(n_dup, n_base), replace=False) if n_base else np.array([], int)
    gap = np.where(rng.random(len(src)) < 0.5, rng.integers(1 * MINUTE, 9 * MINUTE, len(src)),
                   rng.integers(11 * MINUTE, 90 * MINUTE, len(src)))
    chain = src[: len(src) // 10]
    chain_gap = gap[: len(chain)] + rng.integers(1 * MINUTE, 9 * MINUTE, len(chain))
    dup_idx = np.concatenate([src, chain]).astype(np.int64)
    dup_ing = np.concatenate([ing[src] + gap, ing[chain] + chain_gap])

    row_src = np.concatenate([np.arange(n_base, dtype=np.int64), dup_idx])
    row_ing = np.concatenate([ing, dup_ing])
    none = np.array([], dtype=np.int64)
    inv_tmpl, inv_tenant, inv_ts = none, none, none
    if n_inv:
        inv_tmpl, inv_tenant, inv_ts, inv_ing = _invalid(rng, n_inv, T, start_us, span_us)
        row_src = np.concatenate([row_src, -1 - np.arange(n_inv, dtype=np.int64)])
        row_ing = np.concatenate([row_ing, inv_ing])
    return _Chunk(attrs, inv_tmpl, inv_tenant, inv_ts, row_src, row_ing)


def _invalid(rng: np.random.Generator, n: int, tenants: int, start_us: int, span_us: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The invalid messages' draws: (template, tenant, timestamp, ingestion time) of each."""
    tmpl = np.arange(n) % len(INVALID_TEMPLATES)
    rng.shuffle(tmpl)
    tenant = rng.integers(0, tenants, n)
    ts = start_us + (rng.random(n) * span_us).astype(np.int64)
    return tmpl, tenant, ts, ts + rng.integers(50_000, 2 * US, n)


def _invalid_text(tmpl: np.ndarray, tenant: np.ndarray, ts: np.ndarray, tenant_names: pa.Array,
                  id_offset: int) -> pa.Array:
    """The invalid messages' payloads (ids numbered from ``id_offset``)."""
    n = len(tmpl)
    if n == 0:
        return pa.array([], pa.binary())
    ts_text = _fmt_ts(ts, np.zeros(n, dtype=np.int64)).to_pylist()
    out = []
    for i in range(n):  # n = invalid_rate x events: small next to the vectorized bulk
        t = INVALID_TEMPLATES[tmpl[i]]
        t = t.replace(b"{id}", f"bad-{id_offset + i:010d}".encode()).replace(b"{ts}", ts_text[i].encode())
        out.append(t.replace(b"{t}", tenant_names[int(tenant[i])].as_py().encode()))
    return pa.array(out, pa.binary())


def _assemble(blocks: list[tuple[pa.Array, ...]], tenant_names: pa.Array, tenant: np.ndarray,
              ing_us: np.ndarray, pool: ThreadPoolExecutor) -> pa.Table:
    """Blocks of rows in ingestion order (payload, event_id, event_timestamp, tenant_id), each
    row's tenant index and ingestion time -> Bronze; the columns are built on every core."""
    n = len(ing_us)

    def kafka() -> tuple[pa.Array, pa.Array]:
        part = np.take(_partition_of(tenant_names).astype(np.int32), tenant, out=fresh(n, np.int32))
        offsets = fresh(n, np.int64)
        for p in range(PARTITIONS):
            rows = np.flatnonzero(part == p)
            offsets[rows] = np.arange(len(rows))
        return pa.array(part, pa.int32()), pa.array(offsets)

    def topic() -> pa.Array:
        return pc.take(pa.array([TOPIC]), pa.array(np.zeros(n, dtype=np.int8)), memory_pool=OUT_POOL)

    def date() -> pa.Array:  # the rows are in ingestion order: one run of rows per day
        first, last = (int(ing_us[i]) // DAY for i in (0, -1)) if n else (0, -1)
        ends = np.searchsorted(ing_us, np.arange(first + 1, last + 2, dtype=np.int64) * DAY)
        days = fresh(n, np.int32)
        for day, lo, hi in zip(range(first, last + 1), ends - np.diff(ends, prepend=0), ends, strict=True):
            days[lo:hi] = day  # one slice per day of the history
        return pa.array(days, pa.date32())

    jobs = [pool.submit(f) for f in (kafka, topic, date)]
    key = pc.take(tenant_names, pa.array(tenant), memory_pool=OUT_POOL).cast(pa.binary())
    (part, offsets), topic_col, date_col = (j.result() for j in jobs)
    ing = pa.array(ing_us, pa.int64()).cast(schemas.TS)
    return pa.table({
        "raw_payload": pa.chunked_array([b[0] for b in blocks], pa.binary()),
        "kafka_topic": topic_col,
        "kafka_partition": part,
        "kafka_offset": offsets,
        "kafka_timestamp": ing,
        "kafka_key": key,
        "ingestion_timestamp": ing,
        "ingestion_date": date_col,
        "event_id": pa.chunked_array([b[1] for b in blocks], pa.string()),
        "tenant_id": pa.chunked_array([b[3] for b in blocks], pa.string()),
        "event_timestamp": pa.chunked_array([b[2] for b in blocks], schemas.TS),
    }, schema=schemas.BRONZE_SCHEMA)


def _partition_of(names: pa.Array) -> np.ndarray:
    """Kafka-like partitioning by key: a stable hash of each tenant name."""
    return np.array([int.from_bytes(hashlib.md5(n.encode()).digest()[:4], "little") % PARTITIONS
                     for n in names.to_pylist()], dtype=np.int64)


def to_jsonl(table: pa.Table) -> bytes:
    """The payloads, one per line, in ingestion order (newline-free by construction)."""
    return b"\n".join(table.column("raw_payload").to_pylist()) + b"\n"
