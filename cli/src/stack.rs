//! The local stack: the embedded collector in this process, and every hop as a child process
//! (`tokentrail serve <hop>`) with its own `service.name`, its own exporter, and real HTTP
//! between hops, started in dependency order.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::serve::HopName;
use telemetry::Pattern;

/// What a caller needs to reach a running stack (written to `OUT/stack-<pattern>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    /// IdP issuer / base URL.
    pub idp: String,
    /// Runtime front door base URL.
    pub runtime: String,
    /// Runtime name.
    pub runtime_name: String,
    /// Agent base URL.
    pub agent: String,
    /// Gateway MCP URL.
    pub gateway: String,
    /// Interceptor Invoke URL.
    pub interceptor: String,
    /// Target base URL.
    pub target: String,
    /// Embedded collector base URL.
    pub collector: String,
    /// Where telemetry goes.
    pub out: PathBuf,
    /// The pattern this stack serves.
    pub pattern: Pattern,
    /// Token broker base URL (broker pattern).
    #[serde(default)]
    pub broker: Option<String>,
    /// STS stand-in URL (broker pattern).
    #[serde(default)]
    pub sts: Option<String>,
    /// Whether the hops record subjects as keyed pseudonyms (`TOKENTRAIL_PSEUDONYMIZE_SUBJECT`),
    /// so the app's spans against this stack do too.
    #[serde(default)]
    pub pseudonymize_subject: bool,
}

/// Options.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Output directory.
    pub out: PathBuf,
    /// The `tokentrail` binary to run hops with (default: this executable).
    pub binary: PathBuf,
    /// Forward every export to this OTLP/HTTP traces URL too.
    pub forward_to: Option<String>,
    /// Extra environment for every hop.
    pub extra_env: Vec<(String, String)>,
    /// The pattern to serve.
    pub pattern: Pattern,
    /// A broker fault to run with (broker pattern).
    pub broker_fault: Option<BrokerFault>,
    /// Send the gateway's target calls here instead of to the target (a test's recording proxy
    /// that forwards to the target; the gateway then reads the OpenAPI description from the
    /// target's own constant instead of fetching it).
    pub gateway_target_url: Option<String>,
    /// Environment for one hop only (after every other).
    pub hop_env: Vec<(HopName, String, String)>,
    /// Join another stack's collector and fingerprint key instead of starting a collector
    /// (two patterns running side by side, one span store, matching fingerprints).
    pub shared: Option<SharedTelemetry>,
}

/// A running stack's collector and fingerprint key, for a second stack to join.
#[derive(Clone)]
pub struct SharedTelemetry {
    /// The collector.
    pub collector: Arc<local::collector::Collector>,
    /// Its base URL.
    pub url: String,
    key: SecretString,
}

impl std::fmt::Debug for SharedTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTelemetry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Faults of the broker pattern the stack can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerFault {
    /// The broker is not running: the interceptor fails closed with `upstream_unavailable`.
    Down,
    /// The broker answers after the interceptor's timeout: `upstream_timeout`.
    Slow,
    /// The broker's policy does not list the interceptor's role: `caller_not_allowed`.
    Deny,
    /// The service credential is missing from the secret store: `secret_unavailable`.
    NoSecret,
}

impl BrokerFault {
    /// Where a request with a valid token must stop under this fault.
    pub fn expected_stop(self) -> (telemetry::Hop, telemetry::FailureReason) {
        use telemetry::{FailureReason as R, Hop};
        match self {
            BrokerFault::Down => (Hop::Interceptor, R::UpstreamUnavailable),
            BrokerFault::Slow => (Hop::Interceptor, R::UpstreamTimeout),
            BrokerFault::Deny => (Hop::Broker, R::CallerNotAllowed),
            BrokerFault::NoSecret => (Hop::Broker, R::SecretUnavailable),
        }
    }
}

/// The AWS identities and names of the broker pattern in the local stack.
pub mod aws_names {
    /// The interceptor's execution role (gateway account).
    pub const INTERCEPTOR_EXEC_ROLE: &str =
        "arn:aws:iam::111111111111:role/tokentrail-interceptor-exec";
    /// Its Lambda session.
    pub const INTERCEPTOR_EXEC_SESSION: &str =
        "arn:aws:sts::111111111111:assumed-role/tokentrail-interceptor-exec/tokentrail-interceptor";
    /// The central-account role the interceptor assumes.
    pub const BROKER_CALLER_ROLE: &str = "arn:aws:iam::222222222222:role/tokentrail-broker-caller";
    /// A role the broker's policy allows under the `deny` fault instead.
    pub const OTHER_ROLE: &str = "arn:aws:iam::222222222222:role/some-other-caller";
    /// The external id of the trust policy.
    pub const EXTERNAL_ID: &str = "tokentrail-local-external-id";
    /// The service credential's secret id.
    pub const SECRET_ID: &str = "tokentrail/orders-api/client";
    /// The service client's id at the IdP.
    pub const SERVICE_CLIENT_ID: &str = "orders-service";
    /// The service client's secret at the IdP.
    pub const SERVICE_CLIENT_SECRET: &str = "orders-service-secret";
}

