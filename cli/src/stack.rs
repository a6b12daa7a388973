//! The local stack: the embedded collector in this process, and every hop as a child process
//! (`tokentrail serve <hop>`) with its own `service.name`, its own exporter, and real HTTP
//! between hops, started in dependency order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::serve::HopName;

/// What a caller needs to reach a running stack (written to `OUT/stack.json`).
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
}

impl StackOptions {
    /// Defaults: this executable, forwarding to `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` when set.
    pub fn new(out: &Path) -> Result<Self> {
        Ok(Self {
            out: out.to_owned(),
            binary: std::env::current_exe().context("cannot locate the tokentrail executable")?,
            forward_to: otlp_forward_url(),
            extra_env: Vec::new(),
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
}

/// A running stack. [`Stack::stop`] stops it; dropping it kills the children.
pub struct Stack {
    /// Endpoints.
    pub endpoints: Endpoints,
    /// The collector.
    pub collector: Arc<local::collector::Collector>,
    children: Vec<Running>,
    collector_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
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
    let mut cmd = Command::new(&opts.binary);
    cmd.arg("serve")
        .arg(hop.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "TOKENTRAIL_PORT",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {} {}", opts.binary.display(), hop.as_str()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(START_TIMEOUT, async {
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
            Ok((Running { hop, child, log }, url))
        }
        Ok(None) => bail!(
            "{} exited before it was ready; its log ({}) ends with:\n{}",
            hop.as_str(),
            log.display(),
            tail(&log)
        ),
        Err(_) => bail!(
            "{} was not ready within {START_TIMEOUT:?}; see {}",
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
    let (running, url) = spawn_hop(opts, hop, &env).await?;
    children.push(running);
    Ok(url)
}

impl Stack {
    /// Start the collector and every hop.
    pub async fn start(opts: &StackOptions) -> Result<Self> {
        std::fs::create_dir_all(&opts.out)
            .with_context(|| format!("cannot create {}", opts.out.display()))?;
        let collector = local::collector::Collector::open(&opts.out, opts.forward_to.clone())
            .await
            .with_context(|| format!("cannot open the span store in {}", opts.out.display()))?;
        let (caddr, collector_task) = local::serve(
            local::collector::router(collector.clone()),
            ([127, 0, 0, 1], 0).into(),
        )
        .await?;
        let collector_url = format!("http://{caddr}");
        let key: [u8; 32] = rand::random();
        let mut env = BTreeMap::new();
        env.insert(
            "TOKENTRAIL_COLLECTOR_ENDPOINT".to_owned(),
            collector_url.clone(),
        );
        env.insert(telemetry::fingerprint::KEY_ENV.to_owned(), hex::encode(key));
        env.insert("TOKENTRAIL_STOP_ON_STDIN_EOF".to_owned(), "1".to_owned());
        env.insert("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned());
        env.extend(opts.extra_env.iter().cloned());
        // The parent's own fingerprints must match the children's.
        telemetry::fingerprint::install_key(&secrecy::SecretString::from(hex::encode(key)));

        let mut children = Vec::new();
        let idp = start_hop(opts, HopName::Idp, &env, &[], &mut children).await?;
        env.insert("TOKENTRAIL_ISSUER".into(), idp.clone());
        let target = start_hop(opts, HopName::Target, &env, &[], &mut children).await?;
        let interceptor_base =
            start_hop(opts, HopName::Interceptor, &env, &[], &mut children).await?;
        let interceptor =
            format!("{interceptor_base}/2015-03-31/functions/interceptor/invocations");
        let gateway_base = start_hop(
            opts,
            HopName::Gateway,
            &env,
            &[
                ("TOKENTRAIL_TARGET_URL", target.clone()),
                ("TOKENTRAIL_INTERCEPTOR_INVOKE_URL", interceptor.clone()),
            ],
            &mut children,
        )
        .await?;
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
        };
        let json = serde_json::to_string_pretty(&endpoints)?;
        std::fs::write(opts.out.join("stack.json"), json).context("cannot write stack.json")?;
        Ok(Self {
            endpoints,
            collector,
            children,
            collector_task,
        })
    }

    /// Stop one hop gracefully (e.g. the IdP, to show cached keys keep working).
    pub async fn stop_hop(&mut self, hop: HopName) -> Result<()> {
        if let Some(r) = self.children.iter_mut().find(|r| r.hop == hop) {
            drop(r.child.stdin.take());
            if tokio::time::timeout(Duration::from_secs(10), r.child.wait())
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
            match tokio::time::timeout(Duration::from_secs(10), r.child.wait()).await {
                Ok(Ok(status)) if !status.success() => {
                    eprintln!(
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
        self.collector_task.abort();
        let _ = std::fs::remove_file(self.endpoints.out.join("stack.json"));
        Ok(())
    }
}

/// Telemetry for the app (this process): exports to the stack's collector, logs to a file.
pub fn init_app_telemetry(endpoints: &Endpoints) -> Result<telemetry::Telemetry> {
    let logs = endpoints.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    Ok(telemetry::init(telemetry::TelemetryConfig {
        service: telemetry::Service::App,
        collector_endpoint: Some(endpoints.collector.clone()),
        // Over OTLP/HTTP the collector forwards for the app; over gRPC the app exports itself.
        otlp_from_env: otlp_grpc_requested(),
        log_to: telemetry::LogTo::File(logs.join("app.log")),
        export_timeout: Duration::from_secs(5),
    })?)
}

/// `tokentrail up`.
pub async fn up(out: &Path) -> Result<()> {
    let opts = StackOptions::new(out)?;
    let stack = Stack::start(&opts).await?;
    let e = &stack.endpoints;
    println!("tokentrail stack is up (Ctrl-C stops it)");
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
        "try: tokentrail call --user alice --out {}",
        e.out.display()
    );
    crate::serve::interrupt_or_terminate().await;
    println!("stopping…");
    stack.stop().await
}
