//! `tokentrail load`: load one or both patterns and measure latency and failure points.
//!
//! - **Open loop** (`--rate R/s`): request *i* is due at `t0 + i/R` and its latency is measured
//!   from that intended start, so a stall shows in the latency of every request it delayed (no
//!   coordinated omission). **Closed loop** (`--concurrency C`): C workers back to back.
//! - `--pattern both` interleaves the patterns request by request on two stacks sharing one
//!   collector, so the machine's drift hits both alike.
//! - Requests of the warm-up are sent (and traced) but not measured.
//! - Tokens are obtained once per user and fault (and renewed every two minutes), as an app
//!   keeps its token; `--faults expired=0.02,…` sends that fraction with each faulty token.
//! - Results: HdrHistograms per pattern and outcome, a live progress line, `OUT/load.json`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use telemetry::{Pattern, TraceContext};
use tokio::sync::RwLock;
use tokio::time::Instant;

use crate::app::{App, CallSpec, Outcome, TokenFault, first_order, tamper};
use crate::serve::HopName;
use crate::stack::{BrokerFault, Stack, StackOptions};

/// The users requests are sent as (each reads an order of their own).
const USERS: [&str; 2] = ["alice", "bob"];
/// Tokens are renewed this often (the local IdP issues them for five minutes).
const TOKEN_RENEWAL: Duration = Duration::from_secs(120);
/// Latencies are recorded in microseconds up to this bound.
const MAX_LATENCY_US: u64 = 120_000_000;

/// Fractions of requests sent with each token fault.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultMix(pub Vec<(TokenFault, f64)>);

impl std::str::FromStr for FaultMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<(TokenFault, f64)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, frac) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected NAME=FRACTION, e.g. expired=0.02"))?;
            let fault = <TokenFault as clap::ValueEnum>::from_str(name.trim(), true).map_err(|_| {
                format!(
                    "`{name}`: unknown fault (expired, tampered, missing, wrong-audience, oversized)"
                )
            })?;
            let f: f64 = frac
                .trim()
                .parse()
                .map_err(|_| format!("`{frac}` is not a number"))?;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("{part}: a fraction is between 0 and 1"));
            }
            if out.iter().any(|(x, _)| *x == fault) {
                return Err(format!("{} is given twice", fault.as_str()));
            }
            out.push((fault, f));
        }
        let total: f64 = out.iter().map(|(_, f)| f).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!("the fractions add up to {total}, more than 1"));
        }
        Ok(Self(out))
    }
}

impl FaultMix {
    /// The fault for a uniform draw `u` in [0, 1).
    pub fn pick(&self, u: f64) -> Option<TokenFault> {
        let mut acc = 0.0;
        for (fault, p) in &self.0 {
            acc += p;
            if u < acc {
                return Some(*fault);
            }
        }
        None
    }

    fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(f, p)| (f.as_str().to_owned(), json!(p)))
                .collect(),
        )
    }
}

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Constant arrival rate (requests per second), latency from each intended start.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// This many workers, each sending its next request when the last one answered.
    Closed {
        /// Workers.
        concurrency: usize,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Output directory (span store, `load.json`); with `local: false`, where `tokentrail up`
    /// wrote its stack files.
    pub out: PathBuf,
    /// Start the local stack(s) for the run.
    pub local: bool,
    /// Patterns, interleaved.
    pub patterns: Vec<Pattern>,
    /// Pacing.
    pub mode: Mode,
    /// Measured duration.
    pub duration: Duration,
    /// Warm-up before it (sent, not measured).
    pub warmup: Duration,
    /// Token faults.
    pub faults: FaultMix,
    /// A broker fault for the run (local broker stack only).
    pub broker_fault: Option<BrokerFault>,
    /// The `tokentrail` binary for the hops (default: this executable).
    pub binary: Option<PathBuf>,
    /// Stall this hop once, for this long, halfway through the measured period (local only).
    pub stall: Option<(HopName, Duration)>,
    /// Instead of the patterns: plain GETs to this URL (to calibrate the generator).
    pub url: Option<String>,
    /// Stack faults for the run (local only), from a third of the measured period.
    pub stack_faults: Vec<StackFault>,
}

