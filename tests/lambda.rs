//! The Lambda front doors, under cargo-lambda's Lambda runtime emulator (`cargo lambda watch
//! --only-lambda-apis`): the interceptor invoked with events shaped as the facts file documents,
//! the target's `lambda_http` entry called through the emulator's function URL, and each
//! invocation's spans flushed to the collector before the invocation returns.
//!
//! Needs `cargo-lambda` (installed by scripts/test.sh; path in `TOKENTRAIL_CARGO_LAMBDA`). Without
//! it the test is skipped, unless `TOKENTRAIL_REQUIRE_TOOLS=1` (set by scripts/test.sh), which
//! makes a missing tool a failure. Also, without any emulator: a function started outside
//! Lambda says which of Lambda's variables is missing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

fn cargo_lambda() -> Option<PathBuf> {
    match std::env::var("TOKENTRAIL_CARGO_LAMBDA") {
        Ok(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            assert!(
                std::env::var("TOKENTRAIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "TOKENTRAIL_CARGO_LAMBDA is not set but tools are required"
            );
            eprintln!(
                "skipped: set TOKENTRAIL_CARGO_LAMBDA to the cargo-lambda binary (scripts/test.sh does)"
            );
            None
        }
    }
}

/// `cargo lambda watch` (Lambda APIs only) on a free loopback port, started again on a fresh
/// port when it cannot listen on the one chosen.
async fn start_emulator(cargo_lambda: &PathBuf) -> (u16, Child) {
    for _ in 0..support::PORT_ATTEMPTS {
        let port = support::free_port();
        let mut emulator = Command::new(cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cargo lambda watch starts");
        let listens = || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        };
        if support::ready_while_running(&mut emulator, Duration::from_secs(10), listens).await {
            return (port, emulator);
        }
    }
    panic!(
        "cargo lambda watch did not listen on any of {} free ports",
        support::PORT_ATTEMPTS
    );
}

/// An emulator and one function attached to it.
struct Function {
    port: u16,
    _emulator: Child,
    _function: Child,
}

/// Start `hop` as a function attached to a new emulator; its stdout (where a function's EMF
/// metric lines go, as CloudWatch Logs collects them) is written to `stdout`.
async fn start_function(
    cargo_lambda: &PathBuf,
    hop: &str,
    env: &[(&str, String)],
    stdout: &std::path::Path,
) -> Function {
    let (port, emulator) = start_emulator(cargo_lambda).await;
    let mut cmd = Command::new(support::bin());
    cmd.args(["lambda", hop])
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "_")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("TOKENTRAIL_LOG", "off")
        .stdout(Stdio::from(
            std::fs::File::create(stdout).expect("stdout file"),
        ))
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let function = cmd.spawn().expect("function starts");
    Function {
        port,
        _emulator: emulator,
        _function: function,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_front_doors_under_cargo_lambda() {
    let Some(cl) = cargo_lambda() else { return };
    let out = support::tempdir("lambda");
    // IdP and collector, in process.
    let (issuer, _idp) = local::idp::spawn(local::idp::IdpConfig::default_config().expect("cfg"))
        .await
        .expect("idp starts");
    let collector = local::collector::Collector::open(&out, None)
        .await
        .expect("collector");
    let (caddr, _c) = local::serve(
        local::collector::router(collector.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("collector serves");
    // The X-Ray daemon's side of the UDP protocol: what a Lambda with active tracing sends.
    let daemon = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    daemon
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let env = vec![
        ("TOKENTRAIL_ISSUER", issuer.clone()),
        ("TOKENTRAIL_COLLECTOR_ENDPOINT", format!("http://{caddr}")),
        ("TOKENTRAIL_XRAY", "daemon".to_owned()),
        (
            "AWS_XRAY_DAEMON_ADDRESS",
            daemon.local_addr().expect("addr").to_string(),
        ),
    ];
    let mut segments: Vec<Value> = Vec::new();
    let drain = |segments: &mut Vec<Value>| {
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = daemon.recv(&mut buf) {
            let text = std::str::from_utf8(&buf[..n]).expect("utf-8 datagram");
            let (head, doc) = text.split_once('\n').expect("header line");
            assert_eq!(head, telemetry::xray::DAEMON_HEADER);
            assert!(doc.len() <= telemetry::xray::MAX_DOCUMENT_BYTES);
            segments.push(serde_json::from_str(doc).expect("segment JSON"));
        }
    };
    // In X-Ray the hop is a subsegment of the function segment Lambda owns (the `Parent` of
    // `lambda-runtime-trace-id`), in Lambda's trace.
    let under_function = |segments: &[Value], span: &telemetry::otlp::StoredSpan| {
        let seg = segments
            .iter()
            .find(|d| d["id"] == span.span_id.as_str())
            .unwrap_or_else(|| panic!("a datagram for {}", span.name));
        let parent = span
            .attr_str(telemetry::attrs::XRAY_LAMBDA_PARENT_ID)
            .expect("the hop span records the function segment");
        assert_eq!(
            span.attr_str(telemetry::attrs::XRAY_LAMBDA_TRACE_ID),
            Some(telemetry::propagation::xray_trace_id(&span.trace_id).as_str())
        );
        assert_eq!(seg["type"], "subsegment", "{seg}");
        assert_eq!(seg["parent_id"], parent, "{seg}");
        assert_eq!(
            seg["trace_id"],
            telemetry::propagation::xray_trace_id(&span.trace_id)
        );
        assert_eq!(seg["name"], span.service.as_str());
    };
    let http = reqwest::Client::new();
    let login = |ttl: &'static str| {
        let issuer = issuer.clone();
        async move {
            let form = [
                ("grant_type", "password"),
                ("client_id", "tokentrail-app"),
                ("username", "alice"),
                ("password", "alice-password"),
                ("tokentrail_ttl_s", ttl),
            ];
            let t = local::idp::request_token(&issuer, &form)
                .await
                .expect("token");
            secrecy::ExposeSecret::expose_secret(&t).to_owned()
        }
    };
    let token = login("300").await;
    let expired = login("-120").await;

    // --- the interceptor, invoked through Lambda's Invoke API ---
    let f = start_function(&cl, "interceptor", &env, &out.join("interceptor.stdout")).await;
    let invoke = format!(
        "http://127.0.0.1:{}/2015-03-31/functions/_/invocations",
        f.port
    );
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"orders___getOrder","arguments":{"orderId":"A-1001"}}});
    let event = |headers: Option<Value>| {
        let mut req = json!({"path":"/mcp","httpMethod":"POST","body":body});
        if let Some(h) = headers {
            req["headers"] = h;
        }
        json!({"interceptorInputVersion":"1.0","mcp":{"rawGatewayRequest":{"body":body.to_string()},"gatewayRequest":req}})
    };
    let trace_header = "Root=1-6b0b0c00-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";
    let mut first = None;
    for _ in 0..100 {
        match http
            .post(&invoke)
            .header("x-amzn-trace-id", trace_header)
            .json(&event(Some(
                json!({"x-custom-usertoken": token, "authorization": "Bearer agent-token-opaque"}),
            )))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                first = Some(r.json::<Value>().await.expect("json"));
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let ok = first.expect("the interceptor answered through the emulator");
    // Flushed before the invocation returned: the collector already holds its spans.
    let spans = telemetry::otlp::read_store(collector.path()).unwrap_or_default();
    let first_span = spans
        .iter()
        .find(|s| s.service == "interceptor" && s.name == "gateway.interceptor")
        .expect("interceptor span exported before the invocation returned");
    assert_eq!(
        first_span.attributes.get("faas.coldstart"),
        Some(&json!(true)),
        "the first invocation is a cold start"
    );
    assert_eq!(ok["interceptorOutputVersion"], "1.0");
    let treq = &ok["mcp"]["transformedGatewayRequest"];
    assert_eq!(treq["headers"]["Authorization"], format!("Bearer {token}"));
    assert_eq!(
        treq["headers"].as_object().expect("headers").len(),
        1,
        "only Authorization is set: the custom header is not echoed"
    );
    assert_eq!(treq["body"], body, "body passed through unchanged");
    assert!(ok["mcp"].get("transformedGatewayResponse").is_none());

    let call = |ev: &Value| {
        let req = http.post(&invoke).json(ev);
        async move {
            req.send()
                .await
                .expect("invoke")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    // Mixed-case header name, as the repo's interceptor feared.
    let mixed = call(&event(Some(json!({"X-Custom-UserToken": token})))).await;
    assert!(mixed["mcp"].get("transformedGatewayRequest").is_some());

    // passRequestHeaders off: no `headers` key → fail closed.
    let none = call(&event(None)).await;
    assert_eq!(none["mcp"]["transformedGatewayResponse"]["statusCode"], 401);
    assert_eq!(
        none["mcp"]["transformedGatewayResponse"]["body"]["error"]["data"]["reason"],
        "missing_token"
    );
    assert_eq!(none["mcp"]["transformedGatewayResponse"]["body"]["id"], 7);
    assert!(none["mcp"].get("transformedGatewayRequest").is_none());

    // Flag on but header absent (`{}`), and an expired token.
    let empty = call(&event(Some(json!({})))).await;
    assert_eq!(
        empty["mcp"]["transformedGatewayResponse"]["body"]["error"]["data"]["reason"],
        "missing_token"
    );
    let exp = call(&event(Some(json!({"x-custom-usertoken": expired})))).await;
    assert_eq!(
        exp["mcp"]["transformedGatewayResponse"]["body"]["error"]["data"]["reason"],
        "expired"
    );
    assert!(
        !exp.to_string().contains(&expired),
        "a denial never echoes the token"
    );

    // The interceptor continued the trace the runtime handed over in `lambda-runtime-trace-id`
    // (cargo-lambda's emulator starts its own X-Ray trace per invocation rather than continuing
    // the Invoke request's header, so the id is the emulator's; on AWS it is the caller's).
    let spans = telemetry::otlp::read_store(collector.path()).unwrap_or_default();
    let hop = spans
        .iter()
        .find(|s| s.name == "gateway.interceptor")
        .expect("hop span");
    assert!(
        !hop.parent_span_id.is_empty(),
        "the hop span hangs from the runtime's trace header, not a new root"
    );
    assert!(
        spans.iter().all(|s| s.span_id != hop.parent_span_id),
        "its parent is remote (the runtime's segment)"
    );
    drain(&mut segments);
    under_function(&segments, hop);
    assert!(
        spans
            .iter()
            .filter(|s| s.name == "gateway.interceptor")
            .skip(1)
            .all(|s| s.attributes.get("faas.coldstart") == Some(&json!(false))),
        "later invocations are warm"
    );
    assert!(
        spans.iter().all(|s| s.name != "Lambda runtime invoke"),
        "the runtime's own span does not start a trace of its own"
    );

    // --- the target's lambda_http entry through the function URL ---
    let t = start_function(&cl, "target", &env, &out.join("target.stdout")).await;
    let url = format!("http://127.0.0.1:{}/lambda-url/_/orders/A-1001", t.port);
    let mut resp = None;
    for _ in 0..100 {
        match http.get(&url).bearer_auth(&token).send().await {
            Ok(r) if r.status().as_u16() != 502 && r.status().as_u16() != 404 => {
                resp = Some(r);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let resp = resp.expect("target answered through the function URL");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["reached_as"], "alice");
    let denied = http.get(&url).send().await.expect("call");
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().contains_key("www-authenticate"));
    let v: Value = denied.json().await.expect("json");
    assert_eq!(v["error"]["reason"], "missing_token");
    let spans = telemetry::otlp::read_store(collector.path()).unwrap_or_default();
    let target = spans
        .iter()
        .find(|s| s.name == "target.api" && s.attr_str("enduser.id") == Some("alice"))
        .expect("target span flushed");
    assert_eq!(target.service, "target");
    drain(&mut segments);
    under_function(&segments, target);

    // Each function wrote CloudWatch EMF lines on stdout: one per hop span, the first with a
    // ColdStart document.
    use telemetry::attrs::metric;
    for (hop, file) in [
        ("gateway.interceptor", "interceptor.stdout"),
        ("target.api", "target.stdout"),
    ] {
        let text = std::fs::read_to_string(out.join(file)).expect("function stdout");
        let docs: Vec<Value> = text
            .lines()
            .filter(|l| l.starts_with("{\"_aws\""))
            .map(|l| serde_json::from_str(l).expect("EMF line is JSON"))
            .collect();
        let metrics_of = |d: &Value| -> Vec<String> {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|x| x["Name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let hops: Vec<&Value> = docs
            .iter()
            .filter(|d| metrics_of(d).contains(&metric::HOP_DURATION.to_owned()))
            .collect();
        assert!(hops.len() >= 2, "{file}: {text}");
        for d in &hops {
            assert_eq!(
                d["_aws"]["CloudWatchMetrics"][0]["Namespace"],
                metric::EMF_NAMESPACE
            );
            assert_eq!(d["Hop"], hop, "{d}");
            assert!(d[metric::HOP_DURATION].as_f64().is_some_and(|v| v > 0.0));
            assert!(d["traceId"].as_str().is_some_and(|t| t.starts_with("1-")));
        }
        assert!(hops.iter().any(
            |d| d["Outcome"] == "rejected" && d["Reason"] == "missing_token"
                || d["Outcome"] == "ok"
        ));
        let cold: Vec<&Value> = docs
            .iter()
            .filter(|d| metrics_of(d) == [metric::EMF_COLD_START])
            .collect();
        assert_eq!(
            cold.len(),
            1,
            "one cold start per execution environment: {text}"
        );
        assert_eq!(cold[0]["Hop"], hop);
        assert!(!text.contains("eyJ"), "no token on stdout");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Outside Lambda (a variable Lambda sets is missing or malformed), a function says which one
/// and exits 1, instead of the Lambda runtime client's panic.
#[test]
fn outside_lambda_a_function_says_what_is_missing() {
    let run = |hop: &str, unset: &str, set: &[(&str, &str)]| {
        let out = std::process::Command::new(support::bin())
            .args(["lambda", hop])
            .env("TOKENTRAIL_LOG", "off")
            .env("TOKENTRAIL_ISSUER", "http://127.0.0.1:9")
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .env("AWS_LAMBDA_FUNCTION_NAME", "tokentrail-test")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .envs(set.iter().copied())
            .env_remove(unset)
            .output()
            .expect("tokentrail lambda runs");
        support::failed(&out)
    };
    for (hop, unset, set) in [
        ("target", "AWS_LAMBDA_FUNCTION_NAME", vec![]),
        ("interceptor", "AWS_LAMBDA_FUNCTION_VERSION", vec![]),
        (
            "target",
            "-",
            vec![("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots")],
        ),
        (
            "interceptor",
            "-",
            vec![("AWS_LAMBDA_RUNTIME_API", "not a host")],
        ),
    ] {
        let said = run(hop, unset, &set);
        let var = set.first().map_or(unset, |(k, _)| k);
        assert!(
            said.contains(&format!(
                "{var} is missing or malformed: this runs as an AWS Lambda function"
            )),
            "{hop} without {var}: {said}"
        );
        assert!(!said.contains("panicked"), "{said}");
    }
}
