//! validate@1's native fast path: strict JSON event decoding straight into Arrow buffers.
//!
//! `decode` reads a column of raw payloads (an Arrow binary array's data and offsets) and
//! returns, per row, whether the payload is *certainly* a valid event object of the fields
//! it is given, and every field's value as Arrow column buffers. It never says why a row is
//! refused: a refused row (invalid JSON, invalid UTF-8, a wrong type, a value out of range,
//! nesting deeper than `MAX_DEPTH`, any doubt) is judged again by validate@1's DuckDB path
//! and its strict reference (`rules._event.strict_validate`), which alone name reasons.
//!
//! What an accepted row is, member by member (RFC 8259 JSON, as Python's strict `json`):
//! - the whole payload is valid UTF-8 (encoded surrogates refused), an object with optional
//!   whitespace around it and nothing else; no BOM, no NaN/Infinity, no trailing commas;
//! - strings: no raw control characters; escapes `\" \\ \/ \b \f \n \r \t \uXXXX`, with
//!   `\u` surrogates only as a high-low pair (a lone one is refused, in keys and skipped
//!   values too); keys are compared after unescaping;
//! - a field's value: a string (length in code points within its bounds) or an integer
//!   (no fraction, no exponent, within its bounds and int64), or `null` for an optional field;
//! - a key given twice: the last copy wins; every copy must pass on its own;
//! - any other member's value is any valid JSON value (numbers of any size).
//! The rows' field values are exactly what the strict reference reads.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// More containers than this nested in a skipped value: refused (left to the fallback).
const MAX_DEPTH: usize = 64;

struct Spec {
    name: Vec<u8>,
    is_int: bool,
    required: bool,
    lo: i64,
    hi: i64,
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Absent,
    Null,
    Int(i64),
    Str(usize, usize), // a range of the row's scratch buffer
}

struct Reject;
type R<T> = Result<T, Reject>;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> R<u8> {
        self.s.get(self.i).copied().ok_or(Reject)
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Reject)
        }
    }

    fn hex4(&mut self) -> R<u32> {
        let end = self.i + 4;
        if end > self.s.len() {
            return Err(Reject);
        }
        let mut v = 0u32;
        for &c in &self.s[self.i..end] {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(Reject),
            };
            v = v * 16 + d as u32;
        }
        self.i = end;
        Ok(v)
    }

    /// A string at `self.i` (its opening quote), unescaped onto `out`.
    fn string(&mut self, out: &mut Vec<u8>) -> R<()> {
        self.expect(b'"')?;
        loop {
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.extend_from_slice(&self.s[start..self.i]);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.i += 1;
                    let c = self.peek()?;
                    self.i += 1;
                    let byte = match c {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp) {
                                if self.s.get(self.i) != Some(&b'\\')
                                    || self.s.get(self.i + 1) != Some(&b'u')
                                {
                                    return Err(Reject);
                                }
                                self.i += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(Reject);
                                }
                                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(Reject);
                            }
                            let ch = char::from_u32(cp).ok_or(Reject)?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return Err(Reject),
                    };
                    out.push(byte);
                }
                _ => return Err(Reject), // a raw control character
            }
        }
    }

    /// A number at `self.i`: Some(value) when it is an integer that fits int64, None for
    /// any other valid number (a fraction, an exponent, beyond int64).
    fn number(&mut self) -> R<Option<i64>> {
        let neg = self.s.get(self.i) == Some(&b'-');
        if neg {
            self.i += 1;
        }
        let digits = self.i;
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while matches!(self.s.get(self.i), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return Err(Reject),
        }
        let int_end = self.i;
        let mut integer = true;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digits()?;
            integer = false;
        }
        if matches!(self.s.get(self.i), Some(b'e') | Some(b'E')) {
            self.i += 1;
            if matches!(self.s.get(self.i), Some(b'+') | Some(b'-')) {
                self.i += 1;
            }
            self.digits()?;
            integer = false;
        }
        if !integer || int_end - digits > 19 {
            return Ok(None);
        }
        let mut mag: u64 = 0;
        for &c in &self.s[digits..int_end] {
            mag = match mag.checked_mul(10).and_then(|m| m.checked_add((c - b'0') as u64)) {
                Some(m) => m,
                None => return Ok(None),
            };
        }
        Ok(if neg {
            if mag <= 1u64 << 63 {
                Some((mag as i128).wrapping_neg() as i64)
            } else {
                None
            }
        } else if mag <= i64::MAX as u64 {
            Some(mag as i64)
        } else {
            None
        })
    }

    fn digits(&mut self) -> R<()> {
        let start = self.i;
        while matches!(self.s.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if self.i == start {
            Err(Reject)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Reject)
        }
    }

    /// Any JSON value, checked and skipped.
    fn skip(&mut self, depth: usize, scratch: &mut Vec<u8>) -> R<()> {
        match self.peek()? {
            b'"' => {
                scratch.clear();
                self.string(scratch)
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return Err(Reject);
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    scratch.clear();
                    self.string(scratch)?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip(depth + 1, scratch)?;
                    self.ws();
                    match self.peek()? {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b'}' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Reject),
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(Reject);
                }
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip(depth + 1, scratch)?;
                    self.ws();
                    match self.peek()? {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b']' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Reject),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => Err(Reject),
        }
    }
}

