//! The passthrough chain across real processes: one trace per request with correct parentage,
//! the same user-token fingerprint at every hop that saw it, each fault stopped at the right hop
//! with the right reason, and cached keys keep working while the IdP is down.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use telemetry::attrs;
use tokentrail::app::{App, Outcome, TokenFault};
use tokentrail::demo::script;
use tokentrail::serve::HopName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_chain_end_to_end() {
    let out = support::tempdir("passthrough");
    let mut stack = support::start_stack(&out, None).await;
    let telemetry = tokentrail::stack::init_app_telemetry(&stack.endpoints).expect("app telemetry");
    let app = App::new(stack.endpoints.clone()).expect("app");

    // The scripted cases, each once.
    let mut results = Vec::new();
    for case in script() {
        let r = app.call(&case.spec).await.expect("request runs");
        assert_eq!(
            r.outcome, case.expect,
            "{:?} {:?}",
            case.spec.user, case.spec.fault
        );
        results.push((case, r));
    }

    // IdP down after keys were fetched: a token obtained earlier is still accepted end to end.
    let spec = support::alice_reads_her_order();
    let early = app
        .login(
            "alice",
            "tokentrail-app",
            None,
            &telemetry::TraceContext::none(),
        )
        .await
        .expect("login");
    stack.stop_hop(HopName::Idp).await.expect("idp stops");
    let while_down = app
        .call_with_token(&spec, early)
        .await
        .expect("request runs");
    assert_eq!(
        while_down.outcome,
        Outcome::Ok,
        "cached JWKS keeps serving while the IdP is down: {}",
        while_down.message
    );

    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await.expect("stack stops");
    let traces = support::traces(&out);
    assert_eq!(
        support::repeated_attribute_keys(&out),
        Vec::<String>::new(),
        "spans recording an attribute twice"
    );

    for (case, r) in &results {
        let trace = traces
            .get(&r.trace_id)
            .unwrap_or_else(|| panic!("trace {} stored", r.trace_id));
        // One root (the app's span); every other span's parent is in the same trace.
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        let roots: Vec<_> = trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root in {}", r.trace_id);
        assert_eq!(roots[0].service, "app");
        for s in trace {
            assert!(
                s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
                "orphan span {} in {}",
                s.name,
                r.trace_id
            );
        }
        for s in trace
            .iter()
            .filter(|s| s.attr_str(attrs::HOP_NAME).is_some())
        {
            assert_eq!(s.attr_str(attrs::PATTERN), Some("passthrough"));
        }
        match &r.outcome {
            Outcome::Ok => {
                let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
                for svc in support::PASSTHROUGH_SERVICES {
                    assert!(
                        services.contains(svc),
                        "{svc} missing from {}: {services:?}",
                        r.trace_id
                    );
                }
                // Cross-process parentage: each hop span's parent belongs to the previous hop's process.
                let parent_service = |hop: &str| support::parent_service(trace, hop);
                assert_eq!(parent_service("runtime.inbound"), "app");
                assert_eq!(parent_service("agent.invocation"), "runtime");
                assert_eq!(parent_service("gateway.inbound"), "agent");
                assert_eq!(parent_service("gateway.interceptor"), "gateway");
                assert_eq!(parent_service("target.api"), "gateway");
                let fp = |hop: &str| support::hop_fingerprint(trace, hop);
                let user_fp = fp("runtime.inbound").expect("runtime fingerprint");
                assert_eq!(
                    fp("gateway.interceptor").as_ref(),
                    Some(&user_fp),
                    "interceptor saw the same token"
                );
                assert_eq!(
                    fp("target.api").as_ref(),
                    Some(&user_fp),
                    "target saw the same token"
                );
                assert_eq!(
                    fp("app.request").as_ref(),
                    Some(&user_fp),
                    "the app sent that token"
                );
                let target = support::hop_span(trace, "target.api").expect("target span");
                assert_eq!(
                    target.attr_str(attrs::ENDUSER_ID),
                    Some(case.spec.user.as_str())
                );
                assert_eq!(target.attr_str(attrs::CREDENTIAL_KIND), Some("user_jwt"));
                assert_eq!(
                    target.attr_str(attrs::CREDENTIAL_VERIFICATION),
                    Some("verified")
                );
                // The agent's own token is a different credential.
                assert_ne!(fp("gateway.inbound").as_ref(), Some(&user_fp));
            }
            Outcome::Rejected { hop, reason } => {
                let rejected: Vec<_> = trace
                    .iter()
                    .filter(|s| s.attr_str(attrs::HOP_OUTCOME) == Some("rejected"))
                    .collect();
                assert_eq!(
                    rejected.len(),
                    1,
                    "exactly one hop rejected {:?} in {}",
                    case.spec.fault,
                    r.trace_id
                );
                assert_eq!(rejected[0].attr_str(attrs::HOP_NAME), Some(hop.as_str()));
                assert_eq!(
                    rejected[0].attr_str(attrs::FAILURE_REASON),
                    Some(reason.as_str())
                );
                if matches!(hop, telemetry::Hop::Interceptor | telemetry::Hop::Runtime) {
                    assert!(
                        trace.iter().all(|s| s.service != "target"),
                        "target reached despite a {hop} denial"
                    );
                }
            }
        }
    }
    let faults: BTreeSet<_> = results.iter().filter_map(|(c, _)| c.spec.fault).collect();
    for f in [
        TokenFault::Expired,
        TokenFault::Tampered,
        TokenFault::Missing,
        TokenFault::WrongAudience,
    ] {
        assert!(faults.contains(&f), "the script covers {f:?}");
    }
    assert!(traces.contains_key(&while_down.trace_id));
    let _ = std::fs::remove_dir_all(&out);
}

