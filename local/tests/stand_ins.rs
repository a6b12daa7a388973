//! The local stand-ins on loopback: the collector takes OTLP/JSON as well as protobuf and writes
//! the OTLP/JSON file encoding; the IdP speaks OAuth errors, rotates keys and keeps the previous
//! one published.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use auth::{IssuerPolicy, JwksCache, JwksConfig, Verifier};
use serde_json::{Value, json};

#[tokio::test]
async fn collector_accepts_otlp_json_and_protobuf_and_rejects_garbage() {
    let dir = std::env::temp_dir().join(format!("tokentrail-collector-{}", std::process::id()));
    let collector = local::collector::Collector::open(&dir, None)
        .await
        .expect("open");
    let (addr, _t) = local::serve(
        local::collector::router(collector.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("serve");
    let url = format!("http://{addr}/v1/traces");
    let http = reqwest::Client::new();
    let export = json!({"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"probe"}}]},
        "scopeSpans":[{"scope":{"name":"t"},"spans":[{"traceId":"6b0b0c000123456789abcdef01234567","spanId":"0123456789abcdef","name":"probe.span","kind":2,
        "startTimeUnixNano":"1795877638000000000","endTimeUnixNano":"1795877639000000000",
        "attributes":[{"key":"leak","value":{"stringValue":"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2ln"}}]}]}]}]});
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .body(export.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = http
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff, 0xff, 0xff])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400, "invalid protobuf is refused with a reason");
    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .expect("text")
            .contains("unsupported content type")
    );
    let spans = telemetry::otlp::read_store(collector.path()).expect("store");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].service, "probe");
    assert_eq!(spans[0].trace_id, "6b0b0c000123456789abcdef01234567");
    assert_eq!(spans[0].kind, "server");
    let text = std::fs::read_to_string(collector.path()).expect("file");
    assert!(
        !text.contains("eyJ"),
        "the collector scrubs what an exporter let through"
    );
    let line: Value =
        serde_json::from_str(text.lines().next().expect("line")).expect("OTLP/JSON line");
    assert!(
        line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"].is_string(),
        "hex ids, as the OTLP/JSON encoding"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The receiver `tokentrail bench --traced send` exports to: it answers as the collector does,
/// in the request's encoding, refuses what the collector refuses, keeps nothing and counts.
#[tokio::test]
async fn the_discarding_receiver_answers_like_the_collector_and_counts() {
    let sink = std::sync::Arc::new(local::collector::Discard::default());
    let (addr, _t) = local::serve(
        local::collector::discard_router(sink.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .expect("serve");
    let http = reqwest::Client::new();
    let post = |path: &'static str, ct: &'static str, encoding: Option<&'static str>| {
        let mut r = http
            .post(format!("http://{addr}{path}"))
            .header("content-type", ct)
            .body(vec![0x0a, 0x00]);
        if let Some(e) = encoding {
            r = r.header("content-encoding", e);
        }
        r.send()
    };
    let r = post("/v1/traces", "application/x-protobuf", None)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    assert!(r.bytes().await.expect("body").is_empty());
    let r = post("/v1/traces", "application/json", None)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "{}");
    let r = post("/v1/metrics", "application/x-protobuf", None)
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let r = post("/v1/traces", "application/x-protobuf", Some("gzip"))
        .await
        .expect("post");
    assert_eq!(r.status(), 415);
    assert!(r.text().await.expect("body").contains("send uncompressed"));
    // Two trace exports of two bytes were taken; metrics and refused exports are not counted.
    assert_eq!((sink.trace_exports(), sink.trace_bytes()), (2, 4));
}

#[tokio::test]
async fn idp_rotation_keeps_the_previous_key_and_oauth_errors_are_clear() {
    let (issuer, _t) = local::idp::spawn(local::idp::IdpConfig::default_config().expect("cfg"))
        .await
        .expect("idp");
    let http = reqwest::Client::new();
    let token = |user: &'static str, password: &'static str| {
        let http = http.clone();
        let issuer = issuer.clone();
        async move {
            http.post(format!("{issuer}/token"))
                .form(&[
                    ("grant_type", "password"),
                    ("client_id", "tokentrail-app"),
                    ("username", user),
                    ("password", password),
                ])
                .send()
                .await
                .expect("token")
        }
    };
    let before: Value = token("alice", "alice-password")
        .await
        .json()
        .await
        .expect("json");
    let bad = token("alice", "wrong").await;
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.expect("json")["error"],
        "invalid_grant"
    );
    let r = http
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "tokentrail-agent"),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "invalid_client"
    );
    let r = http
        .post(format!("{issuer}/token"))
        .form(&[("grant_type", "implicit"), ("client_id", "tokentrail-app")])
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "unsupported_grant_type"
    );

    let rotated: Value = http
        .post(format!("{issuer}/admin/rotate"))
        .send()
        .await
        .expect("rotate")
        .json()
        .await
        .expect("json");
    let jwks: Value = http
        .get(format!("{issuer}/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    assert_eq!(
        jwks["keys"].as_array().expect("keys").len(),
        2,
        "current and previous key published"
    );
    assert_eq!(jwks["keys"][0]["kid"], rotated["kid"]);
    let after: Value = token("alice", "alice-password")
        .await
        .json()
        .await
        .expect("json");

    let mut cfg = JwksConfig::new(format!("{issuer}/.well-known/openid-configuration"));
    cfg.min_refetch_interval = Duration::ZERO;
    let v = Verifier::new(
        IssuerPolicy::new(issuer.clone(), vec!["target-api".into()]),
        JwksCache::new(cfg).expect("cache"),
    );
    for t in [&before, &after] {
        let tok =
            secrecy::SecretString::from(t["access_token"].as_str().expect("token").to_owned());
        assert_eq!(
            v.verify(&tok)
                .await
                .expect("verifies across rotation")
                .claims
                .sub,
            "alice"
        );
    }
}
