"""docs/semantics.md §9's "belongs to the subject", rule by rule (the vectorized mask and the per-row parse)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from engine.lifecycle.tombstones import Tombstone, belonging_mask, subject_hash

R = datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
R_US = int(R.timestamp()) * 1_000_000


def stone(tenant: str, user: str | None = None) -> Tombstone:
    return Tombstone(subject_hash(tenant, user), subject_hash(tenant), "user" if user else "tenant", R_US)


def verdicts(payloads: list[bytes | None], *stones: Tombstone) -> list[bool]:
    return belonging_mask(pa.array(payloads, pa.binary()), list(stones)).to_pylist()


def test_hashes_are_sha256_of_the_utf8_identifiers():
    assert subject_hash("acme") == hashlib.sha256(b"acme").hexdigest()
    assert subject_hash("acmé", "u1") == hashlib.sha256("acmé\x00u1".encode()).hexdigest()


OK_TS = '"event_timestamp": "2026-03-02T12:00:00Z"'


@pytest.mark.parametrize("raw,want", [
    (b'{"tenant_id": "acme", ' + OK_TS.encode() + b'}', True),
    (b'{"tenant_id": "acme", "event_timestamp": "2026-03-02T12:30:00Z"}', True),  # == R
    (b'{"tenant_id": "acme", "event_timestamp": "2026-03-02T12:30:00.000001Z"}', False),  # after R
    (b'{"tenant_id": "acme", "event_timestamp": "2026-03-02T14:00:00+01:00"}', False),  # 13:00Z
    (b'{"tenant_id": "acme", "event_timestamp": "2026-03-02T13:00:00+01:00"}', True),  # 12:00Z
    (b'{"tenant_id": "acme"}', True),  # absent timestamp
    (b'{"tenant_id": "acme", "event_timestamp": 17}', True),  # not a string
    (b'{"tenant_id": "acme", "event_timestamp": "yesterday"}', True),  # unparseable
    (b'{"tenant_id": "acme", "event_timestamp": "2026-03-02 12:00:00"}', True),  # no offset
    (b'{"tenant_id": "acme", "latency_ms": NaN, ' + OK_TS.encode() + b'}', True),  # NaN allowed
    (b'\xef\xbb\xbf{"tenant_id": "acme", ' + OK_TS.encode() + b'}', True),  # BOM ignored
    (b'{"tenant_id": "acme", "endpoint": "\\ud800", ' + OK_TS.encode() + b'}', True),  # lone surrogate
    (b'{"tenant_id": "acme", "endpoint": "\xff\xfe", ' + OK_TS.encode() + b'}', True),  # bad UTF-8
    (b'{"tenant_id": "\\u0061cme", ' + OK_TS.encode() + b'}', True),  # an escaped tenant
    (b'{"tenant_id": "other", "tenant_id": "acme", ' + OK_TS.encode() + b'}', True),  # last wins
    (b'{"tenant_id": "acme", "tenant_id": "other", ' + OK_TS.encode() + b'}', False),
    (b'{"tenant_id": "acme ", ' + OK_TS.encode() + b'}', False),  # exact string only
    (b'{"tenant_id": ["acme"]}', False),  # not a JSON string
    (b'["acme"]', False),  # not an object
    (b'{"tenant_id": "acme", ', False),  # not JSON
    (None, False),  # a tombstone message
])
def test_tenant_subject(raw, want):
    assert verdicts([raw], stone("acme")) == [want]


def test_a_person_subject_needs_the_user_in_the_same_tenant():
    rows = [b'{"tenant_id": "acme", "user_id": "u1", ' + OK_TS.encode() + b'}',
            b'{"tenant_id": "other", "user_id": "u1", ' + OK_TS.encode() + b'}',  # same user, other tenant
            b'{"tenant_id": "acme", "user_id": "u2", ' + OK_TS.encode() + b'}',
            b'{"tenant_id": "acme", ' + OK_TS.encode() + b'}',  # no user
            b'{"tenant_id": "acme", "user_id": 1, ' + OK_TS.encode() + b'}']  # not a string
    assert verdicts(rows, stone("acme", "u1")) == [True, False, False, False, False]


def test_several_subjects_each_with_its_own_request_time():
    late = Tombstone(subject_hash("beta"), subject_hash("beta"), "tenant", R_US + 3_600_000_000)
    rows = [b'{"tenant_id": "beta", "event_timestamp": "2026-03-02T13:00:00Z"}',
            b'{"tenant_id": "acme", "event_timestamp": "2026-03-02T13:00:00Z"}']
    assert verdicts(rows, stone("acme"), late) == [True, False]
    assert verdicts(rows) == [False, False]
