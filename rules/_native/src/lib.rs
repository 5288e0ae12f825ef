//! validate@1's native fast path: strict JSON event decoding straight into Arrow buffers.
//!
//! `accept` reads a column of raw payloads (an Arrow binary array's data and offsets) and
//! returns, per row, whether the payload is *certainly* a valid event of the fields it is
//! given (SPEC 1 and 3.1: timestamp grammar, calendar and range, a known plan, not after its
//! ingestion time + the tolerance), and the accepted rows' fields as Arrow column buffers.
//! It never says why a row is refused: a refused row (invalid JSON, invalid UTF-8, a wrong type, a value out of range,
//! nesting deeper than `json::MAX_DEPTH`, any doubt) is judged again by validate@1's DuckDB path
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

mod json;
mod timestamp;

use json::{Parser, Reject, R};
use timestamp::timestamp_us;

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
            ps.key(key)?;
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
            if ps.item_end(b'}')? {
                break;
            }
        }
    } else {
        ps.i += 1; // the empty object's closing brace
    }
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
