//! The token broker's own tests, run against two AWS sides with the same code: the local
//! stand-ins (STS stand-in, secrets file) and moto (real `aws-sdk-sts` and
//! `aws-sdk-secretsmanager` clients against the emulator). The broker runs in this process on a
//! free port; the caller is the interceptor's real broker client (AssumeRole, caller proof).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use auth::iam::{self, AwsCredentials, ProofPolicy};
use broker::secrets::{FileSecrets, SecretStore, SecretsManager};
use broker::{Broker, BrokerSettings};
use interceptor::broker_client::{BrokerClient, BrokerSettings as ClientSettings};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use telemetry::{FailureReason, Hop, TraceContext};

/// The role the caller assumes (allowed by [`policy`]).
pub const CALLER_ROLE: &str = "arn:aws:iam::222222222222:role/tokentrail-broker-caller";
const EXTERNAL_ID: &str = "suite-external-id";
pub const BROKER_ID: &str = "suite-broker";

/// Which AWS the suite runs against.
pub struct BrokerEnv {
    /// `stand-in` or `moto`.
    pub label: &'static str,
    /// IdP issuer (in-process local IdP).
    pub idp: String,
    /// STS endpoint.
    pub sts: String,
    /// The caller's base credentials.
    pub base: AwsCredentials,
    /// The secret id holding the service client credentials.
    pub secret_id: String,
    /// Whether this STS checks signatures (moto does not).
    pub checks_signatures: bool,
    secrets: Arc<dyn SecretStore>,
    _dir: Option<std::path::PathBuf>,
}

/// The policy: `role` may receive `orders-api`, stored under `secret_id`.
pub fn policy(role: &str, secret_id: &str) -> broker::policy::Policy {
    broker::policy::Policy::from_toml(&format!(
        "[credentials.orders-api]\nsecret = \"{secret_id}\"\nscope = \"orders:read\"\n\n[[allow]]\nrole = \"{role}\"\ncredentials = [\"orders-api\"]\n"
    ))
    .expect("policy")
}

fn client_secret_json() -> String {
    json!({"client_id": "orders-service", "client_secret": "orders-service-secret"}).to_string()
}

async fn idp() -> String {
    let cfg = local::idp::IdpConfig::default_config().expect("idp config");
    let (issuer, _task) = local::idp::spawn(cfg).await.expect("idp");
    issuer
}

impl BrokerEnv {
    /// Local stand-ins: STS stand-in with one base identity trusted by [`CALLER_ROLE`], a
    /// secrets file.
    pub async fn stand_in() -> Self {
        let base = AwsCredentials {
            access_key_id: "ASIASUITEBASE0000001".into(),
            secret_access_key: SecretString::from(
                "suite-base-secret-0000000000000000000000".to_owned(),
            ),
            session_token: Some(SecretString::from("suite-base-token".to_owned())),
            expires_at: None,
        };
        let sts = local::sts::Sts::new(local::sts::StsConfig {
            identities: vec![local::sts::BaseIdentity {
                arn: "arn:aws:sts::111111111111:assumed-role/interceptor-exec/fn".into(),
                access_key_id: base.access_key_id.clone(),
                secret_access_key: base.secret_access_key.clone(),
                session_token: base.session_token.clone(),
            }],
            roles: vec![local::sts::RoleDef {
                arn: CALLER_ROLE.into(),
                trusted: vec!["arn:aws:iam::111111111111:role/interceptor-exec".into()],
                external_id: Some(EXTERNAL_ID.into()),
                max_session_s: 3600,
            }],
        });
        let (addr, _task) = local::serve(local::sts::router(sts), ([127, 0, 0, 1], 0).into())
            .await
            .expect("sts");
        let dir = crate::tempdir("broker-secrets");
        let file = dir.join("secrets.json");
        let secret_id = "tokentrail/orders-api/client".to_owned();
        std::fs::write(
            &file,
            json!({ secret_id.clone(): serde_json::from_str::<Value>(&client_secret_json()).expect("json") })
                .to_string(),
        )
        .expect("secrets file");
        Self {
            label: "stand-in",
            idp: idp().await,
            sts: format!("http://{addr}"),
            base,
            secret_id,
            checks_signatures: true,
            secrets: Arc::new(FileSecrets::new(file)),
            _dir: Some(dir),
        }
    }

    /// moto at `endpoint`: the secret is created with the real Secrets Manager client under a
    /// name unique to this run.
    pub async fn moto(endpoint: &str) -> Self {
        let config = crate::moto_config(endpoint).await;
        let secret_id = format!(
            "tokentrail/orders-api/client-{}-{}",
            std::process::id(),
            iam::now_epoch()
        );
        aws_sdk_secretsmanager::Client::new(&config)
            .create_secret()
            .name(&secret_id)
            .secret_string(client_secret_json())
            .send()
            .await
            .expect("moto creates the secret");
        Self {
            label: "moto",
            idp: idp().await,
            sts: endpoint.to_owned(),
            base: AwsCredentials {
                access_key_id: "testing".into(),
                secret_access_key: SecretString::from("testing".to_owned()),
                session_token: None,
                expires_at: None,
            },
            secret_id,
            checks_signatures: false,
            secrets: Arc::new(SecretsManager::new(&config)),
            _dir: None,
        }
    }

