//! `OTEL_SDK_DISABLED=true` (its own process: it sets the global tracer provider): a hop records
//! nothing and the trace context it received is what it passes on.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use telemetry::{Hop, HopSpan, LogTo, Pattern, Service, TelemetryConfig, propagation};

/// Runs the check in a child process of this test binary with `OTEL_SDK_DISABLED=true` set.
#[test]
fn a_disabled_sdk_passes_the_trace_context_through_unchanged() {
    if std::env::var("OTEL_SDK_DISABLED").as_deref() == Ok("true") {
        check();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "a_disabled_sdk_passes_the_trace_context_through_unchanged",
            "--test-threads",
            "1",
        ])
        .env("OTEL_SDK_DISABLED", "true")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the check ran"
    );
}

fn check() {
    let mut cfg = TelemetryConfig::from_env(Service::Gateway);
    cfg.collector_endpoint = Some("http://127.0.0.1:9".into());
    cfg.otlp_from_env = false;
    cfg.log_to = LogTo::Off;
    let telemetry = telemetry::init(cfg).expect("init");
    assert!(
        telemetry.exporters().is_empty(),
        "{:?}",
        telemetry.exporters()
    );

    let upstream = "00-6b0b0c00aaaabbbbccccddddeeeeffff-1111222233334444-01";
    let mut received = http::HeaderMap::new();
    received.insert("traceparent", upstream.parse().expect("header"));
    let parent = propagation::extract_headers(&received);
    let span = HopSpan::hop(Hop::Gateway, Pattern::Passthrough, &parent);
    let sent = span.context().http_headers();
    assert_eq!(
        sent.get("traceparent").and_then(|v| v.to_str().ok()),
        Some(upstream),
        "the next hop hangs from the upstream span"
    );
    assert_eq!(span.span_id(), "1111222233334444");
    drop(span);
    telemetry.shutdown();
}
