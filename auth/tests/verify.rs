//! Verification against a real JWKS server on loopback.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use auth::mint::now_epoch;
use auth::{FailureReason, IssuerPolicy, JwksCache, JwksConfig, SigningKey, Verifier};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

struct Idp {
    base: String,
    up: Arc<AtomicBool>,
    key: SigningKey,
}

async fn start_idp() -> Idp {
    start_idp_with(Vec::new()).await
}

/// An IdP whose JWKS holds its RS256 key `k1` and `extra` keys.
async fn start_idp_with(extra: Vec<serde_json::Value>) -> Idp {
    let key = SigningKey::generate_rs256("k1").expect("key");
    let mut keys = vec![key.public_jwk().clone()];
    keys.extend(extra);
    let jwks = json!({ "keys": keys });
    let up = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let disc = json!({"issuer": base, "jwks_uri": format!("{base}/jwks")});
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get({
                let d = disc.clone();
                move |State(up): State<Arc<AtomicBool>>| async move {
                    if up.load(Ordering::SeqCst) {
                        Ok(axum::Json(d))
                    } else {
                        Err(StatusCode::SERVICE_UNAVAILABLE)
                    }
                }
            }),
        )
        .route(
            "/jwks",
            get(move |State(up): State<Arc<AtomicBool>>| async move {
                if up.load(Ordering::SeqCst) {
                    Ok(axum::Json(jwks))
                } else {
                    Err(StatusCode::SERVICE_UNAVAILABLE)
                }
            }),
        )
        .with_state(up.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Idp { base, up, key }
}

fn verifier(idp: &Idp, min_interval: Duration) -> Verifier {
    let mut cfg = JwksConfig::new(format!("{}/.well-known/openid-configuration", idp.base));
    cfg.min_refetch_interval = min_interval;
    let jwks = JwksCache::new(cfg).expect("cache");
    Verifier::new(
        IssuerPolicy::new(idp.base.clone(), vec!["target-api".into()]),
        jwks,
    )
}

fn claims(idp: &Idp) -> serde_json::Value {
    json!({"iss": idp.base, "sub": "alice", "aud": "target-api", "exp": now_epoch() + 300, "iat": now_epoch(), "scope": "orders:read"})
}

