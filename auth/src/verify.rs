//! JWT verification pinned to asymmetric algorithms per issuer.
//!
//! Order of checks: shape → header `alg` in the issuer's allowlist (never `none`, never HS*) →
//! no `crit` → `kid` present → key for `kid` (JWKS, parsed once) → key type matches `alg` →
//! signature → required claims (`exp`, `iss`, `aud`, `sub`) → `exp`/`nbf` with leeway → `iss` →
//! `aud` → allowed clients.

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::Algorithm;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use telemetry::{ClaimSummary, CredentialKind, CredentialProvenance, FailureReason};
use tracing::instrument;

use crate::claims::Claims;
use crate::jwks::JwksCache;

/// Why a credential was refused. `detail` never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct AuthError {
    /// The closed reason.
    pub reason: FailureReason,
    /// A human explanation, free of secrets.
    pub detail: String,
}

impl AuthError {
    /// New error.
    pub fn new(reason: FailureReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What an issuer's tokens must satisfy.
#[derive(Debug, Clone)]
pub struct IssuerPolicy {
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences; empty = `aud` must be present but is not matched (a hop that forwards
    /// the token leaves the audience to its final recipient).
    pub audiences: Vec<String>,
    /// Accepted `client_id`s; empty = any.
    pub allowed_clients: Vec<String>,
    /// Algorithms this issuer signs with. Only RS256 and ES256 are ever accepted.
    pub algorithms: Vec<Algorithm>,
    /// Clock leeway in seconds for `exp`/`nbf`.
    pub leeway_s: u64,
}

impl IssuerPolicy {
    /// RS256 only, 30 s leeway.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            allowed_clients: Vec::new(),
            algorithms: vec![Algorithm::RS256],
            leeway_s: 30,
        }
    }
}

/// A token that passed verification.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Its claims.
    pub claims: Claims,
    /// Header `kid`.
    pub kid: String,
    /// Header `alg`.
    pub alg: &'static str,
}

impl VerifiedToken {
    /// Claim summary for telemetry.
    pub fn summary(&self) -> ClaimSummary {
        self.claims.summary(Some(&self.kid), Some(self.alg))
    }

    /// Provenance for a hop span.
    pub fn provenance(&self, kind: CredentialKind, token: &SecretString) -> CredentialProvenance {
        CredentialProvenance::verified(kind, token, self.summary())
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the recipient must understand; this verifier knows none.
    crit: Option<serde::de::IgnoredAny>,
}

/// The three parts of a compact JWS, still base64url-encoded, and the signing input.
struct Jws<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    signing_input: &'a str,
}

fn malformed(detail: &str) -> AuthError {
    AuthError::new(FailureReason::Malformed, detail)
}

fn split_jws(token: &str) -> Result<Jws<'_>, AuthError> {
    let shape = || malformed("not a compact JWS (three dot-separated parts)");
    let (signing_input, signature) = token.rsplit_once('.').ok_or_else(shape)?;
    let (header, payload) = signing_input.split_once('.').ok_or_else(shape)?;
    if payload.contains('.') {
        return Err(shape());
    }
    Ok(Jws {
        header,
        payload,
        signature,
        signing_input,
    })
}

fn b64url(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(what))
}

fn parse_header(jws: &Jws<'_>) -> Result<RawHeader, AuthError> {
    let bytes = b64url(jws.header, "header is not base64url")?;
    let header: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))?;
    if header.crit.is_some() {
        return Err(malformed(
            "header names critical extensions (crit) this verifier does not understand",
        ));
    }
    Ok(header)
}

/// Which registered claims the payload holds (a `null` counts as absent).
#[derive(Deserialize)]
struct Present {
    exp: Option<serde::de::IgnoredAny>,
    iss: Option<serde::de::IgnoredAny>,
    aud: Option<serde::de::IgnoredAny>,
    sub: Option<serde::de::IgnoredAny>,
}

fn claims_not_decodable() -> AuthError {
    malformed("claims are not decodable")
}

fn missing_claim() -> AuthError {
    AuthError::new(
        FailureReason::MissingClaim,
        "a required claim (exp, iss, aud, sub) is missing",
    )
}

