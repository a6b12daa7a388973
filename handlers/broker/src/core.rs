//! `POST /token`: caller proof in, service token out. Fail closed at every step.
//!
//! Request: `{"caller_proof": {"url": "https://sts…/?Action=GetCallerIdentity&Version=2011-06-15",
//! "headers": {"authorization": "AWS4-HMAC-SHA256 …", "x-amz-date": …, "x-amz-security-token": …}},
//! "credential": "orders-api"}` (a signed, unsent request: see [`auth::iam`])
//! (`credential` optional when the caller may receive exactly one).
//! Response: `{"access_token", "expires_in", "token_type": "Bearer", "credential"}`, or the
//! rejection body every hop uses (`{"error": {"hop": "broker.token", "reason", "message"}}`).
//!
//! Steps, each a span: check the proof (endpoint, action, freshness, bound to this broker);
//! `broker→sts` executes it and learns the caller's ARN; the policy maps the caller's role to a
//! credential (`caller_not_allowed` otherwise); `broker→secrets` reads the client id/secret
//! (cached with a TTL); `broker→idp` exchanges it for a service token (cached until 80 % of its
//! lifetime, one exchange at a time per credential).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auth::Rejection;
use auth::iam::{self, CallerProof, ProofPolicy};
use auth::oauth::{CacheUse, ClientCredentials, IssuedToken, TokenCache, TokenError};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use telemetry::attrs::{self, semconv};
use telemetry::{FailureReason, Hop, HopSpan, Pattern, Role, Span, TraceContext};
use tracing::instrument;

use crate::policy::{Credential, Policy};
use crate::secrets::{SecretError, SecretStore};

/// Everything the broker needs.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// What a caller proof must look like.
    pub proof: ProofPolicy,
    /// Who may receive what.
    pub policy: Policy,
    /// The IdP's token endpoint.
    pub token_endpoint: String,
    /// Bound on the STS call and on the IdP exchange.
    pub upstream_timeout: Duration,
    /// How long a secret read stays cached.
    pub secret_ttl: Duration,
    /// Fault knob for the demo: delay every answer by this much.
    pub fault_delay: Duration,
}

/// Counters of the calls the broker made (for tests, benchmarks and the demo).
#[derive(Debug, Default)]
pub struct Stats {
    /// `sts:GetCallerIdentity` calls.
    pub sts_calls: AtomicU64,
    /// Secret reads.
    pub secret_reads: AtomicU64,
    /// Token exchanges at the IdP.
    pub exchanges: AtomicU64,
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    settings: BrokerSettings,
    secrets: Arc<dyn SecretStore>,
    http: reqwest::Client,
    secret_cache: std::sync::Mutex<HashMap<String, (SecretString, Instant)>>,
    tokens: HashMap<String, TokenCache>,
    /// Counters.
    pub stats: Stats,
}

/// A response: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Value,
}

#[derive(Deserialize)]
struct TokenRequest {
    caller_proof: Value,
    #[serde(default)]
    credential: Option<String>,
}

enum FetchError {
    Secret(SecretError),
    BadSecret(String),
    Token(TokenError),
}

#[derive(Deserialize)]
struct ClientSecret {
    client_id: String,
    client_secret: SecretString,
}

fn reject(span: &mut HopSpan, reason: FailureReason, message: &str) -> Reply {
    span.reject(reason);
    tracing::info!(%reason, detail = message, "token request refused");
    let r = Rejection::with_message(Hop::Broker, reason, message);
    Reply {
        status: r.status(),
        body: r.body(),
    }
}

/// What STS said about a caller proof.
enum StsAnswer {
    Caller(String),
    Refused(String),
}

fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(xml[start..end].trim())
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

