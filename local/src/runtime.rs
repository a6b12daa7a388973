//! The AgentCore Runtime front door: `POST /runtimes/{name}/invocations`.
//!
//! As the managed service does (facts file §1):
//! - the allowlist is validated when configured: 1–20 names, each `[A-Za-z][A-Za-z0-9_-]{0,255}`,
//!   no restricted header, no `x-amz-*`, no `x-amzn-*` except
//!   `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*`, no case-insensitive duplicates, and
//!   `Authorization` only with a JWT inbound authorizer;
//! - per request: `X-Amzn-Bedrock-AgentCore-Runtime-Session-Id` must be ≥ 33 characters (one is
//!   generated when absent), allowlisted header values ≤ 4 KB;
//! - only allowlisted headers, the session id and the trace headers (`X-Amzn-Trace-Id`,
//!   `traceparent`, `tracestate`, `baggage`, with the API's length limits) reach the agent's
//!   `POST /invocations`.

use std::sync::Arc;
use std::time::Duration;

use auth::Rejection;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::SecretString;
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, Role, Span,
    attrs::semconv, propagation,
};

/// Session id header.
pub const SESSION_HEADER: &str = "x-amzn-bedrock-agentcore-runtime-session-id";
/// Prefix of custom headers.
pub const CUSTOM_PREFIX: &str = "x-amzn-bedrock-agentcore-runtime-custom-";
/// Most headers a runtime may allowlist.
pub const MAX_ALLOWLIST: usize = 20;
/// Largest allowlisted header value.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Shortest session id.
pub const MIN_SESSION_ID: usize = 33;

/// Headers that can never be allowlisted (the SDK's `RESTRICTED_HEADERS` categories).
pub const RESTRICTED: &[&str] = &[
    "proxy-authorization",
    "www-authenticate",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-length",
    "content-encoding",
    "content-language",
    "cache-control",
    "pragma",
    "expires",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "etag",
    "last-modified",
    "age",
    "host",
    "user-agent",
    "cookie",
    "set-cookie",
    "origin",
    "referer",
    "access-control-request-method",
    "access-control-request-headers",
    "access-control-allow-origin",
    "via",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "expect",
    "max-forwards",
    "range",
];

/// Configuration errors (what `CreateAgentRuntime` would refuse).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllowlistError {
    /// Empty or more than 20 names.
    #[error("requestHeaderAllowlist must hold 1 to {MAX_ALLOWLIST} headers, got {0}")]
    Count(usize),
    /// A name does not match the pattern.
    #[error("`{0}` is not a valid header name ([A-Za-z][A-Za-z0-9_-]{{0,255}})")]
    Invalid(String),
    /// A restricted name.
    #[error("`{0}` is a restricted header and cannot be allowlisted")]
    Restricted(String),
    /// A reserved AWS prefix.
    #[error(
        "`{0}` uses a reserved prefix (x-amz-*, or x-amzn-* other than X-Amzn-Bedrock-AgentCore-Runtime-Custom-*)"
    )]
    Reserved(String),
    /// Case-insensitive duplicate.
    #[error("`{0}` appears twice (names are case-insensitive)")]
    Duplicate(String),
    /// Authorization without a JWT authorizer.
    #[error("`Authorization` can be allowlisted only when the runtime uses a customJWTAuthorizer")]
    AuthorizationNeedsJwt,
}

/// A validated allowlist (lower-cased names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist(Vec<String>);

impl Allowlist {
    /// Validate `names`.
    pub fn new(names: &[String], jwt_authorizer: bool) -> Result<Self, AllowlistError> {
        if names.is_empty() || names.len() > MAX_ALLOWLIST {
            return Err(AllowlistError::Count(names.len()));
        }
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let valid = name.len() <= 256
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(AllowlistError::Invalid(name.clone()));
            }
            let lower = name.to_ascii_lowercase();
            if RESTRICTED.contains(&lower.as_str())
                || lower.starts_with("x-forwarded-")
                || lower.starts_with(':')
            {
                return Err(AllowlistError::Restricted(name.clone()));
            }
            if lower.starts_with("x-amz-")
                || (lower.starts_with("x-amzn-") && !lower.starts_with(CUSTOM_PREFIX))
            {
                return Err(AllowlistError::Reserved(name.clone()));
            }
            if lower == "authorization" && !jwt_authorizer {
                return Err(AllowlistError::AuthorizationNeedsJwt);
            }
            if out.contains(&lower) {
                return Err(AllowlistError::Duplicate(name.clone()));
            }
            out.push(lower);
        }
        Ok(Self(out))
    }

    /// Whether `name` is allowlisted.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Runtime front-door configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Runtime name in the path.
    pub name: String,
    /// Validated allowlist.
    pub allowlist: Allowlist,
    /// Agent base URL (`POST {agent}/invocations`).
    pub agent_url: String,
    /// The allowlisted header whose value is the user's credential (recorded as a fingerprint).
    pub credential_header: Option<String>,
    /// Bound on the agent call.
    pub timeout: Duration,
}

struct AppState {
    cfg: RuntimeConfig,
    http: reqwest::Client,
}

/// Router.
pub fn router(cfg: RuntimeConfig) -> Result<Router, reqwest::Error> {
    let http = reqwest::Client::builder().timeout(cfg.timeout).build()?;
    Ok(Router::new()
        .route("/runtimes/{name}/invocations", post(invoke))
        .with_state(Arc::new(AppState { cfg, http })))
}

