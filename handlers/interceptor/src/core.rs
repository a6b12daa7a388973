//! Event in → output out. Fail closed: anything but a genuine, unexpired user JWT yields a
//! `transformedGatewayResponse` that denies, with the reason.
//!
//! Input (facts file, MCP REQUEST): `{"interceptorInputVersion":"1.0","mcp":{"rawGatewayRequest":
//! {"body":"..."},"gatewayRequest":{"path":"/mcp","httpMethod":"POST","headers":{...},"body":{...}}}}`;
//! `headers` only when `passRequestHeaders` is true, names lower-cased.
//!
//! Output on success: `{"interceptorOutputVersion":"1.0","mcp":{"transformedGatewayRequest":
//! {"headers":{"Authorization":"Bearer <user JWT>"},"body":<original body>}}}` (the custom header
//! is not echoed). The function is idempotent: the gateway may retry it.
//!
//! Broker mode: the user JWT is verified the same way (audience included, since the target never
//! sees it) and recorded on this hop's span; then a service token from the broker replaces it:
//! `{"headers":{"Authorization":"Bearer <service token>"}}`, nothing of the user's token echoed.
//! A broker failure denies with its reason (`caller_not_allowed`, `secret_unavailable`,
//! `upstream_unavailable`, `upstream_timeout`, …) and the hop that decided.

use std::sync::Arc;

use auth::{Rejection, Verifier};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, TraceContext,
};
use tracing::instrument;

use crate::broker_client::BrokerClient;
use crate::config::{ConfigError, InterceptorConfig};

/// What the core needs.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Configuration.
    pub config: InterceptorConfig,
    /// User-token verifier (shared JWKS cache).
    pub verifier: Verifier,
    /// Broker mode: the broker client.
    pub broker: Option<Arc<BrokerClient>>,
}

impl Deps {
    /// Build everything `config` asks for.
    pub async fn from_config(config: InterceptorConfig) -> Result<Self, ConfigError> {
        let broker = match &config.broker {
            None => None,
            Some(settings) => Some(Arc::new(
                BrokerClient::new(settings.clone())
                    .await
                    .map_err(|reason| ConfigError::Invalid {
                        name: "TOKENTRAIL_BROKER_SESSION_S",
                        reason,
                    })?,
            )),
        };
        Ok(Self {
            verifier: config.verifier()?,
            config,
            broker,
        })
    }

    /// The pattern this interceptor serves.
    pub fn pattern(&self) -> Pattern {
        if self.broker.is_some() {
            Pattern::Broker
        } else {
            Pattern::Passthrough
        }
    }
}

fn deny(id: Value, reason: FailureReason, message: &str) -> Value {
    deny_at(Hop::Interceptor, id, reason, message)
}

fn deny_at(hop: Hop, id: Value, reason: FailureReason, message: &str) -> Value {
    let rejection = Rejection::with_message(hop, reason, message);
    json!({
        "interceptorOutputVersion": "1.0",
        "mcp": {
            "transformedGatewayResponse": {
                "statusCode": rejection.status(),
                "body": rejection.jsonrpc_error(id),
            }
        }
    })
}

fn header_ci<'a>(headers: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// Handle one interceptor event under `parent`.
#[instrument(skip_all, level = "debug", name = "interceptor.handle")]
pub async fn handle(event: &Value, parent: &TraceContext, deps: &Deps) -> Value {
    let mut span = HopSpan::hop(Hop::Interceptor, deps.pattern(), parent);
    let header_name = deps.config.user_token_header.to_ascii_lowercase();
    span.carrier(&format!("header:{header_name}"));

    let id = event
        .pointer("/mcp/gatewayRequest/body/id")
        .cloned()
        .unwrap_or(Value::Null);
    if event.get("interceptorInputVersion").and_then(Value::as_str) != Some("1.0") {
        span.reject(FailureReason::InvalidRequest);
        return deny(
            id,
            FailureReason::InvalidRequest,
            "unsupported interceptorInputVersion (expected \"1.0\")",
        );
    }
    let Some(request) = event.pointer("/mcp/gatewayRequest") else {
        span.reject(FailureReason::InvalidRequest);
        return deny(
            id,
            FailureReason::InvalidRequest,
            "event has no mcp.gatewayRequest",
        );
    };
    let body = request.get("body").cloned().unwrap_or(Value::Null);
    if let Some(method) = body.get("method").and_then(Value::as_str) {
        span.attr(telemetry::attrs::semconv::RPC_METHOD, method);
    }
    let empty = serde_json::Map::new();
    let headers = request
        .get("headers")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let Some(raw) = header_ci(headers, &header_name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        span.credential(&CredentialProvenance::absent());
        span.reject(FailureReason::MissingToken);
        let message = if request.get("headers").is_none() {
            "no request headers in the event: enable passRequestHeaders on the interceptor"
        } else {
            "no user token in the request"
        };
        return deny(id, FailureReason::MissingToken, message);
    };
    // Accept the token bare or as "Bearer <token>".
    let token = auth::bearer_token(raw).unwrap_or_else(|| SecretString::from(raw.to_owned()));
    match span.context().scope(deps.verifier.verify(&token)).await {
        Ok(verified) => {
            span.credential(&verified.provenance(CredentialKind::UserJwt, &token));
            if !verified.claims.has_scopes(&deps.config.required_scopes) {
                span.reject(FailureReason::InsufficientScope);
                return deny(
                    id,
                    FailureReason::InsufficientScope,
                    &format!(
                        "the user token lacks scope `{}`",
                        deps.config.required_scopes.join(" ")
                    ),
                );
            }
            let forwarded = match &deps.broker {
                None => token,
                Some(broker) => match span
                    .context()
                    .scope(Box::pin(broker.service_token(&span.context())))
                    .await
                {
                    Ok(service) => service.token,
                    Err(f) => {
                        if f.hop == Hop::Interceptor {
                            span.reject(f.reason);
                        } else {
                            span.downstream_failed(f.reason);
                        }
                        tracing::info!(reason = %f.reason, hop = %f.hop, detail = %f.message, "no service token");
                        return deny_at(f.hop, id, f.reason, &f.message);
                    }
                },
            };
            span.ok();
            json!({
                "interceptorOutputVersion": "1.0",
                "mcp": {
                    "transformedGatewayRequest": {
                        "headers": {"Authorization": format!("Bearer {}", forwarded.expose_secret())},
                        "body": body,
                    }
                }
            })
        }
        Err(e) => {
            span.credential(&CredentialProvenance::opaque(
                CredentialKind::UserJwt,
                &token,
            ));
            span.reject(e.reason);
            tracing::info!(reason = %e.reason, detail = %e.detail, "user token rejected");
            deny(id, e.reason, &e.detail)
        }
    }
}