/// The broker policy of the local stack (`allowed_role` may receive `orders-api`).
pub fn broker_policy(allowed_role: &str) -> String {
    format!(
        "[credentials.orders-api]\nsecret = \"{}\"\nscope = \"orders:read\"\n\n[[allow]]\nrole = \"{allowed_role}\"\ncredentials = [\"orders-api\"]\n",
        aws_names::SECRET_ID
    )
}

/// The local "AWS account" of a broker stack: STS stand-in state, the secret file and the
/// broker policy, in a private temporary directory (never in OUT, which is telemetry only).
struct LocalAws {
    dir: PathBuf,
    sts_url: String,
    sts_task: tokio::task::JoinHandle<std::io::Result<()>>,
    base_key: String,
    base_secret: String,
    base_token: String,
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl LocalAws {
    async fn start(fault: Option<BrokerFault>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tokentrail-aws-{}-{}",
            std::process::id(),
            random_text(8)
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let base_key = format!("ASIA{}", random_text(16).to_ascii_uppercase());
        let base_secret = random_text(40);
        let base_token = random_text(120);
        let sts = local::sts::Sts::new(local::sts::StsConfig {
            identities: vec![local::sts::BaseIdentity {
                arn: aws_names::INTERCEPTOR_EXEC_SESSION.into(),
                access_key_id: base_key.clone(),
                secret_access_key: secrecy::SecretString::from(base_secret.clone()),
                session_token: Some(secrecy::SecretString::from(base_token.clone())),
            }],
            roles: vec![local::sts::RoleDef {
                arn: aws_names::BROKER_CALLER_ROLE.into(),
                trusted: vec![aws_names::INTERCEPTOR_EXEC_ROLE.into()],
                external_id: Some(aws_names::EXTERNAL_ID.into()),
                max_session_s: 3600,
            }],
        });
        let (addr, sts_task) =
            local::serve(local::sts::router(sts), ([127, 0, 0, 1], 0).into()).await?;
        let secrets = if fault == Some(BrokerFault::NoSecret) {
            serde_json::json!({})
        } else {
            serde_json::json!({ aws_names::SECRET_ID: {
                "client_id": aws_names::SERVICE_CLIENT_ID,
                "client_secret": aws_names::SERVICE_CLIENT_SECRET,
            }})
        };
        std::fs::write(dir.join("secrets.json"), secrets.to_string())?;
        let allowed = if fault == Some(BrokerFault::Deny) {
            aws_names::OTHER_ROLE
        } else {
            aws_names::BROKER_CALLER_ROLE
        };
        std::fs::write(dir.join("broker-policy.toml"), broker_policy(allowed))?;
        Ok(Self {
            dir,
            sts_url: format!("http://{addr}"),
            sts_task,
            base_key,
            base_secret,
            base_token,
        })
    }

    fn stop(&self) {
        self.sts_task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalAws {
    fn drop(&mut self) {
        self.stop();
    }
}

impl StackOptions {
    /// Defaults: this executable, forwarding to `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` when set.
    pub fn new(out: &Path) -> Result<Self> {
        Ok(Self {
            out: out.to_owned(),
            binary: std::env::current_exe().context("cannot locate the tokentrail executable")?,
            forward_to: otlp_forward_url(),
            extra_env: Vec::new(),
            pattern: Pattern::Passthrough,
            broker_fault: None,
            gateway_target_url: None,
            hop_env: Vec::new(),
            shared: None,
        })
    }
}

/// Whether the standard variables ask for OTLP/gRPC.
fn otlp_grpc_requested() -> bool {
    telemetry::otlp_env_protocol() == "grpc"
}

/// The OTLP/HTTP traces URL the collector forwards to, from the standard variables. With
/// OTLP/gRPC requested there is none: every hop then exports over gRPC itself.
pub fn otlp_forward_url() -> Option<String> {
    if otlp_grpc_requested() {
        return None;
    }
    if let Ok(v) = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        && !v.is_empty()
    {
        return Some(v);
    }
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| format!("{}/v1/traces", v.trim_end_matches('/')))
}

struct Running {
    hop: HopName,
    child: Child,
    log: PathBuf,
    /// How long it may take to stop once asked (longer under [`HOP_WRAPPER_ENV`]).
    stop_within: Duration,
}

/// A running stack. [`Stack::stop`] stops it; dropping it kills the children.
pub struct Stack {
    /// Endpoints.
    pub endpoints: Endpoints,
    /// The collector.
    pub collector: Arc<local::collector::Collector>,
    children: Vec<Running>,
    /// `None` when the stack joined another's collector.
    collector_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    aws: Option<LocalAws>,
    key: SecretString,
    /// Held while the stack runs: one stack of a pattern per output directory.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A command every hop of the local stack runs under, e.g. `valgrind --tool=callgrind
/// --callgrind-out-file=out/callgrind.{hop}.%p` (words split on whitespace; `{hop}` is the hop's
/// name): `perf record`, `strace`, valgrind, as `scripts/hop-instructions.py --chain` uses it.
pub const HOP_WRAPPER_ENV: &str = "TOKENTRAIL_HOP_WRAPPER";

/// How long a wrapped hop may take to start and to stop (valgrind runs a hop ~50 times slower,
/// and writes its profile at exit).
const WRAPPED_PATIENCE: Duration = Duration::from_secs(300);

/// The words of [`HOP_WRAPPER_ENV`] for `hop`, when set.
fn hop_wrapper(hop: HopName) -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var(HOP_WRAPPER_ENV)
        .ok()?
        .split_whitespace()
        .map(|w| w.replace("{hop}", hop.as_str()))
        .collect();
    (!words.is_empty()).then_some(words)
}

/// How long a hop may take to stop once asked, when it runs under no wrapper.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

const SPAN_DELAY_ENV: &str = "OTEL_BSP_SCHEDULE_DELAY";
const STACK_SPAN_DELAY_MS: u64 = 200;

/// How long a hop of the local stack may hold an ended span before exporting it: the caller's
/// `OTEL_BSP_SCHEDULE_DELAY`, 200 ms when unset, the SDK's 5 s when it is empty (what the SDK
/// does with it; any other value that is not a number of milliseconds above zero stops the stack
/// at start).
pub fn span_export_delay() -> Duration {
    span_export_delay_of(std::env::var(SPAN_DELAY_ENV).ok().as_deref())
}

fn span_export_delay_of(value: Option<&str>) -> Duration {
    let ms = match value {
        None => STACK_SPAN_DELAY_MS,
        Some(v) => v.parse().unwrap_or(5000),
    };
    Duration::from_millis(ms)
}

async fn spawn_hop(
    opts: &StackOptions,
    hop: HopName,
    env: &BTreeMap<String, String>,
) -> Result<(Running, String)> {
    let logs = opts.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log = logs.join(format!("{}.log", hop.as_str()));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let wrapper = hop_wrapper(hop);
    let (start_within, stop_within) = match wrapper {
        Some(_) => (WRAPPED_PATIENCE, WRAPPED_PATIENCE),
        None => (START_TIMEOUT, STOP_TIMEOUT),
    };
    let mut cmd = match &wrapper {
        Some(words) => {
            let mut cmd = Command::new(&words[0]);
            cmd.args(&words[1..]).arg(&opts.binary);
            cmd
        }
        None => Command::new(&opts.binary),
    };
    cmd.arg("serve")
        .arg(hop.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "TOKENTRAIL_PORT",
    ] {
        cmd.env_remove(k);
    }
    // Hop metrics reach the collector every 5 s (the SDK's default is a minute), unless the
    // caller chose an interval; stopping a hop exports what is left.
    if std::env::var_os("OTEL_METRIC_EXPORT_INTERVAL").is_none() {
        cmd.env("OTEL_METRIC_EXPORT_INTERVAL", "5000");
    }
    // Spans reach the store within a fifth of a second (the SDK's default is 5 s), unless the
    // caller chose a delay.
    if std::env::var_os(SPAN_DELAY_ENV).is_none() {
        cmd.env(SPAN_DELAY_ENV, STACK_SPAN_DELAY_MS.to_string());
    }
    cmd.envs(env);
    let mut child = cmd.spawn().with_context(|| {
        let under = wrapper
            .as_ref()
            .map(|w| format!(" under {HOP_WRAPPER_ENV}=`{}`", w.join(" ")))
            .unwrap_or_default();
        format!(
            "cannot start {} {}{under}",
            opts.binary.display(),
            hop.as_str()
        )
    })?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(start_within, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some((_, url)) = line.strip_prefix("READY ").and_then(|r| r.split_once(' ')) {
                return Some(url.to_owned());
            }
        }
        None
    })
    .await;
    match ready {
        Ok(Some(url)) => {
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((
                Running {
                    hop,
                    child,
                    log,
                    stop_within,
                },
                url,
            ))
        }
        Ok(None) => bail!(
            "{} exited before it was ready; its log ({}) ends with:\n{}",
            hop.as_str(),
            log.display(),
            tail(&log)
        ),
        Err(_) => bail!(
            "{} was not ready within {start_within:?}; see {}",
            hop.as_str(),
            log.display()
        ),
    }
}

