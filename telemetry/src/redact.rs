//! The last line of defence: scrub anything shaped like a secret from a string.
//!
//! Handlers never put tokens into telemetry on purpose (they record fingerprints and verified
//! claims). This module catches what slips through anyway: every exported span string, event,
//! status message and log line passes through [`scrub`].

use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

/// Replacement for a JWT-shaped value.
pub const JWT_REDACTED: &str = "[REDACTED:jwt]";
/// Replacement for a bearer credential.
pub const BEARER_REDACTED: &str = "Bearer [REDACTED]";
/// Replacement for an AWS secret-shaped value.
pub const AWS_SECRET_REDACTED: &str = "[REDACTED:aws-secret]";

// The three shapes, written as regular expressions. The scanners below implement them by hand
// (a regex engine would be a fifth of a Lambda bootstrap); the tests check them against these
// patterns compiled by the `regex` crate.
//
// A JWS/JWE compact serialisation: the header is base64url JSON, so it starts with `e` followed
// by `y` (`{"` or `{ `) or `w` (`{\n`). The signature may be empty (alg none):
//   e[wy][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?
// A credential after an HTTP authentication scheme:
//   (?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]+
// 40 characters of base64 (AWS secret access keys) or 100+ (session tokens), with upper- and
// lower-case letters and digits, as a whole run of:
//   [A-Za-z0-9/+=]{40,}

/// Shortest string any pattern can match.
const SHORTEST: usize = 8;

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Length of the run of bytes in `class` starting at `from` (`from` ≤ `bytes.len()`).
fn run(bytes: &[u8], from: usize, class: impl Fn(u8) -> bool) -> usize {
    bytes[from..].iter().take_while(|b| class(**b)).count()
}

/// The end of the JWT-shaped match starting at `p`, if one does. Every quantifier of the
/// pattern is followed by a byte outside its class, so greedy runs never need to give back.
fn jwt_at(bytes: &[u8], p: usize) -> Option<usize> {
    if bytes.get(p) != Some(&b'e') || !matches!(bytes.get(p + 1), Some(b'w' | b'y')) {
        return None;
    }
    let mut i = p + 2;
    let header = run(bytes, i, is_b64url);
    if header < 6 || bytes.get(i + header) != Some(&b'.') {
        return None;
    }
    i += header + 1;
    let payload = run(bytes, i, is_b64url);
    if payload < 2 || bytes.get(i + payload) != Some(&b'.') {
        return None;
    }
    i += payload + 1;
    i += run(bytes, i, is_b64url);
    // JWE: two more segments, taken only when both dots are there.
    if bytes.get(i) == Some(&b'.') {
        let j = i + 1 + run(bytes, i + 1, is_b64url);
        if bytes.get(j) == Some(&b'.') {
            i = j + 1 + run(bytes, j + 1, is_b64url);
        }
    }
    Some(i)
}

/// The leftmost, non-overlapping matches of a pattern that can only start at bytes `first`
/// accepts, `at` giving the end of the match starting at a position (as a regex search does).
fn matches(
    bytes: &[u8],
    first: impl Fn(u8) -> bool,
    at: impl Fn(usize) -> Option<usize>,
) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        match first(bytes[p]).then(|| at(p)).flatten() {
            Some(end) => {
                found.push(p..end);
                p = end;
            }
            None => p += 1,
        }
    }
    found
}

fn jwt_matches(s: &str) -> Vec<Range<usize>> {
    let bytes = s.as_bytes();
    matches(bytes, |b| b == b'e', |p| jwt_at(bytes, p))
}

/// Whether `s` contains something JWT-shaped.
pub fn contains_jwt(s: &str) -> bool {
    let bytes = s.as_bytes();
    memchr::memchr_iter(b'e', bytes).any(|p| jwt_at(bytes, p).is_some())
}

/// Whether the `e[wy]` at `p` is followed by six or more base64url bytes and a dot: the start
/// of every JWT-shaped match.
fn starts_jwt(bytes: &[u8], p: usize) -> bool {
    let header = run(bytes, p + 2, is_b64url);
    header >= 6 && bytes.get(p + 2 + header) == Some(&b'.')
}

