"""Erasure subjects (docs/semantics.md §9): which Bronze rows belong to them, and the tombstones that keep
erased data from coming back.

A tombstone keeps no clear identifier: ``subject_hash`` is the SHA-256 (hex) of the
tenant id, or of tenant id + ``"\\x00"`` + user id, in UTF-8; ``tenant_hash`` (the SHA-256 of
the tenant id alone) lets a writer pick out the few rows worth a closer look; plus the
request time R. A row belongs to a subject iff its payload, decoded as UTF-8 (invalid
bytes replaced, a leading BOM ignored), parses as a JSON object (NaN and unpaired
surrogates allowed, the last of duplicated keys wins) whose ``tenant_id`` (and, for a
person, ``user_id``) is that exact JSON string, and whose ``event_timestamp`` is absent,
not a string, unparseable under docs/semantics.md §1.3's grammar, or <= R.

Reading chosen here: a timestamp the grammar accepts but no UTC instant from 0001 to 9999
can hold counts as unparseable, so the row is erased (privacy first at that edge).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.contract import schemas
from engine.contract.sql import run_sql
from engine.lake.tables import Lake
from rules._event import US, parse_timestamp_us

TABLE = schemas.ERASURES
SCHEMA = schemas.ERASURES_SCHEMA

#: DuckDB's view of each payload's tenant: its hash, or NULL where DuckDB cannot say for sure.
TENANT_HASH_SQL = """
WITH j AS (SELECT CASE WHEN try(json_type(try(decode(raw)))) = 'OBJECT' THEN try(decode(raw)) END AS o
           FROM t)
SELECT CASE WHEN o IS NOT NULL AND len(list_filter(json_keys(o), lambda k: k = 'tenant_id')) = 1
                 AND json_type(o, '$.tenant_id') = 'VARCHAR'
            THEN sha256(json_extract_string(o, '$.tenant_id')) END AS tenant_hash,
       o IS NOT NULL AND len(list_filter(json_keys(o), lambda k: k = 'tenant_id')) = 0 AS no_tenant
FROM j
"""


def subject_hash(tenant_id: str, user_id: str | None = None) -> str:
    text = tenant_id if user_id is None else tenant_id + "\x00" + user_id
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Tombstone:
    subject_hash: str
    tenant_hash: str
    kind: str
    requested_at_us: int


def load(lake: Lake) -> list[Tombstone]:
    """The lake's recorded subjects ([] when none were ever erased)."""
    if not lake.exists(TABLE):
        return []
    rows = lake.read(TABLE).to_pylist()
    return [Tombstone(r["subject_hash"], r["tenant_hash"], r["kind"],
                      int(r["requested_at"].timestamp()) * US + r["requested_at"].microsecond)
            for r in rows]


def lenient_object(raw: bytes | None) -> dict[str, Any] | None:
    """docs/semantics.md §9's parse: UTF-8 with replacement, BOM ignored, NaN and lone surrogates allowed."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def belongs(obj: dict[str, Any] | None, stones: list[Tombstone]) -> bool:
    """Whether a parsed payload belongs to any of the subjects (docs/semantics.md §9)."""
    if obj is None or not isinstance(obj.get("tenant_id"), str):
        return False
    tenant = obj["tenant_id"]
    user = obj.get("user_id")
    hashes = {subject_hash(tenant)}
    if isinstance(user, str):
        hashes.add(subject_hash(tenant, user))
    hit = [s for s in stones if s.subject_hash in hashes]
    if not hit:
        return False
    ts = obj.get("event_timestamp")
    parsed = parse_timestamp_us(ts) if isinstance(ts, str) else None
    return parsed is None or any(parsed <= s.requested_at_us for s in hit)


def belonging_mask(raw: pa.Array | pa.ChunkedArray, stones: list[Tombstone]) -> pa.Array:
    """True for the payloads that belong to a recorded subject.

    DuckDB hashes each payload's tenant in one vectorized pass; only rows whose tenant hash
    is a subject's, or whose tenant DuckDB cannot establish (malformed JSON, duplicated
    keys, ...), are parsed again in Python under docs/semantics.md §9's rules.
    """
    n = len(raw)
    if not stones or n == 0:
        return pa.array([False] * n, pa.bool_())
    views = run_sql(TENANT_HASH_SQL, {"t": pa.table({"raw": raw})})
    tenant_hashes = pa.array(sorted({s.tenant_hash for s in stones}), pa.string())
    th = views.column("tenant_hash")
    unsure = pc.and_(pc.is_null(th), pc.invert(pc.fill_null(views.column("no_tenant"), False)))
    maybe = pc.or_(pc.fill_null(pc.is_in(th, value_set=tenant_hashes), False), unsure)
    idx = pc.indices_nonzero(maybe).to_pylist()
    out = [False] * n
    if idx:
        payloads = pc.take(raw, pa.array(idx, pa.int64())).to_pylist()
        for i, payload in zip(idx, payloads, strict=True):
            out[i] = belongs(lenient_object(payload), stones)
    return pa.array(out, pa.bool_())


def drop_erased(lake: Lake, rows: pa.Table) -> tuple[pa.Table, int]:
    """``rows`` (Bronze-shaped) without those of recorded subjects; and how many were dropped.

    Every writer into Bronze calls this (file import, Kafka ingest), so erased data never
    comes back (docs/semantics.md §9).
    """
    stones = load(lake)
    if not stones or rows.num_rows == 0:
        return rows, 0
    mask = belonging_mask(rows.column("raw_payload"), stones)
    dropped = pc.sum(mask).as_py() or 0
    return (rows.filter(pc.invert(mask)), dropped) if dropped else (rows, 0)


def record(lake: Lake, tenant_id: str, user_id: str | None, requested_at: datetime,
           erasure_id: str) -> Tombstone:
    """Append the tombstone of a request (hashed; no clear identifier is written)."""
    stone = {"subject_hash": subject_hash(tenant_id, user_id), "tenant_hash": subject_hash(tenant_id),
             "kind": "tenant" if user_id is None else "user", "requested_at": requested_at,
             "erasure_id": erasure_id, "recorded_at": datetime.now(UTC)}
    lake.write(TABLE, pa.Table.from_pylist([stone], schema=SCHEMA), mode="append",
               metadata={"op": "erasure-tombstone", "replay_id": erasure_id})
    return Tombstone(stone["subject_hash"], stone["tenant_hash"], stone["kind"],
                     int(requested_at.timestamp()) * US + requested_at.microsecond)