    /// A broker allowing `role` to receive the credential stored under `secret_id`.
    pub fn broker(&self, role: &str, secret_id: &str, delay: Duration) -> Arc<Broker> {
        let settings = BrokerSettings {
            proof: ProofPolicy {
                sts_endpoint: self.sts.clone(),
                broker_id: BROKER_ID.into(),
                max_age: Duration::from_secs(60),
                max_skew: Duration::from_secs(30),
            },
            policy: policy(role, secret_id),
            token_endpoint: format!("{}/token", self.idp),
            upstream_timeout: Duration::from_secs(5),
            secret_ttl: Duration::from_secs(300),
            fault_delay: delay,
        };
        Arc::new(Broker::new(settings, self.secrets.clone()).expect("broker"))
    }

    /// Serve `broker` on a free port; its base URL.
    pub async fn serve(&self, broker: Arc<Broker>) -> String {
        let (addr, _task) = local::serve(broker::front::router(broker), ([127, 0, 0, 1], 0).into())
            .await
            .expect("broker serves");
        format!("http://{addr}")
    }

    /// The interceptor's broker client for `broker_url`.
    pub async fn client(&self, broker_url: &str, timeout: Duration) -> BrokerClient {
        BrokerClient::with_base_credentials(
            ClientSettings {
                broker_url: broker_url.to_owned(),
                broker_id: BROKER_ID.into(),
                credential: None,
                role_arn: CALLER_ROLE.into(),
                external_id: Some(EXTERNAL_ID.into()),
                session_name: "suite".into(),
                session_duration: Duration::from_secs(3600),
                sts_endpoint: self.sts.clone(),
                region: "us-east-1".into(),
                timeout,
                sign_service: None,
            },
            Some(self.base.clone()),
        )
        .await
        .expect("client")
    }
}

async fn post_token(url: &str, proof: &iam::CallerProof) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/token"))
        .json(&json!({ "caller_proof": proof.to_json() }))
        .send()
        .await
        .expect("broker answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn reason(body: &Value) -> Option<FailureReason> {
    auth::Rejection::from_json(body).map(|r| r.reason)
}

