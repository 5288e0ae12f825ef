"""Payload text for the generator, vectorized: numbers, timestamps and fixed-width segments
written into byte matrices with NumPy and turned into Arrow string arrays, no Python loop;
``PayloadFormat`` writes whole JSON payloads that way."""

from __future__ import annotations

import ctypes
import functools
import mmap

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

US = 1_000_000
MINUTE = 60 * US
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
#: Rows written per byte matrix: a working set that stays in the cache.
SUB_ROWS = 16_384


def fresh(n: int, dtype: npt.DTypeLike = np.uint8) -> np.ndarray:
    """An uninitialized array of ``n`` items for an output buffer, in memory that is not backed
    by transparent huge pages.

    NumPy asks for huge pages (``MADV_HUGEPAGE``) on every allocation of 4 MiB or more. On a
    virtual machine, the first touch of a huge page the host has not backed yet costs about
    2 s per GiB (the host fills it in), against about 0.35 s per GiB for ordinary pages, and
    the output of a large history is gigabytes of fresh memory. An anonymous ``mmap`` advised
    ``MADV_NOHUGEPAGE`` gets ordinary pages; it is unmapped when the array (and any Arrow
    buffer made from it) is released. Its pages are then faulted in by one
    ``MADV_POPULATE_WRITE`` (Linux 5.14+; ~20% cheaper than a fault per page), through
    ctypes, which lets other threads run meanwhile (``mmap.madvise`` holds the GIL)."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < 1 << 22 or not hasattr(mmap, "MADV_NOHUGEPAGE"):
        return np.empty(n, dtype=dtype)
    mem = mmap.mmap(-1, nbytes)
    mem.madvise(mmap.MADV_NOHUGEPAGE)
    out = np.frombuffer(mem, dtype=dtype, count=n)
    if _madvise is not None:  # a failure (older kernel) only leaves the pages to be faulted in
        _madvise(out.ctypes.data, nbytes, MADV_POPULATE_WRITE)
    return out


#: ``madvise(2)`` called without the GIL (None where libc has none to offer)
try:
    _madvise = getattr(ctypes.CDLL(None), "madvise", None)
except (OSError, TypeError):  # no C library to load this way (Windows)
    _madvise = None
if _madvise is not None:
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _madvise.restype = ctypes.c_int
MADV_POPULATE_WRITE = 23


def _digits(mat: np.ndarray, col: int, values: np.ndarray, width: int, least: int | None = None) -> None:
    """Write ``values`` as zero-padded decimal text into ``mat[:, col:col + width]``; with
    ``least``, only that many digits at least, leading zeros beyond them written as 0 bytes."""
    # int32, whose division by a constant NumPy does fastest, whenever the values fit it
    # (ids have 10 digits but are far below 2**31): the same quotients and remainders
    small = width <= 9 or (len(values) > 0 and values.min() >= -(2**31) and values.max() < 2**31)
    v = values.astype(np.int32 if small else np.int64)
    out = np.empty((width, len(v)), dtype=np.uint8)  # a digit per row: contiguous writes
    for pos in range(width - 1, -1, -1):
        q = v // 10
        blank = least is not None and pos < width - least
        if blank:
            nz = v > 0  # a digit left: written as text, else a 0 byte
        v -= q * 10  # the remainder, in place (a plain cast on assignment is the fast one)
        out[pos] = v
        if blank:
            out[pos] += nz.view(np.uint8) * np.uint8(48)
        v = q
    out[width - (width if least is None else least):] += 48
    mat[:, col: col + width] = out.T


def _text(mat: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Rows of a byte matrix -> an Arrow string array, no Python loop (NULL where ``valid``
    is False)."""
    n, width = mat.shape
    bitmap = None
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid.astype(bool), bitorder="little"))
    data = np.ascontiguousarray(mat).reshape(-1)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    if len(data) < 2**31:
        offsets = offsets.astype(np.int32)
        return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pa.Array.from_buffers(pa.large_string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])


