//! JWT claims as tokentrail's IdP issues them and its verifiers read them.

use serde::{Deserialize, Serialize};
use telemetry::ClaimSummary;

/// `aud` may be one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Default for Audience {
    fn default() -> Self {
        Audience::Many(Vec::new())
    }
}

impl Audience {
    /// As a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Audience::One(a) => vec![a.clone()],
            Audience::Many(v) => v.clone(),
        }
    }
}

/// The claims tokentrail reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer. (Defaults let the verifier report a missing claim as `missing_claim`.)
    #[serde(default)]
    pub iss: String,
    /// Subject.
    #[serde(default)]
    pub sub: String,
    /// Audience.
    #[serde(default)]
    pub aud: Audience,
    /// Expiry (epoch seconds).
    #[serde(default)]
    pub exp: i64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// OAuth client that obtained the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// `access` for access tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_use: Option<String>,
}

impl Claims {
    /// Scopes as a list.
    pub fn scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Whether every scope in `required` is granted.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        let granted = self.scopes();
        required.iter().all(|r| granted.contains(r))
    }

    /// The summary telemetry may record.
    pub fn summary(&self, kid: Option<&str>, alg: Option<&str>) -> ClaimSummary {
        ClaimSummary {
            issuer: Some(self.iss.clone()),
            subject: Some(self.sub.clone()),
            audience: self.aud.to_vec(),
            client_id: self.client_id.clone(),
            scopes: self.scopes(),
            expires_at: Some(self.exp),
            kid: kid.map(str::to_owned),
            alg: alg.map(str::to_owned),
        }
    }
}
