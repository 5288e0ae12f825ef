//! The strict JSON grammar of RFC 8259 (as Python's strict `json` reads it), over bytes.

/// More containers than this nested in a skipped value: refused (left to the fallback).
pub(crate) const MAX_DEPTH: usize = 64;

pub(crate) struct Reject;
pub(crate) type R<T> = Result<T, Reject>;

pub(crate) struct Parser<'a> {
    pub(crate) s: &'a [u8],
    pub(crate) i: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    pub(crate) fn peek(&self) -> R<u8> {
        self.s.get(self.i).copied().ok_or(Reject)
    }

    #[inline]
    pub(crate) fn ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub(crate) fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Reject)
        }
    }

    pub(crate) fn hex4(&mut self) -> R<u32> {
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
    pub(crate) fn string(&mut self, out: &mut Vec<u8>) -> R<()> {
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
    pub(crate) fn number(&mut self) -> R<Option<i64>> {
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

    pub(crate) fn digits(&mut self) -> R<()> {
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

    pub(crate) fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Reject)
        }
    }

    /// An object member's key and the colon after it (``"key" :``, with the white space
    /// around it), the key's text appended to ``out``.
    pub(crate) fn key(&mut self, out: &mut Vec<u8>) -> R<()> {
        self.string(out)?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(())
    }

    /// After a container's item: a comma (more items follow: false) or ``close``, consumed
    /// (the container ends: true); anything else is refused.
    pub(crate) fn item_end(&mut self, close: u8) -> R<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Ok(false)
            }
            c if c == close => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Reject),
        }
    }

    /// Any JSON value, checked and skipped.
    pub(crate) fn skip(&mut self, depth: usize, scratch: &mut Vec<u8>) -> R<()> {
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
                    self.key(scratch)?;
                    self.skip(depth + 1, scratch)?;
                    if self.item_end(b'}')? {
                        return Ok(());
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
                    if self.item_end(b']')? {
                        return Ok(());
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
