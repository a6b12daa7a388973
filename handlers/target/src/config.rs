//! Target configuration from the environment.
//!
//! `TOKENTRAIL_TARGET_ACCEPT` lists the credential kinds accepted: `user` (user JWTs with
//! audience `TOKENTRAIL_TARGET_AUDIENCE`, passthrough) and/or `service` (service tokens with
//! audience `TOKENTRAIL_TARGET_SERVICE_AUDIENCE` from a client in
//! `TOKENTRAIL_TARGET_SERVICE_CLIENTS`, broker). Default: `service` when `TOKENTRAIL_PATTERN=broker`,
//! else `user`.

use auth::{IssuerPolicy, JwksCache, JwksConfig, Verifier};
pub use lambda_front::env::ConfigError;
use lambda_front::env::{list, opt, pattern, required};
use telemetry::Pattern;

/// Target configuration.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// IdP issuer.
    pub issuer: String,
    /// Discovery URL.
    pub discovery_url: String,
    /// The audience user tokens must carry (default `target-api`).
    pub audience: String,
    /// The audience service tokens carry (default `target-api-service`).
    pub service_audience: String,
    /// Clients whose service tokens are accepted (default `orders-service`).
    pub service_clients: Vec<String>,
    /// Accept user JWTs.
    pub accept_user: bool,
    /// Accept service tokens.
    pub accept_service: bool,
    /// Scope required to read orders.
    pub read_scope: String,
    /// Pattern served.
    pub pattern: Pattern,
}

impl TargetConfig {
    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let issuer = required("TOKENTRAIL_ISSUER")?;
        let pattern = pattern()?;
        let mut accept = list("TOKENTRAIL_TARGET_ACCEPT");
        if accept.is_empty() {
            accept.push(match pattern {
                Pattern::Passthrough => "user".into(),
                Pattern::Broker => "service".into(),
            });
        }
        if let Some(bad) = accept.iter().find(|a| *a != "user" && *a != "service") {
            return Err(ConfigError::Invalid {
                name: "TOKENTRAIL_TARGET_ACCEPT",
                reason: format!("`{bad}`: expected `user`, `service` or both"),
            });
        }
        let mut service_clients = list("TOKENTRAIL_TARGET_SERVICE_CLIENTS");
        if service_clients.is_empty() {
            service_clients.push("orders-service".into());
        }
        Ok(Self {
            discovery_url: opt("TOKENTRAIL_DISCOVERY_URL")
                .unwrap_or_else(|| format!("{issuer}/.well-known/openid-configuration")),
            issuer,
            audience: opt("TOKENTRAIL_TARGET_AUDIENCE").unwrap_or_else(|| "target-api".into()),
            service_audience: opt("TOKENTRAIL_TARGET_SERVICE_AUDIENCE")
                .unwrap_or_else(|| "target-api-service".into()),
            service_clients,
            accept_user: accept.iter().any(|a| a == "user"),
            accept_service: accept.iter().any(|a| a == "service"),
            read_scope: opt("TOKENTRAIL_TARGET_READ_SCOPE").unwrap_or_else(|| "orders:read".into()),
            pattern,
        })
    }

    /// Build the dependencies (one JWKS cache shared by both verifiers).
    pub fn deps(&self) -> Result<crate::core::Deps, ConfigError> {
        let jwks = JwksCache::new(JwksConfig::new(self.discovery_url.clone())).map_err(|e| {
            ConfigError::Invalid {
                name: "TOKENTRAIL_DISCOVERY_URL",
                reason: e.to_string(),
            }
        })?;
        let user = self.accept_user.then(|| {
            Verifier::new(
                IssuerPolicy::new(self.issuer.clone(), vec![self.audience.clone()]),
                jwks.clone(),
            )
        });
        let service = self.accept_service.then(|| {
            let mut policy =
                IssuerPolicy::new(self.issuer.clone(), vec![self.service_audience.clone()]);
            policy.allowed_clients = self.service_clients.clone();
            Verifier::new(policy, jwks.clone())
        });
        Ok(crate::core::Deps {
            user,
            service,
            service_audience: self.service_audience.clone(),
            read_scope: self.read_scope.clone(),
            pattern: self.pattern,
            orders: crate::core::seed_orders(),
        })
    }
}
