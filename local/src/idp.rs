//! A local OIDC IdP that behaves like a managed one (Cognito, Okta, Entra) for what tokentrail
//! needs: discovery, JWKS, a token endpoint (`client_credentials` for M2M and service clients,
//! `password` for configured test users), RS256 keys generated at start, configurable lifetimes,
//! and key rotation (the previous key stays in the JWKS until the next rotation).
//!
//! Configuration is a small TOML file (see [`IdpConfig`]); defaults give the demo's users and
//! clients.

use std::sync::{Arc, RwLock};

use auth::SigningKey;
use auth::mint::now_epoch;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, propagation,
};

/// A test user (password grant).
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// Username (becomes `sub`).
    pub name: String,
    /// Password.
    pub password: SecretString,
    /// Space-separated scopes granted to the user's tokens.
    #[serde(default)]
    pub scopes: String,
}

/// An OAuth client.
#[derive(Debug, Clone, Deserialize)]
pub struct Client {
    /// Client id.
    pub id: String,
    /// Client secret (absent for public clients, which may only use the password grant).
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// Audience of tokens issued to/through this client.
    pub audience: String,
    /// Scopes the client may receive (client_credentials).
    #[serde(default)]
    pub scopes: String,
    /// Grants allowed: `client_credentials`, `password`.
    pub grants: Vec<String>,
    /// Token lifetime override in seconds.
    #[serde(default)]
    pub token_ttl_s: Option<i64>,
}

/// IdP configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct IdpConfig {
    /// Default access-token lifetime.
    #[serde(default = "default_ttl")]
    pub token_ttl_s: i64,
    /// Allow the `tokentrail_ttl_s` form parameter (a test control: mint already-expired tokens
    /// for fault injection). Off unless configured; the local stack turns it on.
    #[serde(default)]
    pub test_controls: bool,
    /// Users.
    pub users: Vec<User>,
    /// Clients.
    pub clients: Vec<Client>,
}

fn default_ttl() -> i64 {
    300
}

/// The default users and clients of the local stack.
pub const DEFAULT_CONFIG: &str = r#"
token_ttl_s = 300
test_controls = true

[[users]]
name = "alice"
password = "alice-password"
scopes = "orders:read"

[[users]]
name = "bob"
password = "bob-password"
scopes = "orders:read"

[[users]]
name = "carol"
password = "carol-password"
scopes = "profile"

[[clients]]
id = "tokentrail-app"
audience = "target-api"
grants = ["password"]

[[clients]]
id = "other-app"
audience = "other-api"
grants = ["password"]

[[clients]]
id = "tokentrail-agent"
secret = "agent-secret"
audience = "gateway"
scopes = "gateway:invoke"
grants = ["client_credentials"]

# The broker's service account (its secret lives in Secrets Manager, or the stand-in's file).
[[clients]]
id = "orders-service"
secret = "orders-service-secret"
audience = "target-api-service"
scopes = "orders:read"
grants = ["client_credentials"]
"#;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// The TOML is invalid.
    #[error("invalid IdP configuration: {0}")]
    Config(String),
    /// Key generation failed.
    #[error(transparent)]
    Key(#[from] auth::MintError),
}

impl IdpConfig {
    /// Parse TOML.
    pub fn from_toml(text: &str) -> Result<Self, IdpError> {
        let cfg: IdpConfig = toml::from_str(text).map_err(|e| IdpError::Config(e.to_string()))?;
        for c in &cfg.clients {
            if c.grants
                .iter()
                .any(|g| g != "client_credentials" && g != "password")
            {
                return Err(IdpError::Config(format!(
                    "client `{}`: grants may only be client_credentials and password",
                    c.id
                )));
            }
            if c.grants.iter().any(|g| g == "client_credentials") && c.secret.is_none() {
                return Err(IdpError::Config(format!(
                    "client `{}` uses client_credentials but has no secret",
                    c.id
                )));
            }
        }
        Ok(cfg)
    }

    /// The defaults.
    pub fn default_config() -> Result<Self, IdpError> {
        Self::from_toml(DEFAULT_CONFIG)
    }
}

struct Keys {
    current: SigningKey,
    previous: Option<SigningKey>,
    generation: u32,
}