async fn start_hop(
    opts: &StackOptions,
    hop: HopName,
    base: &BTreeMap<String, String>,
    extra: &[(&str, String)],
    children: &mut Vec<Running>,
) -> Result<String> {
    let mut env = base.clone();
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    for (h, k, v) in &opts.hop_env {
        if *h == hop {
            env.insert(k.clone(), v.clone());
        }
    }
    let (running, url) = spawn_hop(opts, hop, &env).await?;
    children.push(running);
    Ok(url)
}

impl Stack {
    /// Start the collector and every hop.
    pub async fn start(opts: &StackOptions) -> Result<Self> {
        // The hops inherit the standard variables: with trace export off the store stays empty
        // and nothing the stack is for works; say so before starting anything.
        if !telemetry::exporter_selection_from_env(telemetry::TRACES_EXPORTER_ENV)? {
            anyhow::bail!(
                "{}=none would leave the local stack's span store ({}) empty: unset it \
                 (OTEL_TRACES_SAMPLER=always_off is how the stack runs without tracing)",
                telemetry::TRACES_EXPORTER_ENV,
                opts.out.join(local::collector::TRACES_FILE).display()
            );
        }
        if telemetry::sdk_disabled_from_env()? {
            anyhow::bail!(
                "{}=true would turn tracing off in every hop and leave the local stack's span \
                 store ({}) empty: unset it (OTEL_TRACES_SAMPLER=always_off is how the stack runs \
                 without tracing; `tokentrail serve <hop>` honours it)",
                telemetry::SDK_DISABLED_ENV,
                opts.out.join(local::collector::TRACES_FILE).display()
            );
        }
        // A value the hops would refuse stops them all at start: refuse it here, once.
        telemetry::exporter_selection_from_env(telemetry::METRICS_EXPORTER_ENV)?;
        telemetry::standard_vars_check_from_env()?;
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("cannot create {}", opts.out.display()))?;
        let lock = lock_out_dir(&opts.out, opts.pattern)?;
        let (collector, collector_url, collector_task, key) = match &opts.shared {
            Some(shared) => (
                shared.collector.clone(),
                shared.url.clone(),
                None,
                shared.key.clone(),
            ),
            None => {
                let collector =
                    local::collector::Collector::open(&opts.out, opts.forward_to.clone())
                        .await
                        .with_context(|| {
                            format!("cannot open the span store in {}", opts.out.display())
                        })?;
                let (caddr, task) = local::serve(
                    local::collector::router(collector.clone()),
                    ([127, 0, 0, 1], 0).into(),
                )
                .await?;
                (
                    collector,
                    format!("http://{caddr}"),
                    Some(task),
                    fingerprint_key(),
                )
            }
        };
        let mut env = BTreeMap::new();
        env.insert(telemetry::COLLECTOR_ENV.to_owned(), collector_url.clone());
        env.insert(
            telemetry::fingerprint::KEY_ENV.to_owned(),
            key.expose_secret().to_owned(),
        );
        env.insert("TOKENTRAIL_STOP_ON_STDIN_EOF".to_owned(), "1".to_owned());
        env.extend(opts.extra_env.iter().cloned());
        // The parent's own fingerprints must match the children's.
        telemetry::fingerprint::install_key(&key);