fn reason(r: Result<auth::VerifiedToken, auth::AuthError>) -> FailureReason {
    match r {
        Ok(_) => panic!("expected a rejection"),
        Err(e) => e.reason,
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn accepts_valid_and_rejects_each_fault_with_its_reason() {
    let idp = start_idp().await;
    let v = verifier(&idp, Duration::from_secs(30));
    let good = idp.key.sign(&claims(&idp)).expect("sign");
    let ok = v.verify(&good).await.expect("valid token");
    assert_eq!(ok.claims.sub, "alice");

    let mut c = claims(&idp);
    c["exp"] = json!(now_epoch() - 120);
    assert_eq!(
        reason(v.verify(&idp.key.sign(&c).expect("s")).await),
        FailureReason::Expired
    );

    let mut c = claims(&idp);
    c["exp"] = json!(now_epoch() - 10); // within the 30 s leeway
    assert!(v.verify(&idp.key.sign(&c).expect("s")).await.is_ok());

    let mut c = claims(&idp);
    c["nbf"] = json!(now_epoch() + 600);
    assert_eq!(
        reason(v.verify(&idp.key.sign(&c).expect("s")).await),
        FailureReason::NotYetValid
    );

    let mut c = claims(&idp);
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        reason(v.verify(&idp.key.sign(&c).expect("s")).await),
        FailureReason::WrongIssuer
    );

    let mut c = claims(&idp);
    c["aud"] = json!("another-api");
    assert_eq!(
        reason(v.verify(&idp.key.sign(&c).expect("s")).await),
        FailureReason::WrongAudience
    );

    let mut c = claims(&idp);
    c.as_object_mut().expect("obj").remove("sub");
    assert_eq!(
        reason(v.verify(&idp.key.sign(&c).expect("s")).await),
        FailureReason::MissingClaim
    );

    // Tampered payload: same header and signature, different claims.
    let parts: Vec<&str> = good.expose_secret().split('.').collect();
    let mut evil = claims(&idp);
    evil["sub"] = json!("mallory");
    let tampered = SecretString::from(format!("{}.{}.{}", parts[0], b64(&evil), parts[2]));
    assert_eq!(
        reason(v.verify(&tampered).await),
        FailureReason::BadSignature
    );

    // alg none.
    let none = SecretString::from(format!(
        "{}.{}.",
        b64(&json!({"alg":"none","kid":"k1"})),
        parts[1]
    ));
    assert_eq!(reason(v.verify(&none).await), FailureReason::DisallowedAlg);

    // HS256 "signed" with the public key (RS→HS confusion).
    let hs = SecretString::from(format!(
        "{}.{}.{}",
        b64(&json!({"alg":"HS256","kid":"k1"})),
        parts[1],
        parts[2]
    ));
    assert_eq!(reason(v.verify(&hs).await), FailureReason::DisallowedAlg);

    // No kid.
    let nokid = idp.key.sign_with_kid(&claims(&idp), None).expect("s");
    assert_eq!(reason(v.verify(&nokid).await), FailureReason::Malformed);

    // Garbage and empty.
    assert_eq!(
        reason(v.verify(&SecretString::from("not-a-jwt")).await),
        FailureReason::Malformed
    );
    assert_eq!(
        reason(v.verify(&SecretString::from("a.b.c")).await),
        FailureReason::Malformed
    );
    assert_eq!(
        reason(v.verify(&SecretString::from("")).await),
        FailureReason::MissingToken
    );

    // Errors never carry the token.
    let err = v.verify(&tampered).await.expect_err("rejected");
    assert!(!err.to_string().contains(parts[2]));
}

#[tokio::test]
async fn es256_token_is_refused_by_an_rs256_pinned_issuer() {
    let idp = start_idp().await;
    let v = verifier(&idp, Duration::from_secs(30));
    let parts_claims = b64(&claims(&idp));
    let es = SecretString::from(format!(
        "{}.{}.c2ln",
        b64(&json!({"alg":"ES256","kid":"k1"})),
        parts_claims
    ));
    assert_eq!(reason(v.verify(&es).await), FailureReason::DisallowedAlg);
}

/// An ES256 key pair: its JWK (kid `e1`) and a signer of compact JWS.
fn es256_key() -> (
    serde_json::Value,
    impl Fn(&serde_json::Value, &serde_json::Value) -> String,
) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("gen");
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("pair");
    let point = pair.public_key().as_ref().to_vec();
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "e1", "use": "sig",
        "x": enc(&point[1..33]), "y": enc(&point[33..65])});
    let sign = move |header: &serde_json::Value, claims: &serde_json::Value| {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = pair.sign(&rng, input.as_bytes()).expect("sign");
        format!("{input}.{}", enc(sig.as_ref()))
    };
    (jwk, sign)
}

#[tokio::test]
async fn es256_tokens_verify_with_their_jwk_and_every_check_still_applies() {
    let (jwk, sign) = es256_key();
    let idp = start_idp_with(vec![jwk]).await;
    let mut cfg = JwksConfig::new(format!("{}/.well-known/openid-configuration", idp.base));
    cfg.min_refetch_interval = Duration::from_secs(30);
    let mut policy = IssuerPolicy::new(idp.base.clone(), vec!["target-api".into()]);
    policy.algorithms = vec![
        jsonwebtoken::Algorithm::ES256,
        jsonwebtoken::Algorithm::RS256,
    ];
    let v = Verifier::new(policy, JwksCache::new(cfg).expect("cache"));
    let es = json!({"alg": "ES256", "kid": "e1", "typ": "JWT"});
    let mut c = claims(&idp);
    c["aud"] = json!(["other-api", "target-api"]);
    let ok = v
        .verify(&SecretString::from(sign(&es, &c)))
        .await
        .expect("ES256 token with an accepted audience in a list");
    assert_eq!(ok.alg, "ES256");
    assert_eq!(ok.kid, "e1");

    // Payload swapped under a valid ES256 signature.
    let good = sign(&es, &claims(&idp));
    let parts: Vec<&str> = good.split('.').collect();
    let mut evil = claims(&idp);
    evil["sub"] = json!("mallory");
    let tampered = format!("{}.{}.{}", parts[0], b64(&evil), parts[2]);
    assert_eq!(
        reason(v.verify(&SecretString::from(tampered)).await),
        FailureReason::BadSignature
    );
    // ES256 header naming the RSA key, and RS256 header naming the EC key.
    let wrong_key = sign(&json!({"alg": "ES256", "kid": "k1"}), &claims(&idp));
    assert_eq!(
        reason(v.verify(&SecretString::from(wrong_key)).await),
        FailureReason::DisallowedAlg
    );
    let wrong_key = idp
        .key
        .sign_with_kid(&claims(&idp), Some("e1"))
        .expect("sign");
    assert_eq!(
        reason(v.verify(&wrong_key).await),
        FailureReason::DisallowedAlg
    );
    // Critical header extensions are refused.
    let crit = sign(
        &json!({"alg": "ES256", "kid": "e1", "crit": ["exp"], "exp": 1}),
        &claims(&idp),
    );
    assert_eq!(
        reason(v.verify(&SecretString::from(crit)).await),
        FailureReason::Malformed
    );
    // Each registered claim is required, `null` counts as absent.
    for claim in ["exp", "iss", "aud"] {
        let mut c = claims(&idp);
        c[claim] = serde_json::Value::Null;
        assert_eq!(
            reason(v.verify(&SecretString::from(sign(&es, &c))).await),
            FailureReason::MissingClaim,
            "{claim}"
        );
    }
    // A signature of the wrong length or encoding.
    let short = format!("{}.{}.c2ln", parts[0], parts[1]);
    assert_eq!(
        reason(v.verify(&SecretString::from(short)).await),
        FailureReason::BadSignature
    );
    let not_b64 = format!("{}.{}.***", parts[0], parts[1]);
    assert_eq!(
        reason(v.verify(&SecretString::from(not_b64)).await),
        FailureReason::Malformed
    );
}

