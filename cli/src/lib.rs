//! `tokentrail`: one binary, a subcommand per job (HotROD style).
//!
//! | command | where |
//! |---|---|
//! | `serve <hop>` | [`serve`]: one hop as its own process |
//! | `up` | [`stack`]: the whole local stack as child processes |
//! | `call` | [`app`]: one request as the app |
//! | `demo` | [`demo`]: stack + scripted requests + summary |
//! | `audit` | [`audit`]: which identity reached the target, per request, with a verdict |
//! | `load` | [`load`]: open/closed-loop load against either or both patterns |
//! | `report` | [`report`]: the HTML page comparing the patterns |
//! | `dashboards` | [`dashboards`]: the Grafana and CloudWatch dashboards (same panels) |
//! | `deploy` | [`deploy`]: both patterns on AWS from `deploy/` (`--plan` needs no account) |

pub mod app;
pub mod audit;
pub mod audit_index;
pub mod bench;
pub mod dashboards;
pub mod demo;
pub mod deploy;
pub mod load;
pub mod plain_get;
pub mod report;
pub mod serve;
pub mod sources;
pub mod stack;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A count of one or more (requests, workers, rounds): zero is refused with its reason rather
/// than quietly raised.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a count: {e}")),
    }
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "tokentrail",
    version,
    about = "Which identity reached my API, through which hops: AgentCore auth propagation, traced end to end"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one hop (configured by TOKENTRAIL_* and OTEL_* variables).
    Serve {
        /// Which hop.
        hop: serve::HopName,
        /// Port to listen on (0 = any free port).
        #[arg(long, env = "TOKENTRAIL_PORT", default_value_t = 0)]
        port: u16,
    },
    /// Run one hop as an AWS Lambda function (the same front door as the hop's own Lambda
    /// binary; needs the Lambda runtime API, e.g. `cargo lambda watch --only-lambda-apis`).
    Lambda {
        /// Which hop: agent, interceptor, broker or target.
        hop: serve::HopName,
    },
    /// Start the whole local stack and keep it running until Ctrl-C.
    Up {
        /// Where telemetry, logs and stack-<pattern>.json go.
        #[arg(long, default_value = "tokentrail-out")]
        out: PathBuf,
        /// Which pattern the stack serves.
        #[arg(long, value_enum, default_value = "passthrough")]
        pattern: PatternArg,
    },
    /// Send one request as the app through a running stack (`tokentrail up`).
    Call {
        /// User to log in as (alice, bob, carol).
        #[arg(long, default_value = "alice")]
        user: String,
        /// Order to read (default: the user's first order).
        #[arg(long)]
        order: Option<String>,
        /// Inject a token fault.
        #[arg(long, value_enum)]
        token_fault: Option<app::TokenFault>,
        /// The stack's output directory (holds stack-<pattern>.json).
        #[arg(long, default_value = "tokentrail-out")]
        out: PathBuf,
        /// Which running stack to call (started with `tokentrail up --pattern …`).
        #[arg(long, value_enum, default_value = "passthrough")]
        pattern: PatternArg,
    },
    /// Measure the chain's throughput and latency with tracing on and off, in the same run.
    Bench {
        /// Where results (bench.json), telemetry and logs go; each run replaces what the previous
        /// bench run left there.
        #[arg(long, default_value = "tokentrail-out/bench")]
        out: PathBuf,
        /// Requests per mode (shared out evenly over workers and rounds).
        #[arg(long, default_value_t = 2000, value_parser = at_least_one)]
        requests: usize,
        /// Concurrent workers.
        #[arg(long, default_value_t = 8, value_parser = at_least_one)]
        concurrency: usize,
        /// Rounds per mode (alternating between modes).
        #[arg(long, default_value_t = 4, value_parser = at_least_one)]
        rounds: usize,
        /// Run both stacks untraced (an A/A run): the ratio then shows how far two identical
        /// stacks differ on this machine, the resolution of an on/off comparison.
        #[arg(long)]
        calibrate: bool,
        /// What the traced stack does with its spans, to split tracing's cost [default: store]
        #[arg(long, value_enum)]
        traced: Option<bench::Traced>,
        /// With `--traced send`: send the spans to this `tokentrail receive` (e.g. one pinned to
        /// a core of its own with taskset) instead of a receiver inside this process.
        #[arg(long, value_name = "URL")]
        receiver: Option<String>,
    },
    /// An OTLP/HTTP receiver that answers like the collector and keeps nothing (for `bench
    /// --traced send --receiver`); prints `READY receiver <url>` and its counts at Ctrl-C.
    Receive {
        /// Port to listen on (0 = any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Start the stack, send a scripted mix of good and bad requests, print what happened.
    Demo {
        /// Where telemetry and logs go.
        #[arg(long, default_value = "tokentrail-out")]
        out: PathBuf,
        /// Number of requests per pattern (cycles through the scripted cases).
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        requests: usize,
        /// Which pattern(s) to run.
        #[arg(long, value_enum, default_value = "both")]
        pattern: demo::Patterns,
        /// Run the broker pattern with this fault.
        #[arg(long, value_enum)]
        broker_fault: Option<stack::BrokerFault>,
    },
    /// Load one or both patterns (open or closed loop) and measure latency and failure points.
    Load {
        /// Start the local stack(s) for the run (otherwise use the ones `tokentrail up --out
        /// OUT` runs).
        #[arg(long)]
        local: bool,
        /// Span store, logs and load.json (and, without --local, the running stacks' files).
        #[arg(long, default_value = "tokentrail-out")]
        out: PathBuf,
        /// Which pattern(s); `both` interleaves them request by request.
        #[arg(long, value_enum, default_value = "both")]
        pattern: demo::Patterns,
        /// Open loop: requests per second, in total over the patterns [default: 100].
        #[arg(long, conflicts_with = "concurrency")]
        rate: Option<f64>,
        /// Closed loop: this many workers instead of a fixed rate.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Measured duration (30s, 2m, 500ms).
        #[arg(long, default_value = "30s", value_parser = load::parse_duration)]
        duration: std::time::Duration,
        /// Warm-up before it: sent and traced, not measured.
        #[arg(long, default_value = "5s", value_parser = load::parse_duration)]
        warmup: std::time::Duration,
        /// Token faults as fractions: expired=0.02,tampered=0.01,missing=0.01,wrong-audience=0.01.
        #[arg(long, default_value = "")]
        faults: load::FaultMix,
        /// Run the local broker stack with this fault.
        #[arg(long, value_enum)]
        broker_fault: Option<stack::BrokerFault>,
        /// Stall a hop once, halfway through the measured period: HOP=DURATION (runtime=500ms);
        /// every request arriving during the stall waits for it.
        #[arg(long, value_parser = load::parse_stall_arg)]
        stall: Option<(serve::HopName, std::time::Duration)>,
        /// Instead of the patterns, plain GETs to this URL (to compare the generator with other
        /// tools on a trivial endpoint).
        #[arg(long, conflicts_with_all = ["local", "stall", "broker_fault", "faults", "outage", "latency"])]
        url: Option<String>,
        /// An outage of idp, broker, secrets or collector during the run: WHAT[=DURATION]
        /// (repeatable), from a third of the measured period, lasting DURATION (default: a third).
        #[arg(long, value_parser = load::parse_outage_arg)]
        outage: Vec<load::StackFault>,
        /// Added latency on every request to the idp or the broker in the same window:
        /// WHAT=DELAY (broker=200ms; repeatable).
        #[arg(long, value_parser = load::parse_latency_arg)]
        latency: Vec<load::StackFault>,
    },
    /// Which identity reached the target, per request, with a verdict (exit 1 on a violation).
    Audit {
        /// Read the local span store: a directory holding traces.jsonl (as the demo writes it)
        /// or the file [default: tokentrail-out when no other source is given].
        #[arg(long, conflicts_with_all = ["jaeger", "xray"])]
        store: Option<PathBuf>,
        /// Read from Jaeger's query API at this URL (as the UI is served: http://HOST:16686);
        /// the table links each trace to Jaeger's UI.
        #[arg(long, conflicts_with = "xray")]
        jaeger: Option<String>,
        /// Read from AWS X-Ray (GetTraceSummaries, BatchGetTraces), with the standard AWS
        /// credentials and region.
        #[arg(long)]
        xray: bool,
        /// X-Ray endpoint (an emulator such as moto).
        #[arg(long, requires = "xray")]
        endpoint_url: Option<String>,
        /// X-Ray region (default: the standard AWS configuration).
        #[arg(long, requires = "xray")]
        region: Option<String>,
        /// Only requests started at or after: RFC 3339, Unix seconds, or an age (15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// Only requests started before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only this trace id.
        #[arg(long)]
        trace: Option<String>,
        /// Only requests whose entering or reaching subject is this.
        #[arg(long)]
        user: Option<String>,
        /// Only this pattern.
        #[arg(long, value_enum)]
        pattern: Option<PatternArg>,
        /// Only violations.
        #[arg(long)]
        violations_only: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: audit::Format,
    },
    /// Write report.html comparing the patterns (per-hop latency, critical path, end-to-end
    /// distribution, failure points, throughput, identities) from a span store.
    Report {
        /// The span store directory (with load.json after `tokentrail load`).
        #[arg(long, default_value = "tokentrail-out")]
        store: PathBuf,
        /// Where to write the page [default: STORE/report.html].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Jaeger UI base URL: sample trace ids become links to it.
        #[arg(long)]
        jaeger: Option<String>,
        /// Also render a PNG next to the page with headless Chromium.
        #[arg(long)]
        png: bool,
        /// Only requests started at or after: RFC 3339, Unix seconds, or an age (15m, 2h, 1d).
        #[arg(long)]
        since: Option<String>,
        /// Only requests started before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
    },
    /// Write the Grafana dashboard and the CloudWatch dashboard body and queries (generated from
    /// the same panel definitions as the report).
    Dashboards {
        /// Output directory.
        #[arg(long, default_value = "dashboards")]
        out: PathBuf,
        /// AWS region of the CloudWatch widgets.
        #[arg(long, default_value = crate::dashboards::DEFAULT_REGION)]
        region: String,
        /// Do not write: fail if the files in OUT differ from what this version generates.
        #[arg(long)]
        check: bool,
    },
    /// Deploy both patterns to AWS (workload and central accounts) from the CloudFormation
    /// templates in deploy/, with the AWS SAM CLI; --plan prints what would be built, with no
    /// AWS call and no credentials.
    Deploy {
        /// The deploy parameters (TOML; deploy/params.example.toml shows every key).
        #[arg(long, default_value = "deploy/params.toml")]
        params: PathBuf,
        /// Print the plan per account and the parameters still unset; deploy nothing.
        #[arg(long)]
        plan: bool,
        /// Where the templates are (central.json, workload.json).
        #[arg(long, default_value = "deploy")]
        templates: PathBuf,
        /// The AWS SAM CLI.
        #[arg(long, env = "TOKENTRAIL_SAM", default_value = "sam")]
        sam: String,
    },
}