/// What a stack fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultTarget {
    /// The IdP (discovery, JWKS, token endpoint) of every stack.
    Idp,
    /// The token broker (broker pattern).
    Broker,
    /// The secret store the broker reads the service credential from (broker pattern).
    Secrets,
    /// The collector every hop exports its spans and metrics to.
    Collector,
}

impl FaultTarget {
    fn as_str(self) -> &'static str {
        match self {
            FaultTarget::Idp => "idp",
            FaultTarget::Broker => "broker",
            FaultTarget::Secrets => "secrets",
            FaultTarget::Collector => "collector",
        }
    }
}

/// A stack fault: an outage of `target`, or added latency on every request to it, during a window
/// that starts a third of the way into the measured period and lasts `duration` (default: a
/// third of the measured period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackFault {
    /// What it hits.
    pub target: FaultTarget,
    /// Outage or latency.
    pub kind: crate::serve::FaultKind,
    /// Window length (`None`: a third of the measured period).
    pub duration: Option<Duration>,
    /// Added latency (latency faults).
    pub delay: Duration,
}

fn fault_target(s: &str) -> Result<FaultTarget, String> {
    <FaultTarget as clap::ValueEnum>::from_str(s.trim(), true)
        .map_err(|_| format!("`{s}`: unknown fault target (idp, broker, secrets, collector)"))
}

/// `--outage WHAT[=DURATION]` (`idp`, `broker=5s`).
pub fn parse_outage_arg(s: &str) -> Result<StackFault, String> {
    let (target, duration) = match s.split_once('=') {
        Some((t, d)) => (fault_target(t)?, Some(parse_duration(d)?)),
        None => (fault_target(s)?, None),
    };
    Ok(StackFault {
        target,
        kind: crate::serve::FaultKind::Outage,
        duration,
        delay: Duration::ZERO,
    })
}

/// `--latency WHAT=DELAY` (`broker=200ms`): the IdP or the broker answers every request that
/// much later during the window.
pub fn parse_latency_arg(s: &str) -> Result<StackFault, String> {
    let (t, d) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected WHAT=DELAY, e.g. broker=200ms"))?;
    let target = fault_target(t)?;
    if !matches!(target, FaultTarget::Idp | FaultTarget::Broker) {
        return Err(format!(
            "`{t}`: latency can be added to the idp or the broker (an outage applies to any)"
        ));
    }
    Ok(StackFault {
        target,
        kind: crate::serve::FaultKind::Latency,
        duration: None,
        delay: parse_duration(d)?,
    })
}

/// Where the faults of a run act: the hops' fault files, the secret files, the collector.
#[derive(Default)]
struct FaultPlan {
    faults: Vec<StackFault>,
    /// (target, the fault file a hop process watches).
    files: Vec<(FaultTarget, PathBuf)>,
    secrets: Vec<PathBuf>,
    collector: Option<Arc<local::collector::Collector>>,
}

/// The armed faults: restored when the run ends.
struct Armed {
    renames: Vec<(PathBuf, tokio::task::JoinHandle<()>)>,
    described: Vec<Value>,
}

fn outage_name(file: &Path) -> PathBuf {
    file.with_extension("json.outage")
}

