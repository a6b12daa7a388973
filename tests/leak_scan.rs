//! No secret leaves a process: after real traffic through every hop, no file of the output
//! directory (span store, every hop's log), no stdout/stderr byte contains any token the test
//! issued, nor anything JWT-shaped.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use secrecy::ExposeSecret;
use tokentrail::app::App;
use tokentrail::demo::script;

fn assert_clean(what: &str, text: &str, tokens: &[String]) {
    for t in tokens {
        assert!(
            !text.contains(t.as_str()),
            "{what} contains an issued token"
        );
        let sig = t.rsplit('.').next().unwrap_or_default();
        if sig.len() > 16 {
            assert!(!text.contains(sig), "{what} contains a token signature");
        }
    }
    let jwts = telemetry::redact::find_jwts(text);
    assert!(
        jwts.is_empty(),
        "{what} contains JWT-shaped strings ({} found)",
        jwts.len()
    );
    assert!(
        !text.contains("agent-secret"),
        "{what} contains the agent's client secret"
    );
    assert!(
        !text.contains(tokentrail::stack::aws_names::SERVICE_CLIENT_SECRET),
        "{what} contains the broker's service client secret"
    );
    assert!(
        !text.contains("X-Amz-Signature") && !text.contains("AWS4-HMAC-SHA256 Credential"),
        "{what} contains a SigV4 signature"
    );
    assert!(
        !text.to_ascii_lowercase().contains("bearer ey"),
        "{what} contains a bearer credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_issued_token_reaches_any_output() {
    let out = support::tempdir("leak");
    let stack = support::start_stack(&out, None).await;
    let telemetry = tokentrail::stack::init_app_telemetry(&stack.endpoints).expect("app telemetry");
    let app = App::new(stack.endpoints.clone()).expect("app");
    let mut tokens = Vec::new();
    for round in 0..2 {
        for case in script() {
            let r = app.call(&case.spec).await.expect("request runs");
            assert_eq!(r.outcome, case.expect, "round {round}");
            if let Some(t) = &r.token {
                tokens.push(t.expose_secret().to_owned());
            }
        }
    }
    // The agent's own M2M token, issued to the test the same way the agent gets it.
    let m2m = local::idp::request_token(
        &stack.endpoints.idp,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "tokentrail-agent"),
            ("client_secret", "agent-secret"),
        ],
    )
    .await
    .expect("m2m token");
    tokens.push(m2m.expose_secret().to_owned());
    assert!(tokens.len() >= 18);
    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await.expect("stop");

    let files = support::files(&out);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("traces.jsonl")),
        "span store written"
    );
    assert!(
        files
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "log"))
            .count()
            >= 7,
        "every hop logged"
    );
    for (path, bytes) in &files {
        assert_clean(
            &path.display().to_string(),
            &String::from_utf8_lossy(bytes),
            &tokens,
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn demo_output_and_files_hold_no_token() {
    let out = support::tempdir("leak-demo");
    let output = tokio::process::Command::new(support::bin())
        .args(["demo", "--requests", "10", "--out"])
        .arg(&out)
        .output()
        .await
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("every request ended where it should"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== passthrough ==") && stdout.contains("== broker =="),
        "the demo runs both patterns by default:\n{stdout}"
    );
    assert_clean("demo stdout", &stdout, &[]);
    assert_clean("demo stderr", &stderr, &[]);
    for (path, bytes) in support::files(&out) {
        assert_clean(
            &path.display().to_string(),
            &String::from_utf8_lossy(&bytes),
            &[],
        );
    }

    // The audit over the same store: who reached the target for every request, no violation.
    let audit = |format: &str| {
        std::process::Command::new(support::bin())
            .args(["audit", "--format", format, "--store"])
            .arg(&out)
            .output()
            .expect("audit runs")
    };
    let report = audit("json");
    assert!(
        report.status.success(),
        "audit found a violation:\n{}",
        String::from_utf8_lossy(&report.stdout)
    );
    let records: Vec<serde_json::Value> = serde_json::from_slice(&report.stdout).expect("json");
    assert_eq!(records.len(), 20, "10 requests per pattern");
    for r in &records {
        let pattern = r["pattern"].as_str().unwrap();
        match r["verdict"].as_str().unwrap() {
            "ok" => {
                let reached = &r["reached"];
                if pattern == "broker" {
                    assert_eq!(reached["kind"], "service_token");
                    assert_eq!(reached["subject"], "orders-service");
                } else {
                    assert_eq!(reached["kind"], "user_jwt");
                    assert_eq!(reached["fingerprint"], r["entered"]["fingerprint"]);
                }
            }
            "rejected" => assert!(r["hop"].is_string() && r["reason"].is_string()),
            other => panic!("unexpected verdict {other}: {r}"),
        }
    }
    // A JWT-shaped value planted in the store is a violation, and the audit exits 1.
    let store = out.join("traces.jsonl");
    let text = std::fs::read_to_string(&store).unwrap();
    let planted = format!(
        "{}.{}.{}",
        "eyJhbGciOiJSUzI1NiJ9", "eyJzdWIiOiJhbGljZSJ9", "cGxhbnRlZHNpZ25hdHVyZQ"
    );
    assert!(text.contains("\"orders-service\""));
    // One occurrence, wherever it is (the store's line order varies): the audit reads every
    // stored value, repeated attribute keys included.
    let text = text.replacen("\"orders-service\"", &format!("\"{planted}\""), 1);
    std::fs::write(&store, text).unwrap();
    let report = audit("table");
    assert_eq!(report.status.code(), Some(1));
    let table = String::from_utf8_lossy(&report.stdout);
    assert!(
        table.contains("VIOLATION") && table.contains("JWT-shaped value"),
        "{table}"
    );
    assert!(
        !table.contains(&planted),
        "the report does not repeat the value"
    );
    let _ = std::fs::remove_dir_all(&out);
}
