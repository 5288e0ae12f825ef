"""The event contract of docs/semantics.md §1, shared by validate's two evaluators.

Two evaluators implement ``validate@1``: a vectorized DuckDB one for the bulk of
rows, and :func:`strict_validate`, a per-row strict-JSON reference for the few
rows DuckDB's lenient JSON reader cannot judge on its own (NaN/Infinity
literals, trailing commas, duplicated keys, surrogate escapes, non-int64
numbers in integer fields, anything DuckDB calls invalid). A property test
keeps the two identical.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
US = 1_000_000
#: Instants a timestamp column can hold for every consumer: 0001-01-01 .. 9999-12-31 (UTC).
MIN_TS_US = -62135596800 * US
MAX_TS_US = 253402300799 * US + 999_999


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "str" | "int"
    required: bool
    min: int | None = None  # for int: value range; for str: length range (code points)
    max: int | None = None


FIELDS: tuple[Field, ...] = (
    Field("event_id", "str", True, 1, 128),
    Field("event_timestamp", "str", True),
    Field("tenant_id", "str", True, 1, 128),
    Field("subscription_plan", "str", True),
    Field("endpoint", "str", True),
    Field("status_code", "int", True, 100, 599),
    Field("method", "str", False),
    Field("latency_ms", "int", False, 0, None),
    Field("request_bytes", "int", False, 0, None),
    Field("response_bytes", "int", False, 0, None),
    Field("user_id", "str", False),
    Field("data_residency_region", "str", False),
)
#: docs/semantics.md §3.1 step 6 order.
RANGE_ORDER = ("event_id", "tenant_id", "status_code", "latency_ms", "request_bytes", "response_bytes")

TS_PATTERN = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[.]([0-9]{1,9}))?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))$"
)
_TS_RE = re.compile(TS_PATTERN)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (any year)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def days_in_month(y: int, m: int) -> int:
    if m == 2:
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        return 29 if leap else 28
    return 30 if m in (4, 6, 9, 11) else 31


def parse_timestamp_us(text: str) -> int | None:
    """docs/semantics.md §1.3 timestamp grammar -> UTC microseconds since the epoch, or None if invalid."""
    m = _TS_RE.match(text)
    if m is None or m.end() != len(text):
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac, z, sign, oh, om = m.group(7, 8, 9, 10, 11)
    if not (1 <= mo <= 12 and 1 <= d <= days_in_month(y, mo) and h <= 23 and mi <= 59 and s <= 59):
        return None
    offset = 0
    if z is None:
        ohi, omi = int(oh), int(om)
        if ohi > 23 or omi > 59:
            return None
        offset = (ohi * 3600 + omi * 60) * (1 if sign == "+" else -1)
    us = int((frac or "")[:6].ljust(6, "0"))
    out = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset) * US + us
    return out if MIN_TS_US <= out <= MAX_TS_US else None


class _Malformed(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Malformed(name)


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def strict_loads(raw: bytes | None) -> dict[str, Any] | None:
    """Strict RFC 8259 parse of an event; None when docs/semantics.md §1.2 calls it malformed."""
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff"):
        return None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, _Malformed, RecursionError):
        return None
    if not isinstance(obj, dict) or _has_lone_surrogate(obj):
        return None
    return obj


def _parse_int(text: str) -> int:
    # Python refuses to convert integers of thousands of digits; any integer that
    # long is out of int64 range anyway, so keep its sign and make it out of range.
    if len(text) > 40:
        return INT64_MIN - 1 if text.startswith("-") else INT64_MAX + 1
    return int(text)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def strict_validate(
    raw: bytes | None, ingestion_us: int, known_plans: frozenset[str], future_tolerance_us: int
) -> tuple[str | None, dict[str, Any]]:
    """Reference evaluator of validate@1 for one message: (reason or None, typed values).

    Typed values always include ``event_timestamp_us`` (None unless the timestamp
    parsed) and ``tenant_id`` (None unless it is a string) so quarantine rows keep
    what can be known about them.
    """
    out: dict[str, Any] = {"event_timestamp_us": None, "tenant_id": None}
    obj = strict_loads(raw)
    if obj is None:
        return "malformed_json", out
    tenant = obj.get("tenant_id")
    if isinstance(tenant, str) and tenant:
        out["tenant_id"] = tenant
    ts_val = obj.get("event_timestamp")
    ts_us = parse_timestamp_us(ts_val) if isinstance(ts_val, str) else None
    out["event_timestamp_us"] = ts_us
    for f in FIELDS:
        v = obj.get(f.name)
        if f.required and (v is None or v == ""):
            return f"missing_field:{f.name}", out
    for f in FIELDS:
        v = obj.get(f.name)
        if v is None:
            continue
        ok = isinstance(v, str) if f.kind == "str" else _is_int(v)
        if not ok:
            return f"invalid_type:{f.name}", out
    if ts_us is None:
        return "invalid_timestamp", out
    if obj["subscription_plan"] not in known_plans:
        return "unknown_plan", out
    by_name = {f.name: f for f in FIELDS}
    for name in RANGE_ORDER:
        f = by_name[name]
        v = obj.get(name)
        if v is None:
            continue
        x = len(v) if f.kind == "str" else v
        if f.kind == "int" and not (INT64_MIN <= x <= INT64_MAX):
            return f"out_of_range:{name}", out
        if (f.min is not None and x < f.min) or (f.max is not None and x > f.max):
            return f"out_of_range:{name}", out
    if ts_us > ingestion_us + future_tolerance_us:
        return "future_timestamp", out
    for f in FIELDS:
        if f.name != "event_timestamp":
            out[f.name] = obj.get(f.name)
    return None, out
