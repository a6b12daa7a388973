//! Hop-span creation with the attributes of the span contract, exported through the redacting
//! pipeline (synchronously, so redaction is in the measurement). Goal: ≤ 25 µs.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use secrecy::SecretString;
use telemetry::{
    ClaimSummary, CredentialKind, CredentialProvenance, FailureReason, Hop, HopSpan, Pattern,
    TraceContext,
};

fn bench(c: &mut Criterion) {
    let _t = telemetry::install_discarding_pipeline();
    // A JWT-shaped token built from its parts.
    let token = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        SecretString::from(format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"RS256","kid":"k1"}"#),
            b64.encode(r#"{"sub":"alice","aud":"target-api"}"#),
            b64.encode("a-fake-signature-a-fake-signature")
        ))
    };
    let claims = ClaimSummary {
        issuer: Some("http://127.0.0.1:1234".into()),
        subject: Some("alice".into()),
        audience: vec!["target-api".into()],
        client_id: Some("tokentrail-app".into()),
        scopes: vec!["orders:read".into()],
        expires_at: Some(4_000_000_000),
        kid: Some("k1".into()),
        alg: Some("RS256".into()),
    };
    let parent = TraceContext::none();
    c.bench_function("hop_span_verified_credential_redacted_export", |b| {
        b.iter(|| {
            let mut span = HopSpan::hop(Hop::Target, Pattern::Passthrough, &parent);
            span.carrier("header:authorization");
            span.credential(&CredentialProvenance::verified(
                CredentialKind::UserJwt,
                &token,
                claims.clone(),
            ));
            span.enduser("alice");
            span.ok();
            span.end();
        })
    });
    c.bench_function("hop_span_rejection_redacted_export", |b| {
        b.iter(|| {
            let mut span = HopSpan::hop(Hop::Interceptor, Pattern::Passthrough, &parent);
            span.credential(&CredentialProvenance::opaque(
                CredentialKind::UserJwt,
                &token,
            ));
            span.reject(FailureReason::Expired);
            span.end();
        })
    });
    c.bench_function("scrub_clean_string", |b| {
        b.iter(|| {
            telemetry::redact::scrub("gateway.interceptor rejected the request: expired").len()
        })
    });
    // The full path: a header line with a bearer JWT and the same JWT again on its own.
    let raw = secrecy::ExposeSecret::expose_secret(&token);
    let dirty = format!("authorization: Bearer {raw}; user token {raw}; done");
    c.bench_function("scrub_string_with_bearer_and_jwt", |b| {
        b.iter(|| telemetry::redact::scrub(&dirty).len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
