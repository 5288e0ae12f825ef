"""The vectorized validate@1 must agree with the strict per-row reference on any input."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules._event import strict_validate
from tests.helpers import T0, bronze, compiled

PLANS = frozenset({"free", "starter", "professional", "enterprise"})
ING_US = int(T0.timestamp()) * 1_000_000

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["free", "gold", "", "2026-03-02T12:00:00Z", "2026-02-30T00:00:00Z",
                     "2026-03-02T12:30:00.1234567+01:00", "2026-03-02T14:00:00Z",
                     "2026-03-02t12:00:00z", "0000-01-01T00:00:00Z", "2024-02-29T23:59:59.9-23:59",
                     "2026-03-02T12:00:60Z", "2026-03-02T12:00:00.123456789+00:00",
                     "2026-03-02T13:00:00.000001Z", "2026-03-02T13:00:00.0000001+01:00"]),
)
field_names = st.sampled_from(["event_id", "event_timestamp", "tenant_id", "subscription_plan",
                               "endpoint", "status_code", "method", "latency_ms", "request_bytes",
                               "response_bytes", "user_id", "data_residency_region", "other"])
objects = st.dictionaries(field_names, scalars, max_size=13)


def _mutate(obj: dict, choice: int) -> bytes:
    text = json.dumps(obj)
    if choice == 1:
        return text.replace("}", ', "x": NaN}', 1).encode()
    if choice == 2:
        return text.replace("}", ",}", 1).encode()
    if choice == 3 and obj:
        k = next(iter(obj))
        return (text[:-1] + f', "{k}": "dup"}}').encode() if len(text) > 2 else text.encode()
    if choice == 4:
        return text.replace("}", ', "s": "\\ud800"}', 1).encode()
    if choice == 5:
        return ("\ufeff" + text).encode()
    return text.encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(objects, st.integers(0, 8)), min_size=1, max_size=25))
def test_vectorized_equals_strict_reference(items):
    base = {"event_id": "e", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "t",
            "subscription_plan": "free", "endpoint": "/x", "status_code": 200}
    payloads = [_mutate({**base, **obj} if choice % 2 == 0 else obj, choice) for obj, choice in items]
    _, q = compiled().validate(bronze(payloads, ingestion=[T0] * len(payloads)))
    got = {r["kafka_offset"]: r["reason"] for r in q.to_pylist()}
    for i, p in enumerate(payloads):
        expected, _ = strict_validate(p, ING_US, PLANS, 3600 * 1_000_000)
        assert got.get(i) == expected, p