#[tokio::test]
async fn keeps_serving_known_keys_while_the_idp_is_down() {
    let idp = start_idp().await;
    let v = verifier(&idp, Duration::from_millis(0));
    let good = idp.key.sign(&claims(&idp)).expect("sign");
    v.verify(&good).await.expect("first verify fetches keys");
    idp.up.store(false, Ordering::SeqCst);
    // An unknown kid forces a refetch, which fails: known keys must survive it.
    let other = idp
        .key
        .sign_with_kid(&claims(&idp), Some("rotated-away"))
        .expect("s");
    let e = v
        .verify(&other)
        .await
        .expect_err("unknown kid while IdP down");
    assert_eq!(e.reason, FailureReason::UpstreamUnavailable);
    v.verify(&good)
        .await
        .expect("known key still accepted while IdP is down");
    assert_eq!(v.jwks().key_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_fetches_at_most_once_per_interval() {
    let idp = start_idp().await;
    let v = Arc::new(verifier(&idp, Duration::from_secs(30)));
    let good = idp.key.sign(&claims(&idp)).expect("sign");
    v.verify(&good).await.expect("valid");
    assert_eq!(v.jwks().fetch_count(), 1);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let v = v.clone();
        let t = idp
            .key
            .sign_with_kid(&claims(&idp), Some(&format!("bogus-{}", i % 50)))
            .expect("s");
        tasks.push(tokio::spawn(async move {
            v.verify(&t).await.map(|_| ()).map_err(|e| e.reason)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), Err(FailureReason::UnknownKid));
    }
    // The first unknown kid may refetch once (the interval since the start-up fetch has not
    // passed, so in fact none may); never one per request.
    assert!(
        v.jwks().fetch_count() <= 2,
        "fetches: {}",
        v.jwks().fetch_count()
    );
}

#[tokio::test]
async fn a_remembered_verification_still_expires() {
    let idp = start_idp().await;
    let jwks = JwksCache::new(JwksConfig::new(format!(
        "{}/.well-known/openid-configuration",
        idp.base
    )))
    .expect("cache");
    let mut policy = IssuerPolicy::new(idp.base.clone(), vec!["target-api".into()]);
    policy.leeway_s = 0;
    let v = Verifier::new(policy, jwks);
    let mut c = claims(&idp);
    c["exp"] = json!(now_epoch() + 1);
    let t = idp.key.sign(&c).expect("sign");
    v.verify(&t).await.expect("valid now");
    v.verify(&t).await.expect("remembered");
    let fetches = v.jwks().fetch_count();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reason(v.verify(&t).await),
        FailureReason::Expired,
        "exp is checked on every use"
    );
    assert_eq!(v.jwks().fetch_count(), fetches);
}
