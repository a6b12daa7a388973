//! JWT verification with a warm JWKS cache. Goal: ≤ 25 µs per verification.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use auth::mint::now_epoch;
use auth::{IssuerPolicy, JwksCache, JwksConfig, SigningKey, Verifier};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let key = SigningKey::generate_rs256("k1").expect("key");
    let jwks = serde_json::json!({"keys": [key.public_jwk()]});
    let (base, _guard) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let disc = json!({"issuer": base, "jwks_uri": format!("{base}/jwks")});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(disc) }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || async move { axum::Json(jwks) }),
            );
        (
            base,
            tokio::spawn(async move { axum::serve(listener, app).await }),
        )
    });
    let mut cfg = JwksConfig::new(format!("{base}/.well-known/openid-configuration"));
    cfg.min_refetch_interval = Duration::from_secs(3600);
    let verifier = Verifier::new(
        IssuerPolicy::new(base.clone(), vec!["target-api".into()]),
        JwksCache::new(cfg).expect("cache"),
    );
    let token = key
        .sign(&json!({"iss": base, "sub": "alice", "aud": "target-api", "exp": now_epoch() + 3600}))
        .expect("sign");
    rt.block_on(verifier.verify(&token)).expect("warm");
    c.bench_function("jwt_verify_rs256_cached_jwks", |b| {
        b.iter(|| rt.block_on(verifier.verify(&token)).expect("verify"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