/// A cheap test that is true whenever [`contains_jwt`] is (it looks for `e[wy]`, six or more
/// base64url bytes and a dot, the start every match has), so that large texts run the full
/// pattern only where it can match.
pub fn may_contain_jwt(bytes: &[u8]) -> bool {
    let starts_jwt = |p: usize| starts_jwt(bytes, p);
    // An attribute value: one pass for the `e`s. A long text (an export line, where `e` is
    // everywhere): the pair searchers, built once.
    if bytes.len() < SHORT_TEXT {
        return memchr::memchr_iter(b'e', bytes)
            .any(|p| matches!(bytes.get(p + 1), Some(b'y' | b'w')) && starts_jwt(p));
    }
    static EY: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"ey"));
    static EW: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"ew"));
    EY.find_iter(bytes).any(starts_jwt) || EW.find_iter(bytes).any(starts_jwt)
}

/// Every JWT-shaped substring of `s` (for leak scans).
pub fn find_jwts(s: &str) -> Vec<&str> {
    jwt_matches(s).into_iter().map(|r| &s[r]).collect()
}

/// Whether the byte at `at` is `lower` in either ASCII case.
fn is_ci(bytes: &[u8], at: usize, lower: u8) -> bool {
    bytes
        .get(at)
        .is_some_and(|b| b.to_ascii_lowercase() == lower)
}

/// The end of `bearer` or `basic` at `p`, in any case (Unicode simple case folding, where `ſ`
/// U+017F is an `s`).
fn scheme_at(bytes: &[u8], p: usize) -> Option<usize> {
    if !is_ci(bytes, p, b'b') {
        return None;
    }
    if (1..=5).all(|i| is_ci(bytes, p + i, b"earer"[i - 1])) {
        return Some(p + 6);
    }
    if !is_ci(bytes, p + 1, b'a') {
        return None;
    }
    let after_s = if is_ci(bytes, p + 2, b's') {
        p + 3
    } else if bytes.get(p + 2..p + 4) == Some(&[0xC5, 0xBF][..]) {
        p + 4
    } else {
        return None;
    };
    (is_ci(bytes, after_s, b'i') && is_ci(bytes, after_s + 1, b'c')).then_some(after_s + 2)
}

/// A word character for `\b`. A subset of Unicode's `\w` (letters, digits, `_`; it leaves out
/// marks and joiners), so that a boundary is seen wherever the regex sees one, and a few more
/// times: in doubt, scrub.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || (!c.is_ascii() && c.is_alphabetic())
}

/// A character of the credential class `[A-Za-z0-9._~+/=-]` under case folding, which adds the
/// two letters that fold into ASCII ones: `ſ` (s) and the Kelvin sign `K` (k).
fn is_credential_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '.' | '_' | '~' | '+' | '/' | '=' | '-' | '\u{17F}' | '\u{212A}'
        )
}

/// The end of the bearer-shaped match starting at `p`, if one does.
fn bearer_at(s: &str, p: usize) -> Option<usize> {
    if s[..p].chars().next_back().is_some_and(is_word) {
        return None;
    }
    let mut i = scheme_at(s.as_bytes(), p)?;
    let rest = &s[i..];
    let spaces: usize = rest
        .chars()
        .take_while(|c| c.is_whitespace())
        .map(char::len_utf8)
        .sum();
    i += if spaces > 0 {
        spaces
    } else if rest.starts_with("%20") {
        3
    } else if rest.starts_with('+') {
        1
    } else {
        return None;
    };
    let credential: usize = s[i..]
        .chars()
        .take_while(|c| is_credential_char(*c))
        .map(char::len_utf8)
        .sum();
    (credential > 0).then_some(i + credential)
}

fn bearer_matches(s: &str) -> Vec<Range<usize>> {
    matches(
        s.as_bytes(),
        |b| b == b'b' || b == b'B',
        |p| bearer_at(s, p),
    )
}

/// A cheap test that is true whenever the bearer pattern can match: `bearer` or `basic` in any
/// case.
fn may_contain_bearer(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(b'b', b'B', bytes).any(|p| scheme_at(bytes, p).is_some())
}

