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
- invalid messages (``invalid_rate``) covering every SPEC quarantine reason.
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


def _digits(mat: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    """Write ``values`` as zero-padded decimal text into ``mat[:, col:col + width]``."""
    small = width <= 9  # fits int32, whose division by a constant NumPy does fastest
    v = values.astype(np.int32 if small else np.int64)
    for pos in range(width - 1, -1, -1):
        q = v // 10
        mat[:, col + pos] = 48 + (v - q * 10)
        v = q


def _text(mat: np.ndarray, lengths: np.ndarray | None = None, valid: np.ndarray | None = None
          ) -> pa.Array:
    """Rows of a byte matrix (each cut to its length) -> an Arrow string array, no Python loop.

    Rows where ``valid`` is False are NULL.
    """
    n, width = mat.shape
    bitmap = None
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid.astype(bool), bitorder="little"))
    if lengths is None:
        data = np.ascontiguousarray(mat).reshape(-1)
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    elif lengths.dtype == bool:  # each row whole, or empty
        data = np.ascontiguousarray(mat[lengths]).reshape(-1)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.where(lengths, width, 0), out=offsets[1:])
    else:
        data = mat[np.arange(width)[None, :] < lengths[:, None]]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    if len(data) < 2**31:
        offsets = offsets.astype(np.int32)
        return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.Array.from_buffers(pa.large_string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])


def _fixed(segments: list[bytes | tuple[np.ndarray, int] | np.ndarray], n: int) -> pa.Array:
    """Fixed-width text per row from literal bytes, (numbers, digits) and byte matrices."""
    width = sum(len(x) if isinstance(x, bytes) else x[1] if isinstance(x, tuple) else x.shape[1]
                for x in segments)
    mat = np.empty((n, width), dtype=np.uint8)
    col = 0
    for x in segments:
        if isinstance(x, bytes):
            mat[:, col: col + len(x)] = np.frombuffer(x, dtype=np.uint8)
            col += len(x)
        elif isinstance(x, tuple):
            _digits(mat, col, x[0], x[1])
            col += x[1]
        else:
            mat[:, col: col + x.shape[1]] = x
            col += x.shape[1]
    return _text(mat)