impl Broker {
    /// A broker over `secrets`.
    pub fn new(settings: BrokerSettings, secrets: Arc<dyn SecretStore>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(settings.upstream_timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let tokens = settings
            .policy
            .credentials()
            .map(|(name, _)| (name.to_owned(), TokenCache::default()))
            .collect();
        Ok(Self {
            settings,
            secrets,
            http,
            secret_cache: std::sync::Mutex::new(HashMap::new()),
            tokens,
            stats: Stats::default(),
        })
    }

    /// Handle one `POST /token` body under `parent`.
    #[instrument(skip_all, level = "debug", name = "broker.handle")]
    pub async fn handle(&self, body: &[u8], parent: &TraceContext) -> Reply {
        let mut span = HopSpan::hop(Hop::Broker, Pattern::Broker, parent);
        span.carrier("body:caller_proof");
        if !self.settings.fault_delay.is_zero() {
            tokio::time::sleep(self.settings.fault_delay).await;
        }
        let request: TokenRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return reject(
                    &mut span,
                    FailureReason::InvalidRequest,
                    &format!(
                        "body must be {{\"caller_proof\": {{\"url\", \"headers\"}}}} (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                );
            }
        };
        span.attr(
            attrs::CREDENTIAL_KIND,
            telemetry::CredentialKind::IamSession.as_str(),
        );
        let proof = match CallerProof::from_json(&request.caller_proof) {
            Ok(p) => p,
            Err(e) => return reject(&mut span, FailureReason::InvalidRequest, &e.to_string()),
        };
        if let Err(e) = iam::check_proof(&proof, &self.settings.proof, iam::now_epoch()) {
            let reason = match e {
                iam::IamError::Stale { .. } => FailureReason::Expired,
                iam::IamError::FutureDated { .. } => FailureReason::NotYetValid,
                _ => FailureReason::InvalidRequest,
            };
            return reject(&mut span, reason, &e.to_string());
        }
        let caller_arn = match self.get_caller_identity(&proof, &span.context()).await {
            Ok(StsAnswer::Caller(arn)) => arn,
            Ok(StsAnswer::Refused(code)) => {
                return reject(
                    &mut span,
                    FailureReason::BadSignature,
                    &format!("STS refused the caller proof ({code})"),
                );
            }
            Err((reason, message)) => return reject(&mut span, reason, &message),
        };
        let role = iam::caller_role(&caller_arn);
        span.attr(attrs::BROKER_CALLER_ARN, caller_arn.clone());
        span.attr(attrs::BROKER_CALLER_ROLE, role);
        let (name, credential) = match self
            .settings
            .policy
            .resolve(&caller_arn, request.credential.as_deref())
        {
            Ok(found) => found,
            Err(denied) => {
                return reject(
                    &mut span,
                    FailureReason::CallerNotAllowed,
                    &denied.to_string(),
                );
            }
        };
        span.attr(attrs::BROKER_CREDENTIAL, name.to_owned());
        span.attr(attrs::BROKER_SECRET_NAME, credential.secret.clone());
        let Some(cache) = self.tokens.get(name) else {
            return reject(
                &mut span,
                FailureReason::Internal,
                "no cache for credential",
            );
        };
        let ctx = span.context();
        let fetched = cache
            .get_or_fetch(|| self.fetch_token(name, credential, &ctx))
            .await;
        match fetched {
            Ok((issued, used)) => {
                span.attr(
                    attrs::BROKER_CACHE,
                    if used == CacheUse::Hit { "hit" } else { "miss" },
                );
                span.attr(
                    attrs::BROKER_ISSUED_FINGERPRINT,
                    telemetry::fingerprint::fingerprint(&issued.token),
                );
                span.ok();
                Reply {
                    status: 200,
                    body: json!({
                        "access_token": issued.token.expose_secret(),
                        "expires_in": issued.expires_in,
                        "token_type": "Bearer",
                        "credential": name,
                    }),
                }
            }
            Err(FetchError::Secret(e)) => {
                reject(&mut span, FailureReason::SecretUnavailable, &e.to_string())
            }
            Err(FetchError::BadSecret(m)) => {
                reject(&mut span, FailureReason::SecretUnavailable, &m)
            }
            Err(FetchError::Token(e)) => {
                if matches!(e, TokenError::Refused { .. }) {
                    // The credential may have been rotated: read the secret again next time.
                    self.forget_secret(&credential.secret);
                }
                reject(
                    &mut span,
                    e.reason(),
                    &format!("the IdP did not issue a service token: {e}"),
                )
            }
        }
    }

    /// `broker→sts`: send the checked, signed request.
    #[instrument(skip_all, level = "debug", name = "broker.sts")]
    async fn get_caller_identity(
        &self,
        proof: &CallerProof,
        parent: &TraceContext,
    ) -> Result<StsAnswer, (FailureReason, String)> {
        self.stats.sts_calls.fetch_add(1, Ordering::Relaxed);
        let span = Span::child("sts.GetCallerIdentity", Role::Client, parent);
        span.attr(semconv::RPC_SYSTEM, "aws-api");
        span.attr(semconv::RPC_SERVICE, "STS");
        span.attr(semconv::RPC_METHOD, "GetCallerIdentity");
        span.attr(
            semconv::SERVER_ADDRESS,
            self.settings.proof.sts_endpoint.clone(),
        );
        let mut req = self
            .http
            .get(&proof.url)
            .header(iam::BROKER_ID_HEADER, &self.settings.proof.broker_id)
            .headers(span.context().http_headers());
        for (name, value) in &proof.headers {
            req = req.header(name.as_str(), value.expose_secret());
        }
        let resp = req.send().await.map_err(|e| {
            let reason = auth::wire::transport_failure(&e);
            span.fail(reason.as_str());
            (
                reason,
                format!("STS could not be reached: {}", e.without_url()),
            )
        })?;
        let status = resp.status().as_u16();
        span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
        if let Some(id) = resp
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
        {
            span.attr(semconv::AWS_REQUEST_ID, id.to_owned());
        }
        let text = resp.text().await.map_err(|e| {
            span.fail("bad_response");
            (
                FailureReason::UpstreamUnavailable,
                format!("STS answer unreadable: {}", e.without_url()),
            )
        })?;
        if status == 200 {
            return match xml_text(&text, "Arn") {
                Some(arn) => Ok(StsAnswer::Caller(xml_unescape(arn))),
                None => {
                    span.fail("bad_response");
                    Err((
                        FailureReason::UpstreamUnavailable,
                        "STS answered without an Arn".into(),
                    ))
                }
            };
        }
        let code = xml_text(&text, "Code")
            .unwrap_or("unknown error")
            .to_owned();
        span.fail(&code);
        if (400..500).contains(&status) {
            Ok(StsAnswer::Refused(code))
        } else {
            Err((
                FailureReason::UpstreamUnavailable,
                format!("STS failed ({status} {code})"),
            ))
        }
    }

    fn cached_secret(&self, id: &str) -> Option<SecretString> {
        let cache = self.secret_cache.lock().ok()?;
        cache
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.settings.secret_ttl)
            .map(|(s, _)| s.clone())
    }