        env.insert(
            telemetry::attrs::PATTERN_ENV.to_owned(),
            opts.pattern.as_str().to_owned(),
        );
        let mut children = Vec::new();
        let idp = start_hop(opts, HopName::Idp, &env, &[], &mut children).await?;
        env.insert("TOKENTRAIL_ISSUER".into(), idp.clone());
        let target = start_hop(opts, HopName::Target, &env, &[], &mut children).await?;
        let (aws, broker, interceptor_env) = match opts.pattern {
            Pattern::Passthrough => (None, None, Vec::new()),
            Pattern::Broker => {
                let aws = LocalAws::start(opts.broker_fault).await?;
                let broker = if opts.broker_fault == Some(BrokerFault::Down) {
                    // A port nothing listens on.
                    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                    let url = format!("http://{}", l.local_addr()?);
                    drop(l);
                    url
                } else {
                    let delay = if opts.broker_fault == Some(BrokerFault::Slow) {
                        "1500"
                    } else {
                        "0"
                    };
                    start_hop(
                        opts,
                        HopName::Broker,
                        &env,
                        &[
                            (
                                "TOKENTRAIL_BROKER_POLICY",
                                aws.dir.join("broker-policy.toml").display().to_string(),
                            ),
                            (
                                "TOKENTRAIL_SECRETS",
                                format!("file:{}", aws.dir.join("secrets.json").display()),
                            ),
                            ("TOKENTRAIL_STS_ENDPOINT", aws.sts_url.clone()),
                            ("TOKENTRAIL_TOKEN_ENDPOINT", format!("{idp}/token")),
                            ("TOKENTRAIL_FAULT_DELAY_MS", delay.into()),
                        ],
                        &mut children,
                    )
                    .await?
                };
                let interceptor_env = vec![
                    ("TOKENTRAIL_BROKER_URL", broker.clone()),
                    (
                        "TOKENTRAIL_BROKER_ROLE_ARN",
                        aws_names::BROKER_CALLER_ROLE.into(),
                    ),
                    (
                        "TOKENTRAIL_BROKER_EXTERNAL_ID",
                        aws_names::EXTERNAL_ID.into(),
                    ),
                    ("TOKENTRAIL_BROKER_TIMEOUT_MS", "1000".into()),
                    ("TOKENTRAIL_STS_ENDPOINT", aws.sts_url.clone()),
                    ("TOKENTRAIL_INTERCEPTOR_AUDIENCES", "target-api".into()),
                    (
                        "TOKENTRAIL_INTERCEPTOR_REQUIRED_SCOPES",
                        "orders:read".into(),
                    ),
                    ("AWS_REGION", "us-east-1".into()),
                    ("AWS_ACCESS_KEY_ID", aws.base_key.clone()),
                    ("AWS_SECRET_ACCESS_KEY", aws.base_secret.clone()),
                    ("AWS_SESSION_TOKEN", aws.base_token.clone()),
                    ("AWS_EC2_METADATA_DISABLED", "true".into()),
                ];
                (Some(aws), Some(broker), interceptor_env)
            }
        };
        let interceptor_base = start_hop(
            opts,
            HopName::Interceptor,
            &env,
            &interceptor_env,
            &mut children,
        )
        .await?;
        let interceptor =
            format!("{interceptor_base}/2015-03-31/functions/interceptor/invocations");
        let mut gateway_env = vec![
            (
                "TOKENTRAIL_TARGET_URL",
                opts.gateway_target_url.clone().unwrap_or(target.clone()),
            ),
            ("TOKENTRAIL_INTERCEPTOR_INVOKE_URL", interceptor.clone()),
        ];
        if opts.gateway_target_url.is_some() {
            let spec = opts.out.join("target-openapi.json");
            std::fs::write(&spec, target::front::OPENAPI)?;
            gateway_env.push(("TOKENTRAIL_TARGET_OPENAPI", spec.display().to_string()));
        }
        let gateway_base =
            start_hop(opts, HopName::Gateway, &env, &gateway_env, &mut children).await?;
        let gateway = format!("{gateway_base}/mcp");
        let agent = start_hop(
            opts,
            HopName::Agent,
            &env,
            &[
                ("TOKENTRAIL_GATEWAY_URL", gateway.clone()),
                ("TOKENTRAIL_TOKEN_ENDPOINT", format!("{idp}/token")),
                ("TOKENTRAIL_AGENT_CLIENT_ID", "tokentrail-agent".into()),
                ("TOKENTRAIL_AGENT_CLIENT_SECRET", "agent-secret".into()),
            ],
            &mut children,
        )
        .await?;
        let runtime = start_hop(
            opts,
            HopName::Runtime,
            &env,
            &[("TOKENTRAIL_AGENT_URL", agent.clone())],
            &mut children,
        )
        .await?;
        let endpoints = Endpoints {
            idp,
            runtime,
            runtime_name: "tokentrail_agent".into(),
            agent,
            gateway,
            interceptor,
            target,
            collector: collector_url,
            out: opts.out.clone(),
            pattern: opts.pattern,
            sts: aws.as_ref().map(|a| a.sts_url.clone()),
            broker,
            pseudonymize_subject: pseudonymized(&env)?,
        };
        let json = serde_json::to_string_pretty(&endpoints)?;
        let file = stack_file(&opts.out, opts.pattern);
        std::fs::write(&file, json).with_context(|| format!("cannot write {}", file.display()))?;
        write_key_file(&opts.out, opts.pattern, &key)?;
        Ok(Self {
            endpoints,
            collector,
            children,
            collector_task,
            aws,
            key,
            _lock: lock,
        })
    }

    /// This stack's collector and fingerprint key, for another stack to join.
    pub fn shared_telemetry(&self) -> SharedTelemetry {
        SharedTelemetry {
            collector: self.collector.clone(),
            url: self.endpoints.collector.clone(),
            key: self.key.clone(),
        }
    }

    /// The process id of each running hop.
    pub fn hop_pids(&self) -> Vec<(HopName, u32)> {
        self.children
            .iter()
            .filter_map(|r| Some((r.hop, r.child.id()?)))
            .collect()
    }

    /// Every secret this stack handed out (for leak scans): the service client's secret, the
    /// agent's client secret and the interceptor's base AWS keys.
    pub fn secrets_for_scan(&self) -> Vec<String> {
        let mut v = vec![
            aws_names::SERVICE_CLIENT_SECRET.to_owned(),
            "agent-secret".to_owned(),
        ];
        if let Some(aws) = &self.aws {
            v.push(aws.base_secret.clone());
            v.push(aws.base_token.clone());
        }
        v
    }

    /// The local secret store's file (broker pattern), which the broker reads at every call.
    pub fn secrets_file(&self) -> Option<PathBuf> {
        self.aws.as_ref().map(|a| a.dir.join("secrets.json"))
    }

    /// Stop one hop gracefully (e.g. the IdP, to show cached keys keep working).
    pub async fn stop_hop(&mut self, hop: HopName) -> Result<()> {
        if let Some(r) = self.children.iter_mut().find(|r| r.hop == hop) {
            drop(r.child.stdin.take());
            if tokio::time::timeout(r.stop_within, r.child.wait())
                .await
                .is_err()
            {
                let _ = r.child.kill().await;
            }
        }
        Ok(())
    }

    /// Stop every hop gracefully (closing its stdin makes it flush and exit), then the collector.
    pub async fn stop(mut self) -> Result<()> {
        for r in self.children.iter_mut().rev() {
            drop(r.child.stdin.take());
        }
        for r in self.children.iter_mut() {
            match tokio::time::timeout(r.stop_within, r.child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    // Not eprintln!: after a hangup the terminal is gone, and the stop goes on.
                    let _ = writeln!(
                        std::io::stderr(),
                        "tokentrail: {} exited with {status}; see {}",
                        r.hop.as_str(),
                        r.log.display()
                    );
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = r.child.kill().await;
                }
            }
        }
        // Give the last exports a moment to land, then stop the collector.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(task) = &self.collector_task {
            task.abort();
        }
        if let Some(aws) = self.aws.take() {
            aws.stop();
        }
        for file in left_in_out(&self.endpoints.out, self.endpoints.pattern) {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }
}