/// The payload's claims; with `required`, a missing `exp`, `iss`, `aud` or `sub` is reported as
/// such before the claims' types are checked.
fn parse_claims(jws: &Jws<'_>, required: bool) -> Result<Claims, AuthError> {
    let bytes = b64url(jws.payload, "payload is not base64url")?;
    if required {
        let present: Present =
            serde_json::from_slice(&bytes).map_err(|_| claims_not_decodable())?;
        if present.exp.is_none()
            || present.iss.is_none()
            || present.aud.is_none()
            || present.sub.is_none()
        {
            return Err(missing_claim());
        }
    }
    serde_json::from_slice(&bytes).map_err(|_| claims_not_decodable())
}

/// `exp` and `nbf` against the clock, with `leeway_s` seconds of leeway (on the first
/// verification and on every reuse of a remembered one).
fn check_times(claims: &Claims, leeway_s: u64) -> Result<(), AuthError> {
    let now = crate::mint::now_epoch();
    let leeway = i64::try_from(leeway_s).unwrap_or(i64::MAX);
    if claims.exp < now.saturating_sub(leeway) {
        return Err(AuthError::new(FailureReason::Expired, "exp is in the past"));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(leeway))
    {
        return Err(AuthError::new(
            FailureReason::NotYetValid,
            "nbf is in the future",
        ));
    }
    Ok(())
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

/// Decode a token's claims **without verifying** it (for recording `unverified_decoded`
/// provenance only; never for an authorization decision).
pub fn decode_unverified(token: &SecretString) -> Result<ClaimSummary, AuthError> {
    let jws = split_jws(token.expose_secret())?;
    let header = parse_header(&jws)?;
    let claims = parse_claims(&jws, false)?;
    Ok(claims.summary(header.kid.as_deref(), header.alg.as_deref()))
}

/// A token that verified once, remembered by the SHA-256 of its exact bytes.
#[derive(Debug, Clone)]
struct Remembered {
    token: VerifiedToken,
    at: std::time::Instant,
}

/// Most tokens remembered; beyond that, expired entries are dropped (then everything).
const REMEMBER_MAX: usize = 10_000;
/// How long a verification is reused (also bounded by the token's own `exp`).
const REMEMBER_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Verifies tokens of one issuer.
///
/// A token that verified is remembered for up to 60 s (keyed by the SHA-256 of its exact bytes,
/// so any change to it is a different token): presenting it again costs a hash and a lookup
/// instead of an RSA verification. Time-based claims (`exp`, `nbf`) are checked again on every
/// use.
#[derive(Debug, Clone)]
pub struct Verifier {
    policy: IssuerPolicy,
    jwks: Arc<JwksCache>,
    remembered: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Remembered>>>,
}

impl Verifier {
    /// A verifier for `policy` using `jwks`. Algorithms other than RS256/ES256 are removed from
    /// the policy: they are never acceptable for tokens verified with public keys.
    pub fn new(mut policy: IssuerPolicy, jwks: Arc<JwksCache>) -> Self {
        policy
            .algorithms
            .retain(|a| matches!(a, Algorithm::RS256 | Algorithm::ES256));
        Self {
            policy,
            jwks,
            remembered: Arc::default(),
        }
    }

    fn digest(raw: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    fn recall(&self, key: &[u8; 32]) -> Option<Result<VerifiedToken, AuthError>> {
        let hit = self
            .remembered
            .lock()
            .ok()?
            .get(key)
            .filter(|r| r.at.elapsed() < REMEMBER_FOR)
            .map(|r| r.token.clone())?;
        Some(check_times(&hit.claims, self.policy.leeway_s).map(|()| hit))
    }

    fn remember(&self, key: [u8; 32], token: &VerifiedToken) {
        if let Ok(mut m) = self.remembered.lock() {
            if m.len() >= REMEMBER_MAX {
                let now = crate::mint::now_epoch();
                m.retain(|_, r| r.at.elapsed() < REMEMBER_FOR && r.token.claims.exp > now);
                if m.len() >= REMEMBER_MAX {
                    m.clear();
                }
            }
            m.insert(
                key,
                Remembered {
                    token: token.clone(),
                    at: std::time::Instant::now(),
                },
            );
        }
    }

    /// The JWKS cache.
    pub fn jwks(&self) -> &Arc<JwksCache> {
        &self.jwks
    }

    /// The policy.
    pub fn policy(&self) -> &IssuerPolicy {
        &self.policy
    }

    /// Verify `token`.
    #[instrument(skip_all, level = "debug", name = "jwt.verify")]
    pub async fn verify(&self, token: &SecretString) -> Result<VerifiedToken, AuthError> {
        let raw = token.expose_secret();
        let key = Self::digest(raw);
        if let Some(result) = self.recall(&key) {
            return result;
        }
        let verified = self.verify_fully(raw).await?;
        self.remember(key, &verified);
        Ok(verified)
    }

    /// Verify without consulting or filling the memory of verified tokens (benchmarks, tests).
    pub async fn verify_uncached(&self, token: &SecretString) -> Result<VerifiedToken, AuthError> {
        self.verify_fully(token.expose_secret()).await
    }

    async fn verify_fully(&self, raw: &str) -> Result<VerifiedToken, AuthError> {
        if raw.is_empty() {
            return Err(AuthError::new(FailureReason::MissingToken, "empty token"));
        }
        let jws = split_jws(raw)?;
        let header = parse_header(&jws)?;
        let alg_text = header.alg.unwrap_or_default();
        let alg = match alg_text.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => {
                return Err(AuthError::new(
                    FailureReason::DisallowedAlg,
                    "algorithm is not an allowed asymmetric algorithm",
                ));
            }
        };
        if !self.policy.algorithms.contains(&alg) {
            return Err(AuthError::new(
                FailureReason::DisallowedAlg,
                format!("issuer is not pinned to {}", alg_name(alg)),
            ));
        }
        let Some(kid) = header.kid.filter(|k| !k.is_empty()) else {
            return Err(malformed("header has no kid"));
        };
        let key = self.jwks.key(&kid).await?;
        if key.alg != alg {
            return Err(AuthError::new(
                FailureReason::DisallowedAlg,
                "header alg does not match the key's algorithm",
            ));
        }
        let signature = b64url(jws.signature, "signature is not base64url")?;
        key.key
            .verify_sig(jws.signing_input.as_bytes(), &signature)
            .map_err(|_| {
                AuthError::new(FailureReason::BadSignature, "signature does not verify")
            })?;
        let claims = parse_claims(&jws, true)?;
        self.validate(&claims)?;
        Ok(VerifiedToken {
            claims,
            kid,
            alg: alg_name(alg),
        })
    }

    /// The claim checks, after the signature and the required claims: `exp`/`nbf` with leeway,
    /// `iss`, `aud`, then the allowed clients.
    fn validate(&self, claims: &Claims) -> Result<(), AuthError> {
        if claims.exp < 0 || claims.nbf.is_some_and(|n| n < 0) {
            return Err(malformed("exp or nbf is not a time"));
        }
        check_times(claims, self.policy.leeway_s)?;
        if claims.iss != self.policy.issuer {
            return Err(AuthError::new(
                FailureReason::WrongIssuer,
                "iss is not the expected issuer",
            ));
        }
        let audiences = claims.aud.to_vec();
        if !self.policy.audiences.is_empty()
            && !audiences.iter().any(|a| self.policy.audiences.contains(a))
        {
            return Err(AuthError::new(
                FailureReason::WrongAudience,
                "aud does not include the expected audience",
            ));
        }
        if claims.sub.is_empty() || claims.iss.is_empty() || audiences.is_empty() {
            return Err(missing_claim());
        }
        if !self.policy.allowed_clients.is_empty() {
            let ok = claims
                .client_id
                .as_ref()
                .is_some_and(|c| self.policy.allowed_clients.contains(c));
            if !ok {
                return Err(AuthError::new(
                    FailureReason::WrongClient,
                    "client_id is not an allowed client",
                ));
            }
        }
        Ok(())
    }
}

/// The token of an `Authorization: Bearer <token>` value. `None` when the scheme is not Bearer or
/// the token is empty.
pub fn bearer_token(value: &str) -> Option<SecretString> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_owned()))
}
