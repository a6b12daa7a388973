//! The broker pattern: the broker's own tests against the local stand-ins, and the whole chain
//! across real processes with a recording proxy in front of the target, so the test asserts on
//! what the target actually received.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use secrecy::ExposeSecret;
use telemetry::{FailureReason, Hop, Pattern, attrs};
use tokentrail::app::{App, Outcome};
use tokentrail::demo::script;
use tokentrail::stack::{BrokerFault, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_suite_against_the_stand_ins() {
    let env = support::broker_env::BrokerEnv::stand_in().await;
    support::broker_env::run_suite(&env).await;
}

async fn broker_stack(
    out: &std::path::Path,
    fault: Option<BrokerFault>,
) -> (Stack, support::Recorder) {
    let recorder = support::Recorder::default();
    let proxy = recorder.start().await;
    let mut opts = support::stack_options(out, None);
    opts.pattern = Pattern::Broker;
    opts.broker_fault = fault;
    opts.gateway_target_url = Some(proxy);
    let stack = Stack::start(&opts).await.expect("broker stack starts");
    recorder.forward_to(&stack.endpoints.target);
    (stack, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_chain_end_to_end() {
    let out = support::tempdir("broker");
    let (stack, recorder) = broker_stack(&out, None).await;
    let telemetry = tokentrail::stack::init_app_telemetry(&stack.endpoints).expect("app telemetry");
    let app = App::new(stack.endpoints.clone()).expect("app");
    let mut results = Vec::new();
    for case in script() {
        let r = app.call(&case.spec).await.expect("request runs");
        assert_eq!(
            r.outcome,
            case.expected(Pattern::Broker, None),
            "{:?} {:?}: {}",
            case.spec.user,
            case.spec.fault,
            r.message
        );
        results.push(r);
    }
    let secrets = stack.secrets_for_scan();
    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await.expect("stack stops");

    // What the target received: service tokens only, nothing of any user token.
    let seen = recorder.seen.lock().unwrap().clone();
    let reached = results.iter().filter(|r| r.outcome == Outcome::Ok).count();
    assert_eq!(
        seen.len(),
        reached,
        "one target request per request that reached it"
    );
    let user_tokens: Vec<String> = results
        .iter()
        .filter_map(|r| r.token.as_ref().map(|t| t.expose_secret().to_owned()))
        .collect();
    let user_fps: BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.token.as_ref().map(telemetry::fingerprint::fingerprint))
        .collect();
    let mut service_tokens = BTreeSet::new();
    for support::Seen {
        path,
        headers,
        body,
    } in &seen
    {
        let everything = format!(
            "{path}\n{}\n{}",
            headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(body)
        );
        for t in &user_tokens {
            assert!(
                !everything.contains(t.as_str()),
                "a user JWT reached the target"
            );
            let signature = t.rsplit('.').next().unwrap();
            assert!(
                !everything.contains(signature),
                "a user JWT's signature reached the target"
            );
        }
        for fp in &user_fps {
            assert!(
                !everything.contains(fp.as_str()),
                "a user fingerprint reached the target"
            );
        }
        assert!(
            !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("x-custom-usertoken")),
            "the user-token header reached the target"
        );
        let authz: Vec<&String> = headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(authz.len(), 1);
        let token = authz[0].strip_prefix("Bearer ").expect("bearer");
        let claims =
            auth::verify::decode_unverified(&secrecy::SecretString::from(token.to_owned()))
                .expect("a JWT");
        assert_eq!(claims.subject.as_deref(), Some("orders-service"));
        assert_eq!(claims.audience, vec!["target-api-service".to_owned()]);
        service_tokens.insert(token.to_owned());
    }
    assert!(!service_tokens.is_empty());

    // The traces.
    let traces = support::traces(&out);
    assert_eq!(
        support::repeated_attribute_keys(&out),
        Vec::<String>::new(),
        "spans recording an attribute twice"
    );
    for r in &results {
        let trace = traces.get(&r.trace_id).expect("trace stored");
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(
            trace.iter().filter(|s| s.parent_span_id.is_empty()).count(),
            1,
            "one root"
        );
        assert!(
            trace
                .iter()
                .all(|s| s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()))
        );
        for s in trace
            .iter()
            .filter(|s| s.attr_str(attrs::HOP_NAME).is_some())
        {
            assert_eq!(s.attr_str(attrs::PATTERN), Some("broker"), "{}", s.name);
        }
        if r.outcome != Outcome::Ok {
            continue;
        }
        let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        for svc in support::BROKER_SERVICES {
            assert!(
                services.contains(svc),
                "{svc} missing from {}: {services:?}",
                r.trace_id
            );
        }
        let names: BTreeSet<&str> = trace.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains("sts.GetCallerIdentity"), "{names:?}");
        let parent_service = |hop: &str| support::parent_service(trace, hop);
        assert_eq!(parent_service("broker.token"), "interceptor");
        assert_eq!(parent_service("target.api"), "gateway");
        let fp = |hop: &str| support::hop_fingerprint(trace, hop);
        let user_fp = telemetry::fingerprint::fingerprint(r.token.as_ref().unwrap());
        assert_eq!(
            fp("gateway.interceptor").as_ref(),
            Some(&user_fp),
            "interceptor records the user"
        );
        let interceptor = support::hop_span(trace, "gateway.interceptor").unwrap();
        assert_eq!(
            interceptor.attr_str(attrs::CREDENTIAL_SUBJECT),
            Some(r.user.as_str())
        );
        let target = support::hop_span(trace, "target.api").unwrap();
        assert_eq!(
            target.attr_str(attrs::CREDENTIAL_KIND),
            Some("service_token")
        );
        assert_eq!(target.attr_str(attrs::ENDUSER_ID), Some("orders-service"));
        assert_ne!(
            fp("target.api").as_ref(),
            Some(&user_fp),
            "the target saw a different credential"
        );
        let broker = support::hop_span(trace, "broker.token").unwrap();
        assert_eq!(
            broker.attr_str(attrs::BROKER_CALLER_ROLE),
            Some(tokentrail::stack::aws_names::BROKER_CALLER_ROLE)
        );
        assert_eq!(
            broker.attr_str(attrs::BROKER_SECRET_NAME),
            Some(tokentrail::stack::aws_names::SECRET_ID)
        );
        assert_eq!(
            broker.attr_str(attrs::BROKER_ISSUED_FINGERPRINT),
            fp("target.api").as_deref()
        );
    }
    // The first request of the run was the cold one: it read the secret and exchanged it.
    let first = traces.get(&results[0].trace_id).unwrap();
    let names: BTreeSet<&str> = first.iter().map(|s| s.name.as_str()).collect();
    for n in [
        "sts.AssumeRole",
        "secretsmanager.GetSecretValue",
        "idp.client_credentials",
    ] {
        assert!(
            names.contains(n),
            "{n} missing from the cold request: {names:?}"
        );
    }

    // Nothing secret in anything the run wrote: user tokens, service tokens, the service client
    // secret, the interceptor's AWS keys.
    let mut needles: Vec<String> = user_tokens;
    needles.extend(service_tokens);
    needles.extend(secrets);
    for (path, bytes) in support::files(&out) {
        let text = String::from_utf8_lossy(&bytes);
        for n in &needles {
            assert!(
                !text.contains(n.as_str()),
                "a secret leaked into {}",
                path.display()
            );
        }
        assert!(
            !telemetry::redact::contains_jwt(&text),
            "JWT-shaped text in {}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&out);

    a_caller_outside_the_policy_stops_at_the_broker_and_the_target_is_not_called().await;
}

/// A caller outside the policy stops at the broker and the target is not called. (Runs after
/// the main test in the same test: the app's telemetry is process-wide and bound to the first
/// stack, so this one asserts only on the hops' own spans.)
async fn a_caller_outside_the_policy_stops_at_the_broker_and_the_target_is_not_called() {
    let out = support::tempdir("broker-deny");
    let (stack, recorder) = broker_stack(&out, Some(BrokerFault::Deny)).await;
    let app = App::new(stack.endpoints.clone()).expect("app");
    let r = app.call(&script()[0].spec).await.expect("request runs");
    assert_eq!(
        r.outcome,
        Outcome::Rejected {
            hop: Hop::Broker,
            reason: FailureReason::CallerNotAllowed
        },
        "{}",
        r.message
    );
    assert_eq!(recorder.count(), 0, "the target was not called");
    stack.stop().await.expect("stack stops");
    let traces = support::traces(&out);
    let trace = traces.get(&r.trace_id).expect("trace stored");
    let broker = support::hop_span(trace, "broker.token").expect("broker span");
    assert_eq!(broker.attr_str(attrs::HOP_OUTCOME), Some("rejected"));
    assert_eq!(
        broker.attr_str(attrs::FAILURE_REASON),
        Some("caller_not_allowed")
    );
    assert!(trace.iter().all(|s| s.service != "target"));
    let _ = std::fs::remove_dir_all(&out);
}
