//! The app: logs a user in at the IdP, calls the Runtime with the user's JWT in the allowlisted
//! custom header, and reports which hop answered. Its span is the root of the request's trace.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use auth::Rejection;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use telemetry::{
    CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern, Role, Span,
    TraceContext, attrs::semconv,
};

use crate::stack::Endpoints;

/// Header the app puts the user's token in (allowlisted on the Runtime).
pub const USER_HEADER: &str = "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken";

/// Faults the app can inject into its own token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TokenFault {
    /// A token that expired two minutes ago.
    Expired,
    /// A genuine token whose payload was changed after signing.
    Tampered,
    /// No token at all.
    Missing,
    /// A genuine token issued for another audience.
    WrongAudience,
    /// A header value over the Runtime's 4 KB limit.
    Oversized,
}

impl TokenFault {
    /// Spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFault::Expired => "expired",
            TokenFault::Tampered => "tampered",
            TokenFault::Missing => "missing",
            TokenFault::WrongAudience => "wrong-audience",
            TokenFault::Oversized => "oversized",
        }
    }
}

/// Where a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Reached the target and got an answer.
    Ok,
    /// Stopped at `hop` for `reason`.
    Rejected {
        /// Hop.
        hop: Hop,
        /// Reason.
        reason: FailureReason,
    },
}

/// One request's result.
#[derive(Debug, Clone, Serialize)]
pub struct CallResult {
    /// User.
    pub user: String,
    /// Fault injected.
    pub fault: Option<TokenFault>,
    /// Outcome.
    pub outcome: Outcome,
    /// HTTP status from the Runtime.
    pub status: u16,
    /// Message (rejection message or the identity that reached the target).
    pub message: String,
    /// Trace id.
    pub trace_id: String,
    /// End-to-end latency.
    pub latency: Duration,
    /// The token the app sent (kept out of every output; tests use it for leak scans).
    #[serde(skip)]
    pub token: Option<SecretString>,
}

/// What to ask for.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// User.
    pub user: String,
    /// MCP tool.
    pub tool: String,
    /// Arguments.
    pub arguments: Value,
    /// Fault.
    pub fault: Option<TokenFault>,
}

/// The app.
#[derive(Debug, Clone)]
pub struct App {
    http: reqwest::Client,
    endpoints: Endpoints,
}

/// Demo users' passwords (from the local IdP's default configuration).
pub fn password_of(user: &str) -> String {
    format!("{user}-password")
}

