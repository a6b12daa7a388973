//! The AgentCore Gateway stand-in: `POST /mcp` (JSON-RPC 2.0: `initialize`, `tools/list`,
//! `tools/call`), behaving as the facts file describes:
//!
//! - **Inbound CUSTOM_JWT authorizer**: token verified against the discovery URL's JWKS, `aud` in
//!   `allowedAudience`, `client_id` in `allowedClients`, scopes in `allowedScopes`; 401 with
//!   `WWW-Authenticate` (carrying `resource_metadata` and `scope`) or 403 `insufficient_scope`.
//! - **Tools** named `<target>___<operationId>` from the target's OpenAPI description.
//! - **REQUEST interceptor**: the input event is built exactly as documented
//!   (`interceptorInputVersion` "1.0", `mcp.rawGatewayRequest.body` string, `mcp.gatewayRequest`
//!   with lower-cased `headers` only when `passRequestHeaders`); a `transformedGatewayResponse`
//!   is returned at once; a `transformedGatewayRequest` replaces headers/body. An interceptor
//!   that fails or times out fails the call closed.
//! - **Header propagation**: an interceptor-set `Authorization` is always sent to the target;
//!   other headers (client headers merged with the interceptor's, the interceptor winning) only if
//!   the target's `allowedRequestHeaders` lists them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auth::{IssuerPolicy, JwksCache, JwksConfig, Rejection, Verifier};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, Role, Span,
    TraceContext, attrs::semconv, propagation,
};

/// Configuration errors (what `CreateGatewayTarget` would refuse, or a bad OpenAPI document).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayConfigError {
    /// Bad `allowedRequestHeaders`.
    #[error("allowedRequestHeaders: {0}")]
    Headers(String),
    /// OpenAPI document problem.
    #[error("OpenAPI description: {0}")]
    OpenApi(String),
    /// Discovery URL shape.
    #[error("discoveryUrl must match .+/.well-known/openid-configuration, got `{0}`")]
    DiscoveryUrl(String),
}

/// Validate a target's `metadataConfiguration.allowedRequestHeaders` (1–10 names,
/// `^[a-zA-Z0-9_-]+$`, ≤ 100 characters, no `Authorization*`, no `X-Amzn-*` other than the
/// Runtime custom prefix, no restricted header).
pub fn validate_allowed_headers(names: &[String]) -> Result<Vec<String>, GatewayConfigError> {
    if names.is_empty() || names.len() > 10 {
        return Err(GatewayConfigError::Headers(format!(
            "must hold 1 to 10 names, got {}",
            names.len()
        )));
    }
    let mut out = Vec::new();
    for n in names {
        let lower = n.to_ascii_lowercase();
        if n.is_empty()
            || n.len() > 100
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(GatewayConfigError::Headers(format!(
                "`{n}` is not a valid header name"
            )));
        }
        if lower.starts_with("authorization") {
            return Err(GatewayConfigError::Headers(format!(
                "`{n}` is restricted (Authorization headers are set by the interceptor or a credential provider)"
            )));
        }
        if lower.starts_with("x-amzn-") && !lower.starts_with(crate::runtime::CUSTOM_PREFIX) {
            return Err(GatewayConfigError::Headers(format!(
                "`{n}` uses the reserved X-Amzn- prefix"
            )));
        }
        if crate::runtime::RESTRICTED.contains(&lower.as_str()) {
            return Err(GatewayConfigError::Headers(format!(
                "`{n}` is a restricted header"
            )));
        }
        out.push(lower);
    }
    Ok(out)
}

/// One tool derived from an OpenAPI operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `<target>___<operationId>`.
    pub name: String,
    /// HTTP method.
    pub method: String,
    /// Path template (`/orders/{orderId}`).
    pub path: String,
    /// Parameters: (name, location, required).
    pub params: Vec<(String, String, bool)>,
    /// Description.
    pub description: String,
}

impl Tool {
    /// MCP tool description.
    pub fn to_mcp(&self) -> Value {
        let mut props = serde_json::Map::new();
        let mut required = Vec::new();
        for (n, _, req) in &self.params {
            props.insert(n.clone(), json!({"type": "string"}));
            if *req {
                required.push(n.clone());
            }
        }
        json!({
            "name": self.name,
            "description": self.description,
            "inputSchema": {"type": "object", "properties": props, "required": required},
        })
    }
}

