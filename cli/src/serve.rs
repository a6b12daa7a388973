//! `tokentrail serve <hop>`: one hop as its own process, configured from the environment.
//!
//! Prints `READY <hop> <url>` on stdout once listening. Stops on Ctrl-C, SIGTERM, or, when
//! `TOKENTRAIL_STOP_ON_STDIN_EOF=1` (set by the stack), when its standard input closes: so a
//! stack that dies, however it dies, leaves no orphan behind. Spans are flushed before exit.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::response::IntoResponse as _;
use lambda_front::env;
use telemetry::{Service, TelemetryConfig};
use tokio::io::AsyncReadExt;

/// Hops `serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HopName {
    /// OIDC IdP.
    Idp,
    /// Runtime front door.
    Runtime,
    /// Runtime agent.
    Agent,
    /// Gateway.
    Gateway,
    /// REQUEST interceptor (Lambda Invoke API shape).
    Interceptor,
    /// Target API.
    Target,
    /// Token broker.
    Broker,
}

impl HopName {
    /// Its `service.name`.
    pub fn service(self) -> Service {
        match self {
            HopName::Idp => Service::Idp,
            HopName::Runtime => Service::Runtime,
            HopName::Agent => Service::Agent,
            HopName::Gateway => Service::Gateway,
            HopName::Interceptor => Service::Interceptor,
            HopName::Target => Service::Target,
            HopName::Broker => Service::Broker,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        self.service().as_str()
    }
}

/// A variable's value, or `default` when unset or blank.
fn or(name: &str, default: &str) -> String {
    env::opt(name).unwrap_or_else(|| default.to_owned())
}

/// A comma-separated list, or `[default]` when unset or empty.
fn list_or(name: &str, default: &str) -> Vec<String> {
    let values = env::list(name);
    if values.is_empty() {
        vec![default.to_owned()]
    } else {
        values
    }
}

async fn build_router(hop: HopName, base: &str) -> Result<Router> {
    Ok(match hop {
        HopName::Idp => {
            let cfg = match std::env::var("TOKENTRAIL_IDP_CONFIG") {
                Ok(path) if !path.is_empty() => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read IdP config {path}"))?;
                    local::idp::IdpConfig::from_toml(&text)?
                }
                _ => local::idp::IdpConfig::default_config()?,
            };
            let issuer = or("TOKENTRAIL_IDP_ISSUER", base);
            local::idp::router(local::idp::Idp::new(issuer, cfg)?)
        }
        HopName::Target => target::front::router(target::TargetConfig::from_env()?.deps()?),
        HopName::Broker => {
            let (settings, secrets) = broker::config::from_env().await?;
            broker::front::router(std::sync::Arc::new(
                broker::Broker::new(settings, secrets).map_err(anyhow::Error::msg)?,
            ))
        }
        HopName::Interceptor => {
            let config = interceptor::InterceptorConfig::from_env()?;
            interceptor::front::router(Box::pin(interceptor::Deps::from_config(config)).await?)
        }
        HopName::Agent => agent::front::router(agent::Deps::new(agent::AgentConfig::from_env()?)?),
        HopName::Runtime => {
            let allow = list_or(
                "TOKENTRAIL_RUNTIME_ALLOWLIST",
                "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken",
            );
            let cfg = local::runtime::RuntimeConfig {
                name: or("TOKENTRAIL_RUNTIME_NAME", "tokentrail_agent"),
                allowlist: local::runtime::Allowlist::new(&allow, false)?,
                agent_url: env::required("TOKENTRAIL_AGENT_URL")?,
                credential_header: Some(
                    or(
                        "TOKENTRAIL_RUNTIME_USER_HEADER",
                        "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken",
                    )
                    .to_ascii_lowercase(),
                ),
                timeout: Duration::from_secs(30),
            };
            local::runtime::router(cfg)?
        }
        HopName::Gateway => {
            let issuer = env::required("TOKENTRAIL_ISSUER")?;
            let target_url = env::required("TOKENTRAIL_TARGET_URL")?;
            let target_name = or("TOKENTRAIL_TARGET_NAME", "orders");
            let openapi: serde_json::Value = match std::env::var("TOKENTRAIL_TARGET_OPENAPI") {
                Ok(path) if !path.is_empty() => serde_json::from_str(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {path}"))?,
                )?,
                _ => reqwest::get(format!("{}/openapi.json", target_url.trim_end_matches('/')))
                    .await
                    .context("cannot fetch the target's OpenAPI description")?
                    .json()
                    .await
                    .context("the target's OpenAPI description is not JSON")?,
            };
            let allowed_headers = match env::list("TOKENTRAIL_TARGET_ALLOWED_HEADERS") {
                names if names.is_empty() => Vec::new(),
                names => local::gateway::validate_allowed_headers(&names)?,
            };
            let interceptor = match std::env::var("TOKENTRAIL_INTERCEPTOR_INVOKE_URL") {
                Ok(url) if !url.is_empty() => Some(local::gateway::InterceptorConfig {
                    invoke_url: url,
                    pass_request_headers: telemetry::switch_from_env(
                        "TOKENTRAIL_PASS_REQUEST_HEADERS",
                    )?
                    .unwrap_or(true),
                    timeout: Duration::from_millis(env::positive(
                        "TOKENTRAIL_INTERCEPTOR_TIMEOUT_MS",
                        5000,
                        "time out every invocation of the interceptor",
                    )?),
                }),
                _ => None,
            };
            let cfg = local::gateway::GatewayConfig {
                public_url: base.to_owned(),
                discovery_url: or(
                    "TOKENTRAIL_DISCOVERY_URL",
                    &format!("{issuer}/.well-known/openid-configuration"),
                ),
                issuer,
                allowed_audience: list_or("TOKENTRAIL_GATEWAY_AUDIENCE", "gateway"),
                allowed_clients: list_or("TOKENTRAIL_GATEWAY_ALLOWED_CLIENTS", "tokentrail-agent"),
                allowed_scopes: list_or("TOKENTRAIL_GATEWAY_SCOPES", "gateway:invoke"),
                interceptor,
                tools: local::gateway::tools_from_openapi(&target_name, &openapi)?,
                target_name,
                target_url,
                target_allowed_headers: allowed_headers,
                target_timeout: Duration::from_secs(10),
            };
            local::gateway::router(cfg).map_err(anyhow::Error::msg)?
        }
    })
}

