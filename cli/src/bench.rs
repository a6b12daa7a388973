//! `tokentrail bench`: the passthrough chain's throughput and latency with tracing on and off, in
//! the same run. Two stacks run side by side (the "off" one with `OTEL_TRACES_SAMPLER=always_off`
//! in every hop and unsampled app spans); rounds alternate between them so drift of the machine
//! hits both alike. Each worker logs in once and reuses its token, so the IdP's signing cost is
//! not part of the measurement. `--calibrate` runs both stacks untraced (an A/A run) to show how
//! far two identical stacks differ on this machine. `--traced` chooses what the traced stack
//! does with its spans, to split tracing's cost: store them as the local stack does, send them
//! to a receiver that keeps nothing (a collector elsewhere), or only record them.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use local::collector::{METRICS_FILE, TRACES_FILE};
use serde::Serialize;
use serde_json::json;
use telemetry::TraceContext;

use crate::app::{App, CallSpec, Outcome};
use crate::stack::{Stack, StackOptions};

/// What the traced stack does with its spans (`--traced`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traced {
    /// Export them to the embedded collector, which writes each to `traces.jsonl` on the same
    /// CPUs: the local stack as `tokentrail up` runs it.
    #[default]
    Store,
    /// Export them over OTLP/HTTP to a receiver that answers like the collector and keeps
    /// nothing: what tracing costs the hops when their collector runs elsewhere, as in a
    /// deployment.
    Send,
    /// Record them and export none (`OTEL_TRACES_EXPORTER=none` in the traced stack): the cost
    /// of the SDK's span recording alone.
    Record,
}

impl Traced {
    fn as_str(self) -> &'static str {
        match self {
            Traced::Store => "store",
            Traced::Send => "send",
            Traced::Record => "record",
        }
    }

    /// What the bench process (the app, and whatever receives the spans in it) is called in the
    /// CPU table.
    fn this_process(self) -> &'static str {
        match self {
            Traced::Store => "app + collector",
            Traced::Send => "app + receiver",
            Traced::Record => "app",
        }
    }

    /// The words after "tracing on" on the ratio line.
    fn ratio(self) -> &'static str {
        match self {
            Traced::Store => "throughput with tracing on / off",
            Traced::Send => {
                "throughput with tracing on (spans sent to a receiver that keeps none) / off"
            }
            Traced::Record => "throughput with tracing on (spans recorded, none exported) / off",
        }
    }
}

/// What the two stacks are and how the report names them.
#[derive(Debug, Clone, Copy)]
struct Modes {
    /// Names of the two stacks.
    names: [&'static str; 2],
    /// Whether each stack traces.
    traced: [bool; 2],
    /// Heading of the CPU table's difference column.
    difference: &'static str,
    /// The ratio line's words.
    ratio: &'static str,
    /// The CPU table's name for this process.
    this_process: &'static str,
}

impl Modes {
    /// Two untraced stacks when `calibrate`, else a traced one (doing `traced` with its spans)
    /// and an untraced one.
    fn new(calibrate: bool, traced: Traced) -> Self {
        if calibrate {
            Self {
                names: ["off-a", "off-b"],
                traced: [false, false],
                difference: "a - b",
                ratio: "throughput of two untraced stacks, a / b (this machine's noise)",
                this_process: "app + collector",
            }
        } else {
            Self {
                names: ["on", "off"],
                traced: [true, false],
                difference: "tracing adds",
                ratio: traced.ratio(),
                this_process: traced.this_process(),
            }
        }
    }
}

/// Results of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// `on` or `off` (`off-a` and `off-b` in a calibration run).
    pub tracing: &'static str,
    /// Requests measured.
    pub requests: usize,
    /// Requests per second over the measured rounds.
    pub throughput_rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux
/// architecture).
const USER_HZ: u64 = 100;

/// User + system ticks in the text of a `/proc/.../stat` file.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime the twelfth, stime the thirteenth.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// CPU time (user + system, every thread, exited ones included) a process has used, from
/// `/proc/<pid>/stat`; `None` without procfs.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat).map(ticks_to_duration)
}