/// Tools of `target` from its OpenAPI document.
pub fn tools_from_openapi(target: &str, doc: &Value) -> Result<Vec<Tool>, GatewayConfigError> {
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .ok_or_else(|| GatewayConfigError::OpenApi("no `paths` object".into()))?;
    let mut tools = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else { continue };
            let op_id = op
                .get("operationId")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    GatewayConfigError::OpenApi(format!("{method} {path} has no operationId"))
                })?;
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| {
                            Some((
                                p.get("name")?.as_str()?.to_owned(),
                                p.get("in")?.as_str()?.to_owned(),
                                p.get("required").and_then(Value::as_bool).unwrap_or(false),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            tools.push(Tool {
                name: format!("{target}___{op_id}"),
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                params,
                description: op
                    .get("summary")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    if tools.is_empty() {
        return Err(GatewayConfigError::OpenApi("no operations".into()));
    }
    Ok(tools)
}

/// The REQUEST interceptor configuration.
#[derive(Debug, Clone)]
pub struct InterceptorConfig {
    /// Lambda Invoke URL (`{endpoint}/2015-03-31/functions/{name}/invocations`).
    pub invoke_url: String,
    /// `inputConfiguration.passRequestHeaders`.
    pub pass_request_headers: bool,
    /// Bound on one invocation.
    pub timeout: Duration,
}

/// Gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Public base URL of the gateway (for `WWW-Authenticate`).
    pub public_url: String,
    /// Inbound authorizer: discovery URL.
    pub discovery_url: String,
    /// Inbound authorizer: issuer.
    pub issuer: String,
    /// `allowedAudience`.
    pub allowed_audience: Vec<String>,
    /// `allowedClients`.
    pub allowed_clients: Vec<String>,
    /// `allowedScopes`.
    pub allowed_scopes: Vec<String>,
    /// REQUEST interceptor.
    pub interceptor: Option<InterceptorConfig>,
    /// Target name.
    pub target_name: String,
    /// Target base URL.
    pub target_url: String,
    /// Target `allowedRequestHeaders` (validated, lower-case).
    pub target_allowed_headers: Vec<String>,
    /// Tools.
    pub tools: Vec<Tool>,
    /// Bound on the target call.
    pub target_timeout: Duration,
}

impl GatewayConfig {
    /// Check the discovery URL shape.
    pub fn check(&self) -> Result<(), GatewayConfigError> {
        if !self
            .discovery_url
            .ends_with("/.well-known/openid-configuration")
            || self.discovery_url.len() <= "/.well-known/openid-configuration".len()
        {
            return Err(GatewayConfigError::DiscoveryUrl(self.discovery_url.clone()));
        }
        Ok(())
    }
}

struct AppState {
    cfg: GatewayConfig,
    verifier: Verifier,
    http: reqwest::Client,
}

/// Router.
pub fn router(cfg: GatewayConfig) -> Result<Router, String> {
    cfg.check().map_err(|e| e.to_string())?;
    let jwks =
        JwksCache::new(JwksConfig::new(cfg.discovery_url.clone())).map_err(|e| e.to_string())?;
    let mut policy = IssuerPolicy::new(cfg.issuer.clone(), cfg.allowed_audience.clone());
    policy.allowed_clients = cfg.allowed_clients.clone();
    let verifier = Verifier::new(policy, jwks);
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Router::new()
        .route("/mcp", post(mcp))
        .with_state(Arc::new(AppState {
            cfg,
            verifier,
            http,
        })))
}

fn www_authenticate(cfg: &GatewayConfig, error: Option<&str>) -> HeaderValue {
    let mut v = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource\", scope=\"{}\"",
        cfg.public_url,
        cfg.allowed_scopes.join(" ")
    );
    if let Some(e) = error {
        v.push_str(&format!(", error=\"{e}\""));
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
}

fn jsonrpc(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn mcp(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    // HTTP trace headers first; an MCP client that only sets `params._meta` is honoured too.
    let mut parent = propagation::extract_headers(&headers);
    if !parent.is_valid()
        && let Ok(body) = serde_json::from_slice::<Value>(&raw)
    {
        parent = propagation::extract_mcp_meta(&body);
    }
    let mut span = HopSpan::hop(Hop::Gateway, Pattern::of_process(), &parent);
    let resp = parent
        .scope(mcp_inner(&st, &headers, &raw, &mut span))
        .await;
    span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, resp.status().as_u16());
    resp
}

async fn mcp_inner(st: &AppState, headers: &HeaderMap, raw: &[u8], span: &mut HopSpan) -> Response {
    span.carrier("header:authorization");
    span.attr(semconv::RPC_SYSTEM, "jsonrpc");
    // Inbound authorizer.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer_token);
    let Some(token) = bearer else {
        span.credential(&CredentialProvenance::absent());
        span.reject(FailureReason::MissingToken);
        let r = Rejection::with_message(
            Hop::Gateway,
            FailureReason::MissingToken,
            "Authorization: Bearer <token> required",
        );
        let mut resp = jsonrpc(StatusCode::UNAUTHORIZED, r.jsonrpc_error(Value::Null));
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, www_authenticate(&st.cfg, None));
        return resp;
    };
    let verified = match span.context().scope(st.verifier.verify(&token)).await {
        Ok(v) => v,
        Err(e) => {
            span.credential(&CredentialProvenance::opaque(
                CredentialKind::AgentJwt,
                &token,
            ));
            span.reject(e.reason);
            let r = Rejection::with_message(Hop::Gateway, e.reason, e.detail);
            let status = if e.reason.http_status() == 503 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::UNAUTHORIZED
            };
            let mut resp = jsonrpc(status, r.jsonrpc_error(Value::Null));
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                www_authenticate(&st.cfg, Some("invalid_token")),
            );
            return resp;
        }
    };
    span.credential(&verified.provenance(CredentialKind::AgentJwt, &token));
    if !st.cfg.allowed_scopes.is_empty() && !verified.claims.has_scopes(&st.cfg.allowed_scopes) {
        span.reject(FailureReason::InsufficientScope);
        let r = Rejection::new(Hop::Gateway, FailureReason::InsufficientScope);
        let mut resp = jsonrpc(StatusCode::FORBIDDEN, r.jsonrpc_error(Value::Null));
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            www_authenticate(&st.cfg, Some("insufficient_scope")),
        );
        return resp;
    }
    // JSON-RPC.
    let Ok(body) = serde_json::from_slice::<Value>(raw) else {
        span.reject(FailureReason::InvalidRequest);
        return jsonrpc(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}),
        );
    };
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    let method = body
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if body.get("jsonrpc").and_then(Value::as_str) != Some("2.0") || method.is_empty() {
        span.reject(FailureReason::InvalidRequest);
        return jsonrpc(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32600,"message":"Invalid Request"}}),
        );
    }
    span.attr(semconv::RPC_METHOD, method.clone());
    match method.as_str() {
        "initialize" => {
            span.ok();
            jsonrpc(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{
                    "protocolVersion": body.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": {"name": "tokentrail-local-gateway", "version": env!("CARGO_PKG_VERSION")}
                }}),
            )
        }
        "tools/list" => {
            span.ok();
            let tools: Vec<Value> = st.cfg.tools.iter().map(Tool::to_mcp).collect();
            jsonrpc(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"result":{"tools": tools}}),
            )
        }
        "tools/call" => tools_call(st, headers, raw, body, id, span).await,
        _ => {
            span.reject(FailureReason::InvalidRequest);
            jsonrpc(
                StatusCode::OK,
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"Method not found"}}),
            )
        }
    }
}