/// Ctrl-C, SIGTERM, or SIGHUP (the terminal it ran in was closed): each stops gracefully, so
/// spans are flushed and a stack removes its description and key.
pub(crate) async fn interrupt_or_terminate() {
    #[cfg(unix)]
    let signal = |kind: tokio::signal::unix::SignalKind| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(unix)]
    let (term, hangup) = (
        signal(tokio::signal::unix::SignalKind::terminate()),
        signal(tokio::signal::unix::SignalKind::hangup()),
    );
    #[cfg(not(unix))]
    let (term, hangup) = (std::future::pending::<()>(), std::future::pending::<()>());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
        _ = hangup => {},
    }
}

async fn stop_signal() {
    let stdin_eof = async {
        if std::env::var("TOKENTRAIL_STOP_ON_STDIN_EOF").as_deref() == Ok("1") {
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = interrupt_or_terminate() => {},
        _ = stdin_eof => {},
    }
}

/// Refuse to start with an invalid `TOKENTRAIL_PATTERN`.
fn check_pattern() -> Result<()> {
    telemetry::Pattern::from_env()
        .map(|_| ())
        .with_context(|| format!("invalid {}", telemetry::attrs::PATTERN_ENV))
}

/// Fault injection for load tests: `TOKENTRAIL_STALL_ONCE=500ms@4s` stalls the whole hop once
/// for 500 ms, 4 s after its first request: every request arriving meanwhile waits until the
/// stall ends (a pause, as a GC or a frozen sandbox would cause).
pub const STALL_ENV: &str = "TOKENTRAIL_STALL_ONCE";

/// Parse `DURATION@AFTER` (`500ms@4s`).
pub fn parse_stall(v: &str) -> Result<(Duration, Duration)> {
    let (d, at) = v
        .split_once('@')
        .with_context(|| format!("{STALL_ENV}=`{v}`: expected DURATION@AFTER, e.g. 500ms@4s"))?;
    let d = crate::load::parse_duration(d).map_err(|e| anyhow::anyhow!("{STALL_ENV}: {e}"))?;
    let at = crate::load::parse_duration(at).map_err(|e| anyhow::anyhow!("{STALL_ENV}: {e}"))?;
    Ok((d, at))
}

#[derive(Default)]
struct StallState {
    first: Option<tokio::time::Instant>,
    until: Option<tokio::time::Instant>,
    done: bool,
}

fn with_stall(router: Router, stall: Duration, after: Duration) -> Router {
    let state = std::sync::Arc::new(std::sync::Mutex::new(StallState::default()));
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let state = state.clone();
            async move {
                let now = tokio::time::Instant::now();
                let wait = match state.lock() {
                    Ok(mut s) => {
                        let first = *s.first.get_or_insert(now);
                        if !s.done && now >= first + after {
                            s.done = true;
                            s.until = Some(now + stall);
                        }
                        s.until.filter(|u| *u > now)
                    }
                    Err(_) => None,
                };
                if let Some(until) = wait {
                    tokio::time::sleep_until(until).await;
                }
                next.run(req).await
            }
        },
    ))
}

/// Fault injection for load tests: `TOKENTRAIL_FAULT_FILE=PATH` names a JSON file
/// `{"kind": "outage" | "latency", "from_unix_ms": N, "until_unix_ms": N, "delay_ms": N}` the hop
/// reads (again whenever it changes, checked at most every 50 ms): between the two instants it
/// answers every request with 503 (outage) or delays every request by `delay_ms` (latency).
/// A missing file means no fault. `tokentrail load --outage/--latency` writes it.
pub const FAULT_FILE_ENV: &str = "TOKENTRAIL_FAULT_FILE";

