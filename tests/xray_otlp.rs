//! OTLP/HTTP to X-Ray's OTLP endpoint (`TOKENTRAIL_XRAY=otlp`): every hop's export is
//! SigV4-signed for service `xray` with the standard credential chain (session token included),
//! and arrives as OTLP protobuf. The endpoint here checks signatures as X-Ray does (403
//! `InvalidSignatureException` otherwise) against the one secret the hops were given.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokentrail::app::{App, Outcome};

const KEY_ID: &str = "AKIDTOKENTRAILXRAY01";
const SECRET: &str = "xray-otlp-test-secret-key-0123456789abcd";
const SESSION: &str = "xray-otlp-test-session-token";

#[derive(Default)]
struct Seen {
    services: BTreeSet<String>,
    spans: usize,
    refused: Vec<String>,
}

fn refuse(seen: &Mutex<Seen>, why: String) -> Response {
    seen.lock().unwrap().refused.push(why.clone());
    (
        StatusCode::FORBIDDEN,
        [("x-amzn-errortype", "InvalidSignatureException")],
        axum::Json(json!({ "message": why })),
    )
        .into_response()
}

async fn traces(seen: Arc<Mutex<Seen>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let req = auth::iam::ReceivedRequest {
        method: "POST",
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &headers,
        body: &body,
    };
    let params = match auth::iam::sigv4_params(&req) {
        Ok(p) => p,
        Err(e) => return refuse(&seen, format!("unsigned: {e}")),
    };
    if params.service != "xray" || params.region != "us-east-1" || params.access_key_id != KEY_ID {
        return refuse(
            &seen,
            format!(
                "wrong scope {}/{}/{}",
                params.access_key_id, params.region, params.service
            ),
        );
    }
    if !params
        .signed_headers
        .iter()
        .any(|h| h == "x-amz-security-token")
        || headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            != Some(SESSION)
    {
        return refuse(&seen, "session token not signed".into());
    }
    if let Err(e) = auth::iam::verify_sigv4(&req, &params, &secrecy::SecretString::from(SECRET)) {
        return refuse(&seen, format!("bad signature: {e}"));
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let export = match telemetry::otlp::TraceExport::decode(ct, &body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    {
        let mut s = seen.lock().unwrap();
        for span in export.spans() {
            s.services.insert(span.service.clone());
            s.spans += 1;
        }
    }
    let (ct, body) = telemetry::otlp::success_response(ct);
    ([("content-type", ct)], body).into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_export_sigv4_signed_otlp_to_xray() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let router = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            traces(s2.clone(), uri, headers, body)
        }),
    );
    let (addr, _server) = local::serve(router, ([127, 0, 0, 1], 0).into())
        .await
        .expect("endpoint");

    // The endpoint refuses what X-Ray refuses.
    let unsigned = reqwest::Client::new()
        .post(format!("http://{addr}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .expect("post");
    assert_eq!(unsigned.status(), 403);
    seen.lock().unwrap().refused.clear();

    let out = support::tempdir("xray-otlp");
    let mut opts = support::stack_options(&out, None);
    opts.extra_env = [
        ("TOKENTRAIL_XRAY", "otlp".to_owned()),
        (
            "TOKENTRAIL_XRAY_OTLP_ENDPOINT",
            format!("http://{addr}/v1/traces"),
        ),
        ("AWS_ACCESS_KEY_ID", KEY_ID.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
        ("AWS_SESSION_TOKEN", SESSION.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let stack = tokentrail::stack::Stack::start(&opts).await.expect("stack");
    let app = App::new(stack.endpoints.clone()).expect("app");
    let r = app
        .call(&support::alice_reads_her_order())
        .await
        .expect("call");
    assert_eq!(r.outcome, Outcome::Ok);

    let want: BTreeSet<String> = ["runtime", "agent", "gateway", "interceptor", "target"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for _ in 0..100 {
        if want.is_subset(&seen.lock().unwrap().services) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await.expect("stop");
    let s = seen.lock().unwrap();
    assert!(
        s.refused.is_empty(),
        "every export was signed correctly: {:?}",
        s.refused
    );
    assert!(
        want.is_subset(&s.services),
        "every hop exported to X-Ray's OTLP endpoint: {:?}",
        s.services
    );
    assert!(s.spans >= want.len());
    let _ = std::fs::remove_dir_all(&out);
}
