//! Target configuration from the environment.

use auth::{IssuerPolicy, JwksCache, JwksConfig, Verifier};

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is missing.
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    /// The verifier could not be built.
    #[error("cannot build the verifier: {0}")]
    Verifier(String),
}

/// Target configuration.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// IdP issuer.
    pub issuer: String,
    /// Discovery URL.
    pub discovery_url: String,
    /// The audience user tokens must carry (`TOKENTRAIL_TARGET_AUDIENCE`, default `target-api`).
    pub audience: String,
    /// Scope required to read orders.
    pub read_scope: String,
}

impl TargetConfig {
    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let issuer = std::env::var("TOKENTRAIL_ISSUER")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::Missing("TOKENTRAIL_ISSUER"))?;
        Ok(Self {
            discovery_url: std::env::var("TOKENTRAIL_DISCOVERY_URL")
                .unwrap_or_else(|_| format!("{issuer}/.well-known/openid-configuration")),
            issuer,
            audience: std::env::var("TOKENTRAIL_TARGET_AUDIENCE")
                .unwrap_or_else(|_| "target-api".into()),
            read_scope: std::env::var("TOKENTRAIL_TARGET_READ_SCOPE")
                .unwrap_or_else(|_| "orders:read".into()),
        })
    }

    /// Build the dependencies.
    pub fn deps(&self) -> Result<crate::core::Deps, ConfigError> {
        let jwks = JwksCache::new(JwksConfig::new(self.discovery_url.clone()))
            .map_err(|e| ConfigError::Verifier(e.to_string()))?;
        let policy = IssuerPolicy::new(self.issuer.clone(), vec![self.audience.clone()]);
        Ok(crate::core::Deps {
            verifier: Verifier::new(policy, jwks),
            read_scope: self.read_scope.clone(),
            orders: crate::core::seed_orders(),
        })
    }
}
