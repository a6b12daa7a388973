//! The interceptor contract of the facts file: MCP REQUEST events in, exactly the documented
//! output shapes out (pass-through with `Authorization`, or a fail-closed JSON-RPC denial).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use interceptor::{Deps, InterceptorConfig, handle};
use serde_json::{Value, json};
use telemetry::TraceContext;

async fn setup() -> (Deps, String, String) {
    let (issuer, _idp) = local::idp::spawn(local::idp::IdpConfig::default_config().expect("cfg"))
        .await
        .expect("idp starts");
    let mut tokens = Vec::new();
    for ttl in ["300", "-120"] {
        let t = local::idp::request_token(
            &issuer,
            &[
                ("grant_type", "password"),
                ("client_id", "tokentrail-app"),
                ("username", "alice"),
                ("password", "alice-password"),
                ("tokentrail_ttl_s", ttl),
            ],
        )
        .await
        .expect("token");
        tokens.push(secrecy::ExposeSecret::expose_secret(&t).to_owned());
    }
    let config = InterceptorConfig {
        user_token_header: "X-Custom-UserToken".into(),
        discovery_url: format!("{issuer}/.well-known/openid-configuration"),
        issuer,
        audiences: vec![],
        leeway_s: 30,
        required_scopes: vec![],
        broker: None,
    };
    let expired = tokens.pop().expect("expired");
    let valid = tokens.pop().expect("valid");
    (
        Deps {
            verifier: config.verifier().expect("verifier"),
            config,
            broker: None,
        },
        valid,
        expired,
    )
}

fn body() -> Value {
    json!({"jsonrpc":"2.0","id":"req-9","method":"tools/call","params":{"name":"orders___getOrder","arguments":{"orderId":"A-1001"}}})
}

fn event(headers: Option<Value>) -> Value {
    let mut req = json!({"path":"/mcp","httpMethod":"POST","body":body()});
    if let Some(h) = headers {
        req["headers"] = h;
    }
    json!({"interceptorInputVersion":"1.0","mcp":{"rawGatewayRequest":{"body":body().to_string()},"gatewayRequest":req}})
}

fn assert_denied(out: &Value, status: u64, reason: &str) {
    assert_eq!(out["interceptorOutputVersion"], "1.0");
    let resp = &out["mcp"]["transformedGatewayResponse"];
    assert_eq!(resp["statusCode"], status, "{out}");
    assert_eq!(resp["body"]["jsonrpc"], "2.0");
    assert_eq!(
        resp["body"]["id"], "req-9",
        "the denial answers the request's id"
    );
    let code = if status == 400 { -32602 } else { -32001 };
    assert_eq!(resp["body"]["error"]["code"], code);
    assert_eq!(resp["body"]["error"]["data"]["hop"], "gateway.interceptor");
    assert_eq!(resp["body"]["error"]["data"]["reason"], reason);
    assert!(
        out["mcp"].get("transformedGatewayRequest").is_none(),
        "fail closed: nothing passes"
    );
}

#[tokio::test]
async fn documented_shapes_in_and_out() {
    let (deps, valid, expired) = setup().await;
    let parent = TraceContext::none();

    // Lower-cased header names, as the gateway delivers them (Authorization passed through too).
    let out = handle(
        &event(Some(
            json!({"x-custom-usertoken": valid, "authorization": "Bearer agent"}),
        )),
        &parent,
        &deps,
    )
    .await;
    assert_eq!(
        out,
        json!({"interceptorOutputVersion":"1.0","mcp":{"transformedGatewayRequest":{"headers":{"Authorization": format!("Bearer {valid}")},"body": body()}}})
    );
    // Idempotent: the gateway may retry.
    assert_eq!(
        handle(
            &event(Some(json!({"x-custom-usertoken": valid}))),
            &parent,
            &deps
        )
        .await,
        out
    );
    // Any case, and a "Bearer " prefix, are accepted.
    let out2 = handle(
        &event(Some(
            json!({"X-Custom-UserToken": format!("Bearer {valid}")}),
        )),
        &parent,
        &deps,
    )
    .await;
    assert_eq!(out2, out);

    // passRequestHeaders false: no `headers` key.
    assert_denied(
        &handle(&event(None), &parent, &deps).await,
        401,
        "missing_token",
    );
    // Flag on, header absent.
    assert_denied(
        &handle(&event(Some(json!({}))), &parent, &deps).await,
        401,
        "missing_token",
    );
    assert_denied(
        &handle(
            &event(Some(json!({"x-custom-usertoken": ""}))),
            &parent,
            &deps,
        )
        .await,
        401,
        "missing_token",
    );
    // Malformed and expired.
    assert_denied(
        &handle(
            &event(Some(json!({"x-custom-usertoken": "not-a-jwt"}))),
            &parent,
            &deps,
        )
        .await,
        401,
        "malformed",
    );
    let denied = handle(
        &event(Some(json!({"x-custom-usertoken": expired}))),
        &parent,
        &deps,
    )
    .await;
    assert_denied(&denied, 401, "expired");
    assert!(
        !denied.to_string().contains(&expired),
        "a denial never echoes the token"
    );
    // Not an interceptor event at all.
    let mut wrong = event(Some(json!({"x-custom-usertoken": valid})));
    wrong["interceptorInputVersion"] = json!("2.0");
    assert_denied(
        &handle(&wrong, &parent, &deps).await,
        400,
        "invalid_request",
    );
    let out = handle(&json!({"hello": "world"}), &parent, &deps).await;
    assert_eq!(
        out["mcp"]["transformedGatewayResponse"]["body"]["error"]["data"]["reason"],
        "invalid_request"
    );
    assert_eq!(
        handle(&Value::Null, &parent, &deps).await["mcp"]["transformedGatewayResponse"]["statusCode"],
        400
    );
}
