//! The broker tests against moto: the real `aws-sdk-sts` (AssumeRole) and
//! `aws-sdk-secretsmanager` (GetSecretValue) clients, and the broker's own STS call, against the
//! AWS emulator that `scripts/test.sh` starts (`TOKENTRAIL_MOTO_ENDPOINT`). moto enforces no trust
//! policy and checks no signature: the broker's own checks are what these tests prove.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_suite_against_moto() {
    let Some(endpoint) = std::env::var("TOKENTRAIL_MOTO_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            std::env::var("TOKENTRAIL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "TOKENTRAIL_MOTO_ENDPOINT is not set (scripts/test.sh starts moto)"
        );
        eprintln!("skipped: TOKENTRAIL_MOTO_ENDPOINT is not set (scripts/test.sh starts moto)");
        return;
    };
    let env = support::broker_env::BrokerEnv::moto(&endpoint).await;
    support::broker_env::run_suite(&env).await;
}