#[inline]
fn code_points(s: &[u8]) -> i64 {
    s.iter().filter(|&&b| (b & 0xC0) != 0x80).count() as i64
}

/// One payload -> its fields' slots (values in `text`), or Reject.
fn event(p: &[u8], specs: &[Spec], slots: &mut [Slot], text: &mut Vec<u8>, key: &mut Vec<u8>) -> R<()> {
    if std::str::from_utf8(p).is_err() {
        return Err(Reject);
    }
    let mut ps = Parser { s: p, i: 0 };
    ps.ws();
    ps.expect(b'{')?;
    ps.ws();
    if ps.peek()? != b'}' {
        loop {
            key.clear();
            ps.string(key)?;
            ps.ws();
            ps.expect(b':')?;
            ps.ws();
            match specs.iter().position(|s| s.name == *key) {
                None => ps.skip(0, key)?,
                Some(f) => {
                    let spec = &specs[f];
                    slots[f] = match ps.peek()? {
                        b'n' => {
                            ps.literal(b"null")?;
                            if spec.required {
                                return Err(Reject);
                            }
                            Slot::Null
                        }
                        b'"' if !spec.is_int => {
                            let start = text.len();
                            ps.string(text)?;
                            let n = code_points(&text[start..]);
                            if n < spec.lo || n > spec.hi {
                                return Err(Reject);
                            }
                            Slot::Str(start, text.len())
                        }
                        b'-' | b'0'..=b'9' if spec.is_int => match ps.number()? {
                            Some(v) if v >= spec.lo && v <= spec.hi => Slot::Int(v),
                            _ => return Err(Reject),
                        },
                        _ => return Err(Reject),
                    };
                }
            }
            ps.ws();
            match ps.peek()? {
                b',' => {
                    ps.i += 1;
                    ps.ws();
                }
                b'}' => break,
                _ => return Err(Reject),
            }
        }
    }
    ps.i += 1; // the closing brace
    ps.ws();
    if ps.i != p.len() {
        return Err(Reject);
    }
    for (spec, slot) in specs.iter().zip(slots.iter()) {
        if spec.required && !matches!(slot, Slot::Int(_) | Slot::Str(..)) {
            return Err(Reject);
        }
    }
    Ok(())
}

struct Column {
    valid: Vec<u8>,
    ints: Vec<i64>,
    offsets: Vec<i32>,
    data: Vec<u8>,
}

