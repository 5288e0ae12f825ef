"""Payload text for the generator, vectorized: numbers, timestamps and fixed-width segments
written into byte matrices with NumPy and turned into Arrow string arrays, no Python loop."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US = 1_000_000
MINUTE = 60 * US
REGIONS = np.array(["eu-west-1", "us-east-1", "ap-south-1"])
_V2_HEAD = b', "user_id": "user-'
_V2_MID = b'", "data_residency_region": "'
#: the region's text and closing quote; index 0: no v2 fields
_V2_TAIL = pa.array(["", *(f'{_V2_MID.decode()}{r}"' for r in REGIONS.tolist())])


def _digits(mat: np.ndarray, col: int, values: np.ndarray, width: int) -> None:
    """Write ``values`` as zero-padded decimal text into ``mat[:, col:col + width]``."""
    small = width <= 9  # fits int32, whose division by a constant NumPy does fastest
    v = values.astype(np.int32 if small else np.int64)
    out = np.empty((width, len(v)), dtype=np.uint8)  # a digit per row: contiguous writes
    for pos in range(width - 1, -1, -1):
        q = v // 10
        np.subtract(v, q * 10, out=out[pos], casting="unsafe")
        v = q
    out += 48
    mat[:, col: col + width] = out.T


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


def _pick(values: np.ndarray, idx: np.ndarray) -> pa.Array:
    return pa.array(values.tolist()).take(pa.array(idx))


def _spread(part: str | pa.Array, before: np.ndarray) -> pa.Array:
    """A join part of the rows some mask keeps -> one row per row, "" where the mask drops
    one; ``before[i]``: how many kept rows come before row i (n + 1 entries). The text
    buffer is shared, only offsets are built. A literal becomes a column of it."""
    n = len(before) - 1
    if isinstance(part, str):
        text = part.encode()
        offsets = (before * len(text)).astype(np.int32)
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                      pa.py_buffer(text * int(before[-1]))])
    large = part.type in (pa.large_string(), pa.large_binary())
    _, off, data = part.buffers()
    offs = np.frombuffer(off, dtype=np.int64 if large else np.int32)[part.offset: part.offset + len(part) + 1]
    return pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), n,
                                 [None, pa.py_buffer(np.ascontiguousarray(offs[before])), data])


def _v2_fields(user: np.ndarray, region: np.ndarray, v2: np.ndarray) -> list[pa.Array]:
    """The schema v2 fields' text as two join parts (both "" where not ``v2``)."""
    mat = np.empty((len(user), len(_V2_HEAD) + 7), dtype=np.uint8)
    mat[:, : len(_V2_HEAD)] = np.frombuffer(_V2_HEAD, dtype=np.uint8)
    _digits(mat, len(_V2_HEAD), user, 7)
    v2 = v2.astype(bool)
    return [_text(mat, v2), _V2_TAIL.take(pa.array(np.where(v2, region.astype(np.int64) + 1, 0)))]


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
