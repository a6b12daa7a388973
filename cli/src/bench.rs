//! `tokentrail bench`: the passthrough chain's throughput and latency with tracing on and off, in
//! the same run. Two stacks run side by side (the "off" one with `OTEL_TRACES_SAMPLER=always_off`
//! in every hop and unsampled app spans); rounds alternate between them so drift of the machine
//! hits both alike. Each worker logs in once and reuses its token, so the IdP's signing cost is
//! not part of the measurement.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::json;
use telemetry::TraceContext;

use crate::app::{App, CallSpec, Outcome};
use crate::stack::{Stack, StackOptions};

/// Results of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// `on` or `off`.
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

/// `tokentrail bench`.
pub async fn run(
    out: &Path,
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> Result<ExitCode> {
    let concurrency = concurrency.max(1);
    let rounds = rounds.max(1);
    let per_worker = (requests / rounds / concurrency).max(1);
    println!(
        "tokentrail bench: {concurrency} workers, {rounds} rounds per mode, {} requests per round",
        per_worker * concurrency
    );
    let mut on_opts = StackOptions::new(&out.join("tracing-on"))?;
    on_opts.forward_to = None;
    let mut off_opts = StackOptions::new(&out.join("tracing-off"))?;
    off_opts.forward_to = None;
    off_opts
        .extra_env
        .push(("OTEL_TRACES_SAMPLER".into(), "always_off".into()));
    let on = Stack::start(&on_opts).await?;
    let off = Stack::start(&off_opts).await?;
    let telemetry = crate::stack::init_app_telemetry(&on.endpoints)?;
    let apps = [
        (true, App::new(on.endpoints.clone())?),
        (false, App::new(off.endpoints.clone())?),
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
    let mut time = [Duration::ZERO; 2];
    let mut lat: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (sampled, app) = &apps[i];
            let (t, l) = round(app, &tokens[i], per_worker, *sampled).await?;
            time[i] += t;
            lat[i].extend(l);
            // Let the batch exporters drain (OTEL_BSP_SCHEDULE_DELAY is 200 ms in the stack) so
            // one mode's exports do not run during the other mode's round.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    telemetry.flush(Duration::from_secs(5)).await;
    on.stop().await?;
    off.stop().await?;
    let mut results = Vec::new();
    for (i, name) in [(0, "on"), (1, "off")] {
        lat[i].sort_by(|a, b| a.total_cmp(b));
        results.push(ModeResult {
            tracing: name,
            requests: lat[i].len(),
            throughput_rps: lat[i].len() as f64 / time[i].as_secs_f64().max(1e-9),
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
    println!("throughput with tracing on / off: {ratio:.3}");
    let path = out.join("bench.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(
            &json!({"concurrency": concurrency, "rounds": rounds, "results": results, "on_off_ratio": ratio}),
        )?,
    )?;
    println!("results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}