/// A pattern on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PatternArg {
    /// Token passthrough.
    Passthrough,
    /// Token broker.
    Broker,
}

impl From<PatternArg> for telemetry::Pattern {
    fn from(p: PatternArg) -> Self {
        match p {
            PatternArg::Passthrough => telemetry::Pattern::Passthrough,
            PatternArg::Broker => telemetry::Pattern::Broker,
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tokentrail: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { hop, port } => serve::run(hop, port).await.map(|_| ExitCode::SUCCESS),
            Command::Lambda { hop } => serve::run_lambda(hop).await.map(|_| ExitCode::SUCCESS),
            Command::Up { out, pattern } => stack::up(&out, pattern.into())
                .await
                .map(|_| ExitCode::SUCCESS),
            Command::Call {
                user,
                order,
                token_fault,
                out,
                pattern,
            } => app::call_command(&out, pattern.into(), &user, order, token_fault).await,
            Command::Demo {
                out,
                requests,
                pattern,
                broker_fault,
            } => demo::run(&out, requests, pattern, broker_fault).await,
            Command::Load {
                local,
                out,
                pattern,
                rate,
                concurrency,
                duration,
                warmup,
                faults,
                broker_fault,
                stall,
                url,
                outage,
                latency,
            } => {
                async {
                    let opts = load::LoadOptions {
                        out: out.clone(),
                        local,
                        patterns: if url.is_some() {
                            Vec::new()
                        } else {
                            pattern.list()
                        },
                        mode: match concurrency {
                            Some(c) => load::Mode::Closed { concurrency: c },
                            None => load::Mode::Open {
                                rate: rate.unwrap_or(100.0),
                            },
                        },
                        duration,
                        warmup,
                        faults,
                        broker_fault,
                        binary: None,
                        stall,
                        url,
                        stack_faults: outage.into_iter().chain(latency).collect(),
                    };
                    let doc = load::run(&opts).await?;
                    load::print_summary(&doc, &out);
                    Ok(std::process::ExitCode::SUCCESS)
                }
                .await
            }
            Command::Audit {
                store,
                jaeger,
                xray,
                endpoint_url,
                region,
                since,
                until,
                trace,
                user,
                pattern,
                violations_only,
                format,
            } => {
                async {
                    let now = auth::iam::now_epoch();
                    let filter = audit::Filter {
                        trace: trace.as_deref().map(audit::parse_trace_id).transpose()?,
                        user: user.as_deref().map(audit::user_filter).transpose()?,
                        pattern: pattern.map(|p| telemetry::Pattern::from(p).as_str().to_owned()),
                        since: since.map(|s| audit::parse_time(&s, now)).transpose()?,
                        until: until.map(|s| audit::parse_time(&s, now)).transpose()?,
                        violations_only,
                    };
                    let source = match (jaeger, xray) {
                        (Some(url), _) => audit::Source::Jaeger(url),
                        (None, true) => audit::Source::Xray(sources::XrayTarget {
                            endpoint_url,
                            region,
                        }),
                        (None, false) => audit::Source::Store(
                            store.unwrap_or_else(|| PathBuf::from("tokentrail-out")),
                        ),
                    };
                    audit::run(&source, &filter, format).await
                }
                .await
            }
            Command::Report {
                store,
                out,
                jaeger,
                png,
                since,
                until,
            } => {
                let now = auth::iam::now_epoch();
                let time = |t: Option<String>| t.map(|s| audit::parse_time(&s, now)).transpose();
                let opts = report::ReportOptions {
                    store,
                    out,
                    jaeger,
                    png,
                    since: time(since)?,
                    until: time(until)?,
                };
                tokio::task::spawn_blocking(move || report::run(&opts))
                    .await
                    .map_err(|e| anyhow::anyhow!("the report task failed: {e}"))
                    .and_then(|r| r)
                    .map(|written| {
                        for note in &written.notes {
                            eprintln!("note: {note}");
                        }
                        println!("report: {}", written.html.display());
                        if let Some(png) = written.png {
                            println!("screenshot: {}", png.display());
                        }
                        ExitCode::SUCCESS
                    })
            }
            Command::Deploy {
                params,
                plan,
                templates,
                sam,
            } => deploy::run(&params, &templates, plan, &sam).map(|_| ExitCode::SUCCESS),
            Command::Dashboards { out, region, check } => {
                dashboards::run(&out, &region, check).map(|_| ExitCode::SUCCESS)
            }
            Command::Bench {
                out,
                requests,
                concurrency,
                rounds,
                calibrate,
                traced,
                receiver,
            } => {
                bench::run(
                    &out,
                    requests,
                    concurrency,
                    rounds,
                    calibrate,
                    traced,
                    receiver.as_deref(),
                )
                .await
            }
            Command::Receive { port } => bench::receive(port).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: a closed terminal (hangup) must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "tokentrail: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(args: &[&str]) -> Option<String> {
        Cli::try_parse_from(args).err().map(|e| e.to_string())
    }

    #[test]
    fn a_count_of_zero_is_refused_with_its_reason() {
        for args in [
            &["tokentrail", "demo", "--requests", "0"][..],
            &["tokentrail", "bench", "--requests", "0"],
            &["tokentrail", "bench", "--concurrency", "0"],
            &["tokentrail", "bench", "--rounds", "0"],
        ] {
            let e = parse_error(args).unwrap_or_default();
            assert!(e.contains("must be at least 1"), "{args:?}: {e}");
        }
        let e = parse_error(&["tokentrail", "demo", "--requests", "many"]).unwrap_or_default();
        assert!(e.contains("`many` is not a count"), "{e}");
    }

    #[test]
    fn counts_of_one_or_more_parse() {
        match Cli::try_parse_from(["tokentrail", "demo", "--requests", "3"]) {
            Ok(Cli {
                command: Command::Demo { requests, .. },
                ..
            }) => assert_eq!(requests, 3),
            other => panic!("{other:?}"),
        }
    }
}