def _ids(prefix: str, idx: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """``prefix`` + zero-padded number, e.g. evt-0000000042 (NULL where not ``valid``)."""
    head = prefix.encode()
    mat = np.empty((len(idx), len(head) + width), dtype=np.uint8)
    mat[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    _digits(mat, len(head), np.asarray(idx), width)
    return _text(mat, None, valid)


_V2_HEAD = b', "user_id": "user-'
_V2_MID = b'", "data_residency_region": "'
#: the region's text and closing quote; index 0: no v2 fields
_V2_TAIL = pa.array(["", *(f'{_V2_MID.decode()}{r}"' for r in REGIONS.tolist())])


def _v2_fields(user: np.ndarray, region: np.ndarray, v2: np.ndarray) -> list[pa.Array]:
    """The schema v2 fields' text as two join parts (both "" where not ``v2``)."""
    mat = np.empty((len(user), len(_V2_HEAD) + 7), dtype=np.uint8)
    mat[:, : len(_V2_HEAD)] = np.frombuffer(_V2_HEAD, dtype=np.uint8)
    _digits(mat, len(_V2_HEAD), user, 7)
    v2 = v2.astype(bool)
    return [_text(mat, v2), _V2_TAIL.take(pa.array(np.where(v2, region.astype(np.int64) + 1, 0)))]


def _us(t: datetime) -> int:
    return int(t.timestamp()) * US + t.microsecond


def _v2_mask(cfg: GeneratorConfig, ts: np.ndarray, v2_from: int, salt: int) -> np.ndarray:
    """Events carrying the schema v2 fields: from ``v2_from`` on, a ``v2_share`` of them (drawn
    from a generator of their own, so the rest of the history does not change with the share)."""
    v2 = ts >= v2_from
    if cfg.v2_share < 1:
        v2 &= np.random.default_rng([cfg.seed, salt, 2]).random(len(ts)) < cfg.v2_share
    return v2


def _offset_text(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _fmt_ts(ts_us: np.ndarray, offset_min: np.ndarray) -> pa.Array:
    """RFC 3339 text of each instant, written in its local offset (``Z`` for UTC)."""
    body, suffix = _ts_parts(ts_us, offset_min)
    return pc.binary_join_element_wise(body, suffix, "")


def _ts_parts(ts_us: np.ndarray, offset_min: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(local date-time text with microseconds, offset text) of each instant."""
    body, suffix = _ts_matrix(ts_us, offset_min)
    return _text(body), suffix


def _ts_matrix(ts_us: np.ndarray, offset_min: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """(local date-time bytes with microseconds as an (n, 26) matrix, offset text)."""
    n = len(ts_us)
    off = offset_min.astype(np.int64)
    local = ts_us.astype(np.int64) + off * MINUTE
    days, rem = np.divmod(local, 86400 * US)
    # civil date from days since 1970-01-01 (H. Hinnant's algorithm, vectorized)
    z = days + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    mat = np.empty((n, 26), dtype=np.uint8)
    for col, ch in ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":"), (19, ".")):
        mat[:, col] = ord(ch)
    secs, micros = np.divmod(rem, US)
    _digits(mat, 0, year, 4)
    _digits(mat, 5, month, 2)
    _digits(mat, 8, day, 2)
    _digits(mat, 11, secs // 3600, 2)
    _digits(mat, 14, secs // 60 % 60, 2)
    _digits(mat, 17, secs % 60, 2)
    _digits(mat, 20, micros, 6)
    # offsets are whole minutes within +-24h: a counting pass finds the few distinct ones
    shifted = off + 24 * 60
    uniq = np.flatnonzero(np.bincount(shifted, minlength=48 * 60 + 1))
    lut = np.zeros(48 * 60 + 1, dtype=np.int64)
    lut[uniq] = np.arange(len(uniq))
    texts = pa.array([_offset_text(int(m) - 24 * 60) for m in uniq], pa.string())
    suffix = texts.take(pa.array(lut[shifted]))
    return mat, suffix


#: Events generated per chunk: bounded working set, so the rate holds for long histories.
CHUNK_EVENTS = 1_000_000
#: Output rows formatted at a time (the payload text is built once, in ingestion order).
BLOCK_ROWS = 500_000

#: Numeric attributes of a base event; its payload text is formatted from them.
ATTRS = ("ev", "ts", "offset_min", "tenant", "plan", "endpoint", "method", "status", "latency",
         "request_bytes", "response_bytes", "v2", "user", "region")


@dataclass(frozen=True)
class _Chunk:
    attrs: dict[str, np.ndarray]  # one entry per base event
    invalid: pa.Array  # payloads of the invalid messages
    invalid_tenant: np.ndarray
    row_src: np.ndarray  # one per output row: base event index, or -1 - invalid index
    row_ing: np.ndarray  # one per output row: ingestion time (us)


def generate(cfg: GeneratorConfig) -> pa.Table:
    """A Bronze table (SPEC section 2) in ingestion order.

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
    chunks, base, inv_base = [], 0, 0
    row_src, row_ing = [], []
    for i in range(n_chunks):
        events = cfg.events // n_chunks + (1 if i < cfg.events % n_chunks else 0)
        sub = cfg.model_copy(update={"events": events, "days": cfg.days / n_chunks,
                                     "start": cfg.start + timedelta(days=cfg.days * i / n_chunks)})
        chunk = _chunk(sub, np.random.default_rng([cfg.seed, i + 1]), tenant_names, plan0, plan1,
                       change_at, base, v2_from)
        src = chunk.row_src
        row_src.append(np.where(src >= 0, src + base, src - inv_base))
        row_ing.append(chunk.row_ing)
        base += len(chunk.attrs["ts"])
        inv_base += len(chunk.invalid)
        chunks.append(chunk)
    attrs = {k: np.concatenate([c.attrs[k] for c in chunks]) for k in ATTRS}
    invalid = pa.concat_arrays([c.invalid for c in chunks]) if chunks else pa.array([], pa.binary())
    inv_tenant = np.concatenate([c.invalid_tenant for c in chunks])
    all_ing = np.concatenate(row_ing)
    order = np.argsort(all_ing, kind="stable")
    src = np.concatenate(row_src)[order]
    ing = all_ing[order]
    del chunks, row_src, row_ing, all_ing, order
    starts = list(range(0, len(src), BLOCK_ROWS)) or [0]
    # blocks are independent: format them on every core (NumPy and Arrow release the GIL)
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(starts)))) as pool:
        blocks = list(pool.map(
            lambda lo: _block(src[lo:lo + BLOCK_ROWS], attrs, invalid, inv_tenant, tenant_names),
            starts))
    table = pa.Table.from_batches([b for b in blocks])
    return _assemble(table, tenant_names, ing)


def _block(src: np.ndarray, attrs: dict[str, np.ndarray], invalid: pa.Array, inv_tenant: np.ndarray,
           tenant_names: pa.Array) -> pa.RecordBatch:
    """Rows ``src`` (base events, or -1 - invalid index) -> payload, tenant and extracted columns."""
    n = len(src)
    inv = src < 0
    inv_pos = np.flatnonzero(inv)
    inv_payload = invalid.take(pa.array(-1 - src[inv_pos]))
    tenant = np.zeros(n, dtype=np.int64)
    tenant[inv_pos] = inv_tenant[-1 - src[inv_pos]]
    if len(inv_pos) == n:  # only invalid messages
        return pa.RecordBatch.from_pydict({
            "raw_payload": inv_payload, "tenant": pa.array(tenant),
            "event_id": pa.nulls(n, pa.string()), "event_timestamp": pa.nulls(n, schemas.TS)})
    ev_src = np.where(inv, 0, src)
    a = {k: attrs[k][ev_src] for k in ("tenant", "ev", "ts")}  # per row; payload fields below
    tenant[~inv] = a["tenant"][~inv]
    ok = src[~inv] if len(inv_pos) else src
    v = {k: col[ok] for k, col in attrs.items()}  # the valid rows' attributes, for their payloads
    m = len(v["ts"])
    body, suffix = _ts_matrix(v["ts"], v["offset_min"])
    width = len(tenant_names[0].as_py()) if len(tenant_names) else 0
    fixed_tenants = width > 7 and pc.all(pc.equal(pc.binary_length(tenant_names), width)).as_py()
    if fixed_tenants:  # tenant-NNNNN: part of a fixed-width segment
        tenant_seg: list = [b"tenant-", (v["tenant"], width - 7)]
        tenant_part: list = []
    else:
        tenant_seg, tenant_part = [], [tenant_names.take(pa.array(v["tenant"]))]
    parts = [
        _fixed([b'{"event_id": "evt-', (v["ev"], 10), b'", "event_timestamp": "', body], m), suffix,
        _fixed([b'", "tenant_id": "', *tenant_seg], m), *tenant_part,
        '", "subscription_plan": "', _pick(PLANS, v["plan"]),
        '", "endpoint": "', _pick(ENDPOINTS, v["endpoint"]),
        '", "method": "', _pick(METHODS, v["method"]),
        _fixed([b'", "status_code": ', (v["status"], 3), b', "latency_ms": '], m),
        pa.array(v["latency"]).cast(pa.string()),
        ', "request_bytes": ', pa.array(v["request_bytes"]).cast(pa.string()),
        ', "response_bytes": ', pa.array(v["response_bytes"]).cast(pa.string()),
        *_v2_fields(v["user"], v["region"], v["v2"]),
        "}",
    ]
    joined = pc.binary_join_element_wise(*parts, "").cast(pa.binary())
    if len(inv_pos):
        # splice the invalid messages in: one copy of each run of valid rows, no gather
        pieces, prev, used = [], 0, 0
        for k, p in enumerate(inv_pos.tolist()):
            if p > prev:
                pieces.append(joined.slice(used, p - prev))
                used += p - prev
            pieces.append(inv_payload.slice(k, 1))
            prev = p + 1
        if used < len(joined):
            pieces.append(joined.slice(used))
        payload = pa.concat_arrays(pieces)
    else:
        payload = joined
    return pa.RecordBatch.from_pydict({
        "raw_payload": payload, "tenant": pa.array(tenant),
        "event_id": _ids("evt-", a["ev"], 10, ~inv),
        "event_timestamp": pa.array(a["ts"], pa.int64(), mask=inv).cast(schemas.TS),
    })


def _chunk(cfg: GeneratorConfig, rng: np.random.Generator, tenant_names: pa.Array, plan0: np.ndarray,
           plan1: np.ndarray, change_at: np.ndarray, id_offset: int, v2_from: int) -> _Chunk:
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
        "ev": id_offset + np.arange(n_base, dtype=np.int64),
        "ts": ts,
        "offset_min": np.where(rng.random(n_base) < 0.05, rng.choice([-300, 60, 120, 330], n_base),
                               0).astype(np.int16),
        "tenant": tenant.astype(np.int32),
        "plan": plan.astype(np.int8),
        "status": rng.choice([200, 201, 204, 400, 404, 429, 500, 503], n_base,
                             p=[0.7, 0.05, 0.03, 0.05, 0.05, 0.04, 0.05, 0.03]).astype(np.int16),
        "v2": _v2_mask(cfg, ts, v2_from, id_offset),
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
    invalid, inv_tenant = pa.array([], pa.binary()), np.array([], dtype=np.int64)
    if n_inv:
        invalid, inv_tenant, inv_ing = _invalid(rng, n_inv, tenant_names, start_us, span_us, id_offset)
        row_src = np.concatenate([row_src, -1 - np.arange(n_inv, dtype=np.int64)])
        row_ing = np.concatenate([row_ing, inv_ing])
    return _Chunk(attrs, invalid, inv_tenant, row_src, row_ing)


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


def _assemble(rows: pa.Table, tenant_names: pa.Array, ing_us: np.ndarray) -> pa.Table:
    """Rows already in ingestion order (payload, tenant index, extracted fields) -> Bronze."""
    n = len(ing_us)
    tenant = rows.column("tenant").to_numpy()
    known = tenant_names.take(pa.array(tenant))
    part_np = _partition_of(tenant_names)[tenant]
    offsets = np.empty(n, dtype=np.int64)
    for p in range(PARTITIONS):
        m = part_np == p
        offsets[m] = np.arange(int(m.sum()))
    ing = pa.array(ing_us, pa.int64()).cast(schemas.TS)
    ok = pc.is_valid(rows.column("event_timestamp"))
    return pa.table({
        "raw_payload": rows.column("raw_payload"),
        "kafka_topic": pa.array([TOPIC]).take(pa.array(np.zeros(n, dtype=np.int64))),
        "kafka_partition": pa.array(part_np, pa.int32()),
        "kafka_offset": pa.array(offsets),
        "kafka_timestamp": ing,
        "kafka_key": known.cast(pa.binary()),
        "ingestion_timestamp": ing,
        "ingestion_date": pc.cast(ing, pa.date32()),
        "event_id": rows.column("event_id"),
        "tenant_id": pc.if_else(ok, known, pa.scalar(None, pa.string())),
        "event_timestamp": rows.column("event_timestamp"),
    }, schema=schemas.BRONZE_SCHEMA)


def _partition_of(names: pa.Array) -> np.ndarray:
    """Kafka-like partitioning by key: a stable hash of each tenant name."""
    return np.array([int.from_bytes(hashlib.md5(n.encode()).digest()[:4], "little") % PARTITIONS
                     for n in names.to_pylist()], dtype=np.int64)


def to_jsonl(table: pa.Table) -> bytes:
    """The payloads, one per line, in ingestion order (newline-free by construction)."""
    return b"\n".join(table.column("raw_payload").to_pylist()) + b"\n"
