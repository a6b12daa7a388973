//! Interceptor configuration from the environment (Lambda style).

use std::time::Duration;

use auth::{IssuerPolicy, JwksCache, JwksConfig, Verifier};

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is missing.
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    /// A variable is invalid.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// Variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// Interceptor configuration.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// Header carrying the user's JWT (matched case-insensitively), default `X-Custom-UserToken`.
    pub user_token_header: String,
    /// IdP issuer.
    pub issuer: String,
    /// OIDC discovery URL.
    pub discovery_url: String,
    /// Audiences to enforce here; empty leaves the audience to the target (default).
    pub audiences: Vec<String>,
    /// Clock leeway.
    pub leeway_s: u64,
}

fn var(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(ConfigError::Missing(name))
}

impl InterceptorConfig {
    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let issuer = var("TOKENTRAIL_ISSUER")?;
        let discovery_url = std::env::var("TOKENTRAIL_DISCOVERY_URL")
            .unwrap_or_else(|_| format!("{issuer}/.well-known/openid-configuration"));
        let leeway_s = match std::env::var("TOKENTRAIL_LEEWAY_S") {
            Ok(v) => v.parse().map_err(|_| ConfigError::Invalid {
                name: "TOKENTRAIL_LEEWAY_S",
                reason: format!("`{v}` is not a number of seconds"),
            })?,
            Err(_) => 30,
        };
        Ok(Self {
            user_token_header: std::env::var("TOKENTRAIL_USER_TOKEN_HEADER")
                .unwrap_or_else(|_| "X-Custom-UserToken".into()),
            issuer,
            discovery_url,
            audiences: std::env::var("TOKENTRAIL_INTERCEPTOR_AUDIENCES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            leeway_s,
        })
    }

    /// The verifier for user tokens.
    pub fn verifier(&self) -> Result<Verifier, ConfigError> {
        let mut jwks = JwksConfig::new(self.discovery_url.clone());
        jwks.http_timeout = Duration::from_secs(2);
        let cache = JwksCache::new(jwks).map_err(|e| ConfigError::Invalid {
            name: "TOKENTRAIL_DISCOVERY_URL",
            reason: e.to_string(),
        })?;
        let mut policy = IssuerPolicy::new(self.issuer.clone(), self.audiences.clone());
        policy.leeway_s = self.leeway_s;
        Ok(Verifier::new(policy, cache))
    }
}
