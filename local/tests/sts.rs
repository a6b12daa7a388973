//! The STS stand-in against the real `aws-sdk-sts` client and real signed caller proofs.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use auth::iam::{self, AwsCredentials};
use secrecy::{ExposeSecret, SecretString};

const CONFIG: &str = r#"
[[identities]]
arn = "arn:aws:sts::111111111111:assumed-role/interceptor-exec/fn"
access_key_id = "ASIABASEIDENTITY0001"
secret_access_key = "base-secret-access-key-for-tests-0000000"
session_token = "base-session-token"

[[identities]]
arn = "arn:aws:iam::111111111111:user/stranger"
access_key_id = "AKIASTRANGER00000001"
secret_access_key = "stranger-secret-access-key-000000000000"

[[roles]]
arn = "arn:aws:iam::222222222222:role/broker-caller"
trusted = ["arn:aws:iam::111111111111:role/interceptor-exec"]
external_id = "ext-123"
max_session_s = 43200
"#;

async fn start() -> String {
    let sts = local::sts::Sts::from_toml(CONFIG).unwrap();
    let (addr, _task) = local::serve(local::sts::router(sts), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    format!("http://{addr}")
}

fn client(endpoint: &str, key: &str, secret: &str, token: Option<&str>) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .http_client(telemetry::aws_http::client())
        .region(aws_sdk_sts::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sts::config::Credentials::new(
            key,
            secret,
            token.map(str::to_owned),
            None,
            "test",
        ))
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

fn base(endpoint: &str) -> aws_sdk_sts::Client {
    client(
        endpoint,
        "ASIABASEIDENTITY0001",
        "base-secret-access-key-for-tests-0000000",
        Some("base-session-token"),
    )
}

use aws_sdk_sts::error::ProvideErrorMetadata;

fn code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("?").to_owned()
}

async fn execute(proof: &iam::CallerProof, broker_id: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .get(&proof.url)
        .header(iam::BROKER_ID_HEADER, broker_id);
    for (k, v) in &proof.headers {
        req = req.header(k.as_str(), v.expose_secret());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn sign(creds: &AwsCredentials, endpoint: &str, at: SystemTime) -> iam::CallerProof {
    iam::sign_get_caller_identity(creds, endpoint, "us-east-1", "b1", at).unwrap()
}

#[tokio::test]
async fn assume_role_then_prove_identity_with_a_presign() {
    let endpoint = start().await;
    let sts = base(&endpoint);
    let who = sts.get_caller_identity().send().await.unwrap();
    assert_eq!(
        who.arn(),
        Some("arn:aws:sts::111111111111:assumed-role/interceptor-exec/fn")
    );
    let out = sts
        .assume_role()
        .role_arn("arn:aws:iam::222222222222:role/broker-caller")
        .role_session_name("tokentrail-interceptor")
        .external_id("ext-123")
        .duration_seconds(3600)
        .send()
        .await
        .unwrap();
    let c = out.credentials().unwrap();
    let expires = c.expiration().secs();
    assert!((expires - iam::now_epoch() - 3600).abs() < 5);
    let creds = AwsCredentials {
        access_key_id: c.access_key_id().to_owned(),
        secret_access_key: SecretString::from(c.secret_access_key().to_owned()),
        session_token: Some(SecretString::from(c.session_token().to_owned())),
        expires_at: None,
    };
    // The SDK with the issued credentials.
    let assumed = client(
        &endpoint,
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token()),
    );
    assert_eq!(
        assumed.get_caller_identity().send().await.unwrap().arn(),
        Some("arn:aws:sts::222222222222:assumed-role/broker-caller/tokentrail-interceptor")
    );
    // A caller proof, sent as the broker does.
    let proof = sign(&creds, &endpoint, SystemTime::now());
    let (status, body) = execute(&proof, "b1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("assumed-role/broker-caller/tokentrail-interceptor"));
    // Sent with another broker id: the signature breaks.
    let (status, body) = execute(&proof, "b2").await;
    assert_eq!(status, 403);
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // A signed header changed after signing.
    let mut tampered = sign(&creds, &endpoint, SystemTime::now());
    let later = iam::epoch_to_amz_date(iam::now_epoch() + 1);
    for (k, v) in tampered.headers.iter_mut() {
        if k == "x-amz-date" {
            *v = SecretString::from(later.clone());
        }
    }
    let (status, body) = execute(&tampered, "b1").await;
    assert_eq!(status, 403);
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    // Signed more than 15 minutes ago.
    let old = sign(
        &creds,
        &endpoint,
        SystemTime::now() - Duration::from_secs(1200),
    );
    let (status, body) = execute(&old, "b1").await;
    assert_eq!(status, 403);
    assert!(body.contains("Signature expired"), "{body}");
    // Signed with a wrong secret.
    let forged = AwsCredentials {
        secret_access_key: SecretString::from("not-the-secret".to_owned()),
        ..creds.clone()
    };
    let (status, _) = execute(&sign(&forged, &endpoint, SystemTime::now()), "b1").await;
    assert_eq!(status, 403);
    // Without the session token.
    let no_token = AwsCredentials {
        session_token: None,
        ..creds
    };
    let (status, body) = execute(&sign(&no_token, &endpoint, SystemTime::now()), "b1").await;
    assert_eq!(status, 403);
    assert!(body.contains("InvalidClientTokenId"), "{body}");
}

#[tokio::test]
async fn assume_role_enforces_trust_external_id_and_chaining() {
    let endpoint = start().await;
    let sts = base(&endpoint);
    let role = "arn:aws:iam::222222222222:role/broker-caller";
    let e = sts
        .assume_role()
        .role_arn(role)
        .role_session_name("s1")
        .external_id("wrong")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "AccessDenied");
    let e = sts
        .assume_role()
        .role_arn(role)
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "AccessDenied", "the ExternalId is required");
    let e = sts
        .assume_role()
        .role_arn(role)
        .role_session_name("s1")
        .external_id("ext-123")
        .duration_seconds(7200)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "ValidationError");
    assert!(e.message().unwrap_or("").contains("role chaining"));
    let e = sts
        .assume_role()
        .role_arn("arn:aws:iam::222222222222:role/does-not-exist")
        .role_session_name("s1")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "AccessDenied");
    let stranger = client(
        &endpoint,
        "AKIASTRANGER00000001",
        "stranger-secret-access-key-000000000000",
        None,
    );
    let e = stranger
        .assume_role()
        .role_arn(role)
        .role_session_name("s1")
        .external_id("ext-123")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "AccessDenied", "not trusted");
    let wrong_secret = client(&endpoint, "AKIASTRANGER00000001", "nope", None);
    let e = wrong_secret
        .get_caller_identity()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    let unknown = client(&endpoint, "AKIAUNKNOWN000000000", "nope", None);
    let e = unknown
        .get_caller_identity()
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(code(&e), "InvalidClientTokenId");
}
