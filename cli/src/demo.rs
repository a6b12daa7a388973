//! `tokentrail demo`: start the stack, send a scripted mix of good and bad requests, print one
//! line per request and a summary, check every request ended where it should, scan the output
//! for leaked tokens, stop the stack.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;
use serde_json::json;
use telemetry::{FailureReason, Hop, Pattern};

use crate::app::{self, App, CallResult, CallSpec, Outcome, TokenFault};
use crate::stack::{BrokerFault, Stack, StackOptions};

/// Which patterns the demo runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Patterns {
    /// Token passthrough only.
    Passthrough,
    /// Token broker only.
    Broker,
    /// Both, one after the other, same requests.
    Both,
}

impl Patterns {
    /// The patterns, in order.
    pub fn list(self) -> Vec<Pattern> {
        match self {
            Patterns::Passthrough => vec![Pattern::Passthrough],
            Patterns::Broker => vec![Pattern::Broker],
            Patterns::Both => vec![Pattern::Passthrough, Pattern::Broker],
        }
    }
}

/// One scripted case and where it must end in each pattern.
#[derive(Debug, Clone)]
pub struct Case {
    /// Request.
    pub spec: CallSpec,
    /// Expected outcome in the passthrough pattern.
    pub expect: Outcome,
    /// Expected outcome in the broker pattern (no broker fault).
    pub expect_broker: Outcome,
}

impl Case {
    /// Where this case must end in `pattern`, with `fault` in the broker.
    pub fn expected(&self, pattern: Pattern, fault: Option<BrokerFault>) -> Outcome {
        match (pattern, fault, &self.expect_broker) {
            (Pattern::Passthrough, _, _) => self.expect.clone(),
            (Pattern::Broker, Some(f), Outcome::Ok) => {
                let (hop, reason) = f.expected_stop();
                Outcome::Rejected { hop, reason }
            }
            (Pattern::Broker, _, e) => e.clone(),
        }
    }
}

fn outcome(expect: Option<(Hop, FailureReason)>) -> Outcome {
    match expect {
        None => Outcome::Ok,
        Some((hop, reason)) => Outcome::Rejected { hop, reason },
    }
}

fn case(
    user: &str,
    tool: &str,
    order: Option<&str>,
    fault: Option<TokenFault>,
    expect: Option<(Hop, FailureReason)>,
    expect_broker: Option<(Hop, FailureReason)>,
) -> Case {
    Case {
        spec: CallSpec {
            user: user.into(),
            tool: format!("orders___{tool}"),
            arguments: order.map(|o| json!({"orderId": o})).unwrap_or(json!({})),
            fault,
        },
        expect: outcome(expect),
        expect_broker: outcome(expect_broker),
    }
}

/// The scripted mix: several users with valid tokens, each token fault, authorization denials.
/// In the broker pattern the interceptor checks the user's audience and scope (the target never
/// sees the user's token), and the target authorizes the service account: bob can read alice's
/// order, which passthrough forbids. That is the broker pattern's trade-off, shown, not hidden.
pub fn script() -> Vec<Case> {
    use FailureReason as R;
    use TokenFault as F;
    vec![
        case("alice", "getOrder", Some("A-1001"), None, None, None),
        case("bob", "getOrder", Some("B-2001"), None, None, None),
        case("alice", "listOrders", None, None, None, None),
        case(
            "bob",
            "getOrder",
            Some("A-1001"),
            None,
            Some((Hop::Target, R::Forbidden)),
            None,
        ),
        case(
            "carol",
            "getOrder",
            Some("C-3001"),
            None,
            Some((Hop::Target, R::InsufficientScope)),
            Some((Hop::Interceptor, R::InsufficientScope)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Expired),
            Some((Hop::Interceptor, R::Expired)),
            Some((Hop::Interceptor, R::Expired)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Tampered),
            Some((Hop::Interceptor, R::BadSignature)),
            Some((Hop::Interceptor, R::BadSignature)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Missing),
            Some((Hop::Interceptor, R::MissingToken)),
            Some((Hop::Interceptor, R::MissingToken)),
        ),
        case(
            "bob",
            "getOrder",
            Some("B-2001"),
            Some(F::WrongAudience),
            Some((Hop::Target, R::WrongAudience)),
            Some((Hop::Interceptor, R::WrongAudience)),
        ),
        case(
            "alice",
            "getOrder",
            Some("A-1001"),
            Some(F::Oversized),
            Some((Hop::Runtime, R::HeaderRejected)),
            Some((Hop::Runtime, R::HeaderRejected)),
        ),
    ]
}

