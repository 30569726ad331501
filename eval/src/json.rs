//! A small pull parser for the two JSON files the evaluator reads (COCO ground truth and COCO
//! results).
//!
//! Why not serde_json: a results file holds hundreds of thousands of flat records, and an error
//! must name the record (its index) and the field, which a derive-based parse cannot do once the
//! document is malformed. Python's `json` also writes `NaN` and `Infinity`, which are not JSON;
//! this parser reads them so that the evaluator can reject a NaN score by name instead of
//! failing on a syntax error. Numbers go through `str::parse::<f64>`, which rounds correctly,
//! so every value is the same double Python's `json` gives.

use std::borrow::Cow;

/// A syntax or type error at a byte offset of the document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonError {
    /// Byte offset into the document where the problem was found.
    pub offset: usize,
    /// What was expected or found.
    pub message: String,
}

pub(crate) type JsonResult<T> = Result<T, JsonError>;

/// A number as written: integers stay exact, everything else is an `f64` (NaN and the
/// infinities included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// The value as a double (an integer converts as Python's `float()` does).
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// Cursor over a JSON document.
pub(crate) struct Parser<'a> {
    text: &'a str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    /// A parser at the start of `text`. (The document is validated as UTF-8 once, by the
    /// caller, so that keys and number tokens can be sliced out without checking each.)
    pub fn new(text: &'a str) -> Self {
        let buf = text.as_bytes();
        // A UTF-8 byte-order mark is harmless; skip it as Python's json.load would not, but
        // editors add it.
        let pos = if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            3
        } else {
            0
        };
        Parser { text, buf, pos }
    }

    /// Moves to byte offset `pos`.
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// Current byte offset.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn err<T>(&self, message: impl Into<String>) -> JsonResult<T> {
        Err(JsonError {
            offset: self.pos,
            message: message.into(),
        })
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.buf.get(self.pos) {
            if c == b' ' || c == b'\n' || c == b'\r' || c == b'\t' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The next non-whitespace byte, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.buf.get(self.pos).copied()
    }

    fn found(&mut self) -> String {
        match self.peek() {
            None => "end of input".to_string(),
            Some(c) if c.is_ascii_graphic() => format!("`{}`", c as char),
            Some(c) => format!("byte 0x{c:02x}"),
        }
    }

    /// Consumes `c` (after whitespace) or fails.
    #[inline]
    pub fn expect(&mut self, c: u8) -> JsonResult<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.found();
            self.err(format!("expected `{}`, found {found}", c as char))
        }
    }

    /// Fails unless only whitespace remains.
    pub fn end(&mut self) -> JsonResult<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => {
                let found = self.found();
                self.err(format!("trailing data after the document: {found}"))
            }
        }
    }

    /// Consumes `[`.
    pub fn begin_array(&mut self) -> JsonResult<()> {
        if self.peek() == Some(b'[') {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.found();
            self.err(format!("expected an array, found {found}"))
        }
    }

    /// Moves to the next element of the array being read: `Ok(true)` when one follows,
    /// `Ok(false)` after consuming the closing `]`. `first` tracks the comma rule.
    #[inline]
    pub fn next_element(&mut self, first: &mut bool) -> JsonResult<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !*first => {
                self.pos += 1;
                Ok(true)
            }
            _ if *first => {
                *first = false;
                Ok(true)
            }
            _ => {
                let found = self.found();
                self.err(format!("expected `,` or `]`, found {found}"))
            }
        }
    }

    /// Consumes `{`.
    pub fn begin_object(&mut self) -> JsonResult<()> {
        if self.peek() == Some(b'{') {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.found();
            self.err(format!("expected an object, found {found}"))
        }
    }

    /// The next key of the object being read (its `:` consumed), or `None` after the closing
    /// `}`.
    #[inline]
    pub fn next_key(&mut self, first: &mut bool) -> JsonResult<Option<Cow<'a, str>>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !*first => {
                self.pos += 1;
            }
            _ if *first => {}
            _ => {
                let found = self.found();
                return self.err(format!("expected `,` or `}}`, found {found}"));
            }
        }
        *first = false;
        if self.peek() != Some(b'"') {
            let found = self.found();
            return self.err(format!("expected a key, found {found}"));
        }
        let key = self.string()?;
        self.expect(b':')?;
        Ok(Some(key))
    }

    /// A string value.
    pub fn string(&mut self) -> JsonResult<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            let found = self.found();
            return self.err(format!("expected a string, found {found}"));
        }
        let start = self.pos + 1;
        let mut i = start;
        let mut escaped = false;
        loop {
            match self.buf.get(i) {
                None => {
                    self.pos = i;
                    return self.err("unterminated string");
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(_) => i += 1,
            }
        }
        let at = self.pos;
        self.pos = i + 1;
        // The quotes are ASCII, so both ends are character boundaries.
        let raw = &self.text[start..i];
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        unescape(raw.as_bytes())
            .map(Cow::Owned)
            .map_err(|message| JsonError {
                offset: at,
                message,
            })
    }

    /// A number, including Python's `NaN`, `Infinity` and `-Infinity`.
    #[inline]
    pub fn number(&mut self) -> JsonResult<Number> {
        self.ws();
        let start = self.pos;
        let rest = &self.buf[start..];
        if matches!(rest.first(), Some(b'N' | b'I' | b'-')) {
            for (lit, v) in [
                (&b"NaN"[..], f64::NAN),
                (&b"Infinity"[..], f64::INFINITY),
                (&b"-Infinity"[..], f64::NEG_INFINITY),
            ] {
                if rest.starts_with(lit) {
                    self.pos += lit.len();
                    return Ok(Number::Float(v));
                }
            }
        }
        let mut i = start;
        let mut is_int = true;
        while let Some(&c) = self.buf.get(i) {
            match c {
                b'0'..=b'9' | b'-' | b'+' => i += 1,
                b'.' | b'e' | b'E' => {
                    is_int = false;
                    i += 1
                }
                _ => break,
            }
        }
        if i == start {
            let found = self.found();
            return self.err(format!("expected a number, found {found}"));
        }
        // The token is ASCII by construction.
        let s = &self.text[start..i];
        if is_int && let Some(v) = parse_int(s.as_bytes()) {
            self.pos = i;
            return Ok(Number::Int(v));
        }
        match s.parse::<f64>() {
            Ok(v) => {
                self.pos = i;
                Ok(Number::Float(v))
            }
            Err(_) => self.err(format!("malformed number `{s}`")),
        }
    }

    /// An integer (a number written without fraction or exponent).
    #[inline]
    pub fn int(&mut self) -> JsonResult<i64> {
        let at = self.offset();
        match self.number()? {
            Number::Int(v) => Ok(v),
            Number::Float(f) => Err(JsonError {
                offset: at,
                message: format!("expected an integer, found {f}"),
            }),
        }
    }

    /// A number as a double.
    #[inline]
    pub fn f64(&mut self) -> JsonResult<f64> {
        Ok(self.number()?.as_f64())
    }

    /// A truth value as Python tests it: `true`/`false`, or a number (non-zero is true).
    pub fn truthy(&mut self) -> JsonResult<bool> {
        match self.peek() {
            Some(b't') | Some(b'f') | Some(b'n') => {
                for (lit, v) in [
                    (&b"true"[..], true),
                    (&b"false"[..], false),
                    (&b"null"[..], false),
                ] {
                    if self.buf[self.pos..].starts_with(lit) {
                        self.pos += lit.len();
                        return Ok(v);
                    }
                }
                let found = self.found();
                self.err(format!("expected a boolean or a number, found {found}"))
            }
            _ => Ok(match self.number()? {
                Number::Int(v) => v != 0,
                Number::Float(f) => f != 0.0,
            }),
        }
    }

    /// `null` if it is next (consumed), else false.
    pub fn null(&mut self) -> bool {
        if self.peek() == Some(b'n') && self.buf[self.pos..].starts_with(b"null") {
            self.pos += 4;
            true
        } else {
            false
        }
    }

    /// An array of integers.
    pub fn int_array(&mut self) -> JsonResult<Vec<i64>> {
        self.begin_array()?;
        let mut out = Vec::new();
        let mut first = true;
        while self.next_element(&mut first)? {
            out.push(self.int()?);
        }
        Ok(out)
    }

    /// An array of exactly `N` numbers.
    #[inline]
    pub fn f64_array<const N: usize>(&mut self) -> JsonResult<[f64; N]> {
        self.begin_array()?;
        let mut out = [0.0; N];
        let mut first = true;
        let mut n = 0;
        while self.next_element(&mut first)? {
            if n == N {
                return self.err(format!("expected {N} numbers, found more"));
            }
            out[n] = self.f64()?;
            n += 1;
        }
        if n != N {
            return self.err(format!("expected {N} numbers, found {n}"));
        }
        Ok(out)
    }

    /// Skips one value of any kind.
    pub fn skip_value(&mut self) -> JsonResult<()> {
        match self.peek() {
            None => self.err("expected a value, found end of input"),
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') | Some(b'[') => {
                let mut depth = 0usize;
                let buf = self.buf;
                let mut i = self.pos;
                while i < buf.len() {
                    match buf[i] {
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos = i + 1;
                                return Ok(());
                            }
                        }
                        b'"' => {
                            i += 1;
                            while i < buf.len() && buf[i] != b'"' {
                                if buf[i] == b'\\' {
                                    i += 1;
                                }
                                i += 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                self.pos = buf.len();
                self.err("unterminated array or object")
            }
            Some(b't') | Some(b'f') => self.truthy().map(|_| ()),
            Some(b'n') => {
                if self.null() {
                    Ok(())
                } else {
                    let found = self.found();
                    self.err(format!("expected a value, found {found}"))
                }
            }
            _ => self.number().map(|_| ()),
        }
    }
}

/// A decimal integer (optional leading `-`), or `None` if it is not one or overflows.
#[inline]
fn parse_int(tok: &[u8]) -> Option<i64> {
    let (neg, digits) = match tok.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, tok),
    };
    if digits.is_empty() || digits.len() > 18 {
        // Rare: let the standard parser decide (it handles 19-digit values and errors).
        return std::str::from_utf8(tok).ok()?.parse().ok();
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as i64;
    }
    Some(if neg { -v } else { v })
}

