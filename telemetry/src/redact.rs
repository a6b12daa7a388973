//! The last line of defence: scrub anything shaped like a secret from a string.
//!
//! Handlers never put tokens into telemetry on purpose (they record fingerprints and verified
//! claims). This module catches what slips through anyway: every exported span string, event,
//! status message and log line passes through [`scrub`].

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Replacement for a JWT-shaped value.
pub const JWT_REDACTED: &str = "[REDACTED:jwt]";
/// Replacement for a bearer credential.
pub const BEARER_REDACTED: &str = "Bearer [REDACTED]";
/// Replacement for an AWS secret-shaped value.
pub const AWS_SECRET_REDACTED: &str = "[REDACTED:aws-secret]";

// A JWS/JWE compact serialisation: the header is base64url JSON, so it starts with `e` followed by
// `y` (`{"` or `{ `) or `w` (`{\n`). Signature may be empty (alg none).
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)] // constant pattern, covered by tests
    Regex::new(r"e[wy][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?")
        .expect("valid JWT regex")
});

static BEARER: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(r"(?i)\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]+").expect("valid bearer regex")
});

// 40 characters of base64 (AWS secret access keys) or 100+ (session tokens), on boundaries.
static AWS_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(r"[A-Za-z0-9/+=]{40,}").expect("valid aws secret regex")
});

/// Shortest string any pattern can match.
const SHORTEST: usize = 8;

/// Whether `s` contains something JWT-shaped.
pub fn contains_jwt(s: &str) -> bool {
    JWT.is_match(s)
}

/// A cheap test that is true whenever [`contains_jwt`] is (it looks for `e[wy]`, six or more
/// base64url bytes and a dot, the start every match has), so that large texts run the full
/// pattern only where it can match.
pub fn may_contain_jwt(bytes: &[u8]) -> bool {
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let starts_jwt = |p: usize| {
        let run = bytes[p + 2..].iter().take_while(|b| b64(**b)).count();
        run >= 6 && bytes.get(p + 2 + run) == Some(&b'.')
    };
    // An attribute value: one pass for the `e`s. A long text (an export line, where `e` is
    // everywhere): the pair searchers, built once.
    if bytes.len() < 256 {
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
    JWT.find_iter(s).map(|m| m.as_str()).collect()
}

/// A cheap test that is true whenever the bearer pattern can match: `bearer` or `basic` in any
/// case (the pattern is case-insensitive under Unicode simple case folding, where `ſ` U+017F is
/// an `s`).
fn may_contain_bearer(bytes: &[u8]) -> bool {
    let is = |at: usize, lower: u8| {
        bytes
            .get(at)
            .is_some_and(|b| b.to_ascii_lowercase() == lower)
    };
    memchr::memchr2_iter(b'b', b'B', bytes).any(|p| {
        if (1..=5).all(|i| is(p + i, b"earer"[i - 1])) {
            return true;
        }
        if !is(p + 1, b'a') {
            return false;
        }
        // `s` or `ſ` (two bytes in UTF-8), then `ic`.
        let after_s = if is(p + 2, b's') {
            p + 3
        } else if bytes.get(p + 2..p + 4) == Some(&[0xC5, 0xBF][..]) {
            p + 4
        } else {
            return false;
        };
        is(after_s, b'i') && is(after_s + 1, b'c')
    })
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

/// Whether a maximal run of the AWS secret class (what the pattern's leftmost-longest search
/// finds) looks like a secret: exactly what [`scrub`] would replace. Only runs of 40 or more
/// can, so the scan probes every 40th byte and looks closer only where a probe is in the class.
fn has_aws_secret(bytes: &[u8]) -> bool {
    const MIN: usize = 40;
    let class = |i: usize| AWS_CLASS[usize::from(bytes[i])];
    // Every run of MIN or more starts at or after `i`, and `i` starts a run or follows a byte
    // outside the class.
    let mut i = 0;
    while i + MIN <= bytes.len() {
        let probe = i + MIN - 1;
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
        let run = &bytes[start..end];
        if (run.len() == MIN || run.len() >= 100) && run_is_mixed(run) {
            return true;
        }
        i = end + 1;
    }
    false
}

fn run_is_mixed(run: &[u8]) -> bool {
    run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run.iter().any(u8::is_ascii_digit)
}

/// One pass deciding whether [`scrub`] could change `bytes` (true whenever any of its patterns
/// would replace something; the common case, false, costs a scan without a regex).
fn needs_scrub(bytes: &[u8]) -> bool {
    may_contain_jwt(bytes) || may_contain_bearer(bytes) || has_aws_secret(bytes)
}

fn looks_like_aws_secret(candidate: &str) -> bool {
    let len = candidate.len();
    if len != 40 && len < 100 {
        return false;
    }
    run_is_mixed(candidate.as_bytes())
}

/// Scrub secrets from `s`. Borrowed when nothing was found (the common case costs one scan).
pub fn scrub(s: &str) -> Cow<'_, str> {
    if s.len() < SHORTEST || !needs_scrub(s.as_bytes()) {
        return Cow::Borrowed(s);
    }
    scrub_with_patterns(s)
}

/// The replacements themselves (what [`scrub`] runs once its prefilter found a candidate).
fn scrub_with_patterns(s: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(s);
    if BEARER.is_match(&out) {
        out = Cow::Owned(BEARER.replace_all(&out, BEARER_REDACTED).into_owned());
    }
    if JWT.is_match(&out) {
        out = Cow::Owned(JWT.replace_all(&out, JWT_REDACTED).into_owned());
    }
    if AWS_SECRET
        .find_iter(&out)
        .any(|m| looks_like_aws_secret(m.as_str()))
    {
        let replaced = AWS_SECRET.replace_all(&out, |c: &regex::Captures<'_>| {
            let m = c.get(0).map(|m| m.as_str()).unwrap_or_default();
            if looks_like_aws_secret(m) {
                AWS_SECRET_REDACTED.to_owned()
            } else {
                m.to_owned()
            }
        });
        out = Cow::Owned(replaced.into_owned());
    }
    out
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
        fn the_prefilter_never_changes_the_result(
            parts in proptest::collection::vec(prop_oneof![
                Just("Bearer ".to_owned()), Just("bAsIc%20".to_owned()), Just("baſic+".to_owned()),
                Just("BEARER\u{a0}".to_owned()), Just("eyJ".to_owned()), Just("ew".to_owned()),
                Just(".".to_owned()), Just("\"".to_owned()),
                "[A-Za-z0-9/+=]{1,50}", "[A-Za-z0-9/+=]{40}", "[A-Za-z0-9/+=]{100}", "[a-f0-9]{30,45}", "[A-Za-z0-9_-]{1,20}", "[ -~]{0,10}",
                "\\PC{0,4}",
            ], 0..12)
        ) {
            let text = parts.concat();
            prop_assert_eq!(scrub(&text), scrub_with_patterns(&text));
        }

        #[test]
        fn any_bearer_value_never_survives(value in "[A-Za-z0-9._~+/-]{12,80}", prefix in "[ -~]{0,20}") {
            let text = format!("{prefix} Bearer {value}");
            let out = scrub(&text);
            prop_assert!(!out.contains(&value));
        }
    }
}
