//! One invocation: user token in, MCP `tools/call` to the gateway, answer out.

use std::sync::Arc;

use auth::Rejection;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, Role, Span,
    TraceContext, attrs::semconv,
};
use tracing::instrument;

use crate::config::AgentConfig;
use auth::oauth::TokenSource;

/// Dependencies.
#[derive(Debug, Clone)]
pub struct Deps {
    /// Configuration.
    pub config: AgentConfig,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The agent's own token.
    pub tokens: Arc<TokenSource>,
}

impl Deps {
    /// Build from configuration.
    pub fn new(config: AgentConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let tokens = Arc::new(TokenSource::new(
            http.clone(),
            config.token_endpoint.clone(),
            config.client_id.clone(),
            config.client_secret.clone(),
            config.scope.clone(),
        ));
        Ok(Self {
            config,
            http,
            tokens,
        })
    }
}

/// The invocation payload: which tool to call, with which arguments.
#[derive(Debug, Clone, Deserialize)]
pub struct Payload {
    /// MCP tool name (`<target>___<tool>`).
    pub tool: String,
    /// Arguments.
    #[serde(default)]
    pub arguments: Value,
}

/// Reply: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

fn rejected(span: &mut HopSpan, r: Rejection) -> Reply {
    // Only this hop's own decisions mark it rejected; a downstream rejection is passed on.
    if r.hop == Hop::Agent {
        span.reject(r.reason);
    } else {
        span.downstream_failed(r.reason);
    }
    Reply {
        status: r.status(),
        body: r.body(),
    }
}

/// Handle one invocation. `user_token` is the value of the allowlisted custom header.
#[instrument(skip_all, level = "debug", name = "agent.handle")]
pub async fn handle(
    body: &[u8],
    user_token: Option<SecretString>,
    parent: &TraceContext,
    deps: &Deps,
) -> Reply {
    let mut span = HopSpan::hop(Hop::Agent, Pattern::of_process(), parent);
    span.carrier(&format!("header:{}", deps.config.inbound_user_header));
    match &user_token {
        Some(t) => {
            let p = match auth::verify::decode_unverified(t) {
                Ok(claims) => {
                    CredentialProvenance::unverified_decoded(CredentialKind::UserJwt, t, claims)
                }
                Err(_) => CredentialProvenance::opaque(CredentialKind::UserJwt, t),
            };
            span.credential(&p);
        }
        None => span.credential(&CredentialProvenance::absent()),
    }
    let payload: Payload = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            return rejected(
                &mut span,
                Rejection::with_message(
                    Hop::Agent,
                    FailureReason::InvalidRequest,
                    format!(
                        "payload must be {{\"tool\": \"<target>___<tool>\", \"arguments\": {{...}}}}: {e}"
                    ),
                ),
            );
        }
    };
    span.attr(semconv::MCP_TOOL_NAME, payload.tool.clone());
    let agent_token = match span
        .context()
        .scope(deps.tokens.token(&span.context()))
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "agent token unavailable");
            return rejected(
                &mut span,
                Rejection::with_message(
                    Hop::Agent,
                    FailureReason::UpstreamUnavailable,
                    "the agent could not get its own token from the IdP",
                ),
            );
        }
    };
    let call = Span::child("gateway.tools_call", Role::Client, &span.context());
    call.attr(semconv::URL_FULL, deps.config.gateway_url.clone());
    call.attr(semconv::RPC_SYSTEM, "jsonrpc");
    call.attr(semconv::RPC_METHOD, "tools/call");
    let mut request = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": payload.tool, "arguments": payload.arguments},
    });
    call.context().inject_mcp_meta(&mut request);
    let mut req = deps
        .http
        .post(&deps.config.gateway_url)
        .header(
            "authorization",
            format!("Bearer {}", agent_token.expose_secret()),
        )
        .header("accept", "application/json, text/event-stream")
        .json(&request);
    if let Some(t) = &user_token {
        req = req.header(deps.config.gateway_user_header.as_str(), t.expose_secret());
    }
    req = req.headers(call.context().http_headers());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = auth::wire::transport_failure(&e);
            call.fail(reason.as_str());
            return rejected(
                &mut span,
                Rejection::with_message(Hop::Agent, reason, "the gateway could not be reached"),
            );
        }
    };
    let status = resp.status().as_u16();
    call.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    drop(call);
    if let Some(r) = Rejection::from_json(&body) {
        return rejected(&mut span, r);
    }
    if status != 200 || body.get("result").is_none() {
        return rejected(
            &mut span,
            Rejection::with_message(
                Hop::Gateway,
                FailureReason::Internal,
                format!("unexpected gateway answer ({status})"),
            ),
        );
    }
    let result = &body["result"];
    // Tool output is text content holding the target's JSON.
    let text = result
        .pointer("/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let output: Value =
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()));
    span.ok();
    Reply {
        status: 200,
        body: json!({"result": output}),
    }
}
