//! OAuth 2.0 client credentials: one exchange ([`client_credentials`]), a single-flight cache that
//! keeps a token until 80 % of its lifetime ([`TokenCache`]), and the two together for a client
//! whose secret is fixed ([`TokenSource`], the agent's M2M token). The broker uses the cache with
//! a fetch that first reads the client secret from Secrets Manager.

use std::future::Future;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use telemetry::{Role, Span, TraceContext, attrs::semconv};
use tokio::sync::Mutex;
use tracing::instrument;

/// Errors getting a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The IdP could not be reached.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The IdP did not answer in time.
    #[error("token endpoint did not answer in time")]
    Timeout,
    /// The IdP refused.
    #[error("token endpoint refused the request ({status}): {error}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// OAuth `error` code.
        error: String,
    },
}

impl TokenError {
    /// The failure reason a hop reports for this error.
    pub fn reason(&self) -> telemetry::FailureReason {
        match self {
            TokenError::Timeout => telemetry::FailureReason::UpstreamTimeout,
            _ => telemetry::FailureReason::UpstreamUnavailable,
        }
    }
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

/// A token the IdP issued.
#[derive(Clone)]
pub struct IssuedToken {
    /// The access token.
    pub token: SecretString,
    /// Its lifetime in seconds, as the IdP said.
    pub expires_in: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// The client of an exchange.
#[derive(Clone)]
pub struct ClientCredentials {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret`.
    pub client_secret: SecretString,
    /// Scopes to ask for (space separated); empty asks for the client's default.
    pub scope: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// One `client_credentials` exchange at `endpoint`, recorded as an `idp.client_credentials`
/// client span under `parent`.
#[instrument(skip_all, level = "debug", name = "oauth.client_credentials")]
pub async fn client_credentials(
    http: &reqwest::Client,
    endpoint: &str,
    client: &ClientCredentials,
    parent: &TraceContext,
) -> Result<IssuedToken, TokenError> {
    let span = Span::child("idp.client_credentials", Role::Client, parent);
    span.attr(semconv::URL_FULL, endpoint.to_owned());
    span.attr(semconv::HTTP_REQUEST_METHOD, "POST");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", client.client_id.as_str()),
        ("client_secret", client.client_secret.expose_secret()),
    ];
    if !client.scope.is_empty() {
        form.push(("scope", client.scope.as_str()));
    }
    let resp = http
        .post(endpoint)
        .form(&form)
        .headers(span.context().http_headers())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                span.fail("timeout");
                TokenError::Timeout
            } else {
                span.fail("unreachable");
                TokenError::Unreachable(e.without_url().to_string())
            }
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
    Ok(IssuedToken {
        token: SecretString::from(body.access_token),
        expires_in: body.expires_in,
    })
}

struct Cached {
    token: SecretString,
    expires_at: Instant,
    refresh_at: Instant,
}

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Served from the cache.
    Hit,
    /// Fetched now.
    Miss,
}

/// A cached token: kept until 80 % of its lifetime, refreshed by one caller at a time (the others
/// wait for that refresh and share its result, so a burst causes one exchange).
#[derive(Default)]
pub struct TokenCache {
    slot: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// The cached token with its remaining lifetime, or the result of `fetch`.
    pub async fn get_or_fetch<F, Fut, E>(&self, fetch: F) -> Result<(IssuedToken, CacheUse), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IssuedToken, E>>,
    {
        let mut guard = self.slot.lock().await;
        let now = Instant::now();
        if let Some(c) = guard.as_ref().filter(|c| now < c.refresh_at) {
            let remaining = c.expires_at.saturating_duration_since(now).as_secs();
            return Ok((
                IssuedToken {
                    token: c.token.clone(),
                    expires_in: remaining,
                },
                CacheUse::Hit,
            ));
        }
        let issued = fetch().await?;
        let lifetime = Duration::from_secs(issued.expires_in);
        *guard = Some(Cached {
            token: issued.token.clone(),
            expires_at: now + lifetime,
            refresh_at: now + lifetime.mul_f64(0.8),
        });
        Ok((issued, CacheUse::Miss))
    }
}

/// A client-credentials token source with a fixed client.
pub struct TokenSource {
    http: reqwest::Client,
    endpoint: String,
    client: ClientCredentials,
    cache: TokenCache,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.endpoint)
            .field("client", &self.client)
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
            client: ClientCredentials {
                client_id,
                client_secret,
                scope,
            },
            cache: TokenCache::default(),
        }
    }

    /// A valid token: cached, or fetched (one fetch at a time).
    #[instrument(skip_all, level = "debug", name = "m2m.token")]
    pub async fn token(&self, parent: &TraceContext) -> Result<SecretString, TokenError> {
        let (issued, _) = self
            .cache
            .get_or_fetch(|| client_credentials(&self.http, &self.endpoint, &self.client, parent))
            .await?;
        Ok(issued.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_burst_shares_one_fetch_and_errors_are_not_cached() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let failed: Result<_, &str> = cache.get_or_fetch(|| async { Err("down") }).await;
        assert!(failed.is_err());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(|| async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(IssuedToken {
                            token: SecretString::from("t".to_owned()),
                            expires_in: 300,
                        })
                    })
                    .await
            }));
        }
        let mut misses = 0;
        for t in tasks {
            let (issued, used) = t.await.unwrap().unwrap();
            assert!(issued.expires_in <= 300);
            if used == CacheUse::Miss {
                misses += 1;
            }
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(misses, 1);
    }

    #[tokio::test]
    async fn a_token_is_refreshed_after_80_percent_of_its_life() {
        let cache = TokenCache::default();
        let short = || async {
            Ok::<_, ()>(IssuedToken {
                token: SecretString::from("t".to_owned()),
                expires_in: 0,
            })
        };
        assert_eq!(cache.get_or_fetch(short).await.unwrap().1, CacheUse::Miss);
        assert_eq!(cache.get_or_fetch(short).await.unwrap().1, CacheUse::Miss);
    }
}