fn validation_error(span: &mut HopSpan, message: String) -> Response {
    span.reject(FailureReason::HeaderRejected);
    let r = Rejection::with_message(Hop::Runtime, FailureReason::HeaderRejected, message);
    let mut resp = (StatusCode::BAD_REQUEST, axum::Json(r.body())).into_response();
    resp.headers_mut().insert(
        "x-amzn-errortype",
        HeaderValue::from_static("ValidationException"),
    );
    resp
}

/// Trace headers the API accepts, with their length limits.
const TRACE_HEADERS: &[(&str, usize)] = &[
    (propagation::X_AMZN_TRACE_ID, 128),
    (propagation::TRACEPARENT, 128),
    (propagation::TRACESTATE, 512),
    (propagation::BAGGAGE, 8192),
];

async fn invoke(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parent = propagation::extract_headers(&headers);
    let mut span = HopSpan::hop(Hop::Runtime, Pattern::of_process(), &parent);
    span.attr(semconv::URL_PATH, format!("/runtimes/{name}/invocations"));
    if name != st.cfg.name {
        span.reject(FailureReason::NotFound);
        let r = Rejection::with_message(
            Hop::Runtime,
            FailureReason::NotFound,
            format!("no agent runtime named `{name}`"),
        );
        return (
            StatusCode::NOT_FOUND,
            [("x-amzn-errortype", "ResourceNotFoundException")],
            axum::Json(r.body()),
        )
            .into_response();
    }
    let session = match headers.get(SESSION_HEADER).map(|v| v.to_str()) {
        Some(Ok(s)) if s.len() >= MIN_SESSION_ID && s.len() <= 256 => s.to_owned(),
        Some(_) => {
            return validation_error(
                &mut span,
                format!("runtimeSessionId must be {MIN_SESSION_ID} to 256 characters"),
            );
        }
        None => {
            let bytes: [u8; 20] = rand::random();
            format!("tt-{}", hex::encode(bytes))
        }
    };
    for (h, max) in TRACE_HEADERS {
        if headers.get(*h).is_some_and(|v| v.len() > *max) {
            return validation_error(&mut span, format!("{h} is longer than {max} characters"));
        }
    }
    let mut forward = HeaderMap::new();
    for (k, v) in headers.iter() {
        if st.cfg.allowlist.allows(k.as_str()) {
            if v.len() > MAX_VALUE_BYTES {
                return validation_error(
                    &mut span,
                    format!("header `{k}` is longer than {MAX_VALUE_BYTES} bytes"),
                );
            }
            forward.append(k.clone(), v.clone());
        }
    }
    if let Some(ch) = &st.cfg.credential_header {
        span.carrier(&format!("header:{ch}"));
        match forward.get(ch.as_str()).and_then(|v| v.to_str().ok()) {
            Some(v) => span.credential(&CredentialProvenance::opaque(
                CredentialKind::UserJwt,
                &SecretString::from(v.to_owned()),
            )),
            None => span.credential(&CredentialProvenance::absent()),
        }
    }
    span.attr("aws.agentcore.runtime.session_id", session.clone());
    let call = Span::child("agent.invocations", Role::Client, &span.context());
    let url = format!("{}/invocations", st.cfg.agent_url.trim_end_matches('/'));
    call.attr(semconv::URL_FULL, url.clone());
    call.context().inject_headers(&mut forward);
    if let Ok(v) = HeaderValue::from_str(&session) {
        forward.insert(HeaderName::from_static(SESSION_HEADER), v);
    }
    forward.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let sent = st.http.post(&url).headers(forward).body(body).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let reason = auth::wire::transport_failure(&e);
            call.fail(reason.as_str());
            drop(call);
            span.reject(reason);
            let r = Rejection::with_message(Hop::Runtime, reason, "the agent could not be reached");
            return (
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_GATEWAY),
                axum::Json(r.body()),
            )
                .into_response();
        }
    };
    let status = resp.status();
    call.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    drop(call);
    let bytes = resp.bytes().await.unwrap_or_default();
    span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
    if status.is_success() {
        span.ok();
    } else if let Some(r) = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .as_ref()
        .and_then(Rejection::from_json)
    {
        span.downstream_failed(r.reason);
    }
    let mut out = (status, bytes).into_response();
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&session) {
        out.headers_mut()
            .insert(HeaderName::from_static(SESSION_HEADER), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowlist_rules() {
        assert!(
            Allowlist::new(
                &names(&[
                    "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken",
                    "X-Tenant"
                ]),
                false
            )
            .is_ok()
        );
        assert_eq!(Allowlist::new(&[], false), Err(AllowlistError::Count(0)));
        let many: Vec<String> = (0..21).map(|i| format!("X-H{i}")).collect();
        assert_eq!(Allowlist::new(&many, false), Err(AllowlistError::Count(21)));
        assert!(matches!(
            Allowlist::new(&names(&["1bad"]), false),
            Err(AllowlistError::Invalid(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["Bad Name"]), false),
            Err(AllowlistError::Invalid(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["Cookie"]), false),
            Err(AllowlistError::Restricted(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["X-Forwarded-For"]), false),
            Err(AllowlistError::Restricted(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["X-Amz-Date"]), false),
            Err(AllowlistError::Reserved(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["X-Amzn-Other"]), false),
            Err(AllowlistError::Reserved(_))
        ));
        assert!(matches!(
            Allowlist::new(&names(&["X-A", "x-a"]), false),
            Err(AllowlistError::Duplicate(_))
        ));
        assert_eq!(
            Allowlist::new(&names(&["Authorization"]), false),
            Err(AllowlistError::AuthorizationNeedsJwt)
        );
        assert!(Allowlist::new(&names(&["Authorization"]), true).is_ok());
    }
}