impl FaultPlan {
    /// Put every fault in place for the window after `measure_start` (wall clock).
    fn arm(&self, measure_start: std::time::SystemTime, measured: Duration) -> Result<Armed> {
        let mut armed = Armed {
            renames: Vec::new(),
            described: Vec::new(),
        };
        for f in &self.faults {
            let offset = measured / 3;
            let length = f.duration.unwrap_or(measured / 3);
            let from = measure_start + offset;
            let until = from + length;
            let window = crate::serve::FaultWindow {
                kind: f.kind,
                from_unix_ms: crate::serve::unix_ms(from),
                until_unix_ms: crate::serve::unix_ms(until),
                delay_ms: f.delay.as_millis() as u64,
            };
            match f.target {
                FaultTarget::Idp | FaultTarget::Broker => {
                    for (_, file) in self.files.iter().filter(|(t, _)| *t == f.target) {
                        std::fs::write(file, serde_json::to_vec(&window)?)
                            .with_context(|| format!("cannot write {}", file.display()))?;
                    }
                }
                FaultTarget::Collector => {
                    if let Some(c) = &self.collector {
                        c.set_outage(window.from_unix_ms, window.until_unix_ms);
                    }
                }
                FaultTarget::Secrets => {
                    for file in &self.secrets {
                        let (file, hidden) = (file.clone(), outage_name(file));
                        let task = {
                            let (file, hidden) = (file.clone(), hidden.clone());
                            let start = Instant::now();
                            tokio::spawn(async move {
                                tokio::time::sleep_until(start + offset).await;
                                let _ = std::fs::rename(&file, &hidden);
                                tokio::time::sleep_until(start + offset + length).await;
                                let _ = std::fs::rename(&hidden, &file);
                            })
                        };
                        armed.renames.push((file, task));
                    }
                }
            }
            armed.described.push(json!({
                "target": f.target.as_str(),
                "kind": f.kind,
                "from_s": offset.as_secs_f64(),
                "until_s": (offset + length).as_secs_f64(),
                "delay_ms": (f.kind == crate::serve::FaultKind::Latency).then_some(window.delay_ms),
            }));
        }
        Ok(armed)
    }
}

impl Armed {
    /// End every fault (the secret store comes back even when the run stopped early).
    fn restore(self) -> Vec<Value> {
        for (file, task) in self.renames {
            task.abort();
            let hidden = outage_name(&file);
            if hidden.exists() {
                let _ = std::fs::rename(&hidden, &file);
            }
        }
        self.described
    }
}

/// `HOP=DURATION` (`runtime=500ms`).
pub fn parse_stall_arg(s: &str) -> Result<(HopName, Duration), String> {
    let (hop, d) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected HOP=DURATION, e.g. runtime=500ms"))?;
    let hop = <HopName as clap::ValueEnum>::from_str(hop.trim(), true).map_err(|_| {
        format!("`{hop}`: unknown hop (idp, runtime, agent, gateway, interceptor, broker, target)")
    })?;
    Ok((hop, parse_duration(d)?))
}

/// `1s`, `500ms`, `2m`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 30s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Tokens per user and fault (`None`: send no token).
type Tokens = BTreeMap<(usize, Option<TokenFault>), Option<SecretString>>;

async fn fetch_tokens(app: &App) -> Result<Tokens> {
    let none = TraceContext::none();
    let mut out = Tokens::new();
    for (u, user) in USERS.iter().enumerate() {
        let valid = app.login(user, "tokentrail-app", None, &none).await?;
        out.insert(
            (u, Some(TokenFault::Expired)),
            Some(app.login(user, "tokentrail-app", Some(-120), &none).await?),
        );
        out.insert(
            (u, Some(TokenFault::WrongAudience)),
            Some(app.login(user, "other-app", None, &none).await?),
        );
        out.insert((u, Some(TokenFault::Tampered)), Some(tamper(&valid)?));
        out.insert(
            (u, Some(TokenFault::Oversized)),
            Some(SecretString::from(format!(
                "{}{}",
                valid.expose_secret(),
                "A".repeat(5000)
            ))),
        );
        out.insert((u, Some(TokenFault::Missing)), None);
        out.insert((u, None), Some(valid));
    }
    Ok(out)
}

