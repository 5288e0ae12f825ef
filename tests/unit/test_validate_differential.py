"""The vectorized validate@1 must agree with the strict per-row reference on any input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import _fastpath
from rules._event import parse_timestamp_us, strict_validate
from rules._fastpath import parse_timestamps
from tests.helpers import T0, bronze, compiled, each_decoder

pytestmark = pytest.mark.usefixtures("each_decoder")
assert each_decoder  # the fixture, used by every test of this module

PLANS = frozenset({"free", "starter", "professional", "enterprise"})
ING_US = int(T0.timestamp()) * 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
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


# --- the fast path (rules._fastpath) + fallback vs the DuckDB path vs the reference -------------

FIELD_NAMES = ["event_id", "event_timestamp", "tenant_id", "subscription_plan", "endpoint",
               "status_code", "method", "latency_ms", "request_bytes", "response_bytes", "user_id",
               "data_residency_region"]
TIMESTAMPS = ["2026-03-02T12:00:00Z", "2026-03-02t12:00:00z", "2026-03-02T12:00:00.1Z",
              "2026-03-02T12:00:00.123456789-23:59", "2026-03-02T12:00:00.1234567890Z",
              "2026-03-02T13:00:00Z", "2026-03-02T13:00:00.000001Z", "2026-03-02T14:00:00+01:00",
              "2026-03-02T14:00:00.0000019+01:00", "2026-03-02T12:00:60Z", "2026-02-29T00:00:00Z",
              "2024-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z",
              "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00",
              "0001-01-01T00:00:00-00:01", "9999-12-31T23:59:59.999999Z", "2026-03-02T12:00:00+24:00",
              "2026-03-02T12:00:00+23:60", "2026-03-02T12:00:00-00:00", "2026-03-02T12:00:00",
              "2026-03-02 12:00:00Z", "2026-03-02T12:00:00.Z", "2026-03-02T12:00:00+0100",
              "2026-03-02T24:00:00Z", "2026-13-02T12:00:00Z", "2026-00-02T12:00:00Z", "", " "]


@st.composite
def timestamps(draw) -> str:
    """A timestamp from its parts, each sometimes out of its calendar range."""
    y = draw(st.integers(0, 9999))
    mo, d = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    h, mi, s = draw(st.integers(0, 24)), draw(st.integers(0, 60)), draw(st.integers(0, 60))
    frac = draw(st.text("0123456789", max_size=10))
    zone = draw(st.one_of(st.sampled_from(["Z", "z", "+00:00", "-00:00", ""]),
                          st.builds("{}{:02d}:{:02d}".format, st.sampled_from("+-"),
                                    st.integers(0, 24), st.integers(0, 60))))
    sep = draw(st.sampled_from("TTTt "))
    return f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}{'.' + frac if frac else ''}{zone}"


def _long(n: int) -> str:
    return "😀" * n


#: raw JSON texts of a value: every type, the strict-JSON traps and the range edges
json_values = st.builds(json.dumps, st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=5),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["free", "starter", "gold", "Free", "", _long(128), _long(129), "x" * 129]),
    st.sampled_from([-1, 0, 99, 100, 599, 600, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1])))
traps = st.sampled_from(["NaN", "-Infinity", "Infinity", '"\\ud800"', '"x\\udc00"', '"\\ud83d\\ude00"',
                         "200.0", "2e2", "2E2", "-0", "true", "[200]", '{"v": 200}', '"\\u0000"',
                         '"a\\u00e9\\/"', '"a\nb"', "1e999", "1" + "0" * 30, "01", '"\\q"', "[1,]"])
any_value = st.one_of(json_values, json_values, json_values, traps)
#: mostly a value of the field's own kind (so that rows get past the first checks)
own_value = {
    "event_timestamp": st.builds(json.dumps, st.one_of(st.sampled_from(TIMESTAMPS), timestamps())),
    "subscription_plan": st.builds(json.dumps, st.sampled_from(["free", "starter", "gold", ""])),
    "status_code": st.builds(json.dumps, st.integers(90, 610)),
    "latency_ms": st.builds(json.dumps, st.one_of(st.none(), st.integers(-2, 2**64))),
    "request_bytes": st.builds(json.dumps, st.one_of(st.none(), st.integers(-2, 2**64))),
    "response_bytes": st.builds(json.dumps, st.one_of(st.none(), st.integers(-2, 2**64))),
    "event_id": st.builds(json.dumps, st.one_of(st.text(min_size=0, max_size=3),
                                                 st.sampled_from([_long(128), _long(129)]))),
    "tenant_id": st.builds(json.dumps, st.one_of(st.text(max_size=3), st.sampled_from([_long(129)]))),
}


@st.composite
def pairs_of(draw, key: str) -> tuple[str, str]:
    own = own_value.get(key, st.builds(json.dumps, st.one_of(st.none(), st.text(max_size=4))))
    return key, draw(st.one_of(own, own, any_value))


known = st.sampled_from(FIELD_NAMES).flatmap(pairs_of)
fields = st.one_of(known, known, known, st.tuples(
    st.sampled_from(["other", "more", "event\\u005fid", "\\ud800"]), any_value))


@st.composite
def payloads(draw) -> bytes:
    """A message as raw text: a mostly valid event, with duplicated keys, extra fields and a
    wrapper that may break it (BOM, invalid UTF-8, not an object, trailing garbage)."""
    base = {"event_id": '"e"', "event_timestamp": '"2026-03-02T12:00:00Z"', "tenant_id": '"t"',
            "subscription_plan": '"free"', "endpoint": '"/x"', "status_code": "200"}
    pairs = [] if draw(st.integers(0, 9)) == 0 else list(base.items())
    drop = draw(st.sampled_from([None] * 12 + FIELD_NAMES[:6]))
    pairs = [(k, v) for k, v in pairs if k != drop]
    pairs += draw(st.lists(fields, max_size=4))
    if draw(st.booleans()):  # shuffle: a duplicated key may come first or last
        pairs = draw(st.permutations(pairs))
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"
    raw = text.encode("utf-8", "surrogatepass")
    wrap = draw(st.integers(0, 50))
    if wrap == 1:
        raw = b"\xef\xbb\xbf" + raw
    elif wrap == 2:
        raw = b" \r\n\t" + raw + b"\n "
    elif wrap == 3:
        raw = raw[:-1] + b', "bad": "\xff\xfe"}'
    elif wrap == 4:
        raw = raw[:-1] + b', "\xc3\x28": 1}'
    elif wrap == 5:
        raw = b"[" + raw + b"]"
    elif wrap == 6:
        raw = raw + b" {}"
    elif wrap == 7:
        raw = raw[:-1] + b", }"
    elif wrap == 8:
        raw = raw.replace(b'"/x"', b'"/\xed\xa0\x80"')  # an encoded surrogate: invalid UTF-8
    return raw


def _rows(table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["kafka_offset"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(payloads(), min_size=1, max_size=30))
def test_fast_path_and_fallback_equal_the_duckdb_path_and_the_reference(raws):
    b = bronze(raws, ingestion=[T0] * len(raws))
    valid, quarantine = compiled().validate(b)
    with _fastpath.disabled():
        old_valid, old_quarantine = compiled().validate(b)
    assert valid.schema == old_valid.schema and quarantine.schema == old_quarantine.schema
    assert _rows(valid) == _rows(old_valid)
    assert _rows(quarantine) == _rows(old_quarantine)
    got = {r["kafka_offset"]: r["reason"] for r in quarantine.to_pylist()}
    rows = {r["kafka_offset"]: r for r in valid.to_pylist()}
    for i, p in enumerate(raws):
        expected, vals = strict_validate(p, ING_US, PLANS, 3600 * 1_000_000)
        assert got.get(i) == expected, p
        if expected is None:
            row = rows[i]
            assert row["event_timestamp"] == EPOCH + timedelta(microseconds=vals["event_timestamp_us"]), p
            assert {f: row[f] for f in FIELD_NAMES if f != "event_timestamp"} == \
                {f: vals[f] for f in FIELD_NAMES if f != "event_timestamp"}, p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(timestamps(), st.sampled_from(TIMESTAMPS),
                          st.text("0123456789-:.TtZz+ é\x00", max_size=36)), max_size=40))
def test_vectorized_timestamp_parser_equals_the_reference(texts):
    arr = pa.array(["pad", *texts, None], pa.string()).slice(1)  # a sliced array, and a NULL
    us, ok = parse_timestamps(arr)
    assert not ok[-1]
    for text, u, o in zip(texts, us, ok, strict=False):
        expected = parse_timestamp_us(text)
        assert (expected is not None) == bool(o), text
        if o:
            assert int(u) == expected, text


#: bytes a mutation inserts or writes: JSON's structure, escapes, digits, whitespace,
#: control characters and bytes that are not UTF-8 on their own
MUTATION_BYTES = st.sampled_from(list(b'{}[],:"\\/ubnrt0123456789eE.+-tfnalsu \t\r\n\x00\x1f\x7f')
                                 + [0x80, 0xC3, 0xED, 0xF0, 0xFF])


@st.composite
def mutated(draw) -> bytes:
    """A valid event's text with a few bytes inserted, deleted or overwritten at random: the
    fast path must refuse whatever the strict reference calls invalid, byte by byte."""
    base = json.dumps({"event_id": draw(st.sampled_from(["e1", "é\\u00e9", "\\ud83d\\ude00"])),
                       "event_timestamp": "2026-03-02T12:00:00.5+01:00", "tenant_id": "t",
                       "subscription_plan": "free", "endpoint": "/x", "status_code": 200,
                       "latency_ms": draw(st.sampled_from([0, -0, 12, 2**63 - 1])),
                       "extra": draw(st.sampled_from([[1, 2.5e-3, None], {"a": {"b": [True]}}, "s"]))})
    raw = bytearray(base.encode().replace(b"\\\\", b"\\"))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(raw)))
        op = draw(st.integers(0, 2))
        if op == 0:
            raw[pos:pos] = bytes([draw(MUTATION_BYTES)])
        elif op == 1 and pos < len(raw):
            del raw[pos]
        elif pos < len(raw):
            raw[pos] = draw(MUTATION_BYTES)
    return bytes(raw)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(mutated(), min_size=1, max_size=20))
def test_byte_mutations_of_a_valid_event_agree_with_the_reference(raws):
    b = bronze(raws, ingestion=[T0] * len(raws))
    fast, taken = _fastpath.accept(b, PLANS, 3600 * 1_000_000)
    valid, quarantine = compiled().validate(b)
    got = {r["kafka_offset"]: r["reason"] for r in quarantine.to_pylist()}
    rows = {r["kafka_offset"]: r for r in valid.to_pylist()}
    taken_rows = iter(fast.to_pylist())
    for i, p in enumerate(raws):
        expected, vals = strict_validate(p, ING_US, PLANS, 3600 * 1_000_000)
        assert got.get(i) == expected, p
        if taken[i]:  # taken by the fast path: certainly valid, with the reference's values
            assert expected is None and next(taken_rows) == rows[i], p
        if expected is None:
            assert {f: rows[i][f] for f in FIELD_NAMES if f != "event_timestamp"} == \
                {f: vals[f] for f in FIELD_NAMES if f != "event_timestamp"}, p


@pytest.mark.parametrize("depth,taken", [(1, True), (64, True), (65, False), (5000, False)])
def test_nesting_in_an_unknown_field(depth, taken):
    raw = (b'{"event_id": "e", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "t", '
           b'"subscription_plan": "free", "endpoint": "/x", "status_code": 200, "x": '
           + b"[" * depth + b"]" * depth + b"}")
    _, accepted = _fastpath.accept(bronze([raw], ingestion=[T0]), PLANS, 3600 * 1_000_000)
    valid, _ = compiled().validate(bronze([raw], ingestion=[T0]))
    assert valid.num_rows == 1  # valid at any depth; deep ones are the fallback's to judge
    if _fastpath.native_enabled():
        assert bool(accepted[0]) == taken


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(timestamps(), st.sampled_from(TIMESTAMPS),
                          st.text("0123456789-:.TtZz+ é\x00", max_size=36)), min_size=1, max_size=40))
def test_the_fast_paths_timestamps_equal_the_reference(texts):
    """The timestamp as the fast path's decoder parses it (natively, or parse_timestamps after
    msgspec), through whole events: taken exactly when the reference parses it, same instant."""
    raws = [json.dumps({"event_id": "e", "event_timestamp": t, "tenant_id": "t",
                        "subscription_plan": "free", "endpoint": "/x", "status_code": 200}).encode()
            for t in texts]
    far = datetime(9999, 12, 31, tzinfo=UTC)  # no timestamp is in the future of this ingestion
    fast, taken = _fastpath.accept(bronze(raws, ingestion=[far] * len(raws)), PLANS, 86_400 * 10**6)
    instants = iter(fast.column("event_timestamp").to_pylist())
    for text, t in zip(texts, taken, strict=True):
        expected = parse_timestamp_us(text)
        assert (expected is not None) == bool(t), text
        if t:
            assert next(instants) == EPOCH + timedelta(microseconds=expected), text