/// Bytes of the AWS secret pattern's class `[A-Za-z0-9/+=]`.
const fn aws_class_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'/' || c == b'+' || c == b'=';
        b += 1;
    }
    t
}
static AWS_CLASS: [bool; 256] = aws_class_table();

/// Shortest run of the AWS secret class that can be one.
const AWS_MIN: usize = 40;

/// The next maximal run of the AWS secret class, [`AWS_MIN`] bytes or longer, starting at or
/// after `from` (where a run starts, or after a byte outside the class): what the pattern's
/// search finds. Only runs of 40 or more count, so the scan probes every 40th byte and looks
/// closer only where a probe is in the class.
fn next_aws_run(bytes: &[u8], from: usize) -> Option<Range<usize>> {
    let class = |i: usize| AWS_CLASS[usize::from(bytes[i])];
    let mut i = from;
    while i + AWS_MIN <= bytes.len() {
        let probe = i + AWS_MIN - 1;
        if !class(probe) {
            i = probe + 1;
            continue;
        }
        let mut start = probe;
        while start > i && class(start - 1) {
            start -= 1;
        }
        let mut end = probe + 1;
        while end < bytes.len() && class(end) {
            end += 1;
        }
        if end - start >= AWS_MIN {
            return Some(start..end);
        }
        i = end + 1;
    }
    None
}

/// Every maximal run of the AWS secret class of [`AWS_MIN`] bytes or longer, in order.
fn aws_runs(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let r = next_aws_run(bytes, from)?;
        from = r.end;
        Some(r)
    })
}

/// The runs [`scrub`] replaces as AWS secrets: exactly 40 bytes (a secret access key) or 100
/// or more (a session token), mixing upper case, lower case and digits.
fn aws_secrets(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    aws_runs(bytes).filter(|r| looks_like_aws_secret(&bytes[r.clone()]))
}

fn looks_like_aws_secret(run: &[u8]) -> bool {
    (run.len() == AWS_MIN || run.len() >= 100)
        && run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run.iter().any(u8::is_ascii_digit)
}

/// Texts shorter than this (attribute values, names) are prefiltered in one byte loop; longer
/// ones (log lines, export lines) with the vectorised searchers, whose set-up a short text does
/// not repay.
const SHORT_TEXT: usize = 256;

/// Whether `bytes` holds a `y` or `w` (a JWT starts `ey` or `ew`) or a `b` (`bearer`, `basic`),
/// in either case: eight bytes at a time (a byte equal to one of them zeroes its lane of a XOR,
/// and a zero lane is found without a branch per byte). Most attribute keys and values have
/// none, and skip the byte-by-byte checks.
fn has_scheme_or_jwt_letter(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_lane = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let any = |word: [u8; 8]| {
        let folded = u64::from_le_bytes(word) | (ONES * 0x20);
        (zero_lane(folded ^ (ONES * u64::from(b'y')))
            | zero_lane(folded ^ (ONES * u64::from(b'w')))
            | zero_lane(folded ^ (ONES * u64::from(b'b'))))
            != 0
    };
    let mut words = bytes.chunks_exact(8);
    let mut word = [0u8; 8];
    for chunk in &mut words {
        word.copy_from_slice(chunk);
        if any(word) {
            return true;
        }
    }
    // The tail, padded with zero bytes (a space once folded: none of the letters).
    let rest = words.remainder();
    word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    any(word)
}

/// A short text's JWT and scheme test: one pass over its bytes looking for the first byte of a
/// JWT (`e` then `y`/`w`) and of an authentication scheme (`b`/`B`), each checked where found.
/// The same answer as the searchers give.
fn short_jwt_or_scheme(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(p, &b)| match b {
        b'e' => matches!(bytes.get(p + 1), Some(b'y' | b'w')) && starts_jwt(bytes, p),
        b'b' | b'B' => scheme_at(bytes, p).is_some(),
        _ => false,
    })
}