/// The files a running stack of `pattern` keeps in `out` for `call` and `load` (its description
/// and fingerprint key), which it removes when it stops.
fn left_in_out(out: &Path, pattern: Pattern) -> [PathBuf; 2] {
    [stack_file(out, pattern), key_file(out, pattern)]
}

/// Where a running stack of `pattern` describes itself.
pub fn stack_file(out: &Path, pattern: Pattern) -> PathBuf {
    out.join(format!("stack-{pattern}.json"))
}

/// Take the lock a running stack of `pattern` holds on `out` (released when the stack stops or
/// its process ends): a second stack there would overwrite the first's description and key and
/// write into its span store.
fn lock_out_dir(out: &Path, pattern: Pattern) -> Result<std::fs::File> {
    let path = lock_file(out, pattern);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // A `tokentrail call` asking whether a stack runs holds a shared lock for an instant: look
    // again for a moment before calling the directory taken.
    for attempt in 1..=10 {
        if got_lock(file.try_lock(), &path)? {
            return Ok(file);
        }
        if attempt < 10 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    bail!(
        "a {pattern} stack is already running with its output in {} (see {}): stop it \
         (Ctrl-C) or use another --out",
        out.display(),
        stack_file(out, pattern).display()
    )
}

fn lock_file(out: &Path, pattern: Pattern) -> PathBuf {
    out.join(format!(".stack-{pattern}.lock"))
}

/// Whether a `try_lock` or `try_lock_shared` of the lock file `path` took the lock (false:
/// another holder has it).
fn got_lock(attempt: Result<(), std::fs::TryLockError>, path: &Path) -> Result<bool> {
    match attempt {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The lock file of a stack of `pattern` in `out` and its path, or `None` when no stack ever
/// ran there.
fn open_lock_file(out: &Path, pattern: Pattern) -> Result<Option<(std::fs::File, PathBuf)>> {
    let path = lock_file(out, pattern);
    match std::fs::File::open(&path) {
        Ok(f) => Ok(Some((f, path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

/// Whether a stack of `pattern` is running with its output in `out`: its `tokentrail up` holds
/// the lock until it ends, however it ends (a killed one leaves its description behind).
pub fn is_running(out: &Path, pattern: Pattern) -> Result<bool> {
    match open_lock_file(out, pattern)? {
        Some((file, path)) => Ok(!got_lock(file.try_lock_shared(), &path)?),
        None => Ok(false),
    }
}

/// Remove the description and fingerprint key a stack of `pattern` that no longer runs left in
/// `out` (a killed `tokentrail up` cannot remove them), holding the directory's lock meanwhile
/// so that a stack starting there is never touched. Whether anything was removed: false when a
/// stack holds the lock (or a caller testing it does, for an instant) or nothing was left.
pub fn remove_dead_stack(out: &Path, pattern: Pattern) -> Result<bool> {
    let Some((lock, path)) = open_lock_file(out, pattern)? else {
        return Ok(false);
    };
    if !got_lock(lock.try_lock(), &path)? {
        return Ok(false);
    }
    let mut removed = false;
    for file in left_in_out(out, pattern) {
        match std::fs::remove_file(&file) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
        }
    }
    Ok(removed)
}

/// Whether the stack's hops pseudonymise subjects: the switch in `env`, the environment the stack
/// gives its hops, else this process's (which they inherit).
fn pseudonymized(env: &BTreeMap<String, String>) -> Result<bool> {
    let var = telemetry::provenance::PSEUDONYMIZE_ENV;
    let on = match env.get(var) {
        Some(v) => telemetry::switch(var, Some(v))?,
        None => telemetry::switch_from_env(var)?,
    };
    Ok(on.unwrap_or(false))
}

/// Where a running stack of `pattern` keeps its fingerprint key (owner-only), so that a
/// `tokentrail call` or `load` against it fingerprints the user's token as the hops do.
pub fn key_file(out: &Path, pattern: Pattern) -> PathBuf {
    out.join(format!("stack-{pattern}.key"))
}

/// The stack's fingerprint key: the caller's `TOKENTRAIL_FINGERPRINT_KEY` if set (fingerprints
/// then match across runs and with other deployments using it), else a random one.
fn fingerprint_key() -> SecretString {
    match std::env::var(telemetry::fingerprint::KEY_ENV) {
        Ok(k) if !k.is_empty() => SecretString::from(k),
        _ => SecretString::from(hex::encode(rand::random::<[u8; 32]>())),
    }
}

fn write_key_file(out: &Path, pattern: Pattern, key: &SecretString) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = key_file(out, pattern);
    // A stale file of a stack that did not stop cleanly may be readable by others: replace it.
    let _ = std::fs::remove_file(&path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(key.expose_secret().as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Use the fingerprint key of the running stack of `pattern` in this process.
pub fn join_fingerprint_key(out: &Path, pattern: Pattern) -> Result<()> {
    let path = key_file(out, pattern);
    let key = std::fs::read_to_string(&path)
        .map(SecretString::from)
        .with_context(|| {
            format!(
                "cannot read {}, the running stack's fingerprint key: without it this process's \
                 fingerprints would not match the hops' (a stack started by an older tokentrail \
                 has none: restart it)",
                path.display()
            )
        })?;
    static JOINED: std::sync::OnceLock<SecretString> = std::sync::OnceLock::new();
    let mut first = false;
    let joined = JOINED.get_or_init(|| {
        first = true;
        key.clone()
    });
    if joined.expose_secret() != key.expose_secret() {
        bail!(
            "the running stacks use different fingerprint keys, so their fingerprints cannot be \
             compared in one process: start each `tokentrail up` with the same {}",
            telemetry::fingerprint::KEY_ENV
        );
    }
    if first && !telemetry::fingerprint::install_key(joined) {
        bail!("this process fingerprinted tokens with another key before joining the stack");
    }
    Ok(())
}

/// Telemetry for the app (this process): exports to the stack's collector (and to X-Ray when
/// `TOKENTRAIL_XRAY` asks for it, like the hops), logs to a file.
pub fn init_app_telemetry(endpoints: &Endpoints) -> Result<telemetry::Telemetry> {
    init_app_telemetry_with(
        endpoints,
        std::env::var(telemetry::XRAY_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty()),
    )
}

/// [`init_app_telemetry`] with the X-Ray export modes given (`daemon`, `api`, `otlp`).
pub fn init_app_telemetry_with(
    endpoints: &Endpoints,
    xray: Option<String>,
) -> Result<telemetry::Telemetry> {
    // Over OTLP/HTTP the collector forwards for the app; over gRPC the app exports itself.
    let grpc = otlp_grpc_requested();
    app_telemetry(endpoints, Some(endpoints.collector.clone()), grpc, xray)
}

/// Telemetry for the app that exports its spans over OTLP/HTTP to `collector` (a base URL)
/// instead of the stack's collector, or records them and exports none (`None`); nowhere else
/// (neither the `OTEL_EXPORTER_OTLP_*` endpoint nor X-Ray).
pub fn init_app_telemetry_to(
    endpoints: &Endpoints,
    collector: Option<String>,
) -> Result<telemetry::Telemetry> {
    app_telemetry(endpoints, collector, false, None)
}

fn app_telemetry(
    endpoints: &Endpoints,
    collector: Option<String>,
    otlp_from_env: bool,
    xray: Option<String>,
) -> Result<telemetry::Telemetry> {
    let logs = endpoints.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    Ok(telemetry::init(telemetry::TelemetryConfig {
        service: telemetry::Service::App,
        collector_endpoint: collector,
        otlp_from_env,
        log_to: telemetry::LogTo::File(logs.join("app.log")),
        export_timeout: Duration::from_secs(5),
        xray,
    })?)
}

/// `tokentrail up`.
pub async fn up(out: &Path, pattern: Pattern) -> Result<()> {
    let mut opts = StackOptions::new(out)?;
    opts.pattern = pattern;
    let stack = Stack::start(&opts).await?;
    let e = &stack.endpoints;
    println!("tokentrail {pattern} stack is up (Ctrl-C stops it)");
    println!(
        "  idp          {}  (issuer; /.well-known/openid-configuration, /jwks, /token)",
        e.idp
    );
    println!(
        "  runtime      {}/runtimes/{}/invocations",
        e.runtime, e.runtime_name
    );
    println!("  agent        {}/invocations", e.agent);
    println!("  gateway      {}", e.gateway);
    println!("  interceptor  {}", e.interceptor);
    if let Some(b) = &e.broker {
        println!("  broker       {b}/token");
    }
    if let Some(sts) = &e.sts {
        println!("  sts          {sts}  (stand-in: AssumeRole, GetCallerIdentity)");
    }
    println!(
        "  target       {}/orders  (OpenAPI: /openapi.json)",
        e.target
    );
    println!(
        "  collector    {}/v1/traces  -> {}",
        e.collector,
        stack.collector.path().display()
    );
    if let Some(f) = &opts.forward_to {
        println!("  forwarding   every export also to {f}");
    }
    println!("  logs         {}/logs/", e.out.display());
    println!(
        "try: tokentrail call --pattern {pattern} --user alice --out {}",
        e.out.display()
    );
    crate::serve::interrupt_or_terminate().await;
    // Not println!: after a hangup the terminal is gone, and the stop goes on.
    let _ = writeln!(std::io::stdout(), "stopping…");
    stack.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_export_delay_is_the_callers_else_the_stacks() {
        assert_eq!(span_export_delay_of(None), Duration::from_millis(200));
        assert_eq!(span_export_delay_of(Some("1000")), Duration::from_secs(1));
        assert_eq!(span_export_delay_of(Some(" 50 ")), Duration::from_secs(5));
        // What the SDK does with a value it cannot read: its default.
        assert_eq!(span_export_delay_of(Some("soon")), Duration::from_secs(5));
    }

    #[test]
    fn only_a_dead_stacks_description_and_key_are_removed() {
        let out = std::env::temp_dir().join(format!("tokentrail-dead-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let p = Pattern::Passthrough;
        let left = || (stack_file(&out, p).exists(), key_file(&out, p).exists());
        // No stack ever ran here: nothing to do.
        assert!(!remove_dead_stack(&out, p).unwrap());
        let lock = lock_out_dir(&out, p).unwrap();
        std::fs::write(stack_file(&out, p), "{}").unwrap();
        std::fs::write(key_file(&out, p), "k").unwrap();
        // Running (its lock held): untouched.
        assert!(is_running(&out, p).unwrap());
        assert!(!remove_dead_stack(&out, p).unwrap());
        assert_eq!(left(), (true, true));
        // Its process ended without cleaning up: both go, once.
        drop(lock);
        assert!(!is_running(&out, p).unwrap());
        assert!(remove_dead_stack(&out, p).unwrap());
        assert_eq!(left(), (false, false));
        assert!(!remove_dead_stack(&out, p).unwrap());
        let _ = std::fs::remove_dir_all(&out);
    }
}