/// Paths of the requests a stand-in collector answered (200, empty body).
async fn counting_collector() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(uri.path().to_owned());
            axum::http::StatusCode::OK
        }
    });
    let (addr, _task) = local::serve(app, ([127, 0, 0, 1], 0).into())
        .await
        .expect("collector serves");
    (format!("http://{addr}"), seen)
}

/// One hop (`tokentrail serve target`) answering one traced request and stopping, exporting to
/// a stand-in collector, with `env` set (`OTEL_TRACES_EXPORTER`, `OTEL_SDK_DISABLED` and the
/// sampler unset unless given). The paths the collector saw.
async fn one_traced_request(env: &[(&str, &str)]) -> Vec<String> {
    let (collector, seen) = counting_collector().await;
    target_answers_one_request(&collector, env).await;
    seen.lock().unwrap().clone()
}

/// The trace of [`target_answers_one_request`]'s request.
const ONE_TRACE: &str = "6b0b0c00aaaabbbbccccddddeeeeffff";

/// `tokentrail serve target` exporting to `collector`, with `env` set, answering one request in
/// trace [`ONE_TRACE`] (no token: 401) and stopping.
async fn target_answers_one_request(collector: &str, env: &[(&str, &str)]) {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(support::bin());
    cmd.args(["serve", "target"])
        .env("TOKENTRAIL_ISSUER", "http://127.0.0.1:9")
        .env("TOKENTRAIL_COLLECTOR_ENDPOINT", collector)
        .env("TOKENTRAIL_STOP_ON_STDIN_EOF", "1")
        .env("TOKENTRAIL_LOG", "off")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_METRICS_EXPORTER")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER")
        .env_remove("OTEL_TRACES_SAMPLER_ARG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("target starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        let line = lines.next_line().await.expect("line").expect("READY line");
        if let Some(rest) = line.strip_prefix("READY target ") {
            break rest.to_owned();
        }
    };
    let resp = reqwest::Client::new()
        .get(format!("{url}/orders"))
        .header("traceparent", format!("00-{ONE_TRACE}-1111222233334444-01"))
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 401, "no token: refused");
    // Stopping flushes spans and metrics.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the hop stops")
        .expect("exit status");
    assert!(status.success(), "{status}");
}

