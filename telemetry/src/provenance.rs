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

static PSEUDONYMIZE: OnceLock<bool> = OnceLock::new();

/// Whether subjects are pseudonymised in this process: as [`follow_pseudonymization`] set it,
/// else from `TOKENTRAIL_PSEUDONYMIZE_SUBJECT`. A value that is not a switch (refused when the
/// hop starts) pseudonymises: what was asked for is unclear, and the pseudonym is the safer side.
pub fn pseudonymize() -> bool {
    *PSEUDONYMIZE.get_or_init(|| {
        crate::init::switch_from_env(PSEUDONYMIZE_ENV)
            .map(|on| on.unwrap_or(false))
            .unwrap_or(true)
    })
}

/// Pseudonymise subjects in this process as a running stack does (`on`), so the app's spans
/// record the user as the hops do. Refused when this process's own
/// `TOKENTRAIL_PSEUDONYMIZE_SUBJECT` (or an earlier call) says otherwise.
pub fn follow_pseudonymization(on: bool) -> Result<(), crate::TelemetryError> {
    let own = crate::init::switch_from_env(PSEUDONYMIZE_ENV)?;
    let refuse = |reason: &str| {
        Err(crate::TelemetryError::Setting {
            var: PSEUDONYMIZE_ENV,
            reason: reason.to_owned(),
        })
    };
    if own.is_some_and(|own| own != on) {
        return refuse(if on {
            "off here, on in the running stack: the app would record subjects in clear while \
             the hops record pseudonyms; unset it here"
        } else {
            "on here, off in the running stack, which records subjects in clear: restart it \
             with the switch on, or unset it here"
        });
    }
    if *PSEUDONYMIZE.get_or_init(|| on) != on {
        return refuse(
            "the running stacks differ: start each `tokentrail up` with the same switch",
        );
    }
    Ok(())
}

/// How a subject is recorded: itself, or its keyed pseudonym when subjects are pseudonymised.
pub fn recorded_subject(subject: &str) -> std::borrow::Cow<'_, str> {
    if pseudonymize() {
        std::borrow::Cow::Owned(fingerprint::pseudonym(subject))
    } else {
        std::borrow::Cow::Borrowed(subject)
    }
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
