"""validate@1's fast path (rules._fastpath), edge by edge.

Each case says whether the fast path takes the row, and checks that validate@1's answer is
the same with the fast path on and off (DuckDB path) and equals the strict reference's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from engine.contract import schemas
from rules import _fastpath
from rules._event import strict_validate
from tests.helpers import T0, bronze, compiled, each_decoder, event, payload

pytestmark = pytest.mark.usefixtures("each_decoder")
assert each_decoder  # the fixture, used by every test of this module

PLANS = frozenset({"free", "starter", "professional", "enterprise"})
TOL = 3600 * 1_000_000
BASE = ('"event_id": "e1", "event_timestamp": "2026-03-02T12:00:00Z", "tenant_id": "acme", '
        '"subscription_plan": "free", "endpoint": "/x", "status_code": 200')


def raw(extra: str = "", base: str = BASE) -> bytes:
    """An event as raw JSON text, with ``extra`` members appended (duplicates allowed)."""
    return ("{" + base + (", " + extra if extra else "") + "}").encode("utf-8", "surrogatepass")


def judge(message, ingestion: datetime = T0) -> tuple[bool, str | None, dict | None]:
    """(taken by the fast path, validate@1's reason, the valid row) for one message."""
    b = bronze([message], ingestion=[ingestion])
    fast, accepted = _fastpath.accept(b, PLANS, TOL)
    valid, quarantine = compiled().validate(b)
    with _fastpath.disabled():
        old_valid, old_quarantine = compiled().validate(b)
    assert valid.to_pylist() == old_valid.to_pylist()
    assert quarantine.to_pylist() == old_quarantine.to_pylist()
    ing_us = int(ingestion.timestamp()) * 1_000_000
    expected, vals = strict_validate(payload(message), ing_us, PLANS, TOL)
    reason = quarantine.column("reason")[0].as_py() if quarantine.num_rows else None
    assert reason == expected
    row = valid.to_pylist()[0] if valid.num_rows else None
    if accepted[0]:
        assert expected is None and fast.to_pylist() == [row]
    if row is not None:
        us = vals["event_timestamp_us"]
        assert row["event_timestamp"] == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
        assert all(row[k] == vals[k] for k in vals if k != "event_timestamp_us")
    return bool(accepted[0]), reason, row


def test_a_well_formed_event_takes_the_fast_path():
    assert judge(event(latency_ms=12, method="GET", user_id="u", data_residency_region="eu"))[:2] == (True, None)


def test_absent_and_null_optional_fields_are_null_on_the_fast_path():
    taken, _, row = judge(event(method=None, latency_ms=None))
    assert taken and row["method"] is None and row["latency_ms"] is None and row["user_id"] is None


def test_an_empty_optional_string_stays_empty_on_the_fast_path():
    taken, _, row = judge(event(user_id="", method=""))
    assert taken and row["user_id"] == "" and row["method"] == ""


@pytest.mark.parametrize("field", ["event_id", "event_timestamp", "tenant_id", "subscription_plan",
                                   "endpoint"])
def test_an_empty_required_string_is_missing(field):
    assert judge(event(**{field: ""}))[:2] == (False, f"missing_field:{field}")


def test_a_null_required_field_is_missing():
    assert judge(event(status_code=None))[:2] == (False, "missing_field:status_code")


def test_a_bool_is_not_an_integer():
    assert judge(event(status_code=True))[:2] == (False, "invalid_type:status_code")


def test_a_float_is_not_an_integer():
    assert judge(raw('"latency_ms": 12.0'))[:2] == (False, "invalid_type:latency_ms")


def test_an_exponent_is_not_an_integer():
    assert judge(raw('"status_code": 2E2'))[:2] == (False, "invalid_type:status_code")


def test_an_integer_beyond_int64_is_out_of_range():
    assert judge(event(response_bytes=2**63))[:2] == (False, "out_of_range:response_bytes")


def test_the_largest_int64_takes_the_fast_path():
    taken, _, row = judge(event(request_bytes=2**63 - 1))
    assert taken and row["request_bytes"] == 2**63 - 1


def test_a_huge_integer_in_an_unknown_field_is_fine():
    assert judge(raw('"extra": 1' + "0" * 5000))[:2] == (True, None)


def test_nan_in_an_unknown_field_is_malformed():
    assert judge(raw('"extra": NaN'))[:2] == (False, "malformed_json")


def test_infinity_is_malformed():
    assert judge(raw('"extra": [-Infinity]'))[:2] == (False, "malformed_json")


def test_a_byte_order_mark_is_malformed():
    assert judge(b"\xef\xbb\xbf" + raw())[:2] == (False, "malformed_json")


def test_a_lone_surrogate_in_an_unknown_field_is_malformed():
    assert judge(raw('"extra": {"deep": ["\\ud800"]}'))[:2] == (False, "malformed_json")


def test_a_lone_surrogate_in_a_key_is_malformed():
    assert judge(raw('"\\udc00": 1'))[:2] == (False, "malformed_json")


def test_a_paired_surrogate_escape_takes_the_fast_path():
    taken, _, row = judge(raw('"user_id": "\\ud83d\\ude00"'))
    assert taken and row["user_id"] == "😀"


def test_invalid_utf8_in_an_unknown_field_is_malformed():
    assert judge(raw()[:-1] + b', "extra": "\xff"}')[:2] == (False, "malformed_json")


def test_invalid_utf8_in_an_unknown_key_is_malformed():
    assert judge(raw()[:-1] + b', "\xc3\x28": 1}')[:2] == (False, "malformed_json")


def test_an_encoded_surrogate_is_invalid_utf8():
    assert judge(raw()[:-1] + b', "extra": "\xed\xa0\x80"}')[:2] == (False, "malformed_json")


def test_valid_non_ascii_utf8_takes_the_fast_path():
    taken, _, row = judge(event(tenant_id="café-ü", user_id="日本"))
    assert taken and row["tenant_id"] == "café-ü"


@pytest.mark.parametrize("message", [b"[1]", b'"text"', b"42", b"null", b"", b" "])
def test_json_that_is_not_an_object_is_malformed(message):
    assert judge(message)[:2] == (False, "malformed_json")


def test_a_tombstone_is_malformed():
    b = bronze([event()]).set_column(0, "raw_payload", pa.nulls(1, pa.binary()))
    _, accepted = _fastpath.accept(b, PLANS, TOL)
    _, q = compiled().validate(b)
    assert not accepted[0] and q.column("reason").to_pylist() == ["malformed_json"]


def test_a_control_character_in_a_string_is_malformed():
    assert judge(raw('"extra": "a\tb"'))[:2] == (False, "malformed_json")


def test_trailing_characters_are_malformed():
    assert judge(raw() + b" {}")[:2] == (False, "malformed_json")


def test_whitespace_around_the_object_is_fine():
    assert judge(b" \r\n\t" + raw() + b"\n")[:2] == (True, None)


def test_unknown_fields_take_the_fast_path():
    assert judge(event(extra={"nested": [1, 2.5, None, {"x": "y"}]}, flag=True))[:2] == (True, None)


def test_a_duplicated_key_last_one_wins():
    taken, _, row = judge(raw('"status_code": 404'))
    assert taken and row["status_code"] == 404


def test_a_duplicated_key_whose_first_value_is_invalid_falls_back_and_the_last_wins():
    taken, reason, row = judge(raw('"latency_ms": 5', base='"status_code": "x", "latency_ms": -1, ' + BASE))
    assert not taken and reason is None and row["status_code"] == 200 and row["latency_ms"] == 5


def test_a_duplicated_key_whose_last_value_is_invalid():
    assert judge(raw('"status_code": 200.5'))[:2] == (False, "invalid_type:status_code")


def test_a_duplicated_plan_the_last_one_decides():
    assert judge(raw('"subscription_plan": "gold"'))[:2] == (False, "unknown_plan")


def test_a_duplicated_optional_field_first_null_then_set():
    taken, reason, row = judge(raw('"method": "GET"', base='"method": null, ' + BASE))
    assert taken and reason is None and row["method"] == "GET"


def test_a_duplicated_required_field_first_null_falls_back_and_the_last_wins():
    taken, reason, row = judge(raw(base='"event_id": null, ' + BASE))
    assert not taken and reason is None and row["event_id"] == "e1"


def test_an_escaped_key_names_the_field():
    taken, _, row = judge(raw('"event\\u005fid": "e2"'))
    assert taken and row["event_id"] == "e2"


def test_lower_case_t_and_z_take_the_fast_path():
    taken, _, row = judge(event(event_timestamp="2026-03-02t11:00:00z"))
    assert taken and row["event_timestamp"] == datetime(2026, 3, 2, 11, tzinfo=UTC)


@pytest.mark.parametrize("digits", range(1, 10))
def test_fractions_of_1_to_9_digits_are_truncated_to_microseconds(digits):
    frac = "987654321"[:digits]
    taken, _, row = judge(event(event_timestamp=f"2026-03-02T11:00:00.{frac}Z"))
    assert taken and row["event_timestamp"].microsecond == int(frac[:6].ljust(6, "0"))


def test_ten_fraction_digits_are_invalid():
    assert judge(event(event_timestamp="2026-03-02T11:00:00.1234567890Z"))[:2] == (False, "invalid_timestamp")


def test_an_offset_is_converted_to_utc():
    taken, _, row = judge(event(event_timestamp="2026-03-02T01:00:00.5-05:30"))
    assert taken and row["event_timestamp"] == datetime(2026, 3, 2, 6, 30, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("offset", ["+24:00", "-00:60", "+0100", "+01", "+1:00"])
def test_an_offset_out_of_grammar_or_range_is_invalid(offset):
    assert judge(event(event_timestamp=f"2026-03-02T11:00:00{offset}"))[:2] == (False, "invalid_timestamp")


def test_second_60_is_invalid():
    assert judge(event(event_timestamp="2026-03-02T11:59:60Z"))[:2] == (False, "invalid_timestamp")


@pytest.mark.parametrize("ts,ok", [("2026-02-29T00:00:00Z", False), ("2024-02-29T00:00:00Z", True),
                                   ("1900-02-29T00:00:00Z", False), ("2000-02-29T00:00:00Z", True),
                                   ("2026-04-31T00:00:00Z", False), ("2026-00-10T00:00:00Z", False),
                                   ("2026-01-00T00:00:00Z", False)])
def test_calendar_validity(ts, ok):
    assert judge(event(event_timestamp=ts))[:2] == ((True, None) if ok else (False, "invalid_timestamp"))


def test_year_0000_is_invalid():
    assert judge(event(event_timestamp="0000-06-01T00:00:00Z"))[:2] == (False, "invalid_timestamp")


def test_an_offset_that_moves_before_year_1_is_invalid():
    assert judge(event(event_timestamp="0001-01-01T00:30:00+01:00"))[:2] == (False, "invalid_timestamp")


def test_the_first_representable_instant_takes_the_fast_path():
    assert judge(event(event_timestamp="0001-01-01T00:00:00Z"))[:2] == (True, None)


def test_the_last_representable_instant_is_merely_in_the_future():
    assert judge(event(event_timestamp="9999-12-31T23:59:59.999999Z"))[:2] == (False, "future_timestamp")


def test_exactly_one_hour_ahead_takes_the_fast_path_one_microsecond_more_is_future():
    assert judge(event(event_timestamp="2026-03-02T13:00:00Z"))[:2] == (True, None)
    assert judge(event(event_timestamp="2026-03-02T13:00:00.000001Z"))[:2] == (False, "future_timestamp")


def test_an_unknown_plan_is_left_to_the_fallback():
    assert judge(event(subscription_plan="Free"))[:2] == (False, "unknown_plan")


def test_128_code_points_take_the_fast_path_129_are_out_of_range():
    assert judge(event(event_id="😀" * 128))[:2] == (True, None)
    assert judge(event(event_id="😀" * 129))[:2] == (False, "out_of_range:event_id")
    assert judge(event(tenant_id="t" * 129))[:2] == (False, "out_of_range:tenant_id")


@pytest.mark.parametrize("field,value", [("status_code", 99), ("status_code", 600),
                                         ("latency_ms", -1), ("request_bytes", -5)])
def test_integers_out_of_range(field, value):
    assert judge(event(**{field: value}))[:2] == (False, f"out_of_range:{field}")


def test_negative_zero_is_zero():
    taken, _, row = judge(raw('"latency_ms": -0'))
    assert taken and row["latency_ms"] == 0


def test_nesting_deeper_than_the_decoder_allows_is_not_taken():
    b = bronze([raw('"extra": ' + "[" * 5000 + "]" * 5000)])
    _, accepted = _fastpath.accept(b, PLANS, TOL)
    assert not accepted[0]


def test_every_row_taken_gives_an_empty_quarantine_of_the_right_schema():
    valid, quarantine = compiled().validate(bronze([event(), event(event_id="e2")]))
    assert valid.num_rows == 2 and valid.schema == schemas.VALID_SCHEMA
    assert quarantine.num_rows == 0 and quarantine.schema == schemas.QUARANTINE_SCHEMA


def test_a_chunked_and_sliced_bronze_gives_the_same_tables():
    msgs = [event(event_id=f"e{i}") if i % 3 else b"{bad" for i in range(30)]
    whole = bronze(msgs)
    chunked = pa.concat_tables([whole.slice(0, 7), whole.slice(7, 11), whole.slice(18)])
    a, b = compiled().validate(whole), compiled().validate(chunked)
    assert a[0].to_pylist() == b[0].to_pylist() and a[1].to_pylist() == b[1].to_pylist()


def test_valid_rows_keep_their_lineage_on_the_fast_path():
    valid, _ = compiled().validate(bronze([event(), b"{bad", event(event_id="e2")],
                                          partitions=[3, 1, 2], offsets=[77, 5, 9]))
    rows = sorted((r["kafka_partition"], r["kafka_offset"], r["event_id"]) for r in valid.to_pylist())
    assert rows == [(2, 9, "e2"), (3, 77, "e1")]


def test_the_switch_sends_every_row_to_the_duckdb_path(monkeypatch):
    calls = []
    monkeypatch.setattr(_fastpath, "accept", lambda *a: calls.append(a))
    with _fastpath.disabled():
        valid, _ = compiled().validate(bronze([event()]))
    assert valid.num_rows == 1 and calls == []
    assert _fastpath.enabled


def test_a_generated_event_payload_round_trips():
    message = json.dumps(event(method="GET", latency_ms=1, request_bytes=2, response_bytes=3,
                               user_id="user-1", data_residency_region="eu-west-1")).encode()
    assert judge(message)[:2] == (True, None)
