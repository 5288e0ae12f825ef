"""The fast path of ``validate@1``: the common, well-formed event, judged natively.

An implementation detail of :mod:`rules.validate_v1`, never a behaviour of its own.
Every payload is decoded strictly into the typed fields of :data:`rules._event.FIELDS`;
a row is *accepted* here only when it is certain to pass every docs/semantics.md §3.1 check, and an
accepted row's typed values are exactly the strict reference's. Everything else (any
decode or type error, a constraint not met, any doubt) is left to the DuckDB query +
strict reference, which alone name reasons: the fast path never quarantines.

Two decoders give the same rows (the tests run every case through both):
- the native one (``rules/_native``, Rust via PyO3, built by ``make venv``): one pass
  over the Arrow payload buffer checks UTF-8, strict JSON, every field's type and bounds,
  the timestamp, the plan and the tolerance, and writes accepted rows as Arrow buffers; no Python object per row, and the GIL
  is released, so the local executor's threads validate in parallel. Its grammar is in
  its source; a member's value nested more than 64 containers deep is refused.
- msgspec's typed decoder (one call per row), used where the extension is not installed
  (a cluster node without cargo, say) or inside :func:`msgspec_decoder`.

Why an accepted row is certain to be valid (docs/semantics.md §1 / §3.1, check by check; msgspec here,
the native decoder the same by its own grammar):
- UTF-8: msgspec validates only the strings it decodes, not skipped ones (unknown
  fields, keys), so rows are accepted only when all ASCII or valid UTF-8 as a whole
  (Arrow's validation, which agrees with Python's strict codec). A NULL value (a
  Kafka tombstone) is never accepted.
- Strict JSON: msgspec refuses NaN/Infinity, a BOM, trailing commas or characters,
  control characters in strings and unpaired surrogate escapes (also in skipped
  values and keys); a non-object fails the struct type. Nesting deeper than the
  interpreter's recursion limit raises and is left to the fallback.
- Required fields: struct fields without a default, typed ``str``/``int``, so absent
  and ``null`` fail; ``""`` fails ``min_length=1``. Optional fields: ``T | None``
  with a ``None`` default (absent and ``null`` are NULL, an optional ``""`` stays).
- Types: msgspec's ``int`` refuses ``true``, ``200.0``, ``1e2`` and ``"200"``.
- Ranges: ``Meta`` bounds (code points for string lengths, as the reference counts);
  every integer is bounded to int64, since msgspec passes larger ones.
- Duplicated keys: msgspec keeps the last value, as the reference does; each copy is
  type- and range-checked on its own, so a key whose earlier copy would fail is left
  to the fallback (which then lets the last copy win).
- Timestamp: docs/semantics.md §1.3's grammar, calendar, offset and the 0001..9999 UTC range checked
  vectorized below (truncating the fraction to µs); plan in the active table; not
  after ingestion + the tolerance.

Cost (one core, 1M generated events, 99% of them accepted): ~0.55 µs/row for the fast
path with the native decoder, which also parses the timestamp, checks the plan and the
tolerance and outputs only accepted rows (~0.7 for all of validate@1), against ~1.8 with
msgspec's decoder and ~5.5 for the DuckDB query alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

try:  # rules/_native (PyO3), built and installed by `make venv`
    import medallion_native as _native
except ImportError:  # not built here: msgspec decodes (same rows, slower)
    _native = None

from engine.contract import schemas
from rules._event import FIELDS, INT64_MAX, INT64_MIN, MAX_TS_US, MIN_TS_US, US

#: Switch for benchmarks and tests: False sends every row to the DuckDB path. The word
#: tricks of :func:`parse_timestamps` assume a little-endian machine.
enabled = sys.byteorder == "little"
#: Switch: decode with the native extension where it is installed (else msgspec).
use_native = True


@contextmanager
def disabled() -> Iterator[None]:
    """Every row to the DuckDB path while inside (benchmarks and differential tests)."""
    global enabled
    before, enabled = enabled, False
    try:
        yield
    finally:
        enabled = before


#: Rows decoded per batch (bounds the Python objects alive at once).
BATCH = 65_536


def _struct_type() -> type[msgspec.Struct]:
    fields: list[tuple[Any, ...]] = []
    for f in FIELDS:
        if f.kind == "str":
            lo = max(f.min or 0, 1 if f.required else 0)
            meta = msgspec.Meta(min_length=lo or None, max_length=f.max)
            typ: Any = Annotated[str, meta] if lo or f.max is not None else str
        else:
            lo = INT64_MIN if f.min is None else f.min
            hi = INT64_MAX if f.max is None else f.max
            typ = Annotated[int, msgspec.Meta(ge=lo, le=hi)]
        fields.append((f.name, typ) if f.required else (f.name, typ | None, None))
    return msgspec.defstruct("FastEvent", fields, gc=False)


FastEvent = _struct_type()
_DECODE = msgspec.json.Decoder(FastEvent).decode
_ARROW = pa.struct([(f.name, pa.string() if f.kind == "str" else pa.int64()) for f in FIELDS])


def _bounds(f: Any) -> tuple[int, int]:
    """A field's (lo, hi): an integer's value range, or a string's length range in code
    points (a required string is at least 1 long: "" is missing)."""
    if f.kind == "str":
        return max(f.min or 0, 1 if f.required else 0), INT64_MAX if f.max is None else f.max
    return INT64_MIN if f.min is None else f.min, INT64_MAX if f.max is None else f.max


#: the fields as the native decoder takes them: (name, kind, required, lo, hi); the timestamp
#: is parsed there (to UTC µs) and the plan checked against the known plans
_NATIVE_KIND = {"event_timestamp": "ts", "subscription_plan": "plan"}
_NATIVE_FIELDS = [(f.name.encode(), _NATIVE_KIND.get(f.name, f.kind), f.required, *_bounds(f))
                  for f in FIELDS]
#: Rows per native call (its string columns have int32 offsets; a row that would overflow
#: them is refused, so this only keeps that rare).
NATIVE_BATCH = 1 << 20


def native_enabled() -> bool:
    """Whether rows are decoded by the native extension (else by msgspec)."""
    return _native is not None and use_native


@contextmanager
def msgspec_decoder() -> Iterator[None]:
    """Decode with msgspec while inside, even where the native extension is installed
    (benchmarks and the differential tests of both decoders)."""
    global use_native
    before, use_native = use_native, False
    try:
        yield
    finally:
        use_native = before


#: an accepted part: (each field's values for the accepted rows, event_timestamp as UTC µs;
#: the mask of accepted rows)
Accepted = tuple[dict[str, pa.Array], np.ndarray]


def _accept_native(raw: pa.Array, ing_us: np.ndarray, ing_ok: np.ndarray, plans: list[bytes],
                   tolerance_us: int) -> Accepted:
    """The rows certain to be valid, judged by the native decoder in one pass per row:
    UTF-8, strict JSON, every field's type and bounds, the timestamp, the plan, the
    tolerance. Only accepted rows reach its output buffers: no Python object, no filter."""
    n = len(raw)
    if n == 0:
        return {f.name: pa.array([], t.type) for f, t in zip(FIELDS, _NATIVE_ARROW, strict=True)}, \
            np.zeros(0, dtype=bool)
    large = pa.types.is_large_binary(raw.type)
    _, off_buf, data_buf = raw.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32)[raw.offset: raw.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    present = (raw.is_valid().to_numpy(zero_copy_only=False) & ing_ok).view(np.uint8)
    ok, cols = _native.accept(data, offsets.astype(np.int64), np.ascontiguousarray(present),
                              np.ascontiguousarray(ing_us, dtype=np.int64), _NATIVE_FIELDS, plans,
                              tolerance_us)
    mask = np.frombuffer(ok, dtype=np.uint8).astype(bool)
    m = int(mask.sum())
    out = {}
    for f, typ, (valid, values, text) in zip(FIELDS, _NATIVE_ARROW, cols, strict=True):
        bits = pa.py_buffer(np.packbits(np.frombuffer(valid, dtype=np.uint8), bitorder="little"))
        bufs = [bits, pa.py_buffer(values)] + ([pa.py_buffer(text)] if text is not None else [])
        out[f.name] = pa.Array.from_buffers(typ.type, m, bufs)
    return out, mask


#: the native decoder's output types (event_timestamp: UTC µs)
_NATIVE_ARROW = [pa.field(f.name, pa.int64() if f.kind == "int" or f.name == "event_timestamp"
                          else pa.string()) for f in FIELDS]


def _accept_msgspec(raw: pa.Array, ing_us: np.ndarray, ing_ok: np.ndarray, plans: list[bytes],
                    tolerance_us: int) -> Accepted:
    """What :func:`_accept_native` gives, by msgspec's typed decoder (one call per row) and
    the vectorized checks below."""
    events = pa.array(decode(raw.to_pylist()), _ARROW)
    ts_us, ts_ok = parse_timestamps(events.field("event_timestamp"))
    known = pa.array([p.decode() for p in plans], pa.string())
    plan_ok = pc.is_in(events.field("subscription_plan"), value_set=known).fill_null(False)
    mask = (events.is_valid().to_numpy(zero_copy_only=False) & _utf8_ok(raw) & ts_ok & ing_ok
            & plan_ok.to_numpy(zero_copy_only=False) & (ts_us <= ing_us + tolerance_us))
    keep = pa.array(mask)
    out = {f.name: events.field(f.name).filter(keep) for f in FIELDS}
    out["event_timestamp"] = pa.array(ts_us[mask], pa.int64())
    return out, mask


def decode(payloads: list[bytes | None]) -> list[tuple | None]:
    """Each payload as a tuple in :data:`FIELDS` order, or None where the struct refused it."""
    out: list[tuple | None] = []
    append = out.append
    for p in payloads:
        try:
            append(astuple(_DECODE(p)))
        except Exception:  # any refusal (or doubt) goes to the full evaluators
            append(None)
    return out


def _utf8_ok(raw: pa.Array) -> np.ndarray:
    """Per row: not NULL and valid UTF-8. ASCII rows are settled by one vectorized scan;
    the others are validated by Arrow (which agrees with Python's strict codec)."""
    n = len(raw)
    present = raw.is_valid().to_numpy(zero_copy_only=False)
    if n == 0:
        return present
    large = pa.types.is_large_binary(raw.type)
    _, off_buf, data_buf = raw.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64 if large else np.int32)[raw.offset: raw.offset + n + 1]
    ok = np.ones(n, dtype=bool)
    filled = np.flatnonzero(offsets[1:] > offsets[:-1])
    if len(filled):  # the greatest byte of each row (empty rows in between hold none)
        data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]: offsets[-1]]
        ok[filled] = np.maximum.reduceat(data, offsets[filled] - offsets[0]) < 0x80
    ok &= present
    other = np.flatnonzero(~ok & present)
    if len(other):
        sub = raw.take(pa.array(other))
        text = pa.large_string() if large else pa.string()

        def scan(lo: int, hi: int) -> None:  # bisection: a few bad rows cost a few casts
            try:
                sub.slice(lo, hi - lo).cast(text)
                ok[other[lo:hi]] = True
            except pa.ArrowInvalid:
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    scan(lo, mid)
                    scan(mid, hi)

        scan(0, len(sub))
    return ok


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """:func:`rules._event.days_from_civil`, vectorized (NumPy's // floors like Python's)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_U = np.uint64
_ONES = 0x0101010101010101


def _pattern(text: str) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    """8 byte classes ('d' a digit, '.' any byte, else itself; T and Z in either case) ->
    (fold, and-mask, expected, digit bytes) for :func:`_matches` on a little-endian word."""
    fold = andm = exp = dig = 0
    for i, c in enumerate(text):
        if c == "d":
            dig |= 0xFF << 8 * i
        elif c != ".":
            f = 0x20 if c in "TZ" else 0
            fold |= f << 8 * i
            andm |= 0xFF << 8 * i
            exp |= (ord(c) | f) << 8 * i
    return _U(fold), _U(andm), _U(exp), _U(dig)


def _digits_at(x: np.ndarray, dig) -> np.ndarray:
    """Whether every byte of ``x`` where ``dig`` is 0xFF is an ASCII digit (SWAR)."""
    hi = dig & _U(0xF0 * _ONES)
    want = dig & _U(0x30 * _ONES)
    # a byte >= 0xFA carries into the next one, but then its own high nibble already fails
    return ((x & hi) == want) & (((x + (dig & _U(0x06 * _ONES))) & hi) == want)


def _matches(x, pattern) -> np.ndarray:
    fold, andm, exp, dig = pattern
    x = x | fold
    return ((x & andm) == exp) & _digits_at(x, dig)


def _pair(x: np.ndarray, i: int) -> np.ndarray:
    """The two-digit number in bytes i, i+1 of ``x`` (digits already checked)."""
    v = (x >> _U(8 * i)) & _U(0xFFFF)
    return ((v & _U(0xFF)).astype(np.int64) - 48) * 10 + ((v >> _U(8)).astype(np.int64) - 48)


def _number(x: np.ndarray) -> np.ndarray:
    """Eight digit values (0..9, most significant first in memory) -> their number (SWAR)."""
    x = x * _U(10) + (x >> _U(8))
    x = (x & _U(0x00FF00FF00FF00FF)) * _U(100) + ((x >> _U(16)) & _U(0x00FF00FF00FF00FF))
    x = (x & _U(0x0000FFFF0000FFFF)) * _U(10000) + ((x >> _U(32)) & _U(0x0000FFFF0000FFFF))
    return (x & _U(0xFFFFFFFF)).astype(np.int64)


_HEAD = (_pattern("dddd-dd-"), _pattern("ddTdd:dd"), _pattern(":dd....."))
_OFFSET = _pattern("...dd:dd")  # the last 8 bytes of ...±HH:MM (the sign is checked on its own)
_MAX_LEN = 35  # YYYY-MM-DDTHH:MM:SS (19) + '.' and 9 digits + ±HH:MM
#: per count k (0..9) of fraction digits: its digit bytes among bytes 20..27, and the first six
_FRAC8 = np.array([sum(0xFF << 8 * i for i in range(min(k, 8))) for k in range(10)], dtype=np.uint64)
_FRAC6 = np.array([sum(0xFF << 8 * i for i in range(min(k, 6))) for k in range(10)], dtype=np.uint64)


def _calendar() -> tuple[np.ndarray, np.ndarray]:
    """Per ``year * 13 + month`` (years 0..9999, month 0 invalid): the days of the month
    (0 for month 0) and the epoch day of its first day."""
    ym = np.arange(10000 * 13)
    y, m = ym // 13, ym % 13
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    dim = month_days[m] + ((m == 2) & leap)
    return dim, _days_from_civil(y, np.maximum(m, 1), np.ones_like(y))


_DIM, _DAYS = _calendar()


def parse_timestamps(ts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """docs/semantics.md §1.3 timestamp strings -> (UTC µs, ok), vectorized over little-endian 8-byte words.

    ``ok`` is True exactly where :func:`rules._event.parse_timestamp_us` gives a value,
    and the value is the same; NULL is not ok.
    """
    n = len(ts)
    ts = ts.cast(pa.large_string())
    _, off_buf, data_buf = ts.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[ts.offset: ts.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data[: offsets[-1]], np.zeros(_MAX_LEN + 8, dtype=np.uint8)])
    # every byte offset as the start of an (unaligned) little-endian 8-byte integer
    words = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))
    word = words.__getitem__

    start = offsets[:-1]
    length = offsets[1:] - start
    ok = ts.is_valid().to_numpy(zero_copy_only=False) & (length >= 20) & (length <= _MAX_LEN)
    h0, h1, h2 = word(start), word(start + 8), word(start + 16)
    for x, pattern in zip((h0, h1, h2), _HEAD, strict=True):
        ok &= _matches(x, pattern)
    end = word(np.maximum(start + length - 8, 0))
    zulu = ((end >> _U(56)) | _U(0x20)) == _U(ord("z"))
    sign = (end >> _U(16)) & _U(0xFF)
    oh, om = _pair(end, 3), _pair(end, 6)
    offset_ok = (_matches(end, _OFFSET) & ((sign == _U(ord("+"))) | (sign == _U(ord("-"))))
                 & (oh <= 23) & (om <= 59))
    ok &= zulu | offset_ok
    digits = length - 20 - np.where(zulu, 1, 6)  # of the fraction, after its dot
    dot = ((h2 >> _U(24)) & _U(0xFF)) == _U(ord("."))
    ok &= (digits == -1) | ((digits >= 1) & (digits <= 9) & dot)
    k = np.clip(digits, 0, 9)
    frac = word(start + 20)
    ok &= _digits_at(frac, _FRAC8[k]) & ((k < 9) | (data[start + 28] - np.uint8(48) <= 9))
    us = _number((frac - _U(0x30 * _ONES)) & _FRAC6[k]) // 100
    y = _pair(h0, 0) * 100 + _pair(h0, 2)
    mo, d, h, mi, s = _pair(h0, 5), _pair(h1, 0), _pair(h1, 3), _pair(h1, 6), _pair(h2, 1)
    ym = np.clip(y, 0, 9999) * 13 + np.clip(mo, 0, 12)
    ok &= (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= _DIM[ym]) & (h <= 23) & (mi <= 59) & (s <= 59)
    offset_s = np.where(zulu, 0, (oh * 3600 + om * 60) * np.where(sign == _U(ord("-")), -1, 1))
    secs = (_DAYS[ym] + d - 1) * 86400 + h * 3600 + mi * 60 + s
    out = (secs - offset_s) * US + us
    ok &= (out >= MIN_TS_US) & (out <= MAX_TS_US)
    return np.where(ok, out, 0), ok


def accept(bronze: pa.Table, known_plans: frozenset[str], tolerance_us: int
           ) -> tuple[pa.Table, np.ndarray]:
    """(valid rows the fast path is certain of, in Bronze order; mask of those rows).

    The table has :data:`schemas.VALID_SCHEMA` and holds exactly what validate@1's other
    evaluators would output for those rows; the rows outside the mask are theirs to judge.
    """
    n = bronze.num_rows
    raw = bronze.column("raw_payload")
    if not (pa.types.is_binary(raw.type) or pa.types.is_large_binary(raw.type)):
        raw = raw.cast(pa.large_binary())  # e.g. a binary view from another Delta reader
    ing_ts = pc.cast(bronze.column("ingestion_timestamp"), schemas.TS)
    ing_us = pc.cast(ing_ts, pa.int64()).fill_null(0).to_numpy() if n else np.zeros(0, dtype=np.int64)
    ing_ok = ing_ts.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, dtype=bool)
    plans = sorted(p.encode() for p in known_plans)
    judge, batch = (_accept_native, NATIVE_BATCH) if native_enabled() else (_accept_msgspec, BATCH)
    parts, masks, at = [], [], 0
    for chunk in raw.chunks:
        for lo in range(0, len(chunk), batch):
            part = chunk.slice(lo, batch)
            got, mask = judge(part, ing_us[at: at + len(part)], ing_ok[at: at + len(part)], plans,
                              tolerance_us)
            parts.append(got)
            masks.append(mask)
            at += len(part)
    mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    cols: dict[str, Any] = {f.name: pa.chunked_array([p[f.name] for p in parts], t.type)
                            for f, t in zip(FIELDS, _NATIVE_ARROW, strict=True)}
    cols["event_timestamp"] = cols["event_timestamp"].cast(schemas.TS)
    keep = pa.array(mask)
    for c in ("kafka_topic", "kafka_partition", "kafka_offset"):
        cols[c] = bronze.column(c).filter(keep)
    cols["ingestion_timestamp"] = ing_ts.filter(keep)
    return schemas.conform(pa.table(cols), schemas.VALID_SCHEMA), mask
