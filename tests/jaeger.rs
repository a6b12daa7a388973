//! A real Jaeger (v2, in-memory storage, on loopback ports of its own): one demo request goes
//! there over OTLP (through the stack's collector, as `OTEL_EXPORTER_OTLP_ENDPOINT` users get it)
//! and is read back through Jaeger's query API with every hop's service and correct parent/child
//! links. A hop exporting directly over OTLP/gRPC is read back too.
//!
//! Needs the Jaeger binary (built by scripts/test.sh; path in `TOKENTRAIL_JAEGER_BIN`). Without
//! it the test is skipped, unless `TOKENTRAIL_REQUIRE_TOOLS=1`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokentrail::app::{App, Outcome};

/// Poll Jaeger until the trace holds every service in `want`.
async fn fetch_trace(query: u16, trace_id: &str, want: &[&str]) -> Value {
    let http = reqwest::Client::new();
    let mut last = Value::Null;
    for _ in 0..150 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{query}/api/traces/{trace_id}"))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
        {
            let services: BTreeSet<String> = v["data"][0]["processes"]
                .as_object()
                .map(|p| {
                    p.values()
                        .filter_map(|x| x["serviceName"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if want.iter().all(|w| services.contains(*w)) {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("trace {trace_id} never held {want:?} in Jaeger; last answer: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_request_is_one_trace_in_jaeger() {
    let bin = match std::env::var("TOKENTRAIL_JAEGER_BIN") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            assert!(
                std::env::var("TOKENTRAIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "TOKENTRAIL_JAEGER_BIN is not set but tools are required"
            );
            eprintln!(
                "skipped: set TOKENTRAIL_JAEGER_BIN to a Jaeger v2 binary (scripts/test.sh builds one)"
            );
            return;
        }
    };
    let dir = support::tempdir("jaeger");
    let jaeger = support::start_jaeger(&bin, &dir).await;

    // 1. The whole chain, forwarded by the stack's collector over OTLP/HTTP.
    let out = dir.join("out");
    let stack = support::start_stack(
        &out,
        Some(format!("http://127.0.0.1:{}/v1/traces", jaeger.otlp_http)),
    )
    .await;
    let telemetry = tokentrail::stack::init_app_telemetry(&stack.endpoints).expect("app telemetry");
    let app = App::new(stack.endpoints.clone()).expect("app");
    let r = app
        .call(&support::alice_reads_her_order())
        .await
        .expect("call");
    assert_eq!(r.outcome, Outcome::Ok);
    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await.expect("stop");

    let services = support::PASSTHROUGH_SERVICES;
    let v = fetch_trace(jaeger.query, &r.trace_id, &services).await;
    let trace = &v["data"][0];
    assert_eq!(
        trace["traceID"], r.trace_id,
        "same 128-bit id in Jaeger as in the store (X-Ray-compatible)"
    );
    let spans = trace["spans"].as_array().expect("spans");
    let processes = trace["processes"].as_object().expect("processes");
    let service_of = |s: &Value| {
        processes[s["processID"].as_str().expect("pid")]["serviceName"]
            .as_str()
            .expect("name")
            .to_owned()
    };
    let by_id: BTreeMap<&str, &Value> = spans
        .iter()
        .map(|s| (s["spanID"].as_str().expect("id"), s))
        .collect();
    let mut roots = 0;
    for s in spans {
        match s["references"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["refType"] == "CHILD_OF"))
        {
            Some(parent) => assert!(
                by_id.contains_key(parent["spanID"].as_str().expect("pid")),
                "span {} has its parent in the trace",
                s["operationName"]
            ),
            None => roots += 1,
        }
    }
    assert_eq!(roots, 1, "one root span");
    let hop = |name: &str| {
        spans
            .iter()
            .find(|s| s["operationName"] == name)
            .unwrap_or_else(|| panic!("{name} in Jaeger"))
    };
    let parent_service = |name: &str| {
        let s = hop(name);
        let p = s["references"][0]["spanID"].as_str().expect("parent");
        service_of(by_id[p])
    };
    assert_eq!(parent_service("runtime.inbound"), "app");
    assert_eq!(parent_service("agent.invocation"), "runtime");
    assert_eq!(parent_service("gateway.inbound"), "agent");
    assert_eq!(parent_service("gateway.interceptor"), "gateway");
    assert_eq!(parent_service("target.api"), "gateway");
    let tags = |s: &Value| -> BTreeMap<String, Value> {
        s["tags"]
            .as_array()
            .map(|t| {
                t.iter()
                    .map(|x| {
                        (
                            x["key"].as_str().unwrap_or_default().to_owned(),
                            x["value"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(tags(hop("target.api"))["enduser.id"], "alice");
    assert_eq!(tags(hop("target.api"))["tokentrail.pattern"], "passthrough");
    assert!(
        !v.to_string().contains("eyJ"),
        "no token in what Jaeger stored"
    );

    // 2. A hop exporting on its own over OTLP/gRPC (OTEL_EXPORTER_OTLP_PROTOCOL=grpc).
    let mut child = tokio::process::Command::new(support::bin())
        .args(["serve", "target"])
        .env("TOKENTRAIL_ISSUER", "http://127.0.0.1:9")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("TOKENTRAIL_STOP_ON_STDIN_EOF", "1")
        .env("TOKENTRAIL_LOG", "off")
        .env_remove("TOKENTRAIL_COLLECTOR_ENDPOINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("target starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let url = loop {
        let line = lines.next_line().await.expect("line").expect("READY line");
        if let Some(rest) = line.strip_prefix("READY target ") {
            break rest.to_owned();
        }
    };
    let traceparent = "00-6b0b0c00aaaabbbbccccddddeeeeffff-1111222233334444-01";
    let resp = reqwest::Client::new()
        .get(format!("{url}/orders"))
        .header("traceparent", traceparent)
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), 401);
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let v = fetch_trace(
        jaeger.query,
        "6b0b0c00aaaabbbbccccddddeeeeffff",
        &["target"],
    )
    .await;
    assert!(
        v["data"][0]["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .any(|s| s["operationName"] == "target.api")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Jaeger's Monitor tab (Service Performance Monitoring) with the committed configuration
/// (`tools/jaeger/spm.yaml`, `tools/jaeger/prometheus.yml`): a load run's traces go to Jaeger,
/// the spanmetrics connector turns them into RED metrics, Debian's Prometheus scrapes them, and
/// Jaeger's metrics API (what the Monitor tab reads) answers per service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_monitor_metrics_come_from_the_hops_spans() {
    let Some(jaeger_bin) = support::tool("TOKENTRAIL_JAEGER_BIN", "a Jaeger v2 binary") else {
        return;
    };
    let Some(prometheus) = support::tool("TOKENTRAIL_PROMETHEUS", "Debian's prometheus") else {
        return;
    };
    let dir = support::tempdir("jaeger-spm");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    // Jaeger and Prometheus bind the ports chosen here; if another process took one in between,
    // Jaeger exits and both start again on fresh ports.
    let mut started = None;
    for _ in 0..support::PORT_ATTEMPTS {
        let keys = [
            "JAEGER_QUERY_HTTP",
            "JAEGER_QUERY_GRPC",
            "PROMETHEUS_HTTP",
            "JAEGER_OTLP_HTTP",
            "JAEGER_OTLP_GRPC",
            "JAEGER_SPANMETRICS_HTTP",
        ];
        let ports: BTreeMap<&str, u16> = keys.into_iter().zip(support::free_ports::<6>()).collect();
        // The committed Prometheus configuration, pointed at this Jaeger's exporter port.
        let prom_config = std::fs::read_to_string(repo.join("tools/jaeger/prometheus.yml"))
            .unwrap()
            .replace(
                "127.0.0.1:8889",
                &format!("127.0.0.1:{}", ports["JAEGER_SPANMETRICS_HTTP"]),
            );
        std::fs::write(dir.join("prometheus.yml"), prom_config).unwrap();
        let prom = tokio::process::Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--web.listen-address=127.0.0.1:{}",
                ports["PROMETHEUS_HTTP"]
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let mut jaeger = tokio::process::Command::new(&jaeger_bin);
        jaeger
            .arg("--config")
            .arg(repo.join("tools/jaeger/spm.yaml"))
            .env("OTEL_TRACES_SAMPLER", "always_off")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("jaeger.log")).unwrap(),
            ))
            .kill_on_drop(true);
        for (k, port) in &ports {
            jaeger.env(k, format!("127.0.0.1:{port}"));
        }
        let mut jaeger = jaeger.spawn().expect("jaeger starts");
        if support::answers_while_running(ports["JAEGER_QUERY_HTTP"], &mut jaeger).await {
            started = Some((ports, prom, jaeger));
            break;
        }
    }
    let Some((ports, _prom, _jaeger)) = started else {
        panic!(
            "Jaeger did not start; see {}",
            dir.join("jaeger.log").display()
        );
    };
    let http = reqwest::Client::new();
    let query = ports["JAEGER_QUERY_HTTP"];

    let run = tokio::process::Command::new(support::bin())
        .args([
            "load",
            "--local",
            "--pattern",
            "both",
            "--rate",
            "40",
            "--duration",
            "10s",
            "--warmup",
            "1s",
            "--faults",
            "expired=0.1",
            "--out",
        ])
        .arg(dir.join("out"))
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", ports["JAEGER_OTLP_HTTP"]),
        )
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );

    // Flush (5 s) + scrape (5 s) + query: poll for a minute.
    let mut last = Value::Null;
    for _ in 0..120 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let mut got = BTreeMap::new();
        for (what, extra) in [
            ("calls", ""),
            ("latencies", "&quantile=0.95"),
            ("errors", ""),
        ] {
            let url = format!(
                "http://127.0.0.1:{query}/api/metrics/{what}?service=gateway&service=broker&endTs={now_ms}&lookback=600000&step=5000&ratePer=60000{extra}"
            );
            if let Ok(r) = http.get(&url).send().await
                && let Ok(v) = r.json::<Value>().await
            {
                got.insert(what, v);
            }
        }
        let services = |v: &Value| -> BTreeSet<String> {
            v["metrics"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| {
                    m["metricPoints"].as_array().is_some_and(|p| {
                        p.iter().any(|x| {
                            x["gaugeValue"]["doubleValue"]
                                .as_f64()
                                .is_some_and(|d| d > 0.0)
                        })
                    })
                })
                .filter_map(|m| {
                    m["labels"].as_array()?.iter().find_map(|l| {
                        (l["name"] == "service_name")
                            .then(|| l["value"].as_str().unwrap_or("").to_owned())
                    })
                })
                .collect()
        };
        let want: BTreeSet<String> = ["broker".to_owned(), "gateway".to_owned()].into();
        if got.get("calls").is_some_and(|v| services(v) == want)
            && got.get("latencies").is_some_and(|v| services(v) == want)
        {
            // The expired tokens' rejections are errors in the gateway's spans.
            assert!(
                got.get("errors")
                    .is_some_and(|v| services(v).contains("gateway")),
                "{got:?}"
            );
            return;
        }
        last = serde_json::to_value(&got).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "Jaeger's metrics API never showed gateway and broker; last: {last}; logs in {}",
        dir.display()
    );
}