impl App {
    /// New app against `endpoints`.
    pub fn new(endpoints: Endpoints) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            endpoints,
        })
    }

    /// Log `user` in (password grant) through `client`; `ttl` is the local IdP's test control.
    pub async fn login(
        &self,
        user: &str,
        client: &str,
        ttl: Option<i64>,
        parent: &TraceContext,
    ) -> Result<SecretString> {
        let span = Span::child("idp.password_grant", Role::Client, parent);
        let url = format!("{}/token", self.endpoints.idp);
        span.attr(semconv::URL_FULL, url.clone());
        let password = password_of(user);
        let mut form = vec![
            ("grant_type", "password".to_owned()),
            ("client_id", client.to_owned()),
            ("username", user.to_owned()),
            ("password", password),
        ];
        if let Some(t) = ttl {
            form.push(("tokentrail_ttl_s", t.to_string()));
        }
        let mut req = self.http.post(&url).form(&form);
        req = req.headers(span.context().http_headers());
        let resp = req.send().await.context("the IdP could not be reached")?;
        let status = resp.status();
        span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
        let body: Value = resp.json().await.context("the IdP's answer is not JSON")?;
        if !status.is_success() {
            span.fail("login_failed");
            bail!(
                "login of `{user}` failed: {}",
                body.get("error_description")
                    .or(body.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
            );
        }
        body.get("access_token")
            .and_then(Value::as_str)
            .map(|t| SecretString::from(t.to_owned()))
            .context("the IdP's answer has no access_token")
    }

    /// Send one request as the app (logging the user in first, applying the spec's fault).
    pub async fn call(&self, spec: &CallSpec) -> Result<CallResult> {
        let started = Instant::now();
        let mut span = HopSpan::hop(Hop::App, self.endpoints.pattern, &TraceContext::none());
        let token = match self.user_token(spec, &span.context()).await {
            Ok(t) => t,
            Err(e) => {
                // The request never entered the chain. The IdP's own span says why it refused
                // the login; an IdP the app could not reach is the app's to report.
                let unreachable = e.chain().any(|c| {
                    c.downcast_ref::<reqwest::Error>()
                        .is_some_and(|r| r.is_connect() || r.is_timeout())
                });
                if unreachable {
                    span.reject(FailureReason::UpstreamUnavailable);
                } else {
                    span.fail("login_failed");
                }
                return Err(e);
            }
        };
        self.send(span, spec, token, started).await
    }

    /// The user's token as the spec's fault wants it (logging the user in under `cx`).
    async fn user_token(&self, spec: &CallSpec, cx: &TraceContext) -> Result<Option<SecretString>> {
        Ok(match spec.fault {
            Some(TokenFault::Missing) => None,
            Some(TokenFault::Expired) => Some(
                self.login(&spec.user, "tokentrail-app", Some(-120), cx)
                    .await?,
            ),
            Some(TokenFault::WrongAudience) => {
                Some(self.login(&spec.user, "other-app", None, cx).await?)
            }
            Some(TokenFault::Tampered) => Some(tamper(
                &self.login(&spec.user, "tokentrail-app", None, cx).await?,
            )?),
            Some(TokenFault::Oversized) => {
                let t = self.login(&spec.user, "tokentrail-app", None, cx).await?;
                Some(SecretString::from(format!(
                    "{}{}",
                    t.expose_secret(),
                    "A".repeat(5000)
                )))
            }
            None => Some(self.login(&spec.user, "tokentrail-app", None, cx).await?),
        })
    }

    /// Send one request with a token obtained earlier (no login).
    pub async fn call_with_token(
        &self,
        spec: &CallSpec,
        token: SecretString,
    ) -> Result<CallResult> {
        self.call_prepared(spec, Some(token)).await
    }

    /// Send one request with a token prepared earlier, or none (no login).
    pub async fn call_prepared(
        &self,
        spec: &CallSpec,
        token: Option<SecretString>,
    ) -> Result<CallResult> {
        let span = HopSpan::hop(Hop::App, self.endpoints.pattern, &TraceContext::none());
        self.send(span, spec, token, Instant::now()).await
    }

    /// As [`App::call_with_token`], under a given parent (e.g. an unsampled one).
    pub async fn call_with_token_under(
        &self,
        spec: &CallSpec,
        token: SecretString,
        parent: &TraceContext,
    ) -> Result<CallResult> {
        let span = HopSpan::hop(Hop::App, self.endpoints.pattern, parent);
        self.send(span, spec, Some(token), Instant::now()).await
    }

    async fn send(
        &self,
        mut span: HopSpan,
        spec: &CallSpec,
        token: Option<SecretString>,
        started: Instant,
    ) -> Result<CallResult> {
        let cx = span.context();
        let trace_id = span.trace_id();
        span.carrier(&format!("header:{USER_HEADER}"));
        match &token {
            Some(t) => span.credential(&match auth::verify::decode_unverified(t) {
                Ok(c) => CredentialProvenance::unverified_decoded(CredentialKind::UserJwt, t, c),
                Err(_) => CredentialProvenance::opaque(CredentialKind::UserJwt, t),
            }),
            None => span.credential(&CredentialProvenance::absent()),
        }
        let call = Span::child("runtime.invoke_agent_runtime", Role::Client, &cx);
        let url = format!(
            "{}/runtimes/{}/invocations",
            self.endpoints.runtime, self.endpoints.runtime_name
        );
        call.attr(semconv::URL_FULL, url.clone());
        let session: [u8; 20] = rand::random();
        let mut req = self
            .http
            .post(&url)
            .header(
                "x-amzn-bedrock-agentcore-runtime-session-id",
                format!("tokentrail-app-{}", hex::encode(session)),
            )
            .json(&json!({"tool": spec.tool, "arguments": spec.arguments}));
        if let Some(t) = &token {
            req = req.header(USER_HEADER, t.expose_secret());
        }
        req = req.headers(call.context().http_headers());
        let resp = req
            .send()
            .await
            .context("the Runtime could not be reached")?;
        let status = resp.status().as_u16();
        call.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
        drop(call);
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let (outcome, message) = if status == 200 {
            span.ok();
            let who = body
                .pointer("/result/reached_as")
                .and_then(Value::as_str)
                .map(|s| format!("reached target as {s}"))
                .unwrap_or_else(|| "reached target".to_owned());
            (Outcome::Ok, who)
        } else {
            let r = Rejection::from_json(&body).unwrap_or_else(|| {
                Rejection::with_message(
                    Hop::Runtime,
                    FailureReason::Internal,
                    format!("unexpected answer {status}"),
                )
            });
            span.downstream_failed(r.reason);
            (
                Outcome::Rejected {
                    hop: r.hop,
                    reason: r.reason,
                },
                r.message,
            )
        };
        drop(span);
        Ok(CallResult {
            user: spec.user.clone(),
            fault: spec.fault,
            outcome,
            status,
            message,
            trace_id,
            latency: started.elapsed(),
            token,
        })
    }
}

