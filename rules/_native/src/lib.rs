//! validate@1's native fast path: strict JSON event decoding straight into Arrow buffers.
//!
//! `accept` reads a column of raw payloads (an Arrow binary array's data and offsets) and
//! returns, per row, whether the payload is *certainly* a valid event of the fields it is
//! given (SPEC 1 and 3.1: timestamp grammar, calendar and range, a known plan, not after its
//! ingestion time + the tolerance), and the accepted rows' fields as Arrow column buffers.
//! It never says why a row is refused: a refused row (invalid JSON, invalid UTF-8, a wrong type, a value out of range,
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Int,
    /// a SPEC timestamp string, output as UTC microseconds
    Ts,
    /// a string that must be one of the known plans
    Plan,
}

struct Spec {
    name: Vec<u8>,
    kind: Kind,
    required: bool,
    lo: i64,
    hi: i64,
}

impl Spec {
    fn is_int(&self) -> bool {
        matches!(self.kind, Kind::Int | Kind::Ts)
    }
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

const US: i64 = 1_000_000;
/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z: what every consumer's timestamp holds
const MIN_TS_US: i64 = -62135596800 * US;
const MAX_TS_US: i64 = 253402300799 * US + 999_999;

/// Days since 1970-01-01 in the proleptic Gregorian calendar (`rules._event.days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = y - (m <= 2) as i64;
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// SPEC's timestamp (`rules._event.parse_timestamp_us`): `YYYY-MM-DDTHH:MM:SS[.f{1,9}]`
/// then `Z` or `±HH:MM` (T and Z in either case), a real calendar date and time, the fraction
/// truncated to microseconds, within 0001..9999 in UTC; else None.
fn timestamp_us(t: &[u8]) -> Option<i64> {
    let n = t.len();
    let num = |a: usize, k: usize| -> Option<i64> {
        let mut v = 0i64;
        for &c in t.get(a..a + k)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    let at = |i: usize, set: &[u8]| t.get(i).map_or(false, |c| set.contains(c));
    if n < 20 || !(at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut i = 19;
    let mut us = 0i64;
    if at(i, b".") {
        i += 1;
        let start = i;
        while t.get(i).map_or(false, |c| c.is_ascii_digit()) {
            i += 1;
        }
        let k = i - start;
        if k == 0 || k > 9 {
            return None;
        }
        for j in 0..6 {
            us = us * 10 + if j < k { (t[start + j] - b'0') as i64 } else { 0 };
        }
    }
    let offset = if at(i, b"Zz") {
        i += 1;
        0
    } else if at(i, b"+-") {
        if !at(i + 3, b":") {
            return None;
        }
        let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
        if oh > 23 || om > 59 {
            return None;
        }
        let sign = if t[i] == b'+' { 1 } else { -1 };
        i += 6;
        (oh * 3600 + om * 60) * sign
    } else {
        return None;
    };
    if i != n || !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let out = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset) * US + us;
    (MIN_TS_US..=MAX_TS_US).contains(&out).then_some(out)
}

#[inline]
fn code_points(s: &[u8]) -> i64 {
    s.iter().filter(|&&b| (b & 0xC0) != 0x80).count() as i64
}

/// One payload -> its fields' slots (values in `text`), or Reject.
fn event(p: &[u8], specs: &[Spec], plans: &[Vec<u8>], slots: &mut [Slot], text: &mut Vec<u8>,
         key: &mut Vec<u8>) -> R<()> {
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
                        b'"' if spec.kind != Kind::Int => {
                            let start = text.len();
                            ps.string(text)?;
                            let value = &text[start..];
                            let n = code_points(value);
                            if n < spec.lo || n > spec.hi {
                                return Err(Reject);
                            }
                            match spec.kind {
                                Kind::Ts => Slot::Int(timestamp_us(value).ok_or(Reject)?),
                                Kind::Plan if !plans.iter().any(|p| p == value) => return Err(Reject),
                                _ => Slot::Str(start, text.len()),
                            }
                        }
                        b'-' | b'0'..=b'9' if spec.kind == Kind::Int => match ps.number()? {
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

type Out<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>);

/// Judge `n` payloads: row i is `data[offsets[i]..offsets[i + 1]]`, left out where
/// `present[i]` is 0 (a NULL payload or ingestion time).
///
/// `fields`: (name, kind, required, lo, hi) per field; kind is "str", "int", "ts" (a SPEC
/// timestamp, output as UTC microseconds) or "plan" (a string among `plans`); lo/hi bound an
/// integer's value or a string's length in code points. A row is accepted when it is a valid
/// event of these fields whose timestamp is at most `ingestion_us[i] + tolerance_us`.
///
/// Returns (accepted: n bytes of 0/1, per field of the accepted rows only, in order:
/// (validity: one byte of 0/1 per row, values: int64 per row for "int"/"ts" or int32 offsets
/// (one more) for "str"/"plan", string data or None)). The GIL is released while judging.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn accept<'py>(
    py: Python<'py>,
    data: PyBuffer<u8>,
    offsets: PyBuffer<i64>,
    present: PyBuffer<u8>,
    ingestion_us: PyBuffer<i64>,
    fields: Vec<(Vec<u8>, String, bool, i64, i64)>,
    plans: Vec<Vec<u8>>,
    tolerance_us: i64,
) -> PyResult<(Bound<'py, PyBytes>, Vec<Out<'py>>)> {
    for b in [data.is_c_contiguous(), offsets.is_c_contiguous(), present.is_c_contiguous(),
              ingestion_us.is_c_contiguous()] {
        if !b {
            return Err(PyValueError::new_err("accept: buffers must be contiguous"));
        }
    }
    let n = present.item_count();
    if offsets.item_count() != n + 1 || ingestion_us.item_count() != n {
        return Err(PyValueError::new_err("accept: offsets must hold n + 1 items, ingestion_us n"));
    }
    // SAFETY: the buffers are held (and so kept alive and unchanged: Arrow buffers are
    // immutable) for the whole call; they are only read.
    let (d, o, pr, ing) = unsafe {
        (
            std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.item_count()),
            std::slice::from_raw_parts(offsets.buf_ptr() as *const i64, n + 1),
            std::slice::from_raw_parts(present.buf_ptr() as *const u8, n),
            std::slice::from_raw_parts(ingestion_us.buf_ptr() as *const i64, n),
        )
    };
    for i in 0..n {
        if pr[i] != 0 && (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] as usize > d.len()) {
            return Err(PyValueError::new_err("accept: offsets out of the data's bounds"));
        }
    }
    let mut specs = Vec::with_capacity(fields.len());
    for (name, kind, required, lo, hi) in fields {
        let kind = match kind.as_str() {
            "str" => Kind::Str,
            "int" => Kind::Int,
            "ts" => Kind::Ts,
            "plan" => Kind::Plan,
            other => return Err(PyValueError::new_err(format!("accept: unknown field kind {other}"))),
        };
        specs.push(Spec { name, kind, required, lo, hi });
    }
    let (ok, cols) = py.allow_threads(|| run(d, o, pr, ing, &specs, &plans, tolerance_us));
    let out = cols
        .into_iter()
        .zip(specs.iter())
        .map(|(c, s)| {
            let values = if s.is_int() {
                PyBytes::new(py, as_bytes(&c.ints))
            } else {
                PyBytes::new(py, as_bytes(&c.offsets))
            };
            let text = if s.is_int() { None } else { Some(PyBytes::new(py, &c.data)) };
            (PyBytes::new(py, &c.valid), values, text)
        })
        .collect();
    Ok((PyBytes::new(py, &ok), out))
}

fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain integers, read as their bytes (native endianness, as Arrow's buffers)
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

fn run(d: &[u8], o: &[i64], pr: &[u8], ing: &[i64], specs: &[Spec], plans: &[Vec<u8>],
       tolerance_us: i64) -> (Vec<u8>, Vec<Column>) {
    let n = pr.len();
    let ts_field = specs.iter().position(|s| s.kind == Kind::Ts);
    let mut ok = vec![0u8; n];
    let mut cols: Vec<Column> = specs
        .iter()
        .map(|s| Column {
            valid: Vec::with_capacity(n),
            ints: if s.is_int() { Vec::with_capacity(n) } else { Vec::new() },
            offsets: if s.is_int() { Vec::new() } else { vec![0] },
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
            && event(&d[o[i] as usize..o[i + 1] as usize], specs, plans, &mut slots, &mut text, &mut key)
                .is_ok()
            && ts_field.map_or(true, |f| match slots[f] {
                Slot::Int(ts) => ts <= ing[i].saturating_add(tolerance_us),
                _ => false,
            })
            && fits(&cols, &slots);
        if !good {
            continue;
        }
        ok[i] = 1;
        for (c, slot) in cols.iter_mut().zip(slots.iter()) {
            match *slot {
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
    m.add_function(wrap_pyfunction!(accept, m)?)?;
    Ok(())
}