/// One pattern under load.
struct Target {
    /// `passthrough`, `broker`, or `url`.
    name: String,
    kind: TargetKind,
}

enum TargetKind {
    /// The app's request through a pattern's stack.
    Stack {
        app: Box<App>,
        tokens: RwLock<Tokens>,
    },
    /// A plain GET (calibrating the generator against other tools).
    Url(crate::plain_get::PlainGet),
}

/// What one pattern's requests did.
struct PatternStats {
    sent: u64,
    measured: u64,
    all: Histogram<u64>,
    by_outcome: BTreeMap<String, Histogram<u64>>,
    ok: u64,
    rejected: BTreeMap<(String, String), u64>,
    errors: BTreeMap<String, u64>,
}

impl PatternStats {
    fn new() -> Result<Self> {
        Ok(Self {
            sent: 0,
            measured: 0,
            all: histogram()?,
            by_outcome: BTreeMap::new(),
            ok: 0,
            rejected: BTreeMap::new(),
            errors: BTreeMap::new(),
        })
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a histogram")
}

/// Where a request ended, as recorded.
enum Ended {
    Ok,
    Rejected(String, String),
    Error(String),
}

impl Ended {
    fn label(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Ended::Ok => "ok".into(),
            Ended::Rejected(hop, reason) => format!("rejected {hop} {reason}").into(),
            Ended::Error(_) => "error".into(),
        }
    }
}

struct Shared {
    stats: Vec<PatternStats>,
}

fn record(shared: &Mutex<Shared>, p: usize, measured: bool, ended: Ended, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    let Ok(mut sh) = shared.lock() else { return };
    let st = &mut sh.stats[p];
    st.sent += 1;
    if !measured {
        return;
    }
    st.measured += 1;
    st.all.saturating_record(us);
    // The hot path (a known outcome) allocates nothing.
    let label = ended.label();
    match st.by_outcome.get_mut(label.as_ref()) {
        Some(h) => h.saturating_record(us),
        None => {
            if let Ok(mut h) = histogram() {
                h.saturating_record(us);
                st.by_outcome.insert(label.into_owned(), h);
            }
        }
    }
    match ended {
        Ended::Ok => st.ok += 1,
        Ended::Rejected(hop, reason) => *st.rejected.entry((hop, reason)).or_default() += 1,
        Ended::Error(e) => *st.errors.entry(e).or_default() += 1,
    }
}

async fn one(target: &Target, i: u64, n_patterns: u64, faults: &FaultMix) -> Ended {
    let (app, tokens) = match &target.kind {
        TargetKind::Stack { app, tokens } => (app, tokens),
        TargetKind::Url(client) => {
            return match client.get().await {
                Ok(()) => Ended::Ok,
                Err(e) => Ended::Error(e),
            };
        }
    };
    let u = ((i / n_patterns) % USERS.len() as u64) as usize;
    let user = USERS[u];
    let fault = faults.pick(rand::random::<f64>());
    let spec = CallSpec {
        user: user.to_owned(),
        tool: "orders___getOrder".into(),
        arguments: json!({"orderId": first_order(user)}),
        fault,
    };
    let token = tokens.read().await.get(&(u, fault)).cloned().flatten();
    match app.call_prepared(&spec, token).await {
        Ok(r) => match r.outcome {
            Outcome::Ok => Ended::Ok,
            Outcome::Rejected { hop, reason } => {
                Ended::Rejected(hop.as_str().to_owned(), reason.as_str().to_owned())
            }
        },
        Err(e) => Ended::Error(format!("{e:#}")),
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p99_9_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean().round() / 1000.0,
    })
}

struct Progress {
    tty: bool,
    last: Instant,
    every: Duration,
}

