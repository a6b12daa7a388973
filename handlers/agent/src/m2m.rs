//! The agent's own token (OAuth client credentials), cached until shortly before expiry, with a
//! single-flight refresh.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use telemetry::{Role, Span, TraceContext, attrs::semconv};
use tokio::sync::Mutex;
use tracing::instrument;

/// Errors getting a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The IdP could not be reached or timed out.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The IdP refused.
    #[error("token endpoint refused the request ({status}): {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth `error` code.
        error: String,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// A client-credentials token source.
pub struct TokenSource {
    http: reqwest::Client,
    endpoint: String,
    client_id: String,
    client_secret: SecretString,
    scope: String,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// New source.
    pub fn new(
        http: reqwest::Client,
        endpoint: String,
        client_id: String,
        client_secret: SecretString,
        scope: String,
    ) -> Self {
        Self {
            http,
            endpoint,
            client_id,
            client_secret,
            scope,
            cached: Mutex::new(None),
        }
    }

    /// A valid token: cached, or fetched (one fetch at a time).
    #[instrument(skip_all, level = "debug", name = "m2m.token")]
    pub async fn token(&self, parent: &TraceContext) -> Result<SecretString, TokenError> {
        let mut guard = self.cached.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let span = Span::child("idp.client_credentials", Role::Client, parent);
        span.attr(semconv::URL_FULL, self.endpoint.clone());
        span.attr(semconv::HTTP_REQUEST_METHOD, "POST");
        let mut req = self.http.post(&self.endpoint).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", self.scope.as_str()),
        ]);
        req = req.headers(span.context().http_headers());
        let resp = req.send().await.map_err(|e| {
            span.fail("unreachable");
            TokenError::Unreachable(e.without_url().to_string())
        })?;
        let status = resp.status().as_u16();
        span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
        if status != 200 {
            span.fail("refused");
            let err: OAuthError = resp.json().await.unwrap_or_default();
            return Err(TokenError::Refused {
                status,
                error: err.error,
            });
        }
        let body: TokenResponse = resp.json().await.map_err(|e| {
            span.fail("bad_response");
            TokenError::Unreachable(format!("unreadable token response: {}", e.without_url()))
        })?;
        let token = SecretString::from(body.access_token);
        // Refresh at 80 % of the lifetime.
        let refresh_in = Duration::from_secs(body.expires_in.saturating_mul(8) / 10);
        *guard = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_in,
        });
        Ok(token)
    }
}