/// Run every broker test against `env`.
pub async fn run_suite(env: &BrokerEnv) {
    let label = env.label;
    let root = TraceContext::none();

    // Happy path: the interceptor's client gets a service token for the service audience.
    let b = env.broker(CALLER_ROLE, &env.secret_id, Duration::ZERO);
    let url = env.serve(b.clone()).await;
    let client = env.client(&url, Duration::from_secs(5)).await;
    let token = client
        .service_token(&root)
        .await
        .unwrap_or_else(|f| panic!("[{label}] no service token: {f:?}"))
        .token;
    let claims = auth::verify::decode_unverified(&token).expect("service token is a JWT");
    assert_eq!(
        claims.audience,
        vec!["target-api-service".to_owned()],
        "[{label}]"
    );
    assert_eq!(
        claims.subject.as_deref(),
        Some("orders-service"),
        "[{label}]"
    );

    // Burst of 200 concurrent requests on a cold broker: one secret read, one exchange.
    let cold = env.broker(CALLER_ROLE, &env.secret_id, Duration::ZERO);
    let cold_url = env.serve(cold.clone()).await;
    let creds = client.credentials(&root).await.expect("credentials");
    let proof =
        iam::sign_get_caller_identity(&creds, &env.sts, "us-east-1", BROKER_ID, SystemTime::now())
            .expect("proof");
    let answers = futures::future::join_all((0..200).map(|_| post_token(&cold_url, &proof))).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        ok,
        200,
        "[{label}] every burst request gets a token: {:?}",
        answers.iter().find(|(s, _)| *s != 200)
    );
    let tokens: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter_map(|(_, b)| b["access_token"].as_str())
        .collect();
    assert_eq!(tokens.len(), 1, "[{label}] the burst shares one token");
    assert_eq!(
        cold.stats.secret_reads.load(Ordering::SeqCst),
        1,
        "[{label}] one secret read"
    );
    assert_eq!(
        cold.stats.exchanges.load(Ordering::SeqCst),
        1,
        "[{label}] one exchange"
    );
    assert_eq!(
        cold.stats.sts_calls.load(Ordering::SeqCst),
        200,
        "[{label}] every proof is checked"
    );

    // Caller role not in the policy: denied at the broker, nothing read.
    let strict = env.broker(
        "arn:aws:iam::222222222222:role/someone-else",
        &env.secret_id,
        Duration::ZERO,
    );
    let strict_url = env.serve(strict.clone()).await;
    let f = env
        .client(&strict_url, Duration::from_secs(5))
        .await
        .service_token(&root)
        .await
        .err()
        .expect("denied");
    assert_eq!(
        (f.hop, f.reason),
        (Hop::Broker, FailureReason::CallerNotAllowed),
        "[{label}] {f:?}"
    );
    assert_eq!(
        strict.stats.secret_reads.load(Ordering::SeqCst),
        0,
        "[{label}]"
    );

    // The secret does not exist.
    let missing = env.broker(CALLER_ROLE, "tokentrail/does-not-exist", Duration::ZERO);
    let missing_url = env.serve(missing).await;
    let f = env
        .client(&missing_url, Duration::from_secs(5))
        .await
        .service_token(&root)
        .await
        .err()
        .expect("no secret");
    assert_eq!(
        (f.hop, f.reason),
        (Hop::Broker, FailureReason::SecretUnavailable),
        "[{label}] {f:?}"
    );

    // Broker down: the interceptor's client fails closed within its timeout.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let down_url = format!("http://{}", l.local_addr().expect("addr"));
    drop(l);
    let started = Instant::now();
    let f = env
        .client(&down_url, Duration::from_millis(500))
        .await
        .service_token(&root)
        .await
        .err()
        .expect("down");
    assert_eq!(
        (f.hop, f.reason),
        (Hop::Interceptor, FailureReason::UpstreamUnavailable),
        "[{label}] {f:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "[{label}] bounded"
    );

    // Broker slower than the interceptor's timeout.
    let slow = env.broker(CALLER_ROLE, &env.secret_id, Duration::from_millis(1500));
    let slow_url = env.serve(slow).await;
    let f = env
        .client(&slow_url, Duration::from_millis(300))
        .await
        .service_token(&root)
        .await
        .err()
        .expect("timeout");
    assert_eq!(
        (f.hop, f.reason),
        (Hop::Interceptor, FailureReason::UpstreamTimeout),
        "[{label}] {f:?}"
    );

    // A proof aimed at another host, and a replayed stale proof: refused before any STS call.
    let calls = b.stats.sts_calls.load(Ordering::SeqCst);
    let elsewhere = iam::sign_get_caller_identity(
        &creds,
        "https://sts.evil.example",
        "us-east-1",
        BROKER_ID,
        SystemTime::now(),
    )
    .expect("proof");
    let (status, body) = post_token(&url, &elsewhere).await;
    assert_eq!(
        (status, reason(&body)),
        (400, Some(FailureReason::InvalidRequest)),
        "[{label}] {body}"
    );
    let stale = iam::sign_get_caller_identity(
        &creds,
        &env.sts,
        "us-east-1",
        BROKER_ID,
        SystemTime::now() - Duration::from_secs(120),
    )
    .expect("proof");
    let (status, body) = post_token(&url, &stale).await;
    assert_eq!(
        (status, reason(&body)),
        (401, Some(FailureReason::Expired)),
        "[{label}] {body}"
    );
    let other_broker = iam::sign_get_caller_identity(
        &creds,
        &env.sts,
        "us-east-1",
        "another-broker",
        SystemTime::now(),
    )
    .expect("proof");
    assert_eq!(
        b.stats.sts_calls.load(Ordering::SeqCst),
        calls,
        "[{label}] no STS call for refused proofs"
    );
    let garbage = reqwest::Client::new()
        .post(format!("{url}/token"))
        .body("{not json")
        .send()
        .await
        .expect("answers");
    assert_eq!(garbage.status().as_u16(), 400, "[{label}]");

    // Signature checks are STS's: only an STS that checks them can prove these.
    if env.checks_signatures {
        let (status, body) = post_token(&url, &other_broker).await;
        assert_eq!(
            (status, reason(&body)),
            (401, Some(FailureReason::BadSignature)),
            "[{label}] {body}"
        );
        let forged = AwsCredentials {
            secret_access_key: SecretString::from("forged".to_owned()),
            ..creds.clone()
        };
        let proof = iam::sign_get_caller_identity(
            &forged,
            &env.sts,
            "us-east-1",
            BROKER_ID,
            SystemTime::now(),
        )
        .expect("proof");
        let (status, body) = post_token(&url, &proof).await;
        assert_eq!(
            (status, reason(&body)),
            (401, Some(FailureReason::BadSignature)),
            "[{label}] {body}"
        );
    }
    // Nothing secret in the refusals.
    let (_, body) = post_token(&url, &elsewhere).await;
    let text = body.to_string();
    assert!(
        !text.contains(creds.secret_access_key.expose_secret()),
        "[{label}]"
    );
    assert!(!text.contains("Signature="), "[{label}]");
}
