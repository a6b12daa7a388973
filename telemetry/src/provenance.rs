//! What a hop knows about the credential it saw, reduced to what is safe to record.

use std::sync::OnceLock;

use secrecy::SecretString;
use serde::Serialize;

use crate::attrs::CredentialKind;
use crate::fingerprint;

/// Environment variable: when `1`/`true`, subjects are recorded as pseudonyms.
pub const PSEUDONYMIZE_ENV: &str = "TOKENTRAIL_PSEUDONYMIZE_SUBJECT";

/// Claims safe to record. Built by the auth crate from a token it verified (or, explicitly, only
/// decoded); never from raw request input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClaimSummary {
    /// `iss`.
    pub issuer: Option<String>,
    /// `sub`.
    pub subject: Option<String>,
    /// `aud` (one or more).
    pub audience: Vec<String>,
    /// `client_id` (or `azp`).
    pub client_id: Option<String>,
    /// Scopes from `scope`/`scp`.
    pub scopes: Vec<String>,
    /// `exp` (epoch seconds).
    pub expires_at: Option<i64>,
    /// Header `kid`.
    pub kid: Option<String>,
    /// Header `alg`.
    pub alg: Option<String>,
}

/// How much the hop checked before recording claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// Signature and claims verified against the issuer's keys.
    Verified,
    /// Claims decoded without verifying the signature (e.g. a hop that forwards the token and
    /// leaves verification to the next one). Recorded as such.
    UnverifiedDecoded,
    /// Nothing about the token is known beyond its fingerprint (missing, malformed, rejected).
    Opaque,
}

impl Verification {
    /// Attribute spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verification::Verified => "verified",
            Verification::UnverifiedDecoded => "unverified_decoded",
            Verification::Opaque => "opaque",
        }
    }
}

/// Redacted provenance of a credential at one hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialProvenance {
    /// Kind of credential.
    pub kind: CredentialKind,
    /// Keyed fingerprint of the whole token (`None` when no token was presented).
    pub fingerprint: Option<String>,
    /// What was checked.
    pub verification: Verification,
    /// Claims, when decoded or verified.
    pub claims: Option<ClaimSummary>,
}

fn pseudonymize() -> bool {
    static P: OnceLock<bool> = OnceLock::new();
    *P.get_or_init(|| {
        matches!(
            std::env::var(PSEUDONYMIZE_ENV).as_deref(),
            Ok("1") | Ok("true")
        )
    })
}

impl CredentialProvenance {
    /// From a token whose signature and claims were verified.
    pub fn verified(kind: CredentialKind, token: &SecretString, claims: ClaimSummary) -> Self {
        Self::with_claims(kind, token, claims, Verification::Verified)
    }

    /// From a token that was only decoded (signature not checked at this hop).
    pub fn unverified_decoded(
        kind: CredentialKind,
        token: &SecretString,
        claims: ClaimSummary,
    ) -> Self {
        Self::with_claims(kind, token, claims, Verification::UnverifiedDecoded)
    }

    /// Only the fingerprint: a token was presented but nothing in it is trusted.
    pub fn opaque(kind: CredentialKind, token: &SecretString) -> Self {
        Self {
            kind,
            fingerprint: Some(fingerprint::fingerprint(token)),
            verification: Verification::Opaque,
            claims: None,
        }
    }

    /// No credential was presented.
    pub fn absent() -> Self {
        Self {
            kind: CredentialKind::None,
            fingerprint: None,
            verification: Verification::Opaque,
            claims: None,
        }
    }

    fn with_claims(
        kind: CredentialKind,
        token: &SecretString,
        mut claims: ClaimSummary,
        verification: Verification,
    ) -> Self {
        if pseudonymize() {
            claims.subject = claims.subject.map(|s| fingerprint::pseudonym(&s));
        }
        Self {
            kind,
            fingerprint: Some(fingerprint::fingerprint(token)),
            verification,
            claims: Some(claims),
        }
    }

    /// The subject, if known.
    pub fn subject(&self) -> Option<&str> {
        self.claims.as_ref().and_then(|c| c.subject.as_deref())
    }
}
