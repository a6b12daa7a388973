//! Broker configuration from the environment (Lambda style).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TOKENTRAIL_BROKER_POLICY` | required | path of the policy TOML ([`crate::policy`]) |
//! | `TOKENTRAIL_BROKER_POLICY_TOML` | | the policy TOML itself, instead of a path (a Lambda's environment) |
//! | `TOKENTRAIL_BROKER_ID` | `tokentrail-broker` | value callers bind their proof to |
//! | `TOKENTRAIL_STS_ENDPOINT` | `https://sts.$AWS_REGION.amazonaws.com` | the only STS endpoint a proof may target |
//! | `TOKENTRAIL_TOKEN_ENDPOINT` | `$TOKENTRAIL_ISSUER/token` | IdP token endpoint |
//! | `TOKENTRAIL_BROKER_PROOF_MAX_AGE_S` | `60` | oldest accepted proof |
//! | `TOKENTRAIL_BROKER_SECRET_TTL_S` | `300` | secret cache lifetime |
//! | `TOKENTRAIL_BROKER_UPSTREAM_TIMEOUT_MS` | `2000` | bound on STS and IdP calls |
//! | `TOKENTRAIL_SECRETS` | `secretsmanager` | or `file:PATH` (local JSON, the demo) |
//! | `TOKENTRAIL_FAULT_DELAY_MS` | `0` | demo fault: delay every answer |
//!
//! Secrets Manager is reached with the standard AWS configuration (`AWS_REGION`, credentials,
//! `AWS_ENDPOINT_URL_SECRETS_MANAGER` / `AWS_ENDPOINT_URL` for emulators).

use std::sync::Arc;
use std::time::Duration;

use auth::iam::ProofPolicy;

use crate::core::BrokerSettings;
use crate::policy::Policy;
use crate::secrets::{FileSecrets, SecretStore, SecretsManager};

pub use lambda_front::env::ConfigError;
use lambda_front::env::{number, opt, positive, region, sts_endpoint};

/// Settings and secret store from the environment.
pub async fn from_env() -> Result<(BrokerSettings, Arc<dyn SecretStore>), ConfigError> {
    let (name, text) = match (
        opt("TOKENTRAIL_BROKER_POLICY"),
        opt("TOKENTRAIL_BROKER_POLICY_TOML"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                name: "TOKENTRAIL_BROKER_POLICY_TOML",
                reason: "set either TOKENTRAIL_BROKER_POLICY (a file) or \
                         TOKENTRAIL_BROKER_POLICY_TOML (the policy itself), not both"
                    .into(),
            });
        }
        (Some(path), None) => (
            "TOKENTRAIL_BROKER_POLICY",
            std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                name: "TOKENTRAIL_BROKER_POLICY",
                reason: format!("cannot read {path}: {e}"),
            })?,
        ),
        (None, Some(text)) => ("TOKENTRAIL_BROKER_POLICY_TOML", text),
        (None, None) => return Err(ConfigError::Missing("TOKENTRAIL_BROKER_POLICY")),
    };
    let policy = Policy::from_toml(&text).map_err(|e| ConfigError::Invalid {
        name,
        reason: e.to_string(),
    })?;
    let token_endpoint = match opt("TOKENTRAIL_TOKEN_ENDPOINT") {
        Some(t) => t,
        None => format!(
            "{}/token",
            opt("TOKENTRAIL_ISSUER")
                .ok_or(ConfigError::Missing("TOKENTRAIL_TOKEN_ENDPOINT"))?
                .trim_end_matches('/')
        ),
    };
    let sts = sts_endpoint();
    url_check("TOKENTRAIL_STS_ENDPOINT", &sts)?;
    let settings = BrokerSettings {
        proof: ProofPolicy {
            sts_endpoint: sts,
            broker_id: opt("TOKENTRAIL_BROKER_ID").unwrap_or_else(|| "tokentrail-broker".into()),
            max_age: Duration::from_secs(positive(
                "TOKENTRAIL_BROKER_PROOF_MAX_AGE_S",
                60,
                "refuse every caller's proof as too old",
            )?),
            max_skew: Duration::from_secs(30),
        },
        policy,
        token_endpoint,
        upstream_timeout: Duration::from_millis(positive(
            "TOKENTRAIL_BROKER_UPSTREAM_TIMEOUT_MS",
            2000,
            "time out every call to STS, the secret store and the IdP",
        )?),
        secret_ttl: Duration::from_secs(number("TOKENTRAIL_BROKER_SECRET_TTL_S", 300)?),
        fault_delay: Duration::from_millis(number("TOKENTRAIL_FAULT_DELAY_MS", 0)?),
    };
    let store: Arc<dyn SecretStore> = match opt("TOKENTRAIL_SECRETS").as_deref() {
        None | Some("secretsmanager") => {
            let config = telemetry::aws_http::config_loader()
                .region(aws_config::Region::new(region()))
                .load()
                .await;
            Arc::new(SecretsManager::new(&config))
        }
        Some(other) => match other.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Arc::new(FileSecrets::new(path)),
            _ => {
                return Err(ConfigError::Invalid {
                    name: "TOKENTRAIL_SECRETS",
                    reason: format!("`{other}`: expected `secretsmanager` or `file:PATH`"),
                });
            }
        },
    };
    Ok((settings, store))
}

fn url_check(name: &'static str, value: &str) -> Result<(), ConfigError> {
    match value.parse::<http::Uri>() {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => Ok(()),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!("`{value}` is not an absolute URL"),
        }),
    }
}