/// Shared IdP state.
pub struct Idp {
    issuer: String,
    config: IdpConfig,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for Idp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idp")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Idp {
    /// A new IdP with a fresh RS256 key.
    pub fn new(issuer: String, config: IdpConfig) -> Result<Arc<Self>, IdpError> {
        let current = SigningKey::generate_rs256(format!("k{}-1", std::process::id()))?;
        Ok(Arc::new(Self {
            issuer,
            config,
            keys: RwLock::new(Keys {
                current,
                previous: None,
                generation: 1,
            }),
        }))
    }

    /// Issuer URL.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Rotate: a new current key; the old one stays published as previous.
    pub fn rotate(&self) -> Result<String, IdpError> {
        let mut keys = self
            .keys
            .write()
            .map_err(|_| IdpError::Config("key lock poisoned".into()))?;
        let generation = keys.generation + 1;
        let new = SigningKey::generate_rs256(format!("k{}-{generation}", std::process::id()))?;
        let kid = new.kid().to_owned();
        let old = std::mem::replace(&mut keys.current, new);
        keys.previous = Some(old);
        keys.generation = generation;
        Ok(kid)
    }

    fn jwks(&self) -> Value {
        match self.keys.read() {
            Ok(k) => {
                let mut list = vec![k.current.public_jwk().clone()];
                if let Some(p) = &k.previous {
                    list.push(p.public_jwk().clone());
                }
                json!({"keys": list})
            }
            Err(_) => json!({"keys": []}),
        }
    }

    fn sign(&self, claims: &Value) -> Result<SecretString, auth::MintError> {
        let keys = self
            .keys
            .read()
            .map_err(|_| auth::MintError::Sign("key lock poisoned".into()))?;
        keys.current.sign(claims)
    }
}

/// Start an IdP with `config` on a free loopback port (its issuer is its base URL).
pub async fn spawn(
    config: IdpConfig,
) -> Result<(String, tokio::task::JoinHandle<std::io::Result<()>>), IdpError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| IdpError::Config(format!("cannot listen: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| IdpError::Config(e.to_string()))?;
    let issuer = format!("http://{addr}");
    let app = router(Idp::new(issuer.clone(), config)?);
    let task = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((issuer, task))
}

/// Ask the token endpoint of `issuer` for a token with `form` (grant type, client, user, ...).
/// The error carries the endpoint's OAuth `error` code and description.
pub async fn request_token(issuer: &str, form: &[(&str, &str)]) -> Result<SecretString, String> {
    let resp = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .form(form)
        .send()
        .await
        .map_err(|e| format!("token endpoint unreachable: {}", e.without_url()))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| {
        format!(
            "token endpoint answered {status} without JSON: {}",
            e.without_url()
        )
    })?;
    match body.get("access_token").and_then(Value::as_str) {
        Some(t) if status.is_success() => Ok(SecretString::from(t.to_owned())),
        _ => Err(format!(
            "token endpoint answered {status}: {} {}",
            body.get("error")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            body.get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )),
    }
}

/// The router: discovery, JWKS, token, rotation.
pub fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/admin/rotate", post(rotate))
        .with_state(idp)
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    let iss = idp.issuer();
    axum::Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/jwks"),
        "token_endpoint": format!("{iss}/token"),
        "grant_types_supported": ["client_credentials", "password"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(idp.jwks()),
    )
        .into_response()
}

