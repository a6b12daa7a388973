//! The Lambda front doors, under cargo-lambda's Lambda runtime emulator (`cargo lambda watch
//! --only-lambda-apis`): the interceptor invoked with events shaped as the facts file documents,
//! the target's `lambda_http` entry called through the emulator's function URL, and each
//! invocation's spans flushed to the collector before the invocation returns. And the zips
//! `scripts/lambda-build.sh` built for deploy/ (arm64; under qemu-user on an x86_64 machine):
//! each of the four bootstraps answers one real event.
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
    let mut cmd = Command::new(support::bin());
    cmd.args(["lambda", hop]);
    start_attached(cargo_lambda, cmd, env, stdout).await
}

/// Start `cmd` (a Lambda function) attached to a new emulator, with Lambda's variables.
async fn start_attached(
    cargo_lambda: &PathBuf,
    mut cmd: Command,
    env: &[(&str, String)],
    stdout: &std::path::Path,
) -> Function {
    let (port, emulator) = start_emulator(cargo_lambda).await;
    cmd.env(
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

/// The embedded collector storing into `out`, served on a free loopback port.
async fn collector(
    out: &std::path::Path,
) -> (
    std::sync::Arc<local::collector::Collector>,
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let collector = local::collector::Collector::open(out, None)
        .await
        .expect("collector");
    let (addr, task) = local::serve(
        local::collector::router(collector.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("collector serves");
    (collector, addr, task)
}

/// A token alice logs in for at `issuer`, living `ttl_s` seconds (negative: already expired).
async fn alice_token(issuer: &str, ttl_s: &str) -> String {
    let form = [
        ("grant_type", "password"),
        ("client_id", "tokentrail-app"),
        ("username", "alice"),
        ("password", "alice-password"),
        ("tokentrail_ttl_s", ttl_s),
    ];
    let t = local::idp::request_token(issuer, &form)
        .await
        .expect("token");
    secrecy::ExposeSecret::expose_secret(&t).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_front_doors_under_cargo_lambda() {
    let Some(cl) = cargo_lambda() else { return };
    let out = support::tempdir("lambda");
    // IdP and collector, in process.
    let (issuer, _idp) = local::idp::spawn(local::idp::IdpConfig::default_config().expect("cfg"))
        .await
        .expect("idp starts");
    let (collector, caddr, _c) = collector(&out).await;
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
    let token = alice_token(&issuer, "300").await;
    let expired = alice_token(&issuer, "-120").await;

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

/// The bootstrap inside `zip`, extracted into `dir` (Python's zipfile: on every machine).
fn extract_bootstrap(zip: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("dir");
    let run = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(zip)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(run.status.success(), "cannot unzip {}", zip.display());
    let bootstrap = dir.join("bootstrap");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bootstrap
}

/// How to run `bootstrap` here: directly, or under qemu-user when it is arm64 on another CPU
/// (`TOKENTRAIL_QEMU_AARCH64`, with the arm64 C library under `TOKENTRAIL_QEMU_LD_PREFIX`).
fn bootstrap_command(bootstrap: &std::path::Path) -> (Command, &'static str) {
    let head = std::fs::read(bootstrap).expect("bootstrap");
    assert_eq!(
        &head[..4],
        b"\x7fELF",
        "{} is not an ELF executable",
        bootstrap.display()
    );
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let arm64 = machine == 183;
    if arm64 && std::env::consts::ARCH != "aarch64" {
        let qemu = support::tool(
            "TOKENTRAIL_QEMU_AARCH64",
            "qemu-aarch64, to run the arm64 bootstraps",
        )
        .expect("the arm64 bootstraps need qemu-aarch64 on this machine");
        let mut cmd = Command::new(qemu);
        cmd.env(
            "QEMU_LD_PREFIX",
            std::env::var("TOKENTRAIL_QEMU_LD_PREFIX")
                .unwrap_or_else(|_| "/usr/aarch64-linux-gnu".into()),
        )
        .arg(bootstrap);
        (cmd, "arm64 under qemu-aarch64")
    } else {
        (
            Command::new(bootstrap),
            if arm64 { "arm64" } else { "x86_64" },
        )
    }
}

/// Retry `send` until the emulator has a function attached (it answers 502/404 before).
async fn first_answer<F, Fut>(mut send: F) -> reqwest::Response
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    for _ in 0..300 {
        match send().await {
            Ok(r) if r.status().as_u16() != 502 && r.status().as_u16() != 404 => return r,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the function did not answer through the emulator");
}

/// The zips `scripts/lambda-build.sh` built, as deploy/ deploys them: each bootstrap starts under
/// cargo-lambda's emulator (the arm64 ones through qemu-user on an x86_64 machine) and answers one
/// real event, and its spans reach the collector before the invocation returns.
///
/// - interceptor: the AWS-documented REQUEST event (MCP, `passRequestHeaders`) with a user JWT;
/// - target: a function URL event, `GET /orders/A-1001` with that JWT;
/// - agent: a function URL event, `POST /invocations` with the user JWT in the Runtime's header;
///   it gets its own token from the IdP and calls a stand-in gateway; its client secret is read
///   from Secrets Manager (moto, the real SDK client) when moto is running;
/// - broker: a function URL event, `POST /token` with a caller proof signed by the interceptor's
///   broker client, checked against the local STS stand-in; its policy comes inline
///   (`TOKENTRAIL_BROKER_POLICY_TOML`, as deploy/central.json sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_zips_answer_one_real_event_each_under_the_emulator() {
    let Some(cl) = cargo_lambda() else { return };
    let Some(zips) = support::tool(
        "TOKENTRAIL_LAMBDA_ZIPS",
        "target/lambda, where scripts/lambda-build.sh puts the zips",
    ) else {
        return;
    };
    let zips = PathBuf::from(zips);
    let out = support::tempdir("built-zips");
    let env = support::broker_env::BrokerEnv::stand_in().await;
    let issuer = env.idp.clone();
    let (collector, caddr, _c) = collector(&out).await;
    let mut common = vec![
        ("TOKENTRAIL_ISSUER", issuer.clone()),
        ("TOKENTRAIL_COLLECTOR_ENDPOINT", format!("http://{caddr}")),
        ("AWS_REGION", "us-east-1".to_owned()),
    ];
    // The deployment's shared fingerprint key: from Secrets Manager (moto, the real SDK client)
    // when moto runs, as deploy/workload.json gives it, else in the environment.
    let moto = std::env::var("TOKENTRAIL_MOTO_ENDPOINT")
        .ok()
        .filter(|m| !m.is_empty());
    let secrets = match &moto {
        Some(endpoint) => {
            let config = support::moto_config(endpoint).await;
            common.extend([
                ("AWS_ENDPOINT_URL_SECRETS_MANAGER", endpoint.clone()),
                ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
                ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ]);
            Some(aws_sdk_secretsmanager::Client::new(&config))
        }
        None => None,
    };
    let create_secret = |name: &str, value: &str| {
        let name = format!("{name}-{}-{}", std::process::id(), auth::iam::now_epoch());
        let value = value.to_owned();
        let client = secrets.clone();
        async move {
            let client = client?;
            let created = client
                .create_secret()
                .name(&name)
                .secret_string(value)
                .send()
                .await
                .expect("moto creates the secret");
            Some(created.arn().expect("arn").to_owned())
        }
    };
    match create_secret("tokentrail/fingerprint-key", "the-deployments-shared-key").await {
        Some(arn) => common.push(("TOKENTRAIL_FINGERPRINT_KEY_ARN", arn)),
        None => common.push((
            "TOKENTRAIL_FINGERPRINT_KEY",
            "the-deployments-shared-key".to_owned(),
        )),
    }
    let token = alice_token(&issuer, "300").await;
    let http = reqwest::Client::new();
    let start = |hop: &'static str, extra: Vec<(&'static str, String)>| {
        let zip = zips.join(format!("tokentrail-{hop}/bootstrap.zip"));
        assert!(
            zip.exists(),
            "{} is missing: run scripts/lambda-build.sh",
            zip.display()
        );
        let bootstrap = extract_bootstrap(&zip, &out.join(hop));
        let (cmd, how) = bootstrap_command(&bootstrap);
        eprintln!("tokentrail-{hop}: {how}");
        let mut vars = common.clone();
        vars.extend(extra);
        let stdout = out.join(format!("{hop}.stdout"));
        let cl = cl.clone();
        async move { start_attached(&cl, cmd, &vars, &stdout).await }
    };
    let spans_of = |service: &str| {
        telemetry::otlp::read_store(collector.path())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.service == service)
            .count()
    };

    // --- interceptor: the REQUEST event ---
    let f = start("interceptor", vec![]).await;
    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"orders___getOrder","arguments":{"orderId":"A-1001"}}});
    let event = json!({"interceptorInputVersion":"1.0","mcp":{
        "rawGatewayRequest":{"body":body.to_string()},
        "gatewayRequest":{"path":"/mcp","httpMethod":"POST","headers":{"x-custom-usertoken":token,"authorization":"Bearer agent-token"},"body":body}}});
    let invoke = format!(
        "http://127.0.0.1:{}/2015-03-31/functions/_/invocations",
        f.port
    );
    let r = first_answer(|| http.post(&invoke).json(&event).send()).await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["interceptorOutputVersion"], "1.0", "{v}");
    assert_eq!(
        v["mcp"]["transformedGatewayRequest"]["headers"]["Authorization"],
        format!("Bearer {token}")
    );
    assert!(
        spans_of("interceptor") >= 1,
        "the interceptor's span was flushed"
    );
    drop(f);

    // --- target: a function URL event ---
    let f = start("target", vec![]).await;
    let url = format!("http://127.0.0.1:{}/lambda-url/_/orders/A-1001", f.port);
    let r = first_answer(|| http.get(&url).bearer_auth(&token).send()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["reached_as"], "alice", "{v}");
    assert!(spans_of("target") >= 1, "the target's span was flushed");
    drop(f);
    // Two functions, one key: the same token has the same fingerprint at both.
    let fingerprint = |service: &str| {
        telemetry::otlp::read_store(collector.path())
            .unwrap_or_default()
            .into_iter()
            .find(|s| {
                s.service == service
                    && s.attr_str(telemetry::attrs::CREDENTIAL_KIND) == Some("user_jwt")
            })
            .and_then(|s| {
                s.attr_str(telemetry::attrs::CREDENTIAL_FINGERPRINT)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("{service} recorded the user JWT's fingerprint"))
    };
    assert_eq!(fingerprint("interceptor"), fingerprint("target"));

    // --- agent: a function URL event, calling a stand-in gateway ---
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let recorded = seen.clone();
    let gateway = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |headers: axum::http::HeaderMap, axum::Json(req): axum::Json<Value>| {
            let recorded = recorded.clone();
            async move {
                let mut r = recorded.lock().expect("lock");
                for name in ["authorization", "x-custom-usertoken"] {
                    if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                        r.push((name.to_owned(), v.to_owned()));
                    }
                }
                axum::Json(json!({"jsonrpc":"2.0","id":req["id"],"result":{"content":[{"type":"text","text":"{\"order\":\"A-1001\"}"}]}}))
            }
        }),
    );
    let (gaddr, _g) = local::serve(gateway, ([127, 0, 0, 1], 0).into())
        .await
        .expect("gateway stand-in");
    let mut agent_env = vec![
        ("TOKENTRAIL_GATEWAY_URL", format!("http://{gaddr}/mcp")),
        ("TOKENTRAIL_TOKEN_ENDPOINT", format!("{issuer}/token")),
        ("TOKENTRAIL_AGENT_CLIENT_ID", "tokentrail-agent".to_owned()),
    ];
    match create_secret("tokentrail/agent/client-secret", "agent-secret").await {
        Some(arn) => agent_env.push(("TOKENTRAIL_AGENT_CLIENT_SECRET_ARN", arn)),
        None => agent_env.push(("TOKENTRAIL_AGENT_CLIENT_SECRET", "agent-secret".to_owned())),
    }
    let f = start("agent", agent_env).await;
    let url = format!("http://127.0.0.1:{}/lambda-url/_/invocations", f.port);
    let payload = json!({"tool":"orders___getOrder","arguments":{"orderId":"A-1001"}});
    let r = first_answer(|| {
        http.post(&url)
            .header("X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken", &token)
            .json(&payload)
            .send()
    })
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["result"]["order"], "A-1001", "{v}");
    {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.iter()
                .any(|(k, v)| k == "x-custom-usertoken" && v == &token),
            "the user's JWT went to the gateway in X-Custom-UserToken"
        );
        assert!(
            seen.iter().any(|(k, v)| k == "authorization"
                && v.starts_with("Bearer ey")
                && !v.contains(&token)),
            "the agent's own token went in Authorization"
        );
    }
    assert!(spans_of("agent") >= 1, "the agent's span was flushed");
    drop(f);

    // --- broker: a function URL event with a caller proof ---
    let secrets = out.join("secrets.json");
    std::fs::write(
        &secrets,
        json!({ env.secret_id.clone(): {"client_id": "orders-service", "client_secret": "orders-service-secret"} })
            .to_string(),
    )
    .expect("secrets file");
    let f = start(
        "broker",
        vec![
            (
                "TOKENTRAIL_BROKER_POLICY_TOML",
                format!(
                    "[credentials.orders-api]\nsecret = \"{}\"\nscope = \"orders:read\"\n\n[[allow]]\nrole = \"{}\"\ncredentials = [\"orders-api\"]\n",
                    env.secret_id,
                    support::broker_env::CALLER_ROLE
                ),
            ),
            ("TOKENTRAIL_SECRETS", format!("file:{}", secrets.display())),
            ("TOKENTRAIL_STS_ENDPOINT", env.sts.clone()),
            ("TOKENTRAIL_BROKER_ID", support::broker_env::BROKER_ID.to_owned()),
            ("TOKENTRAIL_TOKEN_ENDPOINT", format!("{issuer}/token")),
        ],
    )
    .await;
    let base = format!("http://127.0.0.1:{}/lambda-url/_", f.port);
    let client = env.client(&base, Duration::from_secs(5)).await;
    let parent = telemetry::TraceContext::default();
    let mut answered = None;
    for _ in 0..300 {
        match client.service_token(&parent).await {
            Ok(t) => {
                answered = Some(t);
                break;
            }
            Err(e)
                if e.message.contains("502")
                    || e.message.contains("404")
                    || e.message.contains("could not be reached") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the broker refused: {e:?}"),
        }
    }
    let service = answered.expect("the broker answered through the emulator");
    let claims = secrecy::ExposeSecret::expose_secret(&service.token)
        .split('.')
        .nth(1)
        .map(|p| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .expect("base64")
        })
        .map(|b| serde_json::from_slice::<Value>(&b).expect("claims"))
        .expect("a JWT");
    assert_eq!(claims["client_id"], "orders-service", "{claims}");
    assert!(spans_of("broker") >= 1, "the broker's span was flushed");
    drop(f);
    let _ = std::fs::remove_dir_all(&out);
}