/// Whether a thread (by its name, as `/proc` shows it: at most 15 bytes) is one of the
/// telemetry SDK's background threads: the batch span processor, the metrics reader and the
/// blocking HTTP client the exporters post with. Everything else in a hop serves requests.
fn is_export_thread(comm: &str) -> bool {
    comm.starts_with("OpenTelemetry") || comm.starts_with("reqwest-intern")
}

/// CPU time of a process's live export threads (see [`is_export_thread`]).
fn export_threads_cpu(pid: &str) -> Option<Duration> {
    let mut ticks = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        // A thread may end between the listing and the reads: it counts for nothing then.
        let Ok(task) = task.map(|t| t.path()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if is_export_thread(comm.trim_end()) {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
            ticks += stat_ticks(&stat).unwrap_or(0);
        }
    }
    Some(ticks_to_duration(ticks))
}

/// CPU used by one mode: each hop of its stack, the hops' export threads together, and this
/// process (the app and the collectors).
#[derive(Debug, Default)]
struct ModeCpu {
    hops: Vec<(&'static str, Duration)>,
    hop_exports: Duration,
    this_process: Duration,
}

/// One reading of a mode's CPU times.
struct Reading {
    this: Duration,
    hops: Vec<Duration>,
    hop_exports: Duration,
}

/// Reads the CPU time of both stacks' hops and of this process.
struct CpuMeter {
    hops: [Vec<(&'static str, String)>; 2],
}

impl CpuMeter {
    fn new(stacks: [&Stack; 2]) -> Self {
        Self {
            hops: stacks.map(|s| {
                s.hop_pids()
                    .into_iter()
                    .map(|(hop, pid)| (hop.as_str(), pid.to_string()))
                    .collect()
            }),
        }
    }

    /// This process and each hop of stack `mode`, or `None` without procfs.
    fn read(&self, mode: usize) -> Option<Reading> {
        let this = cpu_time("self")?;
        let hops = self.hops[mode]
            .iter()
            .map(|(_, pid)| cpu_time(pid))
            .collect::<Option<Vec<_>>>()?;
        let hop_exports = self.hops[mode]
            .iter()
            .filter(|(name, _)| *name != "idp")
            .map(|(_, pid)| export_threads_cpu(pid))
            .sum::<Option<Duration>>()?;
        Some(Reading {
            this,
            hops,
            hop_exports,
        })
    }

    /// Add what mode `mode` used between `before` and now.
    fn add(&self, mode: usize, before: Option<Reading>, into: &mut ModeCpu) {
        let (Some(r0), Some(r1)) = (before, self.read(mode)) else {
            return;
        };
        into.this_process += r1.this.saturating_sub(r0.this);
        into.hop_exports += r1.hop_exports.saturating_sub(r0.hop_exports);
        if into.hops.is_empty() {
            into.hops = self.hops[mode]
                .iter()
                .map(|(name, _)| (*name, Duration::ZERO))
                .collect();
        }
        for ((_, total), (a, b)) in into.hops.iter_mut().zip(r0.hops.iter().zip(&r1.hops)) {
            *total += b.saturating_sub(*a);
        }
    }
}

/// Microseconds of CPU per request.
fn per_request(d: Duration, requests: usize) -> f64 {
    d.as_secs_f64() * 1e6 / requests.max(1) as f64
}

/// Rows of the CPU table that split "all hops".
const HOPS_SERVING: &str = "  serving";
const HOPS_EXPORTING: &str = "  exporting";

/// The table of CPU per request, tracing on vs off, and its JSON.
fn cpu_report(cpu: &[ModeCpu; 2], requests: [usize; 2], modes: Modes) -> Option<serde_json::Value> {
    if cpu.iter().any(|c| c.hops.is_empty()) {
        return None;
    }
    let mut rows: Vec<(String, [f64; 2])> = cpu[0]
        .hops
        .iter()
        .zip(&cpu[1].hops)
        .filter(|((name, _), _)| *name != "idp")
        .map(|((name, on), (_, off))| {
            (
                (*name).to_owned(),
                [
                    per_request(*on, requests[0]),
                    per_request(*off, requests[1]),
                ],
            )
        })
        .collect();
    // In the order a request crosses them.
    let chain = ["runtime", "agent", "gateway", "interceptor", "target"];
    rows.sort_by_key(|(name, _)| chain.iter().position(|h| h == name));
    let hops = [0, 1].map(|i| rows.iter().map(|(_, v)| v[i]).sum::<f64>());
    rows.push(("all hops".into(), hops));
    // Where the hops' CPU went: their export threads, and everything else (the requests).
    let exports = [0, 1].map(|i| per_request(cpu[i].hop_exports, requests[i]));
    rows.push((HOPS_SERVING.into(), [0, 1].map(|i| hops[i] - exports[i])));
    rows.push((HOPS_EXPORTING.into(), exports));
    let this = [0, 1].map(|i| per_request(cpu[i].this_process, requests[i]));
    rows.push((modes.this_process.into(), this));
    rows.push(("everything".into(), [0, 1].map(|i| hops[i] + this[i])));
    println!(
        "\nCPU per request (user + system over each round and its export drain, 10 ms ticks):"
    );
    let [a, b] = modes.names;
    println!("{:<16} {a:>10} {b:>10} {:>12}", "", modes.difference);
    for (name, [on, off]) in &rows {
        println!(
            "{name:<16} {on:>7.0} µs {off:>7.0} µs {:>+9.0} µs",
            on - off
        );
    }
    Some(json!(
        rows.iter()
            .map(|(name, [on, off])| {
                // The split rows are indented in the table; in the JSON they name their total.
                let key = match name.strip_prefix("  ") {
                    Some(part) => format!("all hops: {part}"),
                    None => name.clone(),
                };
                (key, json!({a: on, b: off}))
            })
            .collect::<serde_json::Map<String, serde_json::Value>>()
    ))
}

async fn round(
    app: &App,
    tokens: &[secrecy::SecretString],
    per_worker: usize,
    sampled: bool,
) -> Result<(Duration, Vec<f64>)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in tokens {
        let app = app.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let spec = CallSpec {
                user: "alice".into(),
                tool: "orders___getOrder".into(),
                arguments: json!({"orderId": "A-1001"}),
                fault: None,
            };
            let mut lat = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let parent = if sampled {
                    TraceContext::none()
                } else {
                    TraceContext::unsampled_root()
                };
                let r = app
                    .call_with_token_under(&spec, token.clone(), &parent)
                    .await?;
                if r.outcome != Outcome::Ok {
                    bail!(
                        "request failed during the benchmark: {:?} ({})",
                        r.outcome,
                        r.message
                    );
                }
                lat.push(r.latency.as_secs_f64() * 1000.0);
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((started.elapsed(), all))
}

/// The ratio of each pair of rounds (round `k` of the first mode against round `k` of the
/// second, run one after the other with the same requests): the first mode's throughput over
/// the second's, which is the second's time over the first's.
fn round_ratios(first: &[Duration], second: &[Duration]) -> Vec<f64> {
    first
        .iter()
        .zip(second)
        .map(|(a, b)| b.as_secs_f64() / a.as_secs_f64().max(1e-9))
        .collect()
}

/// How far the pairs of rounds spread: ` (round by round: median M, L–H)`, or nothing for one
/// pair.
fn spread(pairs: &[f64]) -> String {
    if pairs.len() < 2 {
        return String::new();
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        " (round by round: median {:.3}, {:.3}–{:.3})",
        crate::app::percentile(&sorted, 50.0),
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

/// Requests each worker sends per round: every worker sends at least one in every round, and a
/// remainder that does not share out evenly is left out (the table counts what was measured).
fn per_worker(requests: usize, concurrency: usize, rounds: usize) -> Result<usize> {
    if concurrency == 0 || rounds == 0 {
        bail!("--concurrency and --rounds must be at least 1");
    }
    let per_round = concurrency.saturating_mul(rounds);
    if requests < per_round {
        bail!(
            "--requests {requests} is fewer than --concurrency {concurrency} × --rounds {rounds} \
             = {per_round}: every worker sends at least one request per round"
        );
    }
    Ok(requests / per_round)
}

/// `tokentrail bench`.
pub async fn run(
    out: &Path,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    calibrate: bool,
    traced: Option<Traced>,
    receiver_url: Option<&str>,
) -> Result<ExitCode> {
    if let Some(url) = receiver_url
        && (calibrate || traced != Some(Traced::Send))
    {
        bail!(
            "--receiver {url} is where `--traced send` sends the traced stack's spans: add \
             `--traced send` (and leave --calibrate out)"
        );
    }
    if calibrate && let Some(t) = traced {
        bail!(
            "--calibrate runs both stacks untraced, so `--traced {}` has nothing to apply to: \
             leave one of them out",
            t.as_str()
        );
    }
    let traced = traced.unwrap_or_default();
    let modes = Modes::new(calibrate, traced);
    let per_worker = per_worker(requests, concurrency, rounds)?;
    let measured = per_worker * concurrency * rounds;
    let left_out = if measured < requests {
        format!(" ({measured} of the {requests} asked: they share out evenly)")
    } else {
        String::new()
    };
    println!(
        "tokentrail bench: {concurrency} workers, {rounds} rounds per mode, {} requests per round{left_out}",
        per_worker * concurrency
    );
    let dir_of = |name: &str| out.join(format!("tracing-{name}"));
    let dirs = modes.names.map(dir_of);
    // What any earlier run left, calibration or not, so the directory holds this run alone.
    for any_kind in [false, true] {
        for name in Modes::new(any_kind, traced).names {
            clear_previous_run(&dir_of(name))?;
        }
    }
    let mut on_opts = StackOptions::new(&dirs[0])?;
    on_opts.forward_to = None;
    let mut off_opts = StackOptions::new(&dirs[1])?;
    off_opts.forward_to = None;
    for (opts, traced) in [&mut on_opts, &mut off_opts].into_iter().zip(modes.traced) {
        if !traced {
            opts.extra_env
                .push(("OTEL_TRACES_SAMPLER".into(), "always_off".into()));
        }
    }
    // Where the traced stack's spans go when the embedded collector does not store them, and
    // where the app exports its own then (`Some(None)`: nowhere).
    let mut receiver = None;
    let mut app_export = None;
    if !calibrate {
        match traced {
            Traced::Store => {}
            Traced::Send => {
                let url = match receiver_url {
                    Some(url) => {
                        let url = url.trim_end_matches('/').to_owned();
                        receiver = Some(Receiver::Process {
                            before: ReceiverStats::read(&url).await?,
                            url: url.clone(),
                        });
                        url
                    }
                    None => {
                        let (sink, addr, task) = start_discard(0).await?;
                        receiver = Some(Receiver::InProcess(sink, task));
                        format!("http://{addr}")
                    }
                };
                on_opts
                    .extra_env
                    .push((telemetry::COLLECTOR_ENV.into(), url.clone()));
                app_export = Some(Some(url));
            }
            Traced::Record => {
                on_opts
                    .extra_env
                    .push((telemetry::TRACES_EXPORTER_ENV.into(), "none".into()));
                app_export = Some(None);
            }
        }
    }
    let on = Stack::start(&on_opts).await?;
    let off = Stack::start(&off_opts).await?;
    let telemetry = match app_export {
        Some(to) => crate::stack::init_app_telemetry_to(&on.endpoints, to)?,
        None => crate::stack::init_app_telemetry(&on.endpoints)?,
    };
    let apps = [
        (modes.traced[0], App::new(on.endpoints.clone())?),
        (modes.traced[1], App::new(off.endpoints.clone())?),
    ];
    // Each stack has its own IdP, hence its own tokens.
    let mut tokens: [Vec<secrecy::SecretString>; 2] = [Vec::new(), Vec::new()];
    for (i, (_, app)) in apps.iter().enumerate() {
        for _ in 0..concurrency {
            tokens[i].push(
                app.login(
                    "alice",
                    "tokentrail-app",
                    None,
                    &TraceContext::unsampled_root(),
                )
                .await?,
            );
        }
    }
    // Warm-up: JWKS fetches, agent token, connection pools.
    for (i, (sampled, app)) in apps.iter().enumerate() {
        round(app, &tokens[i], 5, *sampled).await?;
    }
    let mut round_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let meter = CpuMeter::new([&on, &off]);
    let mut cpu = [ModeCpu::default(), ModeCpu::default()];
    let drain = crate::stack::span_export_delay() + Duration::from_millis(300);
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (sampled, app) = &apps[i];
            let before = meter.read(i);
            let (t, l) = round(app, &tokens[i], per_worker, *sampled).await?;
            round_times[i].push(t);
            lat[i].extend(l);
            // Let the batch exporters drain so one mode's exports do not run during the other
            // mode's round.
            tokio::time::sleep(drain).await;
            meter.add(i, before, &mut cpu[i]);
        }
    }
    telemetry.flush(Duration::from_secs(5)).await;
    on.stop().await?;
    off.stop().await?;
    let mut results = Vec::new();
    for (i, name) in modes.names.into_iter().enumerate() {
        lat[i].sort_by(|a, b| a.total_cmp(b));
        let time: Duration = round_times[i].iter().sum();
        results.push(ModeResult {
            tracing: name,
            requests: lat[i].len(),
            throughput_rps: lat[i].len() as f64 / time.as_secs_f64().max(1e-9),
            p50_ms: crate::app::percentile(&lat[i], 50.0),
            p99_ms: crate::app::percentile(&lat[i], 99.0),
        });
    }
    println!("\ntracing  requests  throughput      p50       p99");
    for r in &results {
        println!(
            "{:<8} {:>8}  {:>8.0} req/s  {:>6.2} ms  {:>6.2} ms",
            r.tracing, r.requests, r.throughput_rps, r.p50_ms, r.p99_ms
        );
    }
    let ratio = results[0].throughput_rps / results[1].throughput_rps.max(1e-9);
    let pairs = round_ratios(&round_times[0], &round_times[1]);
    println!("{}: {ratio:.3}{}", modes.ratio, spread(&pairs));
    let cpu_us = cpu_report(&cpu, [lat[0].len(), lat[1].len()], modes);
    if let Some(receiver) = receiver {
        let sent = receiver.sent().await?;
        // A run whose spans never left the hops would measure recording, not sending.
        if sent.trace_exports == 0 {
            bail!(
                "the receiver that keeps no span was sent none: the traced stack did not export, \
                 so this run measured nothing of sending"
            );
        }
        println!(
            "the receiver kept none of the {} trace exports ({:.1} MB of OTLP/HTTP protobuf) it \
             was sent",
            sent.trace_exports,
            sent.trace_bytes as f64 / 1e6
        );
    }
    let path = out.join("bench.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "calibrate": calibrate,
            "traced": (!calibrate).then_some(traced),
            "receiver": receiver_url,
            "concurrency": concurrency,
            "rounds": rounds,
            "results": results,
            "modes": modes.names,
            "ratio": ratio,
            "round_ratios": pairs,
            "cpu_us_per_request": cpu_us,
        }))?,
    )?;
    println!("results: {}", path.display());
    for dir in &dirs {
        let store = dir.join(TRACES_FILE);
        let bytes = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
        if bytes > 0 {
            println!(
                "spans: {} ({:.0} MB; the next bench run replaces them)",
                store.display(),
                bytes as f64 / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `--traced send` sends the traced stack's spans.
enum Receiver {
    /// In this process (sharing its cores with the app).
    InProcess(
        std::sync::Arc<local::collector::Discard>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    /// `tokentrail receive` (`--receiver`), e.g. pinned to a core of its own; `before` is what
    /// it had been sent when this run started.
    Process { url: String, before: ReceiverStats },
}

impl Receiver {
    /// What this run sent it.
    async fn sent(self) -> Result<ReceiverStats> {
        match self {
            Receiver::InProcess(sink, task) => {
                task.abort();
                Ok(ReceiverStats {
                    trace_exports: sink.trace_exports(),
                    trace_bytes: sink.trace_bytes(),
                })
            }
            Receiver::Process { url, before } => {
                let now = ReceiverStats::read(&url).await?;
                Ok(ReceiverStats {
                    trace_exports: now.trace_exports.saturating_sub(before.trace_exports),
                    trace_bytes: now.trace_bytes.saturating_sub(before.trace_bytes),
                })
            }
        }
    }
}

/// A receiver's counters (`GET /stats` of `tokentrail receive`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct ReceiverStats {
    trace_exports: u64,
    trace_bytes: u64,
}

impl ReceiverStats {
    async fn read(url: &str) -> Result<Self> {
        let stats = format!("{url}{}", local::collector::DISCARD_STATS_PATH);
        let reply = reqwest::Client::new()
            .get(&stats)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| {
                format!("--receiver: cannot reach {stats}; is `tokentrail receive` running there?")
            })?;
        if !reply.status().is_success() {
            bail!(
                "--receiver: {stats} answered {}: not a `tokentrail receive` receiver",
                reply.status()
            );
        }
        reply
            .json()
            .await
            .with_context(|| format!("--receiver: {stats} did not answer with its counters"))
    }
}

/// A receiver that keeps nothing, serving on 127.0.0.1:`port` (0: any free port).
async fn start_discard(
    port: u16,
) -> Result<(
    std::sync::Arc<local::collector::Discard>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let sink = std::sync::Arc::new(local::collector::Discard::default());
    let (addr, task) = local::serve(
        local::collector::discard_router(sink.clone()),
        ([127, 0, 0, 1], port).into(),
    )
    .await
    .with_context(|| format!("cannot start the receiver that keeps no span on 127.0.0.1:{port}"))?;
    Ok((sink, addr, task))
}

/// `tokentrail receive`: an OTLP/HTTP receiver that answers like the collector and keeps
/// nothing, in a process of its own (so `taskset` can give it a core the chain does not use).
pub async fn receive(port: u16) -> Result<ExitCode> {
    let (sink, addr, task) = start_discard(port).await?;
    println!("READY receiver http://{addr}");
    crate::serve::interrupt_or_terminate().await;
    task.abort();
    println!(
        "received {} trace exports ({:.1} MB of OTLP/HTTP protobuf) and kept none",
        sink.trace_exports(),
        sink.trace_bytes() as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

/// Remove what an earlier bench run left in a stack's directory (its span and metrics stores,
/// their audit index, its logs), as `bench.json` is replaced: the stores only ever grow, by
/// ~210 MB of spans per 16000 traced requests, and this run's figures are about this run.
/// Nothing else in the directory is touched.
fn clear_previous_run(dir: &Path) -> Result<()> {
    let traces = dir.join(TRACES_FILE);
    let mut files = vec![
        crate::audit_index::index_file(&traces),
        traces,
        dir.join(METRICS_FILE),
    ];
    match std::fs::read_dir(dir.join("logs")) {
        Ok(entries) => {
            for entry in entries {
                let path = entry
                    .with_context(|| format!("cannot list {}", dir.join("logs").display()))?
                    .path();
                if path.extension().is_some_and(|e| e == "log") {
                    files.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("cannot list {}", dir.join("logs").display())),
    }
    for file in files {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).context(format!(
                    "cannot remove {} left by an earlier bench run",
                    file.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_run_traces_neither_stack() {
        assert_eq!(Modes::new(false, Traced::Store).traced, [true, false]);
        assert_eq!(Modes::new(false, Traced::Store).names, ["on", "off"]);
        assert_eq!(Modes::new(true, Traced::Store).traced, [false, false]);
        assert_eq!(Modes::new(true, Traced::Store).names, ["off-a", "off-b"]);
    }

    #[test]
    fn the_report_names_where_the_traced_stacks_spans_went() {
        let modes = |t| Modes::new(false, t);
        assert_eq!(modes(Traced::Store).this_process, "app + collector");
        assert_eq!(modes(Traced::Send).this_process, "app + receiver");
        assert_eq!(modes(Traced::Record).this_process, "app");
        assert_eq!(
            modes(Traced::Store).ratio,
            "throughput with tracing on / off"
        );
        assert!(modes(Traced::Send).ratio.contains("keeps none"));
        assert!(modes(Traced::Record).ratio.contains("none exported"));
        // A calibration run traces nothing, whatever --traced would have said.
        assert_eq!(
            Modes::new(true, Traced::Send).this_process,
            "app + collector"
        );
        assert_eq!(serde_json::to_value(Traced::Send).ok(), Some(json!("send")));
    }

    #[test]
    fn stat_ticks_are_user_plus_system_after_the_command_name() {
        // A thread name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (OpenTelemetry.T) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 8 0 100";
        assert_eq!(stat_ticks(stat), Some(290));
        assert_eq!(
            stat_ticks("4242 (a) b) S 1 2 3 4 5 6 7 8 9 10 7 3"),
            Some(10)
        );
        assert_eq!(stat_ticks("4242 (truncated) S 1 2"), None);
        assert_eq!(ticks_to_duration(290), Duration::from_millis(2900));
    }

    #[test]
    fn export_threads_are_the_sdks_and_its_http_clients() {
        for comm in ["OpenTelemetry.T", "OpenTelemetry.M", "reqwest-interna"] {
            assert!(is_export_thread(comm), "{comm}");
        }
        for comm in ["tokio-rt-worker", "tokentrail", "tokio-runtime-w"] {
            assert!(!is_export_thread(comm), "{comm}");
        }
    }

    #[test]
    fn each_pair_of_rounds_gives_a_ratio_and_the_spread_shows_median_and_range() {
        let ms = Duration::from_millis;
        // The first mode took 1.0, 1.25 and 2.0 s where the second took 1.0 s each time.
        let pairs = round_ratios(&[ms(1000), ms(1250), ms(2000)], &[ms(1000); 3]);
        assert_eq!(pairs, vec![1.0, 0.8, 0.5]);
        assert_eq!(
            spread(&pairs),
            " (round by round: median 0.800, 0.500–1.000)"
        );
        assert_eq!(spread(&pairs[..1]), "");
    }

    #[test]
    fn requests_share_out_over_workers_and_rounds() {
        assert_eq!(per_worker(16000, 8, 8).ok(), Some(250));
        // The remainder is left out, never rounded up.
        assert_eq!(per_worker(100, 8, 4).ok(), Some(3));
        assert_eq!(per_worker(32, 8, 4).ok(), Some(1));
    }

    #[test]
    fn fewer_requests_than_one_per_worker_and_round_is_refused() {
        let e = per_worker(10, 8, 4).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "--requests 10 is fewer than --concurrency 8 × --rounds 4 = 32: every worker \
                 sends at least one request per round"
            )
        );
        assert!(per_worker(10, 0, 4).is_err());
        assert!(per_worker(10, 1, 0).is_err());
    }
}