async fn rotate(State(idp): State<Arc<Idp>>) -> Response {
    match idp.rotate() {
        Ok(kid) => axum::Json(json!({"kid": kid})).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Client credentials from HTTP Basic, if present.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, SecretString)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), SecretString::from(secret.to_owned())))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parent = propagation::extract_headers(&headers);
    let mut span = HopSpan::hop(Hop::Idp, Pattern::of_process(), &parent);
    let form: std::collections::HashMap<String, String> = match serde_urlencoded_parse(&body) {
        Some(f) => f,
        None => {
            span.reject(FailureReason::InvalidRequest);
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "body must be application/x-www-form-urlencoded",
            );
        }
    };
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (client_id, client_secret) = match basic_credentials(&headers) {
        Some((id, s)) => (Some(id), Some(s)),
        None => (
            get("client_id").map(str::to_owned),
            get("client_secret").map(|s| SecretString::from(s.to_owned())),
        ),
    };
    let Some(client_id) = client_id else {
        span.reject(FailureReason::MissingToken);
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id is required",
        );
    };
    let Some(client) = idp.config.clients.iter().find(|c| c.id == client_id) else {
        span.reject(FailureReason::WrongClient);
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    span.attr(telemetry::attrs::CREDENTIAL_CLIENT_ID, client.id.clone());
    let grant = get("grant_type").unwrap_or_default();
    if !client.grants.iter().any(|g| g == grant) {
        span.reject(FailureReason::InvalidRequest);
        let code = if grant == "client_credentials" || grant == "password" {
            "unauthorized_client"
        } else {
            "unsupported_grant_type"
        };
        return oauth_error(
            StatusCode::BAD_REQUEST,
            code,
            "grant not allowed for this client",
        );
    }
    if let Some(expected) = &client.secret {
        let ok = client_secret
            .as_ref()
            .is_some_and(|s| constant_time_eq(s.expose_secret(), expected.expose_secret()));
        if !ok {
            span.reject(FailureReason::BadSignature);
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    }
    let (subject, scopes, kind) = if grant == "password" {
        let user = get("username").and_then(|u| idp.config.users.iter().find(|x| x.name == u));
        let pw_ok = match (user, get("password")) {
            (Some(u), Some(p)) => constant_time_eq(p, u.password.expose_secret()),
            _ => false,
        };
        let Some(user) = user.filter(|_| pw_ok) else {
            span.reject(FailureReason::Forbidden);
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "invalid username or password",
            );
        };
        (
            user.name.clone(),
            user.scopes.clone(),
            CredentialKind::UserJwt,
        )
    } else {
        let requested = get("scope").unwrap_or(&client.scopes);
        let allowed: Vec<&str> = client.scopes.split_whitespace().collect();
        if requested.split_whitespace().any(|s| !allowed.contains(&s)) {
            span.reject(FailureReason::InsufficientScope);
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "scope not allowed for this client",
            );
        }
        (
            client.id.clone(),
            requested.to_owned(),
            CredentialKind::AgentJwt,
        )
    };
    let mut ttl = client.token_ttl_s.unwrap_or(idp.config.token_ttl_s);
    if let Some(t) = get("tokentrail_ttl_s") {
        if !idp.config.test_controls {
            span.reject(FailureReason::InvalidRequest);
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "tokentrail_ttl_s is a test control and is disabled",
            );
        }
        match t.parse::<i64>() {
            Ok(v) => ttl = v,
            Err(_) => {
                span.reject(FailureReason::InvalidRequest);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "tokentrail_ttl_s must be an integer",
                );
            }
        }
    }
    let now = now_epoch();
    let jti: [u8; 12] = rand::random();
    let claims = json!({
        "iss": idp.issuer(),
        "sub": subject,
        "aud": client.audience,
        "client_id": client.id,
        "scope": scopes,
        "iat": now,
        "nbf": now.min(now + ttl) - 1,
        "exp": now + ttl,
        "jti": hex::encode(jti),
        "token_use": "access",
    });
    let token = match idp.sign(&claims) {
        Ok(t) => t,
        Err(e) => {
            span.reject(FailureReason::Internal);
            tracing::error!(error = %e, "signing failed");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            );
        }
    };
    if let Ok(parsed) = serde_json::from_value::<auth::Claims>(claims) {
        let mut summary = parsed.summary(None, Some("RS256"));
        // Recorded as soon as the client was known (so a refusal shows it too): once is enough.
        summary.client_id = None;
        span.credential(&CredentialProvenance::verified(kind, &token, summary));
    }
    span.ok();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "access_token": token.expose_secret(),
            "token_type": "Bearer",
            "expires_in": ttl.max(0),
            "scope": scopes,
        })),
    )
        .into_response()
}

fn serde_urlencoded_parse(body: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let text = std::str::from_utf8(body).ok()?;
    let mut out = std::collections::HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k)?, percent_decode(v)?);
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_and_bad_config_is_explained() {
        let cfg = IdpConfig::default_config().expect("defaults");
        assert_eq!(cfg.users.len(), 3);
        let bad = "users = []\n[[clients]]\nid='x'\naudience='a'\ngrants=['implicit']\n";
        let e = IdpConfig::from_toml(bad).expect_err("implicit grant refused");
        assert!(e.to_string().contains("grants may only be"));
    }

    #[test]
    fn form_decoding() {
        let f = serde_urlencoded_parse(b"grant_type=password&username=al%20ice&scope=a+b")
            .expect("form");
        assert_eq!(f["username"], "al ice");
        assert_eq!(f["scope"], "a b");
        assert!(serde_urlencoded_parse(b"a=%zz").is_none());
    }
}
