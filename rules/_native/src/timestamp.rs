//! SPEC's event timestamps (`rules._event.parse_timestamp_us`), over bytes.

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
pub(crate) fn timestamp_us(t: &[u8]) -> Option<i64> {
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