impl Progress {
    fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        Self {
            tty,
            last: Instant::now(),
            every: if tty {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(5)
            },
        }
    }

    fn tick(&mut self, shared: &Mutex<Shared>, started: Instant, total: Duration, force: bool) {
        if !force && self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let Ok(sh) = shared.lock() else { return };
        let sent: u64 = sh.stats.iter().map(|s| s.sent).sum();
        let errors: u64 = sh
            .stats
            .iter()
            .map(|s| s.errors.values().sum::<u64>())
            .sum();
        let rejected: u64 = sh
            .stats
            .iter()
            .map(|s| s.rejected.values().sum::<u64>())
            .sum();
        let mut all = sh.stats.first().map(|s| s.all.clone());
        if let Some(a) = all.as_mut() {
            for s in sh.stats.iter().skip(1) {
                let _ = a.add(&s.all);
            }
        }
        let p99 = all
            .filter(|a| !a.is_empty())
            .map(|a| format!("{:.1} ms", ms(a.value_at_quantile(0.99))))
            .unwrap_or_else(|| "-".into());
        let t = started.elapsed().as_secs_f64();
        let line = format!(
            "load {t:>6.1}s/{:.0}s  answered {sent}  rate {:.1}/s  rejected {rejected}  errors {errors}  p99 {p99}",
            total.as_secs_f64(),
            sent as f64 / t.max(0.001),
        );
        if self.tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Run the load; returns the `load.json` document (also written to `OUT/load.json`).
pub async fn run(opts: &LoadOptions) -> Result<Value> {
    if opts.patterns.is_empty() && opts.url.is_none() {
        bail!("no pattern to load");
    }
    if opts.url.is_some() && (opts.local || !opts.patterns.is_empty()) {
        bail!("--url loads that URL alone: no --local, no --pattern");
    }
    match opts.mode {
        Mode::Open { rate } if !(rate > 0.0 && rate.is_finite()) => {
            bail!("--rate must be a positive number of requests per second")
        }
        Mode::Closed { concurrency: 0 } => bail!("--concurrency must be at least 1"),
        _ => {}
    }
    if opts.duration.is_zero() {
        bail!("--duration must be longer than zero");
    }
    if opts.broker_fault.is_some() && !(opts.local && opts.patterns.contains(&Pattern::Broker)) {
        bail!("--broker-fault needs --local and the broker pattern");
    }
    if opts.stall.is_some() && !opts.local {
        bail!("--stall needs --local (the stack is started with the fault)");
    }
    if !opts.stack_faults.is_empty() && !opts.local {
        bail!("--outage and --latency need --local (the stacks are started with the faults)");
    }
    for (i, f) in opts.stack_faults.iter().enumerate() {
        if matches!(f.target, FaultTarget::Broker | FaultTarget::Secrets)
            && !opts.patterns.contains(&Pattern::Broker)
        {
            bail!(
                "a {} fault needs the broker pattern in the run (--pattern broker or both)",
                f.target.as_str()
            );
        }
        if opts.stack_faults[..i].iter().any(|g| g.target == f.target) {
            bail!("one fault per target: {} is given twice", f.target.as_str());
        }
    }
    let mut plan = FaultPlan {
        faults: opts.stack_faults.clone(),
        ..FaultPlan::default()
    };
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;

    // Stacks: started for the run (sharing one collector), or the ones `tokentrail up` runs.
    let mut stacks: Vec<Stack> = Vec::new();
    let mut endpoints = Vec::new();
    for p in &opts.patterns {
        if opts.local {
            let mut so = StackOptions::new(&opts.out)?;
            if let Some(b) = &opts.binary {
                so.binary = b.clone();
            }
            so.pattern = *p;
            so.broker_fault = if *p == Pattern::Broker {
                opts.broker_fault
            } else {
                None
            };
            so.shared = stacks.first().map(Stack::shared_telemetry);
            if let Some((hop, stall)) = opts.stall {
                // Halfway through the measured period, counted from the hop's first request
                // (the first request of the warm-up).
                let after = opts.warmup + opts.duration / 2;
                so.hop_env.push((
                    hop,
                    crate::serve::STALL_ENV.to_owned(),
                    format!("{}ms@{}ms", stall.as_millis(), after.as_millis()),
                ));
            }
            for f in &opts.stack_faults {
                let hop = match (f.target, p) {
                    (FaultTarget::Idp, _) => HopName::Idp,
                    (FaultTarget::Broker, Pattern::Broker) => HopName::Broker,
                    _ => continue,
                };
                let dir = opts.out.join("faults");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let file = dir.join(format!("{p}-{}.json", hop.as_str()));
                // A window left by an earlier run must not fire in this one.
                let _ = std::fs::remove_file(&file);
                so.hop_env.push((
                    hop,
                    crate::serve::FAULT_FILE_ENV.to_owned(),
                    file.display().to_string(),
                ));
                plan.files.push((f.target, file));
            }
            eprintln!("load: starting the local {p} stack");
            let stack = Stack::start(&so).await?;
            if let Some(file) = stack.secrets_file() {
                plan.secrets.push(file);
            }
            if plan.collector.is_none() {
                plan.collector = Some(stack.shared_telemetry().collector);
            }
            endpoints.push(stack.endpoints.clone());
            stacks.push(stack);
        } else {
            let running = crate::app::running_stack(&opts.out, *p);
            endpoints.push(if opts.patterns.len() > 1 {
                running.with_context(|| {
                    format!(
                        "both patterns are loaded (`--pattern both`, the default): start the \
                         {p} stack too, or load one with `--pattern passthrough` or `--pattern \
                         broker`"
                    )
                })?
            } else {
                running?
            });
        }
    }
    let result = drive(opts, &endpoints, &plan).await;
    for s in stacks.into_iter().rev() {
        s.stop().await?;
    }
    let doc = result?;
    let path = opts.out.join("load.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(doc)
}

async fn drive(
    opts: &LoadOptions,
    endpoints: &[crate::stack::Endpoints],
    plan: &FaultPlan,
) -> Result<Value> {
    let started_at = auth::iam::epoch_to_rfc3339(auth::iam::now_epoch());
    let telemetry = match endpoints.first() {
        Some(e) => Some(crate::stack::init_app_telemetry(e)?),
        None => None,
    };
    let mut targets = Vec::new();
    for e in endpoints {
        let app = App::new(e.clone())?;
        let tokens = fetch_tokens(&app)
            .await
            .with_context(|| format!("cannot obtain tokens from the {} stack's IdP", e.pattern))?;
        targets.push(Arc::new(Target {
            name: e.pattern.as_str().to_owned(),
            kind: TargetKind::Stack {
                app: Box::new(app),
                tokens: RwLock::new(tokens),
            },
        }));
    }
    if let Some(url) = &opts.url {
        targets.push(Arc::new(Target {
            name: "url".into(),
            kind: TargetKind::Url(crate::plain_get::PlainGet::new(
                url,
                Duration::from_secs(30),
            )?),
        }));
    }
    let shared = Arc::new(Mutex::new(Shared {
        stats: (0..targets.len())
            .map(|_| PatternStats::new())
            .collect::<Result<_>>()?,
    }));
    let renewer = {
        let targets = targets.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TOKEN_RENEWAL).await;
                for t in &targets {
                    if let TargetKind::Stack { app, tokens } = &t.kind
                        && let Ok(fresh) = fetch_tokens(app).await
                    {
                        *tokens.write().await = fresh;
                    }
                }
            }
        })
    };
    let n = targets.len() as u64;
    let faults = Arc::new(opts.faults.clone());
    let total = opts.warmup + opts.duration;
    let mut progress = Progress::new();
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_from = t0 + opts.warmup;
    let armed = plan.arm(
        std::time::SystemTime::now() + (measure_from - Instant::now()),
        opts.duration,
    )?;
    let mut tasks = tokio::task::JoinSet::new();
    match opts.mode {
        Mode::Open { rate } => {
            let count = (total.as_secs_f64() * rate).round() as u64;
            for i in 0..count {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let target = targets[(i % n) as usize].clone();
                let (recorder, faults) = (shared.clone(), faults.clone());
                tasks.spawn(async move {
                    let ended = one(&target, i, n, &faults).await;
                    record(
                        &recorder,
                        (i % n) as usize,
                        due >= measure_from,
                        ended,
                        due.elapsed(),
                    );
                });
                while tasks.try_join_next().is_some() {}
                progress.tick(&shared, t0, total, false);
            }
        }
        Mode::Closed { concurrency } => {
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let end = t0 + total;
            for _ in 0..concurrency {
                let (targets, shared, faults, next) = (
                    targets.clone(),
                    shared.clone(),
                    faults.clone(),
                    next.clone(),
                );
                tasks.spawn(async move {
                    tokio::time::sleep_until(t0).await;
                    loop {
                        let start = Instant::now();
                        if start >= end {
                            return;
                        }
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let p = (i % n) as usize;
                        let ended = one(&targets[p], i, n, &faults).await;
                        record(&shared, p, start >= measure_from, ended, start.elapsed());
                    }
                });
            }
            while Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(200)).await;
                progress.tick(&shared, t0, total, false);
            }
        }
    }
    // Every request sent is waited for (each has the app's own 30 s timeout).
    while tasks.join_next().await.is_some() {
        progress.tick(&shared, t0, total, false);
    }
    progress.tick(&shared, t0, total, true);
    if progress.tty {
        eprintln!();
    }
    renewer.abort();
    let stack_faults = armed.restore();
    if let Some(t) = &telemetry {
        t.flush(Duration::from_secs(5)).await;
    }

    let sh = shared
        .lock()
        .map_err(|_| anyhow::anyhow!("a request task panicked while recording"))?;
    let mut patterns = serde_json::Map::new();
    for (t, st) in targets.iter().zip(&sh.stats) {
        let failures: Vec<Value> = st
            .rejected
            .iter()
            .map(|((hop, reason), c)| json!({"hop": hop, "reason": reason, "count": c}))
            .collect();
        let errors: Vec<Value> = st
            .errors
            .iter()
            .map(|(m, c)| json!({"message": telemetry::redact::scrub(m), "count": c}))
            .collect();
        patterns.insert(
            t.name.clone(),
            json!({
                "sent": st.sent,
                "warmup": st.sent - st.measured,
                "measured": st.measured,
                "achieved_rate_per_s": ((st.measured as f64 / opts.duration.as_secs_f64()) * 100.0).round() / 100.0,
                "outcomes": {
                    "ok": st.ok,
                    "rejected": st.rejected.values().sum::<u64>(),
                    "error": st.errors.values().sum::<u64>(),
                },
                "latency": percentiles(&st.all),
                "latency_by_outcome": st.by_outcome.iter().map(|(k, h)| (k.clone(), percentiles(h))).collect::<serde_json::Map<_, _>>(),
                "rejections": failures,
                "errors": errors,
            }),
        );
    }
    let (mode, rate, concurrency) = match opts.mode {
        Mode::Open { rate } => ("open", Some(rate), None),
        Mode::Closed { concurrency } => ("closed", None, Some(concurrency)),
    };
    Ok(json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "tokentrail_version": env!("CARGO_PKG_VERSION"),
        "machine": {
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        "started_at": started_at,
        "mode": mode,
        "rate_per_s": rate,
        "concurrency": concurrency,
        "duration_s": opts.duration.as_secs_f64(),
        "warmup_s": opts.warmup.as_secs_f64(),
        "faults": opts.faults.to_json(),
        "broker_fault": opts.broker_fault.map(|f| format!("{f:?}").to_ascii_lowercase()),
        "stall": opts.stall.map(|(h, d)| json!({"hop": h.as_str(), "ms": d.as_millis() as u64})),
        "stack_faults": stack_faults,
        "collector_refused_exports": plan.collector.as_ref().map(|c| c.refused_count()),
        "patterns": patterns,
        "store": opts.out.join(local::collector::TRACES_FILE),
    }))
}

