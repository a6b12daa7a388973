//! The interceptor core: event in → output out, JWT verified against a warm JWKS cache, hop span
//! included (exported through the redacting pipeline). Goal: ≤ 25 µs.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use interceptor::{Deps, InterceptorConfig, handle};
use serde_json::json;
use telemetry::TraceContext;

fn bench(c: &mut Criterion) {
    let _t = telemetry::install_discarding_pipeline();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (issuer, token) = rt.block_on(async {
        let (issuer, _idp) =
            local::idp::spawn(local::idp::IdpConfig::default_config().expect("cfg"))
                .await
                .expect("idp starts");
        let form = [
            ("grant_type", "password"),
            ("client_id", "tokentrail-app"),
            ("username", "alice"),
            ("password", "alice-password"),
        ];
        let t = local::idp::request_token(&issuer, &form)
            .await
            .expect("token");
        (issuer, secrecy::ExposeSecret::expose_secret(&t).to_owned())
    });
    let config = InterceptorConfig {
        user_token_header: "X-Custom-UserToken".into(),
        discovery_url: format!("{issuer}/.well-known/openid-configuration"),
        issuer,
        audiences: vec![],
        leeway_s: 30,
        required_scopes: vec![],
        broker: None,
    };
    let deps = Deps {
        verifier: config.verifier().expect("verifier"),
        config,
        broker: None,
    };
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"orders___getOrder","arguments":{"orderId":"A-1001"}}});
    let event = json!({"interceptorInputVersion":"1.0","mcp":{"rawGatewayRequest":{"body":body.to_string()},"gatewayRequest":{"path":"/mcp","httpMethod":"POST","headers":{"x-custom-usertoken": token},"body":body}}});
    let parent = TraceContext::none();
    let warm = rt.block_on(handle(&event, &parent, &deps));
    assert!(
        warm["mcp"].get("transformedGatewayRequest").is_some(),
        "{warm}"
    );
    c.bench_function("interceptor_core_valid_token", |b| {
        b.iter(|| rt.block_on(handle(&event, &parent, &deps)))
    });
    let denied = json!({"interceptorInputVersion":"1.0","mcp":{"rawGatewayRequest":{"body":body.to_string()},"gatewayRequest":{"path":"/mcp","httpMethod":"POST","headers":{},"body":body}}});
    c.bench_function("interceptor_core_missing_token", |b| {
        b.iter(|| rt.block_on(handle(&denied, &parent, &deps)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
