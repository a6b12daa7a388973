//! Helpers for the end-to-end tests: the CLI binary, a stack on free ports, the span store.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod broker_env;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use telemetry::otlp::StoredSpan;
use tokentrail::stack::{Stack, StackOptions};

/// The CLI binary cargo built for these tests.
pub fn bin() -> PathBuf {
    // Integration tests live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("tokentrail-e2e{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test -p tokentrail-tests`",
        bin.display()
    );
    bin
}

/// Every service a valid passthrough request's trace holds a span of.
pub const PASSTHROUGH_SERVICES: [&str; 7] = [
    "app",
    "idp",
    "runtime",
    "agent",
    "gateway",
    "interceptor",
    "target",
];

/// The stdout of a command that must have succeeded (else the test fails showing stdout and
/// stderr).
pub fn succeeded(run: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}

/// The stderr of a run that must have failed (the assertion shows its stdout and stderr if it
/// did not).
pub fn failed(run: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(
        !run.status.success(),
        "succeeded where it must fail: {}\n{stderr}",
        String::from_utf8_lossy(&run.stdout)
    );
    stderr
}

/// A fresh temporary directory.
pub fn tempdir(name: &str) -> PathBuf {
    let nonce: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("tokentrail-{name}-{}-{nonce}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// Options for a passthrough stack writing to `out` with the test binary.
pub fn stack_options(out: &Path, forward_to: Option<String>) -> StackOptions {
    StackOptions {
        out: out.to_owned(),
        binary: bin(),
        forward_to,
        extra_env: Vec::new(),
        pattern: telemetry::Pattern::Passthrough,
        broker_fault: None,
        gateway_target_url: None,
        hop_env: Vec::new(),
        shared: None,
    }
}

/// A recording reverse proxy: every request it forwards (method, path, headers, body) is kept, so
/// a test can assert on exactly what a hop received. Forwards to the URL set with
/// [`Recorder::forward_to`].
#[derive(Clone, Default)]
pub struct Recorder {
    target: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Requests seen.
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

/// One request a [`Recorder`] forwarded.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// Headers, values as text.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Recorder {
    /// Start on a free port; its base URL.
    pub async fn start(&self) -> String {
        use axum::extract::State;
        async fn forward(
            State(rec): State<Recorder>,
            req: axum::extract::Request,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            rec.seen.lock().unwrap().push(Seen {
                path: path.clone(),
                headers,
                body: bytes.to_vec(),
            });
            let Some(target) = rec.target.lock().unwrap().clone() else {
                return (axum::http::StatusCode::BAD_GATEWAY, "no target yet").into_response();
            };
            let mut out =
                reqwest::Client::new().request(parts.method.clone(), format!("{target}{path}"));
            for (k, v) in parts.headers.iter() {
                if k != axum::http::header::HOST {
                    out = out.header(k, v);
                }
            }
            match out.body(bytes).send().await {
                Ok(r) => {
                    let status = r.status();
                    let ct = r.headers().get("content-type").cloned();
                    let body = r.bytes().await.unwrap_or_default();
                    let mut resp = (status, body).into_response();
                    if let Some(ct) = ct {
                        resp.headers_mut().insert("content-type", ct);
                    }
                    resp
                }
                Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
            }
        }
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(self.clone());
        let (addr, _task) = local::serve(app, ([127, 0, 0, 1], 0).into())
            .await
            .expect("recorder serves");
        format!("http://{addr}")
    }

    /// Where to forward.
    pub fn forward_to(&self, url: &str) {
        *self.target.lock().unwrap() = Some(url.to_owned());
    }

    /// How many requests were seen.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Start a passthrough stack writing to `out`, optionally forwarding to an OTLP/HTTP traces URL.
pub async fn start_stack(out: &Path, forward_to: Option<String>) -> Stack {
    Stack::start(&stack_options(out, forward_to))
        .await
        .expect("stack starts")
}

/// Spans of the store grouped by trace id.
pub fn traces(out: &Path) -> BTreeMap<String, Vec<StoredSpan>> {
    let spans = telemetry::otlp::read_store(&out.join("traces.jsonl")).expect("store readable");
    let mut by: BTreeMap<String, Vec<StoredSpan>> = BTreeMap::new();
    for s in spans {
        by.entry(s.trace_id.clone()).or_default().push(s);
    }
    by
}

/// Every span of the store that records an attribute key more than once, as
/// `service/span name: key`. OTLP wants keys unique within a span (the SDK does not check), and a
/// reader that keeps one value per key would silently pick one of two.
pub fn repeated_attribute_keys(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("traces.jsonl")).expect("store readable");
    let mut found = Vec::new();
    let list = |v: &serde_json::Value, k: &str| v[k].as_array().cloned().unwrap_or_default();
    for line in text.lines() {
        let export: serde_json::Value = serde_json::from_str(line).expect("store line is JSON");
        for rs in list(&export, "resourceSpans") {
            let service = list(&rs["resource"], "attributes")
                .iter()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str().map(str::to_owned))
                .unwrap_or_default();
            for span in list(&rs, "scopeSpans")
                .iter()
                .flat_map(|ss| list(ss, "spans"))
            {
                let mut seen = BTreeSet::new();
                for a in list(&span, "attributes") {
                    let key = a["key"].as_str().unwrap_or_default().to_owned();
                    if !seen.insert(key.clone()) {
                        found.push(format!(
                            "{service}/{}: {key}",
                            span["name"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// The hop span named `hop` in a trace.
pub fn hop_span<'a>(trace: &'a [StoredSpan], hop: &str) -> Option<&'a StoredSpan> {
    trace
        .iter()
        .find(|s| s.attr_str(telemetry::attrs::HOP_NAME) == Some(hop))
}

/// The `service.name` of the process whose span is the parent of `hop`'s span.
pub fn parent_service(trace: &[StoredSpan], hop: &str) -> String {
    let s = hop_span(trace, hop).unwrap_or_else(|| panic!("{hop} span"));
    trace
        .iter()
        .find(|p| p.span_id == s.parent_span_id)
        .map(|p| p.service.clone())
        .unwrap_or_default()
}

/// The credential fingerprint `hop` recorded.
pub fn hop_fingerprint(trace: &[StoredSpan], hop: &str) -> Option<String> {
    hop_span(trace, hop)
        .and_then(|s| s.attr_str(telemetry::attrs::CREDENTIAL_FINGERPRINT))
        .map(str::to_owned)
}

/// Every file under `dir`, as (path, bytes).
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("readable file")));
            }
        }
    }
    out
}

/// A free loopback port (for tools that cannot bind port 0 themselves and report it).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports (each held until all are chosen, so none is given twice).
/// Another process may still take one before the tool binds it: start such a tool with
/// [`answers_while_running`] and retry on fresh ports when it exits.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// A Jaeger v2 process (in-memory storage) on loopback ports of its own.
pub struct Jaeger {
    _child: tokio::process::Child,
    /// OTLP/HTTP receiver port.
    pub otlp_http: u16,
    /// OTLP/gRPC receiver port.
    pub otlp_grpc: u16,
    /// Query API / UI port.
    pub query: u16,
}

/// Wait (up to 30 s) until Jaeger's query API on `query` answers; false at once if `child`
/// exits first (e.g. one of its ports was taken).
pub async fn answers_while_running(query: u16, child: &mut tokio::process::Child) -> bool {
    let http = reqwest::Client::new();
    ready_while_running(child, Duration::from_secs(30), || {
        let get = http
            .get(format!("http://127.0.0.1:{query}/api/services"))
            .send();
        async move { get.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await
}

/// Poll `ready` until it says yes, up to `limit`; false at once if `child` exits first (e.g.
/// another process took a port it was given after the port was chosen), and false if it exits
/// just after `ready` said yes (the answer then came from another process on that port: only a
/// child still running after it owns it).
pub async fn ready_while_running<F: std::future::Future<Output = bool>>(
    child: &mut tokio::process::Child,
    limit: Duration,
    mut ready: impl FnMut() -> F,
) -> bool {
    let running = |child: &mut tokio::process::Child| matches!(child.try_wait(), Ok(None));
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !running(child) {
            return false;
        }
        if ready().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return running(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// How many times a tool that binds ports we chose is started on fresh ones.
pub const PORT_ATTEMPTS: usize = 3;

/// Start Jaeger from `bin`, its config and log in `dir`; waits until the query API answers.
pub async fn start_jaeger(bin: &str, dir: &std::path::Path) -> Jaeger {
    for _ in 0..PORT_ATTEMPTS {
        let [otlp_grpc, otlp_http, query, query_grpc, health] = free_ports();
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#
        );
        let path = dir.join("jaeger.yaml");
        std::fs::write(&path, config).expect("config");
        let log = std::fs::File::create(dir.join("jaeger.log")).expect("log");
        let mut child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("jaeger starts");
        if answers_while_running(query, &mut child).await {
            return Jaeger {
                _child: child,
                otlp_http,
                otlp_grpc,
                query,
            };
        }
    }
    panic!(
        "Jaeger did not start; see {}",
        dir.join("jaeger.log").display()
    );
}

/// alice reads her order A-1001: the request every pattern lets through.
pub fn alice_reads_her_order() -> tokentrail::app::CallSpec {
    tokentrail::app::CallSpec {
        user: "alice".into(),
        tool: "orders___getOrder".into(),
        arguments: serde_json::json!({"orderId": "A-1001"}),
        fault: None,
    }
}

/// The services a broker request passes through, app to target.
pub const BROKER_SERVICES: [&str; 7] = [
    "app",
    "runtime",
    "agent",
    "gateway",
    "interceptor",
    "broker",
    "target",
];

/// Write `text` to `path` as an executable script (a stand-in for a tool, a wrapper).
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("script written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The AWS SDK configuration for moto at `endpoint` (its dummy credentials, us-east-1).
pub async fn moto_config(endpoint: &str) -> aws_config::SdkConfig {
    telemetry::aws_http::config_loader()
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// A tool the tests need, from its environment variable. `None` means skip, unless
/// `TOKENTRAIL_REQUIRE_TOOLS=1` (scripts/test.sh), where a missing tool fails the test.
pub fn tool(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("TOKENTRAIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "{var} is not set but tools are required ({what})"
            );
            eprintln!("skipped: set {var} ({what}; scripts/test.sh provides it)");
            None
        }
    }
}