    fn forget_secret(&self, id: &str) {
        if let Ok(mut cache) = self.secret_cache.lock() {
            cache.remove(id);
        }
    }

    /// `broker→secrets` (unless cached) then `broker→idp`.
    async fn fetch_token(
        &self,
        name: &str,
        credential: &Credential,
        parent: &TraceContext,
    ) -> Result<IssuedToken, FetchError> {
        let raw = match self.cached_secret(&credential.secret) {
            Some(s) => s,
            None => {
                let span = Span::child("secretsmanager.GetSecretValue", Role::Client, parent);
                if self.secrets.kind() == "secretsmanager" {
                    span.attr(semconv::RPC_SYSTEM, "aws-api");
                }
                span.attr(semconv::RPC_SERVICE, "SecretsManager");
                span.attr(semconv::RPC_METHOD, "GetSecretValue");
                span.attr(attrs::BROKER_SECRET_NAME, credential.secret.clone());
                self.stats.secret_reads.fetch_add(1, Ordering::Relaxed);
                let value = span
                    .context()
                    .scope(self.secrets.get(&credential.secret))
                    .await
                    .map_err(|e| {
                        span.fail(match e {
                            SecretError::NotFound(_) => "ResourceNotFoundException",
                            SecretError::Unreadable { .. } => "unreadable",
                        });
                        FetchError::Secret(e)
                    })?;
                if let Ok(mut cache) = self.secret_cache.lock() {
                    cache.insert(credential.secret.clone(), (value.clone(), Instant::now()));
                }
                value
            }
        };
        let parsed: ClientSecret = serde_json::from_str(raw.expose_secret()).map_err(|_| {
            FetchError::BadSecret(format!(
                "secret `{}` must be JSON {{\"client_id\": …, \"client_secret\": …}}",
                credential.secret
            ))
        })?;
        let client = ClientCredentials {
            client_id: parsed.client_id,
            client_secret: parsed.client_secret,
            scope: credential.scope.clone(),
        };
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(credential = name, "exchanging the service credential");
        auth::oauth::client_credentials(&self.http, &self.settings.token_endpoint, &client, parent)
            .await
            .map_err(FetchError::Token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_xml_is_read() {
        let ok = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::1:assumed-role/r/s&amp;x</Arn></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(
            xml_unescape(xml_text(ok, "Arn").unwrap()),
            "arn:aws:sts::1:assumed-role/r/s&x"
        );
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>";
        assert_eq!(xml_text(err, "Code"), Some("SignatureDoesNotMatch"));
        assert_eq!(xml_text(err, "Arn"), None);
    }
}
