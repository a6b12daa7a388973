//! The passthrough chain across real processes: one trace per request with correct parentage,
//! the same user-token fingerprint at every hop that saw it, each fault stopped at the right hop
//! with the right reason, and cached keys keep working while the IdP is down.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use telemetry::attrs;
use tokentrail::app::{App, Outcome, TokenFault};
use tokentrail::demo::script;
use tokentrail::serve::HopName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_chain_end_to_end() {
    let out = support::tempdir("passthrough");
    let mut stack = support::start_stack(&out, None).await;
    let telemetry = tokentrail::stack::init_app_telemetry(&stack.endpoints).expect("app telemetry");
    let app = App::new(stack.endpoints.clone()).expect("app");

    // The scripted cases, each once.
    let mut results = Vec::new();
    for case in script() {
        let r = app.call(&case.spec).await.expect("request runs");
        assert_eq!(
            r.outcome, case.expect,
            "{:?} {:?}",
            case.spec.user, case.spec.fault
        );
        results.push((case, r));
    }

    // IdP down after keys were fetched: a token obtained earlier is still accepted end to end.
    let spec = support::alice_reads_her_order();
    let early = app
        .login(
            "alice",
            "tokentrail-app",
            None,
            &telemetry::TraceContext::none(),
        )
        .await
        .expect("login");
    stack.stop_hop(HopName::Idp).await.expect("idp stops");
    let while_down = app
        .call_with_token(&spec, early)
        .await
        .expect("request runs");
    assert_eq!(
        while_down.outcome,
        Outcome::Ok,
        "cached JWKS keeps serving while the IdP is down: {}",
        while_down.message
    );

    telemetry.flush(Duration::from_secs(5)).await;
    stack.stop().await.expect("stack stops");
    let traces = support::traces(&out);

    for (case, r) in &results {
        let trace = traces
            .get(&r.trace_id)
            .unwrap_or_else(|| panic!("trace {} stored", r.trace_id));
        // One root (the app's span); every other span's parent is in the same trace.
        let ids: BTreeSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        let roots: Vec<_> = trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1, "one root in {}", r.trace_id);
        assert_eq!(roots[0].service, "app");
        for s in trace {
            assert!(
                s.parent_span_id.is_empty() || ids.contains(s.parent_span_id.as_str()),
                "orphan span {} in {}",
                s.name,
                r.trace_id
            );
        }
        for s in trace
            .iter()
            .filter(|s| s.attr_str(attrs::HOP_NAME).is_some())
        {
            assert_eq!(s.attr_str(attrs::PATTERN), Some("passthrough"));
        }
        match &r.outcome {
            Outcome::Ok => {
                let services: BTreeSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
                for svc in [
                    "app",
                    "idp",
                    "runtime",
                    "agent",
                    "gateway",
                    "interceptor",
                    "target",
                ] {
                    assert!(
                        services.contains(svc),
                        "{svc} missing from {}: {services:?}",
                        r.trace_id
                    );
                }
                // Cross-process parentage: each hop span's parent belongs to the previous hop's process.
                let parent_service = |hop: &str| support::parent_service(trace, hop);
                assert_eq!(parent_service("runtime.inbound"), "app");
                assert_eq!(parent_service("agent.invocation"), "runtime");
                assert_eq!(parent_service("gateway.inbound"), "agent");
                assert_eq!(parent_service("gateway.interceptor"), "gateway");
                assert_eq!(parent_service("target.api"), "gateway");
                let fp = |hop: &str| support::hop_fingerprint(trace, hop);
                let user_fp = fp("runtime.inbound").expect("runtime fingerprint");
                assert_eq!(
                    fp("gateway.interceptor").as_ref(),
                    Some(&user_fp),
                    "interceptor saw the same token"
                );
                assert_eq!(
                    fp("target.api").as_ref(),
                    Some(&user_fp),
                    "target saw the same token"
                );
                assert_eq!(
                    fp("app.request").as_ref(),
                    Some(&user_fp),
                    "the app sent that token"
                );
                let target = support::hop_span(trace, "target.api").expect("target span");
                assert_eq!(
                    target.attr_str(attrs::ENDUSER_ID),
                    Some(case.spec.user.as_str())
                );
                assert_eq!(target.attr_str(attrs::CREDENTIAL_KIND), Some("user_jwt"));
                assert_eq!(
                    target.attr_str(attrs::CREDENTIAL_VERIFICATION),
                    Some("verified")
                );
                // The agent's own token is a different credential.
                assert_ne!(fp("gateway.inbound").as_ref(), Some(&user_fp));
            }
            Outcome::Rejected { hop, reason } => {
                let rejected: Vec<_> = trace
                    .iter()
                    .filter(|s| s.attr_str(attrs::HOP_OUTCOME) == Some("rejected"))
                    .collect();
                assert_eq!(
                    rejected.len(),
                    1,
                    "exactly one hop rejected {:?} in {}",
                    case.spec.fault,
                    r.trace_id
                );
                assert_eq!(rejected[0].attr_str(attrs::HOP_NAME), Some(hop.as_str()));
                assert_eq!(
                    rejected[0].attr_str(attrs::FAILURE_REASON),
                    Some(reason.as_str())
                );
                if matches!(hop, telemetry::Hop::Interceptor | telemetry::Hop::Runtime) {
                    assert!(
                        trace.iter().all(|s| s.service != "target"),
                        "target reached despite a {hop} denial"
                    );
                }
            }
        }
    }
    let faults: BTreeSet<_> = results.iter().filter_map(|(c, _)| c.spec.fault).collect();
    for f in [
        TokenFault::Expired,
        TokenFault::Tampered,
        TokenFault::Missing,
        TokenFault::WrongAudience,
    ] {
        assert!(faults.contains(&f), "the script covers {f:?}");
    }
    assert!(traces.contains_key(&while_down.trace_id));
    let _ = std::fs::remove_dir_all(&out);
}