/// Change the payload's `sub` and keep header and signature.
pub(crate) fn tamper(token: &SecretString) -> Result<SecretString> {
    let parts: Vec<&str> = token.expose_secret().split('.').collect();
    if parts.len() != 3 {
        bail!("the IdP returned a token that is not a JWS");
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&engine.decode(parts[1])?)?;
    claims["sub"] = json!("mallory");
    let payload = engine.encode(claims.to_string());
    Ok(SecretString::from(format!(
        "{}.{payload}.{}",
        parts[0], parts[2]
    )))
}

/// The `p`th percentile (nearest rank) of an ascending slice; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A user's first order (demo data).
pub fn first_order(user: &str) -> &'static str {
    match user {
        "bob" => "B-2001",
        "carol" => "C-3001",
        _ => "A-1001",
    }
}

/// Print one result line.
pub fn describe(r: &CallResult) -> String {
    let (outcome, hop, reason) = match &r.outcome {
        Outcome::Ok => ("ok", "-".to_owned(), "-".to_owned()),
        Outcome::Rejected { hop, reason } => ("rejected", hop.to_string(), reason.to_string()),
    };
    format!(
        "{:<6} {:<15} {:<9} {:<20} {:<20} {:>4} {:>7.1}ms  {}",
        r.user,
        r.fault.map(TokenFault::as_str).unwrap_or("valid"),
        outcome,
        hop,
        reason,
        r.status,
        r.latency.as_secs_f64() * 1000.0,
        r.trace_id
    )
}

/// Header line for [`describe`].
pub const TABLE_HEADER: &str = "user   token           outcome   stopped at           reason               http  latency    trace id";

/// The endpoints of a stack `tokentrail up --pattern PATTERN --out OUT` is running.
pub fn running_stack(out: &Path, pattern: Pattern) -> Result<Endpoints> {
    let path = crate::stack::stack_file(out, pattern);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no running {pattern} stack found ({} is missing): start one with `tokentrail up --pattern {pattern} --out {}`",
            path.display(),
            out.display()
        ),
        Err(e) => bail!(
            "cannot read {}, the running {pattern} stack's description: {e}",
            path.display()
        ),
    };
    if !crate::stack::is_running(out, pattern)? {
        // What it left is of no use to anyone, and the key is a secret: clear it now.
        let cleared = match crate::stack::remove_dead_stack(out, pattern) {
            Ok(true) => " Its description and fingerprint key were removed.".to_owned(),
            Ok(false) => String::new(),
            Err(e) => format!(" What it left could not be removed: {e:#}."),
        };
        bail!(
            "the {pattern} stack described in {} is not running any more (its `tokentrail up` \
             ended without stopping it, e.g. it was killed): start one with `tokentrail up \
             --pattern {pattern} --out {}`.{cleared}",
            path.display(),
            out.display()
        );
    }
    let endpoints: Endpoints = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a stack description", path.display()))?;
    crate::stack::join_fingerprint_key(out, pattern)?;
    telemetry::provenance::follow_pseudonymization(endpoints.pseudonymize_subject)?;
    Ok(endpoints)
}

/// `tokentrail call`.
pub async fn call_command(
    out: &Path,
    pattern: Pattern,
    user: &str,
    order: Option<String>,
    fault: Option<TokenFault>,
) -> Result<ExitCode> {
    let endpoints = running_stack(out, pattern)?;
    let telemetry = crate::stack::init_app_telemetry(&endpoints)?;
    let app = App::new(endpoints)?;
    let spec = CallSpec {
        user: user.to_owned(),
        tool: "orders___getOrder".into(),
        arguments: json!({"orderId": order.unwrap_or_else(|| first_order(user).to_owned())}),
        fault,
    };
    let result = app.call(&spec).await;
    telemetry.flush(Duration::from_secs(5)).await;
    let r = result?;
    println!("{TABLE_HEADER}");
    println!("{}", describe(&r));
    println!("{}", r.message);
    Ok(if r.outcome == Outcome::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
