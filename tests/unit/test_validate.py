"""validate@1, docs/semantics.md §3.1, edge by edge."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.helpers import T0, bronze, compiled, event, reasons


def one(obj, **kw):
    return reasons([obj], **kw)[0]


def test_a_valid_event_passes():
    assert one(event()) is None


@pytest.mark.parametrize("raw", [
    b"", b"{not json", b"[1, 2]", b'"a string"', b"42", b"null",
    b"\xff\xfe\x00", b'{"event_id": "\xc3\x28"}',  # invalid UTF-8
    b'\xef\xbb\xbf{"event_id": "e1"}',  # byte order mark
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": nan}',
    b'{"a": "\\ud800"}', b'{"a": "\\udc00x"}',  # unpaired surrogate escapes
    b'{"a": 1,}', b'{"a": [1, 2,]}',  # trailing commas
    b'{"a": 1} trailing', b"{'a': 1}", b'{"a": 01}',
])
def test_malformed_json(raw):
    assert one(raw) == "malformed_json"


def test_nan_in_an_unknown_field_still_makes_the_message_malformed():
    good = event(extra=1)
    raw = __import__("json").dumps(good).replace('"extra": 1', '"extra": NaN').encode()
    assert one(raw) == "malformed_json"


def test_paired_surrogate_escape_is_fine():
    raw = b'{"event_id": "e\\ud83d\\ude00", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "acme", "subscription_plan": "free", "endpoint": "/x", "status_code": 200}'
    assert one(raw) is None


def test_tombstone_is_malformed():
    b = bronze([event()])
    b = b.set_column(0, "raw_payload", __import__("pyarrow").nulls(1, __import__("pyarrow").binary()))
    _, q = compiled().validate(b)
    assert q.column("reason").to_pylist() == ["malformed_json"]


@pytest.mark.parametrize("field", ["event_id", "event_timestamp", "tenant_id", "subscription_plan",
                                   "endpoint", "status_code"])
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_missing_required_field(field, how):
    value = {"absent": ..., "null": None, "empty": ""}[how]
    assert one(event(**{field: value})) == f"missing_field:{field}"


def test_missing_fields_are_reported_in_table_order():
    assert one(event(endpoint=..., tenant_id=None)) == "missing_field:tenant_id"


def test_missing_precedes_invalid_type():
    assert one(event(status_code=..., event_id=5)) == "missing_field:status_code"


@pytest.mark.parametrize("value", [200.0, 1e2, "200", True, [200], {"v": 200}])
def test_status_code_must_be_a_json_integer(value):
    assert one(event(status_code=value)) == "invalid_type:status_code"


def test_exponent_integer_literal_is_not_an_integer():
    raw = b'{"event_id": "e1", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "acme", "subscription_plan": "free", "endpoint": "/x", "status_code": 2E2}'
    assert one(raw) == "invalid_type:status_code"


@pytest.mark.parametrize("field,value", [("event_id", 5), ("tenant_id", True), ("endpoint", ["/x"]),
                                         ("method", 1), ("latency_ms", "12"), ("latency_ms", 1.5),
                                         ("request_bytes", False), ("user_id", 7),
                                         ("data_residency_region", {"r": 1})])
def test_invalid_types(field, value):
    assert one(event(**{field: value})) == f"invalid_type:{field}"


def test_invalid_type_in_table_order():
    assert one(event(latency_ms="x", method=3)) == "invalid_type:method"


def test_optional_null_and_absent_are_null_and_empty_string_stays():
    c = compiled()
    valid, q = c.validate(bronze([event(method=None, user_id="", latency_ms=...)]))
    assert q.num_rows == 0
    row = valid.to_pylist()[0]
    assert row["method"] is None and row["user_id"] == "" and row["latency_ms"] is None


@pytest.mark.parametrize("ts", [
    "2026-03-02T12:00:00", "2026-03-02 12:00:00Z", "2026-03-02T12:00Z", "2026-3-02T12:00:00Z",
    "2026-02-29T12:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z", "2026-03-02T24:00:00Z",
    "2026-03-02T12:60:00Z", "2026-03-02T12:00:60Z", "2026-03-02T12:00:00.Z",
    "2026-03-02T12:00:00.1234567890Z", "2026-03-02T12:00:00+24:00", "2026-03-02T12:00:00+01:60",
    "2026-03-02T12:00:00+0100", "2026-03-02T12:00:00 Z", "２０２６-03-02T12:00:00Z", "",
])
def test_invalid_timestamps(ts):
    expected = "missing_field:event_timestamp" if ts == "" else "invalid_timestamp"
    assert one(event(event_timestamp=ts)) == expected


@pytest.mark.parametrize("ts,utc", [
    ("2026-03-02T12:00:00Z", "2026-03-02 12:00:00"),
    ("2026-03-02t12:00:00z", "2026-03-02 12:00:00"),
    ("2026-03-02T12:00:00.123456789Z", "2026-03-02 12:00:00.123456"),
    ("2026-03-02T12:00:00.5+02:00", "2026-03-02 10:00:00.500000"),
    ("2026-03-02T01:00:00-05:30", "2026-03-02 06:30:00"),
    ("2024-02-29T23:59:59.999999+23:59", "2024-02-29 00:00:59.999999"),
    ("2026-03-02T00:30:00+01:00", "2026-03-01 23:30:00"),
])
def test_valid_timestamps_are_stored_as_utc_microseconds(ts, utc):
    valid, q = compiled().validate(bronze([event(event_timestamp=ts)], ingestion=[T0 + timedelta(days=1)]))
    assert q.num_rows == 0, q.column("reason").to_pylist()
    got = valid.column("event_timestamp")[0].as_py().replace(tzinfo=None)
    assert str(got) == utc if "." in utc else got.strftime("%Y-%m-%d %H:%M:%S") == utc


def test_invalid_timestamp_precedes_unknown_plan():
    assert one(event(event_timestamp="nope", subscription_plan="gold")) == "invalid_timestamp"


def test_unknown_plan_depends_on_the_active_plan_table():
    assert one(event(subscription_plan="gold")) == "unknown_plan"
    assert one(event(subscription_plan="Free")) == "unknown_plan"


def test_unknown_plan_precedes_out_of_range():
    assert one(event(subscription_plan="gold", status_code=999)) == "unknown_plan"


@pytest.mark.parametrize("over,reason", [
    ({"event_id": "x" * 129}, "out_of_range:event_id"),
    ({"tenant_id": "t" * 129}, "out_of_range:tenant_id"),
    ({"status_code": 99}, "out_of_range:status_code"),
    ({"status_code": 600}, "out_of_range:status_code"),
    ({"status_code": 2**63}, "out_of_range:status_code"),
    ({"status_code": 10**30}, "out_of_range:status_code"),
    ({"latency_ms": -1}, "out_of_range:latency_ms"),
    ({"request_bytes": -5}, "out_of_range:request_bytes"),
    ({"response_bytes": 2**63}, "out_of_range:response_bytes"),
    ({"response_bytes": -(2**63) - 1}, "out_of_range:response_bytes"),
])
def test_out_of_range(over, reason):
    assert one(event(**over)) == reason


@pytest.mark.parametrize("over", [{"event_id": "x" * 128}, {"event_id": "é" * 128},
                                  {"event_id": "😀" * 128}, {"status_code": 100},
                                  {"status_code": 599}, {"latency_ms": 0},
                                  {"response_bytes": 2**63 - 1}, {"tenant_id": "t"}])
def test_range_bounds_are_inclusive(over):
    assert one(event(**over)) is None


def test_length_is_counted_in_code_points():
    assert one(event(event_id="😀" * 129)) == "out_of_range:event_id"


def test_out_of_range_in_spec_order():
    assert one(event(latency_ms=-1, status_code=700)) == "out_of_range:status_code"
    assert one(event(tenant_id="t" * 200, event_id="e" * 200)) == "out_of_range:event_id"


def test_future_timestamp_is_strictly_more_than_an_hour_after_ingestion():
    ing = T0
    at_limit = (ing + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    beyond = (ing + timedelta(hours=1, microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert reasons([event(event_timestamp=at_limit)], ingestion=[ing]) == [None]
    assert reasons([event(event_timestamp=beyond)], ingestion=[ing]) == ["future_timestamp"]


def test_out_of_range_precedes_future():
    assert one(event(event_timestamp="2099-01-01T00:00:00Z", status_code=1)) == "out_of_range:status_code"


def test_duplicated_key_last_one_wins():
    raw = (b'{"event_id": "e1", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "acme", '
           b'"subscription_plan": "gold", "endpoint": "/x", "status_code": 200, "subscription_plan": "free"}')
    assert one(raw) is None
    raw2 = raw.replace(b'"gold"', b'"free"').replace(b'"subscription_plan": "free"}', b'"subscription_plan": "gold"}')
    assert one(raw2) == "unknown_plan"


def test_unknown_fields_are_ignored():
    assert one(event(extra={"nested": [1, 2, {"x": None}]}, big=10**40, f=1.5)) is None


def test_valid_rows_carry_lineage_and_typed_values():
    valid, q = compiled().validate(bronze([event(latency_ms=12, method="GET", data_residency_region="eu")],
                                          partitions=[3], offsets=[77]))
    row = valid.to_pylist()[0]
    assert (row["kafka_partition"], row["kafka_offset"], row["status_code"], row["latency_ms"]) == (3, 77, 200, 12)
    assert row["data_residency_region"] == "eu" and row["method"] == "GET"


def test_quarantine_rows_keep_raw_payload_rule_and_reason():
    raw = b"\xff not utf8"
    _, q = compiled().validate(bronze([raw]))
    row = q.to_pylist()[0]
    assert row["raw_payload"] == raw and row["rule"] == "validate@1" and row["reason"] == "malformed_json"


@pytest.mark.parametrize("ts", ["0000-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00",
                                "9999-12-31T23:30:00-01:00"])
def test_instants_outside_years_1_to_9999_are_invalid(ts):
    assert one(event(event_timestamp=ts)) == "invalid_timestamp"


def test_first_and_last_representable_instants_are_valid():
    assert one(event(event_timestamp="0001-01-01T00:00:00Z")) is None
    late = reasons([event(event_timestamp="9999-12-31T23:59:59.999999Z")])
    assert late == ["future_timestamp"]  # valid grammar and range; merely in the future