/// One stack fault of `load.json`, in words: `broker latency +100 ms from 2.0 s to 4.0 s of the
/// measured period`.
pub fn describe_fault(f: &Value) -> String {
    format!(
        "{} {}{} from {:.1} s to {:.1} s of the measured period",
        f["target"].as_str().unwrap_or("?"),
        f["kind"].as_str().unwrap_or("?"),
        f["delay_ms"]
            .as_u64()
            .map(|d| format!(" +{d} ms"))
            .unwrap_or_default(),
        f["from_s"].as_f64().unwrap_or(0.0),
        f["until_s"].as_f64().unwrap_or(0.0)
    )
}

/// Print the summary of a `load.json` document.
pub fn print_summary(doc: &Value, out: &Path) {
    let Some(patterns) = doc["patterns"].as_object() else {
        return;
    };
    for f in doc["stack_faults"].as_array().into_iter().flatten() {
        println!("stack fault: {}", describe_fault(f));
    }
    if let Some(n) = doc["collector_refused_exports"].as_u64().filter(|n| *n > 0) {
        println!(
            "the collector refused {n} exports during its outage (those spans and metrics are lost)"
        );
    }
    println!(
        "{:<12} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}",
        "pattern",
        "measured",
        "rate/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "rejected",
        "errors"
    );
    for (name, p) in patterns {
        let l = &p["latency"];
        let cells: Vec<String> = [
            &p["measured"],
            &p["achieved_rate_per_s"],
            &l["p50_ms"],
            &l["p90_ms"],
            &l["p99_ms"],
            &l["p99_9_ms"],
            &l["max_ms"],
            &p["outcomes"]["rejected"],
            &p["outcomes"]["error"],
        ]
        .iter()
        .map(|v| match v.as_f64() {
            Some(f) if v.is_f64() => format!("{f:.2}"),
            _ => v.to_string(),
        })
        .collect();
        println!(
            "{:<12} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>7}",
            name,
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
        );
        for r in p["rejections"].as_array().into_iter().flatten() {
            println!(
                "    rejected at {} {}: {}",
                r["hop"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?"),
                r["count"]
            );
        }
        for e in p["errors"].as_array().into_iter().flatten() {
            println!(
                "    error: {} ({})",
                e["message"].as_str().unwrap_or("?"),
                e["count"]
            );
        }
    }
    println!("results: {}", out.join("load.json").display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_mixes_parse_and_pick() {
        let m: FaultMix = "expired=0.25, missing=0.25".parse().unwrap();
        assert_eq!(m.pick(0.1), Some(TokenFault::Expired));
        assert_eq!(m.pick(0.3), Some(TokenFault::Missing));
        assert_eq!(m.pick(0.6), None);
        assert!("expired=2".parse::<FaultMix>().is_err());
        assert!("expired=0.6,missing=0.6".parse::<FaultMix>().is_err());
        assert!("nope=0.1".parse::<FaultMix>().is_err());
        assert!("expired".parse::<FaultMix>().is_err());
        assert!("expired=0.1,expired=0.1".parse::<FaultMix>().is_err());
        assert_eq!("".parse::<FaultMix>().unwrap(), FaultMix::default());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(
            parse_stall_arg("runtime=500ms").unwrap(),
            (HopName::Runtime, Duration::from_millis(500))
        );
        assert!(parse_stall_arg("nowhere=1s").is_err());
        assert!(parse_stall_arg("runtime").is_err());
        assert_eq!(
            crate::serve::parse_stall("500ms@4s").unwrap(),
            (Duration::from_millis(500), Duration::from_secs(4))
        );
        assert!(crate::serve::parse_stall("500ms").is_err());
    }
}