/// The prefilter of [`scrub`] and [`scrub_json`]: whether `bytes` may hold the start of a JWT
/// or of a credential after an authentication scheme, or a run of 40 or more of the AWS secret
/// class that `secret_run` accepts. A short text (attribute keys and values) is tested in one
/// pass, after an eight-bytes-at-a-time test for the letters those starts need; a long one with
/// the vectorised searchers.
fn candidates(bytes: &[u8], secret_run: impl Fn(&[u8]) -> bool) -> bool {
    let jwt_or_scheme = if bytes.len() < SHORT_TEXT {
        has_scheme_or_jwt_letter(bytes) && short_jwt_or_scheme(bytes)
    } else {
        may_contain_jwt(bytes) || may_contain_bearer(bytes)
    };
    jwt_or_scheme || (bytes.len() >= AWS_MIN && secret_run(bytes))
}

/// One pass deciding whether [`scrub`] could change `bytes` (true whenever any of its patterns
/// would replace something; the common case, false, costs one cheap scan).
fn needs_scrub(bytes: &[u8]) -> bool {
    candidates(bytes, |b| aws_secrets(b).next().is_some())
}

/// Scrub secrets from `s`. Borrowed when nothing was found (the common case costs one scan).
pub fn scrub(s: &str) -> Cow<'_, str> {
    if !may_need_scrub(s.as_bytes()) {
        return Cow::Borrowed(s);
    }
    scrub_with_patterns(s)
}

/// Whether [`scrub`] could change the text of `bytes` (false means it returns it as it is): a
/// test on bytes, for text not yet checked to be UTF-8.
pub(crate) fn may_need_scrub(bytes: &[u8]) -> bool {
    bytes.len() >= SHORTEST && needs_scrub(bytes)
}

/// Scrub secrets from a JSON text (a log line, a line of OTLP/JSON): every string in it, keys
/// included, is scrubbed as [`scrub`] scrubs the text it stands for, and written again only when
/// something was replaced. Scrubbing the encoded text instead would miss what JSON escaping
/// hides: in `"Bearer\tabc"` the credential follows a `\t` escape, not whitespace, and in
/// `"\n` + a 40-character AWS secret + `"` the `n` of the escape lengthens the run to 41.
/// Only strings hold text (numbers are digits, the rest is JSON's own punctuation). A text that
/// is not valid JSON is scrubbed as plain text.
pub fn scrub_json(text: &str) -> Cow<'_, str> {
    // The prefilter for encoded text. JSON as serde writes it (every JSON text scrubbed here)
    // escapes no letter, digit or non-ASCII character, so a scheme keyword or a JWT appears in
    // it as it is (an escape such as `\b` only adds candidates, which the strings' own scrub
    // then clears); a secret run is any run of 40 or more, whatever its length or letters,
    // since an escape's letter may have joined it.
    if text.len() < SHORTEST || !candidates(text.as_bytes(), |b| aws_runs(b).next().is_some()) {
        return Cow::Borrowed(text);
    }
    scrub_json_strings(text).unwrap_or_else(|| scrub_with_patterns(text))
}

/// [`scrub_json`] past its prefilter: each string literal of `text`, decoded when it holds
/// escapes, scrubbed, and written back (JSON-encoded) only when something was replaced; the
/// rest of the text is kept byte for byte. `None` when `text` is not valid JSON where it was
/// read (an unterminated or undecodable string).
fn scrub_json_strings(text: &str) -> Option<Cow<'_, str>> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    // Outside strings a valid JSON text has no quote but those that open strings.
    while let Some(q) = memchr::memchr(b'"', &bytes[at..]) {
        let open = at + q;
        let mut i = open + 1;
        let mut escaped = false;
        let close = loop {
            let k = i + memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
            if bytes[k] == b'"' {
                break k;
            }
            escaped = true;
            i = k + 2;
        };
        let decoded: Cow<'_, str> = if escaped {
            Cow::Owned(serde_json::from_str::<String>(&text[open..=close]).ok()?)
        } else {
            Cow::Borrowed(&text[open + 1..close])
        };
        if let Cow::Owned(clean) = scrub(&decoded) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..open]);
            o.push_str(&serde_json::to_string(&clean).ok()?);
            copied = close + 1;
        }
        at = close + 1;
    }
    Some(match out {
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    })
}