/// `TOKENTRAIL_SPAN_PIPELINE=plain`, the baseline `scripts/hop-instructions.py` measures against:
/// the hop's span comes through `tracing-opentelemetry` and `opentelemetry-otlp` with the same
/// name, kind, parent and status as tokentrail's own and its semantic attributes, without any of
/// tokentrail's; a value the hop does not know stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_span_pipeline_exports_the_same_span_without_provenance() {
    let dir = support::tempdir("plain-pipeline");
    let mut stored = BTreeMap::new();
    for pipeline in ["tokentrail", "plain"] {
        let out = dir.join(pipeline);
        let collector = local::collector::Collector::open(&out, None)
            .await
            .expect("collector opens");
        let (addr, _task) = local::serve(
            local::collector::router(collector),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        .expect("collector serves");
        target_answers_one_request(
            &format!("http://{addr}"),
            &[("TOKENTRAIL_SPAN_PIPELINE", pipeline)],
        )
        .await;
        let spans = support::traces(&out).remove(ONE_TRACE).unwrap_or_default();
        stored.insert(pipeline, spans);
    }
    let ([ours], [plain]) = (&stored["tokentrail"][..], &stored["plain"][..]) else {
        panic!("one span each: {stored:#?}");
    };
    let shape = |s: &telemetry::otlp::StoredSpan| {
        (
            s.name.clone(),
            s.kind.clone(),
            s.parent_span_id.clone(),
            s.status.clone(),
            s.attributes.get("error.type").cloned(),
        )
    };
    assert_eq!(shape(plain), shape(ours));
    assert_eq!(ours.parent_span_id, "1111222233334444");
    assert!(
        ours.attributes.contains_key("tokentrail.hop.name"),
        "{ours:#?}"
    );
    let own: Vec<&String> = plain
        .attributes
        .keys()
        .filter(|k| k.starts_with("tokentrail."))
        .collect();
    assert!(own.is_empty(), "the plain span recorded {own:?}");

    let stderr = refused(&["serve", "target"], "TOKENTRAIL_SPAN_PIPELINE", "fancy");
    assert!(
        stderr.contains("TOKENTRAIL_SPAN_PIPELINE: use `tokentrail`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI run with `var=value`, expected to fail: its standard error. A hop that starts anyway
/// stops at once (its standard input is closed), so the check fails instead of waiting.
fn refused(args: &[&str], var: &str, value: &str) -> String {
    let out = std::process::Command::new(support::bin())
        .args(args)
        .env("TOKENTRAIL_ISSUER", "http://127.0.0.1:9")
        .env("TOKENTRAIL_LOG", "off")
        .env("TOKENTRAIL_STOP_ON_STDIN_EOF", "1")
        .env(var, value)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runs");
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `OTEL_TRACES_EXPORTER=none` stops a hop's span export (its metrics still go out); the default
/// exports both; a value the build does not support stops the hop at start with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_exporter_none_turns_span_export_off() {
    let exported = one_traced_request(&[]).await;
    assert!(exported.iter().any(|p| p == "/v1/traces"), "{exported:?}");
    assert!(exported.iter().any(|p| p == "/v1/metrics"), "{exported:?}");

    let exported = one_traced_request(&[("OTEL_TRACES_EXPORTER", "none")]).await;
    assert!(!exported.iter().any(|p| p == "/v1/traces"), "{exported:?}");
    assert!(exported.iter().any(|p| p == "/v1/metrics"), "{exported:?}");

    // A value the build does not support stops the hop; the local stack exists to trace: it
    // refuses to start with span export off.
    refusals(
        "OTEL_TRACES_EXPORTER",
        (
            "zipkin",
            "OTEL_TRACES_EXPORTER=`zipkin`: supported values are `otlp`",
        ),
        (
            "none",
            "OTEL_TRACES_EXPORTER=none would leave the local stack's span store",
        ),
    );
}

/// `serve target` with `var=bad.0` fails saying `bad.1`; `demo` with `var=stack.0` fails saying
/// `stack.1`.
fn refusals(var: &str, bad: (&str, &str), stack: (&str, &str)) {
    let stderr = refused(&["serve", "target"], var, bad.0);
    assert!(stderr.contains(bad.1), "{stderr}");
    let dir = support::tempdir("refused");
    let stderr = refused(&["demo", "--out", &dir.to_string_lossy()], var, stack.0);
    assert!(stderr.contains(stack.1), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `OTEL_TRACES_SAMPLER`: `always_off` keeps a hop's spans (not its metrics) from the collector,
/// a ratio of 1 keeps them all; a sampler the SDK would replace by sampling everything (here a
/// typo of `always_off`) stops the hop at start, and the local stack refuses it before starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_traces_sampler_is_honoured_or_refused() {
    let exported = one_traced_request(&[("OTEL_TRACES_SAMPLER", "always_off")]).await;
    assert!(!exported.iter().any(|p| p == "/v1/traces"), "{exported:?}");
    assert!(exported.iter().any(|p| p == "/v1/metrics"), "{exported:?}");
    let exported = one_traced_request(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "1"),
    ])
    .await;
    assert!(exported.iter().any(|p| p == "/v1/traces"), "{exported:?}");

    let typo = (
        "always-off",
        "OTEL_TRACES_SAMPLER=`always-off`: not a sampler",
    );
    refusals("OTEL_TRACES_SAMPLER", typo, typo);
}

/// A standard variable the SDK or the OTLP exporter would skip without a word stops a hop and the
/// local stack at start, naming the variable and never a header's value.
#[test]
fn standard_variables_the_sdk_would_skip_stop_the_hop() {
    let queue = (
        "0",
        "OTEL_BSP_MAX_QUEUE_SIZE: not a whole number of spans above zero",
    );
    refusals("OTEL_BSP_MAX_QUEUE_SIZE", queue, queue);
    // A misspelt switch does not fall back to its default (here: subjects in clear).
    let switch = (
        "enabled",
        "TOKENTRAIL_PSEUDONYMIZE_SUBJECT: not a switch: use `1`, `true` or `on`",
    );
    refusals("TOKENTRAIL_PSEUDONYMIZE_SUBJECT", switch, switch);
    let log = ("quiet", "TOKENTRAIL_LOG: use `json`");
    refusals("TOKENTRAIL_LOG", log, log);
    // A pause of zero between exports: the SDK's export thread would never sleep.
    for var in ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_METRIC_EXPORT_INTERVAL"] {
        let reason = format!("{var}: 0 ms would have the exporter's thread export without pause");
        refusals(var, ("0", &reason), ("0", &reason));
    }
    let stderr = refused(
        &["serve", "target"],
        "OTEL_EXPORTER_OTLP_HEADERS",
        "x-api-key:s3cr3t-value",
    );
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not `name=value`"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

/// `OTEL_SDK_DISABLED=true`: the hop serves and exports nothing (no spans, no metrics); a value
/// other than `true`/`false` stops it at start with the reason; the local stack refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_turns_the_sdk_off() {
    let exported = one_traced_request(&[("OTEL_SDK_DISABLED", "true")]).await;
    assert!(exported.is_empty(), "{exported:?}");
    let exported = one_traced_request(&[("OTEL_SDK_DISABLED", "false")]).await;
    assert!(exported.iter().any(|p| p == "/v1/traces"), "{exported:?}");

    refusals(
        "OTEL_SDK_DISABLED",
        ("yes", "OTEL_SDK_DISABLED=`yes`: use `true`"),
        (
            "true",
            "OTEL_SDK_DISABLED=true would turn tracing off in every hop",
        ),
    );
}