/// The interceptor input event, exactly as the facts file documents it.
pub fn interceptor_event(
    raw: &[u8],
    headers: &HeaderMap,
    body: &Value,
    pass_headers: bool,
) -> Value {
    let mut gateway_request = json!({"path": "/mcp", "httpMethod": "POST", "body": body});
    if pass_headers {
        let mut h = serde_json::Map::new();
        for (k, v) in headers {
            if let Ok(v) = v.to_str() {
                h.insert(k.as_str().to_ascii_lowercase(), Value::String(v.to_owned()));
            }
        }
        gateway_request["headers"] = Value::Object(h);
    }
    json!({
        "interceptorInputVersion": "1.0",
        "mcp": {
            "rawGatewayRequest": {"body": String::from_utf8_lossy(raw)},
            "gatewayRequest": gateway_request,
        }
    })
}

fn fail_closed(span: &mut HopSpan, id: Value, reason: FailureReason, message: &str) -> Response {
    span.reject(reason);
    let r = Rejection::with_message(Hop::Gateway, reason, message);
    jsonrpc(StatusCode::OK, r.jsonrpc_error(id))
}

async fn invoke_interceptor(
    st: &AppState,
    ic: &InterceptorConfig,
    event: &Value,
    parent: &TraceContext,
) -> Result<Value, FailureReason> {
    let call = Span::child("interceptor.invoke", Role::Client, parent);
    call.attr(semconv::URL_FULL, ic.invoke_url.clone());
    call.attr("faas.invoked_name", "interceptor");
    let mut req = st.http.post(&ic.invoke_url).timeout(ic.timeout).json(event);
    req = req.headers(call.context().http_headers());
    let resp = req.send().await.map_err(|e| {
        let reason = auth::wire::transport_failure(&e);
        call.fail(reason.as_str());
        reason
    })?;
    call.attr(semconv::HTTP_RESPONSE_STATUS_CODE, resp.status().as_u16());
    if !resp.status().is_success() || resp.headers().contains_key("x-amz-function-error") {
        call.fail("function_error");
        return Err(FailureReason::UpstreamUnavailable);
    }
    resp.json::<Value>().await.map_err(|_| {
        call.fail("bad_output");
        FailureReason::Internal
    })
}