/// Decode `n` payloads: row i is `data[offsets[i]..offsets[i + 1]]`, NULL where
/// `present[i]` is 0. `fields`: (name, is_int, required, lo, hi) per field, where lo/hi
/// bound an integer's value or a string's length in code points.
///
/// Returns (accepted: n bytes of 0/1, per field (validity: n bytes of 0/1, values: n int64
/// for an integer field or n + 1 int32 offsets for a string field, string data or None)).
/// Refused rows are NULL in every field. The GIL is released while decoding.
#[pyfunction]
fn decode<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    offsets: PyBuffer<i64>,
    present: PyBuffer<u8>,
    fields: Vec<(Vec<u8>, bool, bool, i64, i64)>,
) -> PyResult<(Bound<'py, PyBytes>, Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)>)> {
    for b in [data.is_c_contiguous(), offsets.is_c_contiguous(), present.is_c_contiguous()] {
        if !b {
            return Err(PyValueError::new_err("decode: buffers must be contiguous"));
        }
    }
    let n = present.item_count();
    if offsets.item_count() != n + 1 {
        return Err(PyValueError::new_err("decode: offsets must hold one more item than present"));
    }
    // SAFETY: the three buffers are held (and so kept alive and unchanged: Arrow buffers are
    // immutable) for the whole call; they are only read.
    let (d, o, pr) = unsafe {
        (
            std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.item_count()),
            std::slice::from_raw_parts(offsets.buf_ptr() as *const i64, n + 1),
            std::slice::from_raw_parts(present.buf_ptr() as *const u8, n),
        )
    };
    for i in 0..n {
        if pr[i] != 0 && (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] as usize > d.len()) {
            return Err(PyValueError::new_err("decode: offsets out of the data's bounds"));
        }
    }
    let specs: Vec<Spec> = fields
        .into_iter()
        .map(|(name, is_int, required, lo, hi)| Spec { name, is_int, required, lo, hi })
        .collect();
    let (ok, cols) = py.allow_threads(|| run(d, o, pr, &specs));
    let out = cols
        .into_iter()
        .zip(specs.iter())
        .map(|(c, s)| {
            let values = if s.is_int {
                PyBytes::new(py, as_bytes(&c.ints))
            } else {
                PyBytes::new(py, as_bytes(&c.offsets))
            };
            let text = if s.is_int { None } else { Some(PyBytes::new(py, &c.data)) };
            (PyBytes::new(py, &c.valid), values, text)
        })
        .collect();
    Ok((PyBytes::new(py, &ok), out))
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain integers, read as their bytes (native endianness, as Arrow's buffers)
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn run(d: &[u8], o: &[i64], pr: &[u8], specs: &[Spec]) -> (Vec<u8>, Vec<Column>) {
    let n = pr.len();
    let mut ok = vec![0u8; n];
    let mut cols: Vec<Column> = specs
        .iter()
        .map(|s| Column {
            valid: Vec::with_capacity(n),
            ints: if s.is_int { Vec::with_capacity(n) } else { Vec::new() },
            offsets: if s.is_int { Vec::new() } else { vec![0] },
            data: Vec::new(),
        })
        .collect();
    let mut slots = vec![Slot::Absent; specs.len()];
    let mut text = Vec::with_capacity(1024);
    let mut key = Vec::with_capacity(64);
    for i in 0..n {
        slots.iter_mut().for_each(|s| *s = Slot::Absent);
        text.clear();
        let good = pr[i] != 0
            && event(&d[o[i] as usize..o[i + 1] as usize], specs, &mut slots, &mut text, &mut key).is_ok()
            && fits(&cols, &slots);
        ok[i] = good as u8;
        for (c, slot) in cols.iter_mut().zip(slots.iter()) {
            let slot = if good { *slot } else { Slot::Absent };
            match slot {
                Slot::Int(v) => {
                    c.valid.push(1);
                    c.ints.push(v);
                }
                Slot::Str(a, b) => {
                    c.valid.push(1);
                    c.data.extend_from_slice(&text[a..b]);
                    c.offsets.push(c.data.len() as i32);
                }
                Slot::Absent | Slot::Null => {
                    c.valid.push(0);
                    if c.offsets.is_empty() {
                        c.ints.push(0);
                    } else {
                        c.offsets.push(c.data.len() as i32);
                    }
                }
            }
        }
    }
    (ok, cols)
}

/// Whether the row's strings still fit int32 offsets (else it is refused: the fallback's).
fn fits(cols: &[Column], slots: &[Slot]) -> bool {
    cols.iter().zip(slots).all(|(c, s)| match s {
        Slot::Str(a, b) => c.data.len() + (b - a) <= i32::MAX as usize,
        _ => true,
    })
}

#[pymodule]
fn medallion_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    Ok(())
}