/// Files under `dir` whose text satisfies `hit`.
fn files_where(dir: &Path, hit: impl Fn(&str) -> bool) -> Vec<String> {
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
                && hit(&String::from_utf8_lossy(&bytes))
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// Files under `dir` that contain a JWT-shaped string.
pub fn scan_for_jwts(dir: &Path) -> Vec<String> {
    files_where(dir, telemetry::redact::contains_jwt)
}

/// Files under `dir` containing any of `needles`.
pub fn scan_for_strings(dir: &Path, needles: &[String]) -> Vec<String> {
    files_where(dir, |text| {
        needles
            .iter()
            .any(|n| !n.is_empty() && text.contains(n.as_str()))
    })
}

/// One pattern's run.
struct PatternRun {
    pattern: Pattern,
    rows: Vec<(CallResult, Outcome, bool)>,
    secrets: Vec<String>,
}

impl PatternRun {
    fn reached(&self) -> usize {
        self.rows
            .iter()
            .filter(|(r, _, _)| r.outcome == Outcome::Ok)
            .count()
    }

    fn stops(&self) -> BTreeMap<(String, String), usize> {
        let mut by_stop = BTreeMap::new();
        for (r, _, _) in &self.rows {
            if let Outcome::Rejected { hop, reason } = &r.outcome {
                *by_stop
                    .entry((hop.to_string(), reason.to_string()))
                    .or_default() += 1;
            }
        }
        by_stop
    }

    fn latencies(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .rows
            .iter()
            .map(|(r, _, _)| r.latency.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }
}

async fn run_pattern(
    out: &Path,
    pattern: Pattern,
    fault: Option<BrokerFault>,
    requests: usize,
) -> Result<Option<PatternRun>> {
    let mut opts = StackOptions::new(out)?;
    opts.pattern = pattern;
    opts.broker_fault = fault.filter(|_| pattern == Pattern::Broker);
    let hops = match pattern {
        Pattern::Passthrough => "idp, target, interceptor, gateway, agent, runtime",
        Pattern::Broker => {
            "idp, target, sts stand-in, broker, interceptor, gateway, agent, runtime"
        }
    };
    println!("\n== {pattern} ==");
    println!("starting the local stack ({hops})…");
    let stack = Stack::start(&opts).await?;
    let telemetry = crate::stack::init_app_telemetry(&stack.endpoints)?;
    if let Some(f) = &opts.forward_to {
        println!("forwarding traces to {f}");
    } else if let Ok(e) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        println!("every hop also exports over OTLP/gRPC to {e}");
    }
    match (pattern, opts.broker_fault) {
        (Pattern::Passthrough, _) => println!(
            "the user's JWT travels app → runtime → agent → gateway → interceptor → target\n"
        ),
        (Pattern::Broker, f) => println!(
            "the interceptor trades the user's JWT for a service token: interceptor → (sts:AssumeRole) → broker → sts:GetCallerIdentity, Secrets Manager, IdP → target{}\n",
            f.map(|f| format!(
                "  [broker fault: {}]",
                f.to_possible_value()
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            ))
            .unwrap_or_default()
        ),
    }
    println!("{}", app::TABLE_HEADER);
    let app = App::new(stack.endpoints.clone())?;
    let cases = script();
    let mut rows = Vec::new();
    for i in 0..requests {
        let c = &cases[i % cases.len()];
        let expect = c.expected(pattern, opts.broker_fault);
        match app.call(&c.spec).await {
            Ok(r) => {
                let matched = r.outcome == expect;
                println!(
                    "{}{}",
                    app::describe(&r),
                    if matched { "" } else { "   <-- UNEXPECTED" }
                );
                rows.push((r, expect, matched));
            }
            Err(e) => {
                println!("request {} failed to run: {e:#}", i + 1);
                telemetry.flush(Duration::from_secs(5)).await;
                stack.stop().await?;
                return Ok(None);
            }
        }
    }
    let secrets = stack.secrets_for_scan();
    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await?;
    let t = telemetry.clone();
    let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    let run = PatternRun {
        pattern,
        rows,
        secrets,
    };
    let lat = run.latencies();
    println!(
        "{pattern}: {} requests, {} reached the target, {} rejected; p50 {:.1} ms, p95 {:.1} ms",
        run.rows.len(),
        run.reached(),
        run.rows.len() - run.reached(),
        app::percentile(&lat, 50.0),
        app::percentile(&lat, 95.0)
    );
    Ok(Some(run))
}

/// `tokentrail demo`.
pub async fn run(
    out: &Path,
    requests: usize,
    patterns: Patterns,
    fault: Option<BrokerFault>,
) -> Result<ExitCode> {
    // The store may hold earlier runs: the report shows this one.
    let started = auth::iam::now_epoch();
    if fault.is_some() && patterns == Patterns::Passthrough {
        anyhow::bail!("--broker-fault applies to the broker pattern: add --pattern broker or both");
    }
    let mut runs = Vec::new();
    for pattern in patterns.list() {
        match run_pattern(out, pattern, fault, requests).await? {
            Some(r) => runs.push(r),
            None => return Ok(ExitCode::FAILURE),
        }
    }

    // Side by side.
    println!(
        "\nsummary{}",
        if runs.len() > 1 {
            " (side by side)"
        } else {
            ""
        }
    );
    let width = 52;
    let mut line = format!("  {:<width$}", "");
    for r in &runs {
        line.push_str(&format!("{:>14}", r.pattern.as_str()));
    }
    println!("{line}");
    let row = |label: &str, cells: Vec<String>| {
        let mut line = format!("  {label:<width$}");
        for c in cells {
            line.push_str(&format!("{c:>14}"));
        }
        println!("{line}");
    };
    row(
        "requests",
        runs.iter().map(|r| r.rows.len().to_string()).collect(),
    );
    row(
        "reached the target",
        runs.iter().map(|r| r.reached().to_string()).collect(),
    );
    let per_run: Vec<BTreeMap<(String, String), usize>> =
        runs.iter().map(PatternRun::stops).collect();
    let stops: std::collections::BTreeSet<&(String, String)> =
        per_run.iter().flat_map(|m| m.keys()).collect();
    for key in stops {
        row(
            &format!("rejected at {} {}", key.0, key.1),
            per_run
                .iter()
                .map(|m| m.get(key).copied().unwrap_or(0).to_string())
                .collect(),
        );
    }
    row(
        "end-to-end p50 (ms)",
        runs.iter()
            .map(|r| format!("{:.1}", app::percentile(&r.latencies(), 50.0)))
            .collect(),
    );
    row(
        "end-to-end p95 (ms)",
        runs.iter()
            .map(|r| format!("{:.1}", app::percentile(&r.latencies(), 95.0)))
            .collect(),
    );
    row(
        "p50 of requests that reached the target (ms)",
        runs.iter()
            .map(|r| {
                let mut v: Vec<f64> = r
                    .rows
                    .iter()
                    .filter(|(c, _, _)| c.outcome == Outcome::Ok)
                    .map(|(c, _, _)| c.latency.as_secs_f64() * 1000.0)
                    .collect();
                v.sort_by(|a, b| a.total_cmp(b));
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.1}", app::percentile(&v, 50.0))
                }
            })
            .collect(),
    );
    row(
        "first request, cold caches (ms)",
        runs.iter()
            .map(|r| {
                r.rows
                    .first()
                    .map(|(c, _, _)| format!("{:.1}", c.latency.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "-".into())
            })
            .collect(),
    );
    if let Some(b) = runs.iter().find(|r| r.pattern == Pattern::Broker)
        && fault.is_none()
        && let Some((r, _, _)) = b.rows.iter().find(|(r, _, _)| {
            r.user == "bob"
                && r.outcome == Outcome::Ok
                && r.message.contains("orders-service")
                && r.fault.is_none()
        })
        && runs.iter().any(|p| p.pattern == Pattern::Passthrough)
    {
        println!(
            "  note: in the broker pattern the target authorizes the service account, not the user: \
             bob's request for alice's order A-1001 was answered ({}), while passthrough refused it.",
            r.message
        );
    }
    let spans = telemetry::otlp::read_store(&out.join(local::collector::TRACES_FILE))
        .map(|s| s.len())
        .unwrap_or(0);
    println!(
        "  telemetry: {spans} spans in {}, logs in {}",
        out.join(local::collector::TRACES_FILE).display(),
        out.join("logs").display()
    );
    // The comparison page, written before the leak scan so the scan covers it too.
    let report = crate::report::run(&crate::report::ReportOptions {
        store: out.to_path_buf(),
        out: None,
        jaeger: None,
        png: false,
        since: Some(started),
        until: None,
    });
    match &report {
        Ok(written) => println!("  report: {}", written.html.display()),
        Err(e) => println!("  report: could not be written: {e:#}"),
    }
    let mut leaks = scan_for_jwts(out);
    let secrets: Vec<String> = runs.iter().flat_map(|r| r.secrets.clone()).collect();
    leaks.extend(scan_for_strings(out, &secrets));
    if leaks.is_empty() {
        println!(
            "  leak scan: no JWT-shaped string, client secret or AWS key in {}",
            out.display()
        );
    } else {
        println!("  leak scan: secrets found in: {}", leaks.join(", "));
    }
    let unexpected: Vec<(Pattern, &(CallResult, Outcome, bool))> = runs
        .iter()
        .flat_map(|r| {
            r.rows
                .iter()
                .filter(|(_, _, m)| !m)
                .map(move |row| (r.pattern, row))
        })
        .collect();
    if unexpected.is_empty() && leaks.is_empty() && report.is_ok() {
        println!("every request ended where it should.");
        Ok(ExitCode::SUCCESS)
    } else {
        for (pattern, (r, expect, _)) in &unexpected {
            println!(
                "UNEXPECTED ({pattern}): {} expected {:?}, got {:?} (trace {})",
                r.user, expect, r.outcome, r.trace_id
            );
        }
        Ok(ExitCode::FAILURE)
    }
}