def _ids(prefix: str, idx: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """``prefix`` + zero-padded number, e.g. evt-0000000042 (NULL where not ``valid``)."""
    head = prefix.encode()
    mat = fresh(len(idx) * (len(head) + width)).reshape(len(idx), len(head) + width)
    mat[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    _digits(mat, len(head), np.asarray(idx), width)
    return _text(mat, valid)


def _offset_text(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _fmt_ts(ts_us: np.ndarray, offset_min: np.ndarray) -> pa.Array:
    """RFC 3339 text of each instant, written in its local offset (``Z`` for UTC)."""
    body, suffix = _ts_matrix(ts_us, offset_min)
    return pc.binary_join_element_wise(_text(body), suffix, "")


def _ts_matrix(ts_us: np.ndarray, offset_min: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """(local date-time bytes with microseconds as an (n, 26) matrix, offset text)."""
    mat = np.empty((len(ts_us), 26), dtype=np.uint8)
    mat[:] = np.frombuffer(b"0000-00-00T00:00:00.000000", dtype=np.uint8)
    _ts_digits(mat, 0, ts_us, offset_min)
    texts, idx = _offsets(offset_min)
    return mat, pa.array(texts, pa.string()).take(pa.array(idx))


def _ts_digits(mat: np.ndarray, col: int, ts_us: np.ndarray, offset_min: np.ndarray) -> None:
    """The local date-time digits of each instant into ``mat[:, col:col + 26]``, whose
    separators (``YYYY-MM-DDTHH:MM:SS.ffffff``) are already there.

    A history spans a few days: the dates are computed once per day of the span and copied
    from that table (when the span is short), and ``HH:MM:SS`` from a table of the 86,400
    seconds of a day (as 8-byte words: one gather), so only the microseconds are divided."""
    local = ts_us.astype(np.int64) + offset_min.astype(np.int64) * MINUTE
    days, rem = np.divmod(local, 86400 * US)
    first = int(days.min()) if len(days) else 0
    span = int(days.max()) - first + 1 if len(days) else 0
    if span <= DATE_TABLE_DAYS:
        table = np.empty((span, 10), dtype=np.uint8)
        table[:] = np.frombuffer(b"0000-00-00", dtype=np.uint8)
        _date_digits(table, 0, np.arange(first, first + span, dtype=np.int64))
        mat[:, col: col + 10] = table[days - first]
    else:
        _date_digits(mat, col, days)
    secs, micros = np.divmod(rem, US)
    mat[:, col + 11: col + 19] = _clock()[secs].view(np.uint8).reshape(-1, 8)
    _digits(mat, col + 20, micros, 6)


#: Longest span of local dates formatted from a per-day table.
DATE_TABLE_DAYS = 4096


def _date_digits(mat: np.ndarray, col: int, days: np.ndarray) -> None:
    """``YYYY-MM-DD`` digits of days since 1970-01-01 into ``mat[:, col:col + 10]``."""
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
    _digits(mat, col, year, 4)
    _digits(mat, col + 5, month, 2)
    _digits(mat, col + 8, day, 2)


@functools.cache
def _clock() -> np.ndarray:
    """``HH:MM:SS`` of each second of a day, one 8-byte word each."""
    secs = np.arange(86400, dtype=np.int32)
    table = np.empty((86400, 8), dtype=np.uint8)
    table[:] = np.frombuffer(b"00:00:00", dtype=np.uint8)
    _digits(table, 0, secs // 3600, 2)
    _digits(table, 3, secs // 60 % 60, 2)
    _digits(table, 6, secs % 60, 2)
    return table.view(np.uint64).reshape(-1)


def _offsets(offset_min: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(text of each distinct offset, each row's index in it); offsets are whole minutes
    within +-24h: a counting pass finds the few distinct ones."""
    shifted = offset_min.astype(np.int64) + 24 * 60
    uniq = np.flatnonzero(np.bincount(shifted, minlength=48 * 60 + 1))
    lut = np.zeros(48 * 60 + 1, dtype=np.int64)
    lut[uniq] = np.arange(len(uniq))
    return [_offset_text(int(m) - 24 * 60) for m in uniq], lut[shifted]


def _right(texts: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts right-aligned in a (len(texts), width) byte matrix, and each one's unused
    leading columns (its pad)."""
    mat = np.zeros((len(texts), width), dtype=np.uint8)
    for i, t in enumerate(texts):
        mat[i, width - len(t):] = np.frombuffer(t, dtype=np.uint8)
    return mat, np.array([width - len(t) for t in texts], dtype=np.uint8)


def _pad(values: np.ndarray, width: int, least: int = 1) -> np.ndarray:
    """The leading zeros of ``values`` written with ``width`` digits (at least ``least``)."""
    v = values.astype(np.int64)
    if len(v) and (v.min() < 0 or v.max() >= 10**width):
        raise ValueError(f"values outside [0, 1e{width})")
    pad = np.zeros(len(v), dtype=np.uint8)
    for k in range(least, width):
        pad += v < 10**k
    return pad


class PayloadFormat:
    """Valid events' JSON payloads, written without a per-field join: each row goes into a
    byte matrix with every field at a fixed column (text of variable length right-aligned in
    its field's width, the columns it leaves unused 0 bytes, as are absent v2 fields), then
    one Arrow filter keeps the bytes that are not 0 (no payload text holds one). Rows are
    written a few thousand at a time (a cache-sized matrix)."""

    def __init__(self, plans: list[str], endpoints: list[str], methods: list[str], tenants: int):
        row = bytearray()
        self.at: dict[str, int] = {}

        def field(name: str, text: bytes) -> None:
            self.at[name] = len(row)
            row.extend(text)

        row.extend(b'{"event_id": "evt-')
        field("ev", bytes(10))
        row.extend(b'", "event_timestamp": "')
        field("ts", b"0000-00-00T00:00:00.000000")
        field("suffix", bytes(6))
        row.extend(b'", "tenant_id": "tenant-')
        self.tenant_digits = max(5, len(str(tenants - 1)))  # the names are tenant-{i:05d}
        field("tenant", bytes(self.tenant_digits))
        self.methods, self.endpoints = len(methods), len(endpoints)
        combos = [f'", "subscription_plan": "{p}", "endpoint": "{e}", "method": "{m}", "status_code": '.encode()
                  for p in plans for e in endpoints for m in methods]
        self.combo, self.combo_pad = _right(combos, max(map(len, combos)))
        field("combo", bytes(self.combo.shape[1]))
        field("status", bytes(3))
        row.extend(b', "latency_ms": ')
        field("latency", bytes(4))
        row.extend(b', "request_bytes": ')
        field("request_bytes", bytes(4))
        row.extend(b', "response_bytes": ')
        field("response_bytes", bytes(5))
        field("v2", b', "user_id": "user-')
        field("user", bytes(7))
        row.extend(b'", "data_residency_region": "')
        self.v2_width = len(row) - self.at["v2"]
        self.tail, self.tail_pad = _right([b"}", *(f'{r}"}}'.encode() for r in REGIONS)], 12)
        field("tail", bytes(12))
        self.template = np.frombuffer(bytes(row), dtype=np.uint8)

    def format(self, f: dict[str, np.ndarray], inv_rows: np.ndarray, inv_payload: pa.Array) -> pa.Array:
        """The payload of each row (attributes ``f``), but at ``inv_rows``: ``inv_payload``."""
        n, width = len(f["ts"]), len(self.template)
        offset_texts, suffix_idx = _offsets(f["offset_min"])
        suffix, suffix_pad = _right([t.encode() for t in offset_texts], 6)
        combo_idx = (f["plan"].astype(np.int64) * self.endpoints + f["endpoint"]) * self.methods + f["method"]
        v2 = f["v2"].astype(np.uint8)
        tail_idx = np.where(v2, f["region"].astype(np.int64) + 1, 0)
        lengths = np.full(n, width, dtype=np.int64)  # less each variable field's unused columns
        for pad in (suffix_pad[suffix_idx], _pad(f["tenant"], self.tenant_digits, 5), self.combo_pad[combo_idx],
                    _pad(f["latency"], 4), _pad(f["request_bytes"], 4), _pad(f["response_bytes"], 5),
                    (1 - v2) * self.v2_width, self.tail_pad[tail_idx]):
            lengths -= pad
        # the invalid rows: their own text, left-aligned in a row of the matrix, 0 bytes after it
        inv_len = pc.binary_length(inv_payload).to_numpy(zero_copy_only=False).astype(np.int64)
        wide = max(width, int(inv_len.max()) if len(inv_len) else 0)
        inv_mask = np.arange(wide)[None, :] < inv_len[:, None]
        inv_mat = np.zeros((len(inv_len), wide), dtype=np.uint8)
        if inv_len.sum():
            off = np.frombuffer(inv_payload.buffers()[1], dtype=np.int32)[inv_payload.offset:]
            inv_mat[inv_mask] = np.frombuffer(inv_payload.buffers()[2], dtype=np.uint8)[
                off[0]: off[len(inv_len)]]
            if not inv_mat[inv_mask].all():
                raise ValueError("an invalid payload holds a 0 byte")
        lengths[inv_rows] = inv_len
        if lengths.sum() >= 2**31:
            raise ValueError("a block's payloads outgrow 32-bit offsets")
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        data = fresh(int(offsets[-1]))
        rows = min(n, SUB_ROWS)
        mat = np.zeros((rows, wide), dtype=np.uint8)  # columns past ``width``: 0 bytes
        at = self.at
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            m = hi - lo
            sub = {k: x[lo:hi] for k, x in f.items()}
            out = mat[:m]
            out[:, :width] = self.template
            out[:, width:] = 0  # past any invalid text the matrix held before
            _digits(out, at["ev"], sub["ev"], 10)
            _ts_digits(out, at["ts"], sub["ts"], sub["offset_min"])
            out[:, at["suffix"]: at["suffix"] + 6] = suffix[suffix_idx[lo:hi]]
            _digits(out, at["tenant"], sub["tenant"], self.tenant_digits, 5)
            out[:, at["combo"]: at["combo"] + self.combo.shape[1]] = self.combo[combo_idx[lo:hi]]
            _digits(out, at["status"], sub["status"], 3)
            _digits(out, at["latency"], sub["latency"], 4, 1)
            _digits(out, at["request_bytes"], sub["request_bytes"], 4, 1)
            _digits(out, at["response_bytes"], sub["response_bytes"], 5, 1)
            _digits(out, at["user"], sub["user"], 7)
            v2_cols = out[:, at["v2"]: at["v2"] + self.v2_width]
            np.multiply(v2_cols, v2[lo:hi, None], out=v2_cols)
            out[:, at["tail"]: at["tail"] + 12] = self.tail[tail_idx[lo:hi]]
            i = np.searchsorted(inv_rows, [lo, hi])
            if i[1] > i[0]:
                out[inv_rows[i[0]:i[1]] - lo] = inv_mat[i[0]:i[1]]
            # the bytes kept are the ones not 0: packbits packs a non-zero byte as a 1 bit
            bits = pa.py_buffer(np.packbits(out.reshape(-1), bitorder="little"))
            text = pc.filter(pa.Array.from_buffers(pa.uint8(), m * wide, [None, pa.py_buffer(out)]),
                             pa.Array.from_buffers(pa.bool_(), m * wide, [None, bits]))
            data[offsets[lo]: offsets[hi]] = np.frombuffer(text.buffers()[1], dtype=np.uint8)[: len(text)]
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
