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
    // The floor: jsonwebtoken's own decode + RS256 verify with the same key, no JWKS lookup.
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(key.public_jwk().clone()).expect("jwk");
    let dk = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    c.bench_function("jsonwebtoken_decode_rs256_floor", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(
                secrecy::ExposeSecret::expose_secret(&token),
                &dk,
                &validation,
            )
            .expect("decode")
        })
    });
    // The primitive: RS256 signature check with a pre-parsed aws-lc key.
    {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let n = b64
            .decode(key.public_jwk()["n"].as_str().expect("n"))
            .expect("n");
        let e = b64
            .decode(key.public_jwk()["e"].as_str().expect("e"))
            .expect("e");
        let parsed = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
            .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
            .expect("parsed");
        let t = secrecy::ExposeSecret::expose_secret(&token).to_owned();
        let (signed, sig) = t.rsplit_once('.').expect("jws");
        let sig = b64.decode(sig).expect("sig");
        c.bench_function("aws_lc_rs256_verify_parsed_key", |b| {
            b.iter(|| parsed.verify_sig(signed.as_bytes(), &sig).expect("verify"))
        });
        c.bench_function("aws_lc_rs256_verify_components", |b| {
            b.iter(|| {
                aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
                    .verify(
                        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                        signed.as_bytes(),
                        &sig,
                    )
                    .expect("verify")
            })
        });
    }
    c.bench_function("jwt_verify_repeated_token", |b| {
        b.iter(|| rt.block_on(verifier.verify(&token)).expect("verify"))
    });
    // A new token every time: full RS256 verification against the cached JWKS.
    let fresh: Vec<secrecy::SecretString> = (0..512)
        .map(|i| key.sign(&json!({"iss": base, "sub": format!("user{i}"), "aud": "target-api", "exp": now_epoch() + 3600})).expect("sign"))
        .collect();
    let mut i = 0usize;
    c.bench_function("jwt_verify_new_token_rs256_cached_jwks", |b| {
        b.iter(|| {
            // Fresh verifier state per token: the 512 tokens cycle, so clear what was remembered.
            i = (i + 1) % fresh.len();
            rt.block_on(verifier.verify_uncached(&fresh[i]))
                .expect("verify")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
