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

use auth::{Rejection, Verifier};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, TraceContext,
};
use tracing::instrument;

use crate::config::InterceptorConfig;

/// What the core needs.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Configuration.
    pub config: InterceptorConfig,
    /// User-token verifier (shared JWKS cache).
    pub verifier: Verifier,
}

fn deny(id: Value, reason: FailureReason, message: &str) -> Value {
    let rejection = Rejection::with_message(Hop::Interceptor, reason, message);
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
    let mut span = HopSpan::hop(Hop::Interceptor, Pattern::Passthrough, parent);
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
            span.ok();
            json!({
                "interceptorOutputVersion": "1.0",
                "mcp": {
                    "transformedGatewayRequest": {
                        "headers": {"Authorization": format!("Bearer {}", token.expose_secret())},
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