/// The document as UTF-8, or an error at the first invalid byte.
pub(crate) fn as_text(bytes: &[u8]) -> JsonResult<&str> {
    std::str::from_utf8(bytes).map_err(|e| JsonError {
        offset: e.valid_up_to(),
        message: "the file is not valid UTF-8".into(),
    })
}

fn unescape(raw: &[u8]) -> Result<String, String> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1).ok_or("unterminated escape")?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw, i)?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi)
                    && raw.get(i) == Some(&b'\\')
                    && raw.get(i + 1) == Some(&b'u')
                {
                    let lo = hex4(raw, i + 2)?;
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    } else {
                        hi
                    }
                } else {
                    hi
                };
                char::from_u32(code).unwrap_or('\u{FFFD}')
            }
            other => return Err(format!("invalid escape `\\{}`", other as char)),
        };
        let mut tmp = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
    }
    String::from_utf8(out).map_err(|_| "string is not valid UTF-8".to_string())
}

fn hex4(raw: &[u8], i: usize) -> Result<u32, String> {
    let s = raw.get(i..i + 4).ok_or("truncated \\u escape")?;
    let s = std::str::from_utf8(s).map_err(|_| "invalid \\u escape")?;
    u32::from_str_radix(s, 16).map_err(|_| format!("invalid \\u escape `{s}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_documents_and_skips_unknown_values() {
        let doc = r#" {"a": [1, 2.5, -3e2, NaN, -Infinity], "s": "x\"y\u00e9\ud83d\ude00",
            "skip": {"p": [[1, 2], {"q": "]}"}], "t": true, "n": null}, "b": [1,2,3,4]} "#;
        let mut p = Parser::new(doc);
        p.begin_object().unwrap();
        let mut first = true;
        let mut seen = Vec::new();
        while let Some(k) = p.next_key(&mut first).unwrap() {
            match k.as_ref() {
                "a" => {
                    p.begin_array().unwrap();
                    let mut f = true;
                    let mut v = Vec::new();
                    while p.next_element(&mut f).unwrap() {
                        v.push(p.number().unwrap());
                    }
                    assert_eq!(v[0], Number::Int(1));
                    assert_eq!(v[1], Number::Float(2.5));
                    assert_eq!(v[2], Number::Float(-300.0));
                    assert!(matches!(v[3], Number::Float(x) if x.is_nan()));
                    assert_eq!(v[4], Number::Float(f64::NEG_INFINITY));
                }
                "s" => assert_eq!(p.string().unwrap(), "x\"yé😀"),
                "b" => assert_eq!(p.f64_array::<4>().unwrap(), [1.0, 2.0, 3.0, 4.0]),
                _ => p.skip_value().unwrap(),
            }
            seen.push(k.into_owned());
        }
        p.end().unwrap();
        assert_eq!(seen, ["a", "s", "skip", "b"]);
    }

    #[test]
    fn numbers_round_like_python() {
        // Values whose shortest representation needs correct rounding.
        for s in [
            "0.1",
            "2.2250738585072014e-308",
            "162.5557897235756",
            "1e23",
            "9007199254740993",
        ] {
            let mut p = Parser::new(s);
            assert_eq!(p.f64().unwrap(), s.parse::<f64>().unwrap(), "{s}");
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let mut p = Parser::new("[1, 2 3]");
        p.begin_array().unwrap();
        let mut f = true;
        assert!(p.next_element(&mut f).unwrap());
        p.int().unwrap();
        assert!(p.next_element(&mut f).unwrap());
        p.int().unwrap();
        let e = p.next_element(&mut f).unwrap_err();
        assert_eq!(e.offset, 6);
        assert!(e.message.contains("expected `,` or `]`"), "{}", e.message);
        let mut p = Parser::new("[1, 2]");
        assert!(
            p.f64_array::<4>()
                .unwrap_err()
                .message
                .contains("expected 4 numbers")
        );
        let mut p = Parser::new("3.5");
        assert!(p.int().unwrap_err().message.contains("expected an integer"));
    }
}
