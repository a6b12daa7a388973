//! Interceptor configuration from the environment (Lambda style).
//!
//! Both modes: `TOKENTRAIL_ISSUER`, `TOKENTRAIL_DISCOVERY_URL`, `TOKENTRAIL_LEEWAY_S` (30),
//! `TOKENTRAIL_USER_TOKEN_HEADER` (`X-Custom-UserToken`), `TOKENTRAIL_INTERCEPTOR_AUDIENCES`,
//! `TOKENTRAIL_INTERCEPTOR_REQUIRED_SCOPES`.
//! `TOKENTRAIL_PATTERN=broker` switches to broker mode, which also needs `TOKENTRAIL_BROKER_URL`,
//! `TOKENTRAIL_BROKER_ROLE_ARN` and takes `TOKENTRAIL_BROKER_EXTERNAL_ID`, `TOKENTRAIL_BROKER_ID`
//! (`tokentrail-broker`), `TOKENTRAIL_BROKER_CREDENTIAL`, `TOKENTRAIL_BROKER_SESSION_S` (3600),
//! `TOKENTRAIL_BROKER_TIMEOUT_MS` (2000), `TOKENTRAIL_BROKER_SIGV4` (unset: the broker call is
//! not signed; `lambda` for a function URL with `AuthType: AWS_IAM`, `execute-api` for API
//! Gateway: signed with the assumed role's credentials), `TOKENTRAIL_STS_ENDPOINT`, `AWS_REGION`;
//! its own credentials come from the standard AWS configuration (the Lambda execution role).

use std::time::Duration;

use auth::{IssuerPolicy, JwksCache, JwksConfig, Verifier};
pub use lambda_front::env::ConfigError;
use lambda_front::env::{list, number, opt, pattern, positive, region, required, sts_endpoint};
use telemetry::Pattern;

use crate::broker_client::BrokerSettings;

/// Interceptor configuration.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// Header carrying the user's JWT (matched case-insensitively), default `X-Custom-UserToken`.
    pub user_token_header: String,
    /// IdP issuer.
    pub issuer: String,
    /// OIDC discovery URL.
    pub discovery_url: String,
    /// Audiences to enforce here; empty leaves the audience to the target (passthrough only).
    pub audiences: Vec<String>,
    /// Clock leeway.
    pub leeway_s: u64,
    /// Scopes the user token must carry (`TOKENTRAIL_INTERCEPTOR_REQUIRED_SCOPES`); in broker
    /// mode this is the user's authorization, since the target only sees the service account.
    pub required_scopes: Vec<String>,
    /// Broker mode when set.
    pub broker: Option<BrokerSettings>,
}

/// The longest clock leeway accepted (`TOKENTRAIL_LEEWAY_S`), in seconds.
pub const MAX_LEEWAY_S: u64 = 300;

/// `TOKENTRAIL_LEEWAY_S` within bounds: a leeway tolerates clock skew between the IdP and this
/// hop; one of hours would accept tokens that expired hours ago.
fn leeway(seconds: u64) -> Result<u64, ConfigError> {
    if seconds > MAX_LEEWAY_S {
        return Err(ConfigError::Invalid {
            name: "TOKENTRAIL_LEEWAY_S",
            reason: format!(
                "{seconds} s is more than the {MAX_LEEWAY_S} s allowed: a leeway covers clock \
                 skew, and this one would accept tokens {seconds} s after they expired"
            ),
        });
    }
    Ok(seconds)
}

impl InterceptorConfig {
    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let issuer = required("TOKENTRAIL_ISSUER")?;
        let pattern = pattern()?;
        let audiences = list("TOKENTRAIL_INTERCEPTOR_AUDIENCES");
        let broker = match pattern {
            Pattern::Passthrough => None,
            Pattern::Broker => {
                if audiences.is_empty() {
                    return Err(ConfigError::Invalid {
                        name: "TOKENTRAIL_INTERCEPTOR_AUDIENCES",
                        reason: "broker mode needs the user token's audience: the target never \
                                 sees the user's token, so the interceptor must check it"
                            .into(),
                    });
                }
                Some(BrokerSettings {
                    broker_url: required("TOKENTRAIL_BROKER_URL")?,
                    broker_id: opt("TOKENTRAIL_BROKER_ID")
                        .unwrap_or_else(|| "tokentrail-broker".into()),
                    credential: opt("TOKENTRAIL_BROKER_CREDENTIAL"),
                    role_arn: required("TOKENTRAIL_BROKER_ROLE_ARN")?,
                    external_id: opt("TOKENTRAIL_BROKER_EXTERNAL_ID"),
                    session_name: opt("TOKENTRAIL_BROKER_SESSION_NAME")
                        .unwrap_or_else(|| "tokentrail-interceptor".into()),
                    session_duration: Duration::from_secs(number(
                        "TOKENTRAIL_BROKER_SESSION_S",
                        3600,
                    )?),
                    sts_endpoint: sts_endpoint(),
                    region: region(),
                    timeout: Duration::from_millis(positive(
                        "TOKENTRAIL_BROKER_TIMEOUT_MS",
                        2000,
                        "time out every call to the broker",
                    )?),
                    sign_service: sign_service(opt("TOKENTRAIL_BROKER_SIGV4"))?,
                })
            }
        };
        Ok(Self {
            user_token_header: opt("TOKENTRAIL_USER_TOKEN_HEADER")
                .unwrap_or_else(|| "X-Custom-UserToken".into()),
            discovery_url: opt("TOKENTRAIL_DISCOVERY_URL")
                .unwrap_or_else(|| format!("{issuer}/.well-known/openid-configuration")),
            issuer,
            audiences,
            leeway_s: leeway(number("TOKENTRAIL_LEEWAY_S", 30)?)?,
            required_scopes: list("TOKENTRAIL_INTERCEPTOR_REQUIRED_SCOPES"),
            broker,
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

/// `TOKENTRAIL_BROKER_SIGV4`: the service an IAM-authenticated broker endpoint checks signatures
/// for. Anything else would be signed for a service no endpoint checks, and every call refused.
fn sign_service(value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(None),
        Some(s @ ("lambda" | "execute-api")) => Ok(Some(s.to_owned())),
        Some(other) => Err(ConfigError::Invalid {
            name: "TOKENTRAIL_BROKER_SIGV4",
            reason: format!(
                "`{other}`: expected `lambda` (a function URL with AuthType AWS_IAM) or \
                 `execute-api` (API Gateway with IAM authorization); unset sends the call unsigned"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leeway_is_bounded() {
        for ok in [0, 30, MAX_LEEWAY_S] {
            assert_eq!(leeway(ok).expect("accepted"), ok);
        }
        let e = leeway(MAX_LEEWAY_S + 1).expect_err("refused").to_string();
        assert!(e.contains("TOKENTRAIL_LEEWAY_S"), "{e}");
        assert!(e.contains("301 s is more than the 300 s allowed"), "{e}");
    }

    #[test]
    fn the_broker_call_is_signed_only_for_an_endpoint_that_checks_signatures() {
        assert_eq!(sign_service(None).expect("unset"), None);
        for ok in ["lambda", "execute-api", " lambda "] {
            assert_eq!(
                sign_service(Some(ok.into())).expect("accepted").as_deref(),
                Some(ok.trim())
            );
        }
        let e = sign_service(Some("yes".into()))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("TOKENTRAIL_BROKER_SIGV4"), "{e}");
        assert!(e.contains("`yes`: expected `lambda`"), "{e}");
    }
}
