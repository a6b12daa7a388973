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

// One pass to decide whether anything needs a closer look (the common case: nothing does).
static ANY: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(r"(?i)e[wy][A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.|\b(bearer|basic)(\s+|%20|\+)[A-Za-z0-9._~+/=-]|[A-Za-z0-9/+=]{40}")
        .expect("valid prefilter regex")
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
    memchr::memchr_iter(b'e', bytes).any(|p| {
        if !matches!(bytes.get(p + 1), Some(b'w' | b'y')) {
            return false;
        }
        let run = bytes[p + 2..].iter().take_while(|b| b64(**b)).count();
        run >= 6 && bytes.get(p + 2 + run) == Some(&b'.')
    })
}

/// Every JWT-shaped substring of `s` (for leak scans).
pub fn find_jwts(s: &str) -> Vec<&str> {
    JWT.find_iter(s).map(|m| m.as_str()).collect()
}

fn looks_like_aws_secret(candidate: &str) -> bool {
    let len = candidate.len();
    if len != 40 && len < 100 {
        return false;
    }
    let upper = candidate.bytes().any(|b| b.is_ascii_uppercase());
    let lower = candidate.bytes().any(|b| b.is_ascii_lowercase());
    let digit = candidate.bytes().any(|b| b.is_ascii_digit());
    upper && lower && digit
}

/// Scrub secrets from `s`. Borrowed when nothing was found (the common case costs one scan).
pub fn scrub(s: &str) -> Cow<'_, str> {
    if s.len() < SHORTEST || !ANY.is_match(s) {
        return Cow::Borrowed(s);
    }
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
        fn any_bearer_value_never_survives(value in "[A-Za-z0-9._~+/-]{12,80}", prefix in "[ -~]{0,20}") {
            let text = format!("{prefix} Bearer {value}");
            let out = scrub(&text);
            prop_assert!(!out.contains(&value));
        }
    }
}
