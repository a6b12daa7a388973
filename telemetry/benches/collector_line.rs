//! The embedded collector's CPU work per export: the scrubbed OTLP/JSON line it appends to the
//! store, from an OTLP/HTTP protobuf body, by the one-pass transcoder (`store_line`) and by the
//! full decoder and serde (`decode_protobuf` + `json_line`). Reported per export of 256 hop spans
//! shaped like the ones the chain records.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use telemetry::otlp::{JSON, PROTOBUF, TraceExport};

const SPANS: usize = 256;

fn span(i: usize) -> String {
    let attr = |k: &str, v: &str| format!(r#"{{"key":"{k}","value":{{"stringValue":"{v}"}}}}"#);
    let attrs = [
        attr("tokentrail.pattern", "passthrough"),
        attr("tokentrail.hop.name", "gateway.interceptor"),
        r#"{"key":"tokentrail.hop.index","value":{"intValue":"3"}}"#.to_owned(),
        attr("tokentrail.credential.kind", "user_jwt"),
        attr("tokentrail.credential.verification", "verified"),
        attr("tokentrail.credential.fingerprint", &format!("sha256:{i:012x}")),
        attr("tokentrail.credential.issuer", "http://127.0.0.1:33277"),
        attr("tokentrail.credential.subject", "alice"),
        attr("tokentrail.credential.client_id", "tokentrail-app"),
        attr("tokentrail.credential.alg", "RS256"),
        r#"{"key":"tokentrail.credential.audience","value":{"arrayValue":{"values":[{"stringValue":"target-api"}]}}}"#.to_owned(),
        r#"{"key":"tokentrail.credential.scopes","value":{"arrayValue":{"values":[{"stringValue":"orders:read"}]}}}"#.to_owned(),
        r#"{"key":"tokentrail.credential.expires_in_s","value":{"intValue":"300"}}"#.to_owned(),
        attr("tokentrail.request.id", &format!("{:040x}", i * 7919)),
        attr("url.full", "http://127.0.0.1:44711/2015-03-31/functions/interceptor/invocations"),
        attr("tokentrail.hop.outcome", "ok"),
    ];
    format!(
        r#"{{"traceId":"6b0bbef2{i:024x}","spanId":"{i:016x}","parentSpanId":"{:016x}","flags":257,"name":"gateway.interceptor","kind":2,"startTimeUnixNano":"1795931890037119276","endTimeUnixNano":"1795931890039406906","attributes":[{}],"status":{{"code":1}}}}"#,
        i + 1,
        attrs.join(",")
    )
}

fn bench(c: &mut Criterion) {
    let spans: Vec<String> = (0..SPANS).map(span).collect();
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"gateway"}}}},{{"key":"service.namespace","value":{{"stringValue":"tokentrail"}}}}]}},"scopeSpans":[{{"scope":{{"name":"tokentrail"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    );
    let body = TraceExport::decode(JSON, json.as_bytes())
        .expect("valid OTLP/JSON")
        .to_protobuf();
    let mut group = c.benchmark_group("collector");
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("decode_protobuf_256_spans", |b| {
        b.iter(|| TraceExport::decode(PROTOBUF, &body).expect("decode"))
    });
    let export = TraceExport::decode(PROTOBUF, &body).expect("decode");
    group.bench_function("json_line_256_spans", |b| {
        b.iter(|| export.to_json_line().expect("line"))
    });
    let mut line = String::new();
    group.bench_function("store_line_256_spans", |b| {
        b.iter(|| telemetry::otlp::trace_store_line(PROTOBUF, &body, &mut line).expect("line"))
    });
    telemetry::otlp::trace_store_line(PROTOBUF, &body, &mut line).expect("line");
    assert_eq!(
        line,
        export.to_json_line().expect("line"),
        "the one-pass transcoder writes what the full decoder and serde write"
    );
    let line = export.to_json_line().expect("line");
    group.bench_function("scrub_line_256_spans", |b| {
        b.iter(|| telemetry::redact::scrub_json(&line).len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
