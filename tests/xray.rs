//! X-Ray and the audit across sources, as a user runs them: `tokentrail demo` (both patterns)
//! with every hop and the app exporting segment documents to X-Ray (`TOKENTRAIL_XRAY=api`,
//! moto standing in for X-Ray through `AWS_ENDPOINT_URL_XRAY`) and the collector forwarding to
//! a real Jaeger; then `tokentrail audit` over the store, Jaeger and X-Ray.
//!
//! Checks: moto accepted every segment (each span of the store is a segment of its trace); one
//! trace's segments link parent to child across all hops with at most 50 annotations; the X-Ray
//! trace id is the W3C id Jaeger shows; the three audits report the same identities per request.
//!
//! Needs Jaeger (`TOKENTRAIL_JAEGER_BIN`) and moto (`TOKENTRAIL_MOTO_ENDPOINT`), which
//! scripts/test.sh provides; skipped without them unless `TOKENTRAIL_REQUIRE_TOOLS=1`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(support::bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tokentrail");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `trace id → (pattern, entered subject+fingerprint, reached subject+kind, verdict)`.
fn identities(json: &str) -> BTreeMap<String, String> {
    let v: Value = serde_json::from_str(json).expect("audit json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["trace_id"].as_str().unwrap().to_owned(),
                format!(
                    "{} entered={}:{}:{} reached={}:{}:{} verdict={} {}",
                    r["pattern"],
                    r["entered"]["kind"],
                    r["entered"]["subject"],
                    r["entered"]["fingerprint"],
                    r["reached"]["kind"],
                    r["reached"]["subject"],
                    r["reached"]["fingerprint"],
                    r["verdict"],
                    r["hop"].as_str().unwrap_or_default().to_owned()
                        + " "
                        + r["reason"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect()
}

/// Run an audit until it reports `want` requests (exporters and stores settle asynchronously).
async fn audit_until(args: &[&str], env: &[(&str, &str)], want: usize) -> BTreeMap<String, String> {
    let mut last = (0, String::new(), String::new());
    for _ in 0..60 {
        last = run_cli(args, env);
        if last.0 == 0 {
            let ids = identities(&last.1);
            if ids.len() >= want {
                return ids;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "audit {args:?} never reported {want} requests: exit {}, stderr {}, stdout {}",
        last.0,
        last.2,
        last.1.chars().take(2000).collect::<String>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traces_in_xray_and_jaeger_audit_the_same() {
    let Some(jaeger_bin) = support::tool("TOKENTRAIL_JAEGER_BIN", "a Jaeger v2 binary") else {
        return;
    };
    let Some(moto) = support::tool("TOKENTRAIL_MOTO_ENDPOINT", "a moto server") else {
        return;
    };
    let dir = support::tempdir("xray");
    let jaeger = support::start_jaeger(&jaeger_bin, &dir).await;
    let jaeger_url = format!("http://127.0.0.1:{}", jaeger.query);
    let out = dir.join("out");
    let out_s = out.display().to_string();
    let since = (auth::iam::now_epoch() - 5).to_string();
    let otlp = format!("http://127.0.0.1:{}", jaeger.otlp_http);
    let aws_env: Vec<(&str, &str)> = vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut demo_env = aws_env.clone();
    demo_env.extend([
        ("TOKENTRAIL_XRAY", "api"),
        ("AWS_ENDPOINT_URL_XRAY", moto.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
    ]);
    let (code, stdout, stderr) = run_cli(
        &[
            "demo",
            "--pattern",
            "both",
            "--requests",
            "10",
            "--out",
            &out_s,
        ],
        &demo_env,
    );
    assert_eq!(code, 0, "demo failed: {stdout}\n{stderr}");

    // 1. The store: the reference.
    let store = audit_until(&["audit", "--store", &out_s, "--format", "json"], &[], 20).await;
    assert_eq!(store.len(), 20, "10 requests per pattern");

    // 2. Jaeger and X-Ray report the same identities for the same requests.
    let from_jaeger = audit_until(
        &[
            "audit",
            "--jaeger",
            &jaeger_url,
            "--since",
            &since,
            "--format",
            "json",
        ],
        &[],
        20,
    )
    .await;
    let mut xray_args = vec![
        "audit",
        "--xray",
        "--endpoint-url",
        moto.as_str(),
        "--since",
        &since,
        "--format",
        "json",
    ];
    let from_xray = audit_until(&xray_args, &aws_env, 20).await;
    for (trace, want) in &store {
        assert_eq!(from_jaeger.get(trace), Some(want), "Jaeger, trace {trace}");
        assert_eq!(from_xray.get(trace), Some(want), "X-Ray, trace {trace}");
    }
    // Same 128 bits: the ids X-Ray returned (converted from `1-…-…`) are the W3C ids Jaeger shows.
    let store_ids: BTreeSet<&String> = store.keys().collect();
    let jaeger_ids: BTreeSet<&String> = from_jaeger
        .keys()
        .filter(|k| store.contains_key(*k))
        .collect();
    let xray_ids: BTreeSet<&String> = from_xray
        .keys()
        .filter(|k| store.contains_key(*k))
        .collect();
    assert_eq!(jaeger_ids, store_ids);
    assert_eq!(xray_ids, store_ids);

    // One trace by id, from each source: the same record.
    let one = store.keys().next().unwrap().clone();
    let (code, json, err) = run_cli(
        &[
            "audit",
            "--jaeger",
            &jaeger_url,
            "--trace",
            &one,
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(identities(&json).get(&one), store.get(&one));
    assert_eq!(identities(&json).len(), 1);
    let (code, json, err) = run_cli(
        &[
            "audit",
            "--xray",
            "--endpoint-url",
            moto.as_str(),
            "--trace",
            &one,
            "--format",
            "json",
        ],
        &aws_env,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(identities(&json).get(&one), store.get(&one));
    assert_eq!(identities(&json).len(), 1);
    let (_, table, _) = run_cli(&["audit", "--jaeger", &jaeger_url, "--trace", &one], &[]);
    assert!(
        table.contains(&format!("{jaeger_url}/trace/{one}")),
        "the table links the trace in Jaeger's UI: {table}"
    );

    // A filter X-Ray cannot apply here (moto has no filter expressions) is applied client-side,
    // and the audit says so.
    xray_args.extend(["--user", "bob", "--pattern", "broker"]);
    let (code, json, notes) = run_cli(&xray_args, &aws_env);
    assert_eq!(code, 0, "{notes}");
    let bob = identities(&json);
    assert!(!bob.is_empty());
    assert!(bob.values().all(|r| r.starts_with("\"broker\"")), "{bob:?}");
    assert!(notes.contains("filtering client-side"), "{notes}");

    // 3. Every span of a broker request is a segment of one X-Ray trace, linked parent to child.
    let traces = support::traces(&out);
    let (trace_id, spans) = traces
        .iter()
        .find(|(_, spans)| {
            spans
                .iter()
                .any(|s| s.attr_str("tokentrail.hop.name") == Some("broker.token"))
                && spans.iter().any(|s| s.attr_str("enduser.id").is_some())
        })
        .expect("a broker request that reached the target");
    let config = telemetry::aws_http::config_loader()
        .endpoint_url(&moto)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let client = aws_sdk_xray::Client::new(&config);
    let xray_id = telemetry::propagation::xray_trace_id(trace_id);
    let got = client
        .batch_get_traces()
        .trace_ids(xray_id.clone())
        .send()
        .await
        .expect("BatchGetTraces");
    assert_eq!(got.traces().len(), 1, "one trace");
    let trace = &got.traces()[0];
    assert_eq!(trace.id(), Some(xray_id.as_str()));
    let docs: Vec<Value> = trace
        .segments()
        .iter()
        .map(|s| serde_json::from_str(s.document().unwrap()).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        spans.len(),
        "every span became a segment moto accepted"
    );
    let ids: BTreeSet<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let mut roots = 0;
    let mut annotations = 0;
    for d in &docs {
        assert_eq!(d["trace_id"], xray_id.as_str());
        match d["parent_id"].as_str() {
            Some(p) => assert!(ids.contains(p), "parent of {} is in the trace", d["name"]),
            None => roots += 1,
        }
        annotations += d["annotations"].as_object().map(|a| a.len()).unwrap_or(0);
    }
    assert_eq!(roots, 1, "one root segment");
    assert!(annotations <= 50, "{annotations} annotations in one trace");
    let segment_names: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.get("type").is_none())
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for hop in support::BROKER_SERVICES {
        assert!(
            segment_names.contains(hop),
            "{hop} segment in {segment_names:?}"
        );
    }
    let parent_name = |child: &str| {
        let c = docs
            .iter()
            .find(|d| d["name"] == child && d.get("type").is_none())
            .unwrap();
        let p = c["parent_id"].as_str().unwrap();
        let mut owner = docs.iter().find(|d| d["id"] == p).unwrap();
        // Up through subsegments to the segment (service) that made the call.
        while owner.get("type").is_some() {
            let pp = owner["parent_id"].as_str().unwrap();
            owner = docs.iter().find(|d| d["id"] == pp).unwrap();
        }
        owner["name"].as_str().unwrap().to_owned()
    };
    assert_eq!(parent_name("runtime"), "app");
    assert_eq!(parent_name("agent"), "runtime");
    assert_eq!(parent_name("gateway"), "agent");
    assert_eq!(parent_name("interceptor"), "gateway");
    assert_eq!(parent_name("broker"), "interceptor");
    assert_eq!(parent_name("target"), "gateway");
    let target = docs.iter().find(|d| d["name"] == "target").unwrap();
    assert_eq!(target["annotations"]["tokentrail_pattern"], "broker");
    assert_eq!(
        target["annotations"]["tokentrail_credential_kind"],
        "service_token"
    );
    assert!(
        !docs
            .iter()
            .any(|d| telemetry::redact::contains_jwt(&d.to_string())),
        "no token in what X-Ray stored"
    );
}