async fn tools_call(
    st: &AppState,
    headers: &HeaderMap,
    raw: &[u8],
    body: Value,
    id: Value,
    span: &mut HopSpan,
) -> Response {
    let tool_name = body
        .pointer("/params/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    span.attr(semconv::MCP_TOOL_NAME, tool_name.clone());
    let Some(tool) = st.cfg.tools.iter().find(|t| t.name == tool_name).cloned() else {
        span.reject(FailureReason::NotFound);
        return jsonrpc(
            StatusCode::OK,
            json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":format!("Unknown tool: {tool_name}")}}),
        );
    };
    let mut request_body = body.clone();
    let mut interceptor_headers: BTreeMap<String, String> = BTreeMap::new();
    if let Some(ic) = &st.cfg.interceptor {
        let event = interceptor_event(raw, headers, &body, ic.pass_request_headers);
        let out = match invoke_interceptor(st, ic, &event, &span.context()).await {
            Ok(v) => v,
            Err(reason) => {
                return fail_closed(
                    span,
                    id,
                    reason,
                    "the REQUEST interceptor failed; the call is refused (fail closed)",
                );
            }
        };
        if out.get("interceptorOutputVersion").and_then(Value::as_str) != Some("1.0") {
            return fail_closed(
                span,
                id,
                FailureReason::Internal,
                "the interceptor returned an unsupported interceptorOutputVersion",
            );
        }
        if let Some(resp) = out.pointer("/mcp/transformedGatewayResponse") {
            let status = resp
                .get("statusCode")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(200);
            let body = resp.get("body").cloned().unwrap_or(Value::Null);
            match Rejection::from_json(&body) {
                Some(r) => span.downstream_failed(r.reason),
                None => span.ok(),
            }
            return jsonrpc(StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body);
        }
        if let Some(treq) = out.pointer("/mcp/transformedGatewayRequest") {
            if let Some(h) = treq.get("headers").and_then(Value::as_object) {
                for (k, v) in h {
                    if let Some(v) = v.as_str() {
                        interceptor_headers.insert(k.to_ascii_lowercase(), v.to_owned());
                    }
                }
            }
            if let Some(b) = treq.get("body").filter(|b| !b.is_null()) {
                request_body = b.clone();
            }
        }
    }
    // Build the target request.
    let args = request_body
        .pointer("/params/arguments")
        .cloned()
        .unwrap_or(json!({}));
    let mut path = tool.path.clone();
    let mut query: Vec<(String, String)> = Vec::new();
    for (name, location, required) in &tool.params {
        let value = args.get(name).map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        });
        match (value, required) {
            (None, true) => {
                span.reject(FailureReason::InvalidRequest);
                return jsonrpc(
                    StatusCode::OK,
                    json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":format!("missing required argument `{name}`")}}),
                );
            }
            (None, false) => {}
            (Some(v), _) if location == "path" => {
                let encoded: String = v
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                path = path.replace(&format!("{{{name}}}"), &encoded);
            }
            (Some(v), _) if location == "query" => query.push((name.clone(), v)),
            _ => {}
        }
    }
    let url = format!("{}{}", st.cfg.target_url.trim_end_matches('/'), path);
    let call = Span::child("target.call", Role::Client, &span.context());
    call.attr(semconv::HTTP_REQUEST_METHOD, tool.method.clone());
    call.attr(semconv::URL_FULL, url.clone());
    let method =
        reqwest::Method::from_bytes(tool.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = st
        .http
        .request(method, &url)
        .timeout(st.cfg.target_timeout)
        .query(&query);
    // Merge: client headers, then the interceptor's (which win); only allowlisted ones travel.
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        if let Ok(v) = v.to_str() {
            merged.insert(k.as_str().to_ascii_lowercase(), v.to_owned());
        }
    }
    merged.extend(
        interceptor_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    for (k, v) in &merged {
        if st.cfg.target_allowed_headers.contains(k) {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    if let Some(authz) = interceptor_headers.get("authorization") {
        req = req.header(header::AUTHORIZATION, authz.as_str());
    }
    req = req.headers(call.context().http_headers());
    if tool.method != "GET" {
        req = req.json(&args);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = auth::wire::transport_failure(&e);
            call.fail(reason.as_str());
            drop(call);
            return fail_closed(span, id, reason, "the target could not be reached");
        }
    };
    let status = resp.status().as_u16();
    call.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
    drop(call);
    let text = resp.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        span.ok();
        return jsonrpc(
            StatusCode::OK,
            json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":text}],"isError":false}}),
        );
    }
    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let rejection = Rejection::from_json(&parsed).unwrap_or_else(|| {
        Rejection::with_message(
            Hop::Target,
            FailureReason::Internal,
            format!("target answered {status}"),
        )
    });
    span.downstream_failed(rejection.reason);
    jsonrpc(StatusCode::OK, rejection.jsonrpc_error(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_headers_rules() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_allowed_headers(&v(&["X-Tenant"])).is_ok());
        assert!(validate_allowed_headers(&v(&[])).is_err());
        assert!(validate_allowed_headers(&v(&["Authorization"])).is_err());
        assert!(validate_allowed_headers(&v(&["X-Amzn-Foo"])).is_err());
        assert!(
            validate_allowed_headers(&v(&["X-Amzn-Bedrock-AgentCore-Runtime-Custom-A"])).is_ok()
        );
        assert!(validate_allowed_headers(&v(&["bad name"])).is_err());
        let eleven: Vec<String> = (0..11).map(|i| format!("h{i}")).collect();
        assert!(validate_allowed_headers(&eleven).is_err());
    }

    #[test]
    fn tool_names_use_three_underscores() {
        let doc: Value = serde_json::from_str(r#"{"paths":{"/orders/{orderId}":{"get":{"operationId":"getOrder","parameters":[{"name":"orderId","in":"path","required":true}]}}}}"#).expect("json");
        let tools = tools_from_openapi("orders", &doc).expect("tools");
        assert_eq!(tools[0].name, "orders___getOrder");
        assert_eq!(tools[0].params[0], ("orderId".into(), "path".into(), true));
        assert!(tools_from_openapi("x", &json!({})).is_err());
    }

    #[test]
    fn interceptor_event_shape() {
        let mut h = HeaderMap::new();
        h.insert("X-Custom-UserToken", HeaderValue::from_static("abc"));
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}});
        let raw = body.to_string();
        let ev = interceptor_event(raw.as_bytes(), &h, &body, true);
        assert_eq!(ev["interceptorInputVersion"], "1.0");
        assert_eq!(ev["mcp"]["rawGatewayRequest"]["body"], raw);
        assert_eq!(ev["mcp"]["gatewayRequest"]["path"], "/mcp");
        assert_eq!(ev["mcp"]["gatewayRequest"]["httpMethod"], "POST");
        assert_eq!(
            ev["mcp"]["gatewayRequest"]["headers"]["x-custom-usertoken"],
            "abc"
        );
        assert!(ev["mcp"].get("gatewayResponse").is_none());
        let ev = interceptor_event(raw.as_bytes(), &h, &body, false);
        assert!(ev["mcp"]["gatewayRequest"].get("headers").is_none());
    }
}
