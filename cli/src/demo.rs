//! `tokentrail demo`: start the stack, send a scripted mix of good and bad requests, print one
//! line per request and a summary, check every request ended where it should, scan the output
//! for leaked tokens, stop the stack.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use telemetry::{FailureReason, Hop};

use crate::app::{self, App, CallResult, CallSpec, Outcome, TokenFault};
use crate::stack::{Stack, StackOptions};

/// One scripted case and where it must end.
#[derive(Debug, Clone)]
pub struct Case {
    /// Request.
    pub spec: CallSpec,
    /// Expected outcome.
    pub expect: Outcome,
}

fn case(
    user: &str,
    tool: &str,
    order: Option<&str>,
    fault: Option<TokenFault>,
    expect: Option<(Hop, FailureReason)>,
) -> Case {
    Case {
        spec: CallSpec {
            user: user.into(),
            tool: format!("orders___{tool}"),
            arguments: order.map(|o| json!({"orderId": o})).unwrap_or(json!({})),
            fault,
        },
        expect: match expect {
            None => Outcome::Ok,
            Some((hop, reason)) => Outcome::Rejected { hop, reason },
        },
    }
}

/// The scripted mix: several users with valid tokens, each token fault, authorization denials.
pub fn script() -> Vec<Case> {
    use FailureReason as R;
    use TokenFault as F;
    vec![
        case("alice", "getOrder", Some("A-1001"), None, None),
        case("bob", "getOrder", Some("B-2001"), None, None),
        case("alice", "listOrders", None, None, None),
        case(
            "bob",
            "getOrder",
            Some("A-1001"),
            None,
            Some((Hop::Target, R::Forbidden)),
        ),
        case(
            "carol",
            "getOrder",
            Some("C-3001"),
            None,
            Some((Hop::Target, R::InsufficientScope)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Expired),
            Some((Hop::Interceptor, R::Expired)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Tampered),
            Some((Hop::Interceptor, R::BadSignature)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Missing),
            Some((Hop::Interceptor, R::MissingToken)),
        ),
        case(
            "bob",
            "getOrder",
            Some("B-2001"),
            Some(F::WrongAudience),
            Some((Hop::Target, R::WrongAudience)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Oversized),
            Some((Hop::Runtime, R::HeaderRejected)),
        ),
    ]
}

/// Files under `dir` that contain a JWT-shaped string.
pub fn scan_for_jwts(dir: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && telemetry::redact::contains_jwt(&String::from_utf8_lossy(&bytes))
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// `tokentrail demo`.
pub async fn run(out: &Path, requests: usize) -> Result<ExitCode> {
    let requests = requests.max(1);
    println!(
        "tokentrail demo: starting the local stack (idp, target, interceptor, gateway, agent, runtime)…"
    );
    let opts = StackOptions::new(out)?;
    let stack = Stack::start(&opts).await?;
    let telemetry = crate::stack::init_app_telemetry(&stack.endpoints)?;
    if let Some(f) = &opts.forward_to {
        println!("forwarding traces to {f}");
    } else if let Ok(e) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        println!("every hop also exports over OTLP/gRPC to {e}");
    }
    println!("passthrough pattern: app → runtime → agent → gateway → interceptor → target\n");
    println!("{}", app::TABLE_HEADER);
    let app = App::new(stack.endpoints.clone())?;
    let results = {
        let mut rows = Vec::new();
        let cases = script();
        for i in 0..requests {
            let c = &cases[i % cases.len()];
            match app.call(&c.spec).await {
                Ok(r) => {
                    let matched = r.outcome == c.expect;
                    println!(
                        "{}{}",
                        app::describe(&r),
                        if matched { "" } else { "   <-- UNEXPECTED" }
                    );
                    rows.push((r, c.expect.clone(), matched));
                }
                Err(e) => {
                    println!("request {} failed to run: {e:#}", i + 1);
                    telemetry.flush(Duration::from_secs(5)).await;
                    stack.stop().await?;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        rows
    };
    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await?;
    let t = telemetry.clone();
    let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;

    // Summary.
    let mut by_stop: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut ok = 0;
    let mut latencies: Vec<f64> = Vec::new();
    for (r, _, _) in &results {
        latencies.push(r.latency.as_secs_f64() * 1000.0);
        match &r.outcome {
            Outcome::Ok => ok += 1,
            Outcome::Rejected { hop, reason } => {
                *by_stop
                    .entry((hop.to_string(), reason.to_string()))
                    .or_default() += 1
            }
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let unexpected: Vec<&(CallResult, Outcome, bool)> =
        results.iter().filter(|(_, _, m)| !m).collect();
    println!(
        "\nsummary: {} requests, {ok} reached the target, {} rejected",
        results.len(),
        results.len() - ok
    );
    for ((hop, reason), n) in &by_stop {
        println!("  rejected at {hop:<20} {reason:<19} {n}");
    }
    println!(
        "  end-to-end latency p50 {:.1} ms, p95 {:.1} ms",
        app::percentile(&latencies, 50.0),
        app::percentile(&latencies, 95.0)
    );
    let spans = telemetry::otlp::read_store(&out.join("traces.jsonl"))
        .map(|s| s.len())
        .unwrap_or(0);
    println!(
        "  telemetry: {spans} spans in {}, logs in {}",
        out.join("traces.jsonl").display(),
        out.join("logs").display()
    );
    let leaks = scan_for_jwts(out);
    if leaks.is_empty() {
        println!("  leak scan: no JWT-shaped string in {}", out.display());
    } else {
        println!(
            "  leak scan: JWT-shaped strings found in: {}",
            leaks.join(", ")
        );
    }
    if unexpected.is_empty() && leaks.is_empty() {
        println!("every request ended where it should.");
        Ok(ExitCode::SUCCESS)
    } else {
        for (r, expect, _) in &unexpected {
            println!(
                "UNEXPECTED: {} expected {:?}, got {:?} (trace {})",
                r.user, expect, r.outcome, r.trace_id
            );
        }
        Ok(ExitCode::FAILURE)
    }
}