/// `s` with each of `ranges` (ascending, not overlapping, on character boundaries) replaced.
fn replace<'a>(s: Cow<'a, str>, ranges: Vec<Range<usize>>, with: &str) -> Cow<'a, str> {
    if ranges.is_empty() {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for r in ranges {
        out.push_str(&s[last..r.start]);
        out.push_str(with);
        last = r.end;
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

/// The replacements themselves (what [`scrub`] runs once its prefilter found a candidate):
/// bearer credentials, then JWTs, then AWS secrets, each on the previous one's result.
fn scrub_with_patterns(s: &str) -> Cow<'_, str> {
    let out = Cow::Borrowed(s);
    let found = bearer_matches(&out);
    let out = replace(out, found, BEARER_REDACTED);
    let found = jwt_matches(&out);
    let out = replace(out, found, JWT_REDACTED);
    let found = aws_secrets(out.as_bytes()).collect();
    replace(out, found, AWS_SECRET_REDACTED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn jwt_sample() -> String {
        crate::fixtures::jwt("alice")
    }

    #[test]
    fn jwt_is_scrubbed_anywhere() {
        let token = jwt_sample();
        let s = format!("token={token}; next");
        let out = scrub(&s);
        assert!(!out.contains(&token));
        assert!(out.contains(JWT_REDACTED));
        assert!(out.ends_with("; next"));
    }

    #[test]
    fn bearer_is_scrubbed() {
        let out = scrub("Authorization: Bearer abc.def-ghi");
        assert_eq!(out, "Authorization: Bearer [REDACTED]");
        let out = scrub("authorization: bearer%20opaque123");
        assert!(!out.contains("opaque123"));
    }

    #[test]
    fn aws_secret_is_scrubbed_but_hex_ids_are_not() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(secret.len(), 40);
        assert!(!scrub(&format!("key {secret} end")).contains(secret));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(scrub(trace_id), trace_id);
        let fp = "sha256:9f2c4e1a0b7d";
        assert_eq!(scrub(fp), fp);
    }

    #[test]
    fn ordinary_text_is_borrowed() {
        assert!(matches!(
            scrub("gateway.inbound rejected: expired"),
            Cow::Borrowed(_)
        ));
        // Dotted host names are not JWTs.
        let host = "abc.gateway.bedrock-agentcore.us-east-1.amazonaws.com";
        assert_eq!(scrub(host), host);
    }

    #[test]
    fn nested_json_is_scrubbed() {
        let token = jwt_sample();
        let v = serde_json::json!({
            "a": [{"b": format!("x {token}")}],
            token.clone(): 1,
            "h": {"authorization": "Bearer zzz"}
        });
        // Encoded JSON is scrubbed as text (as the collector does): the patterns never span a
        // quote or a backslash, so the result is still JSON.
        let text = scrub(&v.to_string()).into_owned();
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{text}"
        );
        assert!(!text.contains(&token));
        assert!(!text.contains("zzz"));
    }

    // The documented patterns, compiled by the `regex` crate, as the reference for the scanners.
    static JWT: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r"e[wy][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?",
        )
        .unwrap()
    });
    static BEARER: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]+").unwrap()
    });
    static WORD: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(r"^\w$").unwrap());
    static AWS_SECRET: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"[A-Za-z0-9/+=]{40,}").unwrap());

    /// Texts made of the pieces the patterns care about, in any order.
    fn tricky_parts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            prop_oneof![
                Just("Bearer ".to_owned()),
                Just("bAsIc%20".to_owned()),
                Just("baſic+".to_owned()),
                Just("BEARER\u{a0}".to_owned()),
                Just("eyJ".to_owned()),
                Just("ew".to_owned()),
                Just("bearer".to_owned()),
                Just("%2".to_owned()),
                Just("+".to_owned()),
                Just(".".to_owned()),
                Just("\"".to_owned()),
                Just("_".to_owned()),
                Just("é".to_owned()),
                Just("\u{301}".to_owned()),
                Just("\u{2003}".to_owned()),
                Just("\t".to_owned()),
                Just("\r\n".to_owned()),
                Just("\u{b}".to_owned()),
                "[A-Za-z0-9/+=]{1,50}",
                "[A-Za-z0-9/+=]{40}",
                "[A-Za-z0-9/+=]{100}",
                "[a-f0-9]{30,45}",
                "[A-Za-z0-9_-]{1,20}",
                "[ -~]{0,10}",
                "\\PC{0,4}",
            ],
            0..12,
        )
    }

    #[test]
    fn what_json_escaping_hides_is_scrubbed_and_the_rest_kept() {
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let cases = [
            (r"Bearer\topaque0123456789", "opaque0123456789"),
            (r"x\nBearer opaque0123456789", "opaque0123456789"),
            (r"basic\r\nopaque0123456789", "opaque0123456789"),
        ];
        for (inner, credential) in cases {
            let line = format!(r#"{{"b":1.5,"key":"{inner}","n":[true,"\u00e9"]}}"#);
            // What scrubbing the encoded text leaves behind.
            assert!(scrub(&line).contains(credential), "{line}");
            let out = scrub_json(&line);
            assert!(!out.contains(credential), "{out}");
            assert!(
                out.starts_with(r#"{"b":1.5,"key":""#)
                    && out.ends_with(r#"","n":[true,"\u00e9"]}"#),
                "{out}"
            );
        }
        let line = format!(r#"{{"v":"\n{secret}"}}"#);
        assert!(scrub(&line).contains(secret));
        assert_eq!(
            scrub_json(&line),
            format!(r#"{{"v":"\n{AWS_SECRET_REDACTED}"}}"#)
        );
        // Not JSON: scrubbed as text.
        assert_eq!(scrub_json("\"Bearer abc"), "\"Bearer [REDACTED]");
        let clean = r#"{"key":"tokentrail.hop.name","value":{"stringValue":"gateway"}}"#;
        assert!(matches!(scrub_json(clean), Cow::Borrowed(_)));
    }

    #[test]
    fn the_scanners_agree_with_the_patterns_on_known_cases() {
        let token = jwt_sample();
        let jwe = "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d";
        let cases = [
            format!("x{token}y"),
            format!("{jwe} and {jwe}."),
            "eyJhbGci.ab. eyJhbGci.a.b ewJhbGci.xy.z.w".to_owned(),
            "Authorization: Bearer abc, basic%20Zm9v; BEARER+x; xbearer y; _basic z".to_owned(),
            "\u{301}bearer abc ébasic def bearer\u{2003}ghi".to_owned(),
            format!("{}/{}", "A1b".repeat(14), "a".repeat(40)),
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned(),
        ];
        for text in cases {
            let jwts: Vec<_> = JWT.find_iter(&text).map(|m| m.range()).collect();
            assert_eq!(jwt_matches(&text), jwts, "{text}");
            let runs: Vec<_> = AWS_SECRET.find_iter(&text).map(|m| m.range()).collect();
            let mine: Vec<_> = aws_runs(text.as_bytes()).collect();
            assert_eq!(mine, runs, "{text}");
            let want: Vec<_> = BEARER.find_iter(&text).map(|m| m.range()).collect();
            let got = bearer_matches(&text);
            if text.starts_with('\u{301}') {
                // The regex counts a combining mark as a word character; the scanner, in
                // doubt, sees a boundary, and scrubs one more.
                assert!(want.iter().all(|w| got.contains(w)), "{text}");
                assert_eq!(got.len(), want.len() + 1, "{text}");
            } else {
                assert_eq!(got, want, "{text}");
            }
        }
    }

    fn b64url() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[A-Za-z0-9_-]{8,60}").expect("regex")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_jwt_in_any_text_never_survives(
            header in b64url(), payload in b64url(), sig in b64url(),
            prefix in "[ -~]{0,40}", suffix in "[ -~]{0,40}",
        ) {
            let token = format!("eyJ{header}.{payload}.{sig}");
            let text = format!("{prefix}{token}{suffix}");
            let out = scrub(&text);
            prop_assert!(!out.contains(&token));
            prop_assert!(!contains_jwt(&out) || out.contains(JWT_REDACTED));
        }

        #[test]
        fn the_quick_test_never_misses_a_jwt(
            header in b64url(), payload in b64url(), sig in b64url(),
            prefix in "[ -~]{0,40}", suffix in "[ -~]{0,40}", noise in "[ -~]{0,80}",
        ) {
            let text = format!("{prefix}eyJ{header}.{payload}.{sig}{suffix}");
            prop_assert!(may_contain_jwt(text.as_bytes()));
            if contains_jwt(&noise) {
                prop_assert!(may_contain_jwt(noise.as_bytes()));
            }
        }

        #[test]
        fn the_prefilter_never_changes_the_result(parts in tricky_parts()) {
            let text = parts.concat();
            prop_assert_eq!(scrub(&text), scrub_with_patterns(&text));
        }

        #[test]
        fn json_strings_are_scrubbed_as_the_text_they_stand_for(parts in tricky_parts(), other in tricky_parts()) {
            let text = parts.concat();
            let key = format!("key:{}", other.concat());
            let mut object = serde_json::Map::new();
            object.insert("k".to_owned(), serde_json::json!([text, 7, null, {"n": text}]));
            object.insert(key.clone(), serde_json::Value::Bool(true));
            let line = serde_json::Value::Object(object).to_string();
            let out = scrub_json(&line);
            let parsed: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
            let clean = scrub(&text).into_owned();
            prop_assert_eq!(&parsed["k"][0], &serde_json::Value::String(clean.clone()));
            prop_assert_eq!(&parsed["k"][3]["n"], &serde_json::Value::String(clean.clone()));
            prop_assert_eq!(&parsed[scrub(&key).as_ref()], &serde_json::Value::Bool(true));
            if clean == text && scrub(&key) == key {
                prop_assert_eq!(out.as_ref(), line.as_str());
            }
        }

        #[test]
        fn the_letter_test_finds_every_y_w_and_b(text in "\\PC{0,40}") {
            let bytes = text.as_bytes();
            let want = bytes.iter().any(|b| matches!(b | 0x20, b'y' | b'w' | b'b'));
            prop_assert_eq!(has_scheme_or_jwt_letter(bytes), want);
        }

        #[test]
        fn the_short_prefilter_answers_as_the_searchers_do(parts in tricky_parts(), pad in 0usize..300) {
            let text = parts.concat();
            let bytes = text.as_bytes();
            let searchers = may_contain_jwt(bytes)
                || may_contain_bearer(bytes)
                || aws_secrets(bytes).next().is_some();
            prop_assert_eq!(has_scheme_or_jwt_letter(bytes) && short_jwt_or_scheme(bytes)
                || aws_secrets(bytes).next().is_some(), searchers);
            // Padded past the short-text limit, through the searchers.
            let padded = format!("{text}{}", " ".repeat(pad));
            prop_assert_eq!(scrub(&padded), scrub_with_patterns(&padded));
        }

        #[test]
        fn the_scanners_find_what_the_patterns_find(parts in tricky_parts()) {
            let text = parts.concat();
            let jwts: Vec<_> = JWT.find_iter(&text).map(|m| m.range()).collect();
            prop_assert_eq!(jwt_matches(&text), jwts);
            let secrets: Vec<_> = AWS_SECRET
                .find_iter(&text)
                .map(|m| m.range())
                .filter(|r| looks_like_aws_secret(&text.as_bytes()[r.clone()]))
                .collect();
            prop_assert_eq!(aws_secrets(text.as_bytes()).collect::<Vec<_>>(), secrets);
            // Bearer: the scanner's word characters are some of the regex's (it leaves out
            // marks, joiners and non-ASCII digits), so where the text has none of those the
            // two find the same.
            for c in text.chars() {
                prop_assert!(!is_word(c) || WORD.is_match(c.encode_utf8(&mut [0; 4])));
            }
            if text.chars().all(|c| is_word(c) == WORD.is_match(c.encode_utf8(&mut [0; 4]))) {
                let want: Vec<_> = BEARER.find_iter(&text).map(|m| m.range()).collect();
                prop_assert_eq!(bearer_matches(&text), want);
            }
        }

        #[test]
        fn any_bearer_value_never_survives(value in "[A-Za-z0-9._~+/-]{12,80}", prefix in "[ -~]{0,20}") {
            let text = format!("{prefix} Bearer {value}");
            let out = scrub(&text);
            prop_assert!(!out.contains(&value));
        }
    }
}