/// A fault window as [`FAULT_FILE_ENV`]'s file describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FaultWindow {
    /// What happens during the window.
    pub kind: FaultKind,
    /// Start, Unix milliseconds.
    pub from_unix_ms: u64,
    /// End, Unix milliseconds.
    pub until_unix_ms: u64,
    /// Added delay for `latency`.
    #[serde(default)]
    pub delay_ms: u64,
}

/// Kinds of [`FaultWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Every request answered 503.
    Outage,
    /// Every request delayed.
    Latency,
}

impl FaultWindow {
    fn active(&self, now_ms: u64) -> bool {
        (self.from_unix_ms..self.until_unix_ms).contains(&now_ms)
    }
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[derive(Default)]
struct FaultFileState {
    checked: Option<std::time::Instant>,
    modified: Option<std::time::SystemTime>,
    window: Option<FaultWindow>,
}

fn with_fault_file(router: Router, path: std::path::PathBuf, hop: HopName) -> Router {
    let state = std::sync::Arc::new(std::sync::Mutex::new(FaultFileState::default()));
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let state = state.clone();
            let path = path.clone();
            async move {
                let window = match state.lock() {
                    Ok(mut s) => {
                        let now = std::time::Instant::now();
                        if s.checked
                            .is_none_or(|c| now.duration_since(c) >= Duration::from_millis(50))
                        {
                            s.checked = Some(now);
                            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
                            if modified != s.modified {
                                s.modified = modified;
                                s.window = match std::fs::read(&path) {
                                    // No file: no fault.
                                    Err(_) => None,
                                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                                        Ok(w) => Some(w),
                                        Err(e) => {
                                            tracing::warn!(
                                                path = %path.display(),
                                                error = %e,
                                                "ignoring the fault file: it is not a fault window"
                                            );
                                            None
                                        }
                                    },
                                };
                            }
                        }
                        s.window
                    }
                    Err(_) => None,
                };
                match window.filter(|w| w.active(unix_ms(std::time::SystemTime::now()))) {
                    Some(w) if w.kind == FaultKind::Outage => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("{} is unavailable (injected outage)", hop.as_str()),
                    )
                        .into_response(),
                    Some(w) => {
                        tokio::time::sleep(Duration::from_millis(w.delay_ms)).await;
                        next.run(req).await
                    }
                    None => next.run(req).await,
                }
            }
        },
    ))
}

/// Run `hop` until stopped.
pub async fn run(hop: HopName, port: u16) -> Result<()> {
    check_pattern()?;
    let telemetry = telemetry::init(TelemetryConfig::from_env(hop.service()))?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let base = format!("http://{bound}");
    let router = match build_router(hop, &base).await {
        Ok(r) => r,
        Err(e) => bail!("{}: configuration error: {e:#}", hop.as_str()),
    };
    let router = match env::opt(STALL_ENV) {
        Some(v) => {
            let (stall, after) = parse_stall(&v)
                .map_err(|e| anyhow::anyhow!("{}: configuration error: {e:#}", hop.as_str()))?;
            with_stall(router, stall, after)
        }
        None => router,
    };
    let router = match env::opt(FAULT_FILE_ENV) {
        Some(path) => with_fault_file(router, path.into(), hop),
        None => router,
    };
    println!("READY {} {base}", hop.as_str());
    tracing::info!(hop = hop.as_str(), url = %base, exporters = %telemetry.exporters().join(","), "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(stop_signal())
        .await
        .context("server failed")?;
    tracing::info!(hop = hop.as_str(), "stopping; flushing spans");
    let t = telemetry.clone();
    let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    Ok(())
}

/// Run `hop` as a Lambda function.
pub async fn run_lambda(hop: HopName) -> Result<()> {
    check_pattern()?;
    let telemetry = lambda_front::start_telemetry(hop.service())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let result = match hop {
        HopName::Interceptor => {
            let config = interceptor::InterceptorConfig::from_env()?;
            let deps = Box::pin(interceptor::Deps::from_config(config)).await?;
            interceptor::front::run_lambda(deps, telemetry.clone()).await
        }
        HopName::Target => {
            let deps = target::TargetConfig::from_env()?.deps()?;
            target::front::run_lambda(deps, telemetry.clone()).await
        }
        HopName::Broker => {
            let (settings, secrets) = broker::config::from_env().await?;
            let b = broker::Broker::new(settings, secrets).map_err(anyhow::Error::msg)?;
            broker::front::run_lambda(std::sync::Arc::new(b), telemetry.clone()).await
        }
        HopName::Agent => {
            agent::front::run_lambda(
                agent::Deps::new(agent::AgentConfig::from_env_and_secrets().await?)?,
                telemetry.clone(),
            )
            .await
        }
        other => bail!(
            "{} is not a Lambda function (agent, interceptor, broker and target are)",
            other.as_str()
        ),
    };
    result.map_err(|e| anyhow::anyhow!("{}: Lambda runtime failed: {e}", hop.as_str()))
}
