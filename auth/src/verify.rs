//! JWT verification pinned to asymmetric algorithms per issuer.
//!
//! Order of checks: shape → header `alg` in the issuer's allowlist (never `none`, never HS*) →
//! `kid` present → key for `kid` (JWKS) → key type matches `alg` → signature → `exp`/`nbf` with
//! leeway → `iss` → `aud` → required claims (`exp`, `iss`, `aud`, `sub`) → allowed clients.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
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
}

fn parse_header(token: &str) -> Result<RawHeader, AuthError> {
    let malformed = |d: &str| AuthError::new(FailureReason::Malformed, d);
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a compact JWS (three dot-separated parts)"));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))
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
    let header = parse_header(token.expose_secret())?;
    let claims: Claims = jsonwebtoken::dangerous::insecure_decode(token.expose_secret())
        .map(|d| d.claims)
        .map_err(|_| AuthError::new(FailureReason::Malformed, "claims are not decodable"))?;
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
        let now = crate::mint::now_epoch();
        let leeway = self.policy.leeway_s as i64;
        if hit.claims.exp + leeway < now {
            return Some(Err(AuthError::new(
                FailureReason::Expired,
                "exp is in the past",
            )));
        }
        if hit.claims.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Some(Err(AuthError::new(
                FailureReason::NotYetValid,
                "nbf is in the future",
            )));
        }
        Some(Ok(hit))
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
        let header = parse_header(raw)?;
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
            return Err(AuthError::new(
                FailureReason::Malformed,
                "header has no kid",
            ));
        };
        let key = self.jwks.key(&kid).await?;
        if key.alg != alg {
            return Err(AuthError::new(
                FailureReason::DisallowedAlg,
                "header alg does not match the key's algorithm",
            ));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = self.policy.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.policy.issuer]);
        if self.policy.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.policy.audiences);
        }
        validation.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        let data = jsonwebtoken::decode::<Claims>(raw, &key.key, &validation).map_err(|e| {
            let (reason, detail) = match e.kind() {
                ErrorKind::InvalidSignature => {
                    (FailureReason::BadSignature, "signature does not verify")
                }
                ErrorKind::ExpiredSignature => (FailureReason::Expired, "exp is in the past"),
                ErrorKind::ImmatureSignature => {
                    (FailureReason::NotYetValid, "nbf is in the future")
                }
                ErrorKind::InvalidIssuer => {
                    (FailureReason::WrongIssuer, "iss is not the expected issuer")
                }
                ErrorKind::InvalidAudience => (
                    FailureReason::WrongAudience,
                    "aud does not include the expected audience",
                ),
                ErrorKind::MissingRequiredClaim(_) => (
                    FailureReason::MissingClaim,
                    "a required claim (exp, iss, aud, sub) is missing",
                ),
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    (FailureReason::DisallowedAlg, "algorithm not allowed")
                }
                _ => (FailureReason::Malformed, "token could not be decoded"),
            };
            AuthError::new(reason, detail)
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.iss.is_empty() || claims.aud.to_vec().is_empty() {
            return Err(AuthError::new(
                FailureReason::MissingClaim,
                "a required claim (exp, iss, aud, sub) is missing",
            ));
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
        Ok(VerifiedToken {
            claims,
            kid,
            alg: alg_name(alg),
        })
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
