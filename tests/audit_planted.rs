//! `tokentrail audit` over a real demo store with violations planted into it, as an attacker
//! or a broken hop would leave them: each is reported as a `violation` with its explanation, and
//! the audit exits 1 (so it can gate a pipeline). The untouched store audits clean (exit 0).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;

use serde_json::{Value, json};

/// Every span of the store (OTLP/JSON lines), mutable.
fn spans_mut(lines: &mut [Value]) -> Vec<&mut Value> {
    let mut out = Vec::new();
    for line in lines.iter_mut() {
        for rs in line["resourceSpans"].as_array_mut().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array_mut().into_iter().flatten() {
                for s in ss["spans"].as_array_mut().into_iter().flatten() {
                    out.push(s);
                }
            }
        }
    }
    out
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn set_attr(span: &mut Value, key: &str, value: Value) {
    let attrs = span["attributes"].as_array_mut().unwrap();
    attrs.retain(|a| a["key"] != key);
    attrs.push(json!({"key": key, "value": value}));
}

fn read(store: &Path) -> Vec<Value> {
    std::fs::read_to_string(store.join("traces.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write(dir: &Path, lines: &[Value]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    std::fs::write(dir.join("traces.jsonl"), text).unwrap();
}

fn audit(store: &Path, trace: Option<&str>) -> (i32, String) {
    let mut cmd = std::process::Command::new(support::bin());
    cmd.args(["audit", "--store"]).arg(store);
    if let Some(t) = trace {
        cmd.args(["--trace", t]);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn str_value(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v["stringValue"].as_str()).map(str::to_owned)
}

/// An export line holding only the `hop` span of `trace` (from the line it is on).
fn only_span(lines: &[Value], trace: &str, hop: &str) -> Value {
    for line in lines {
        for rs in line["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    if s["traceId"] == trace
                        && str_value(attr(s, "tokentrail.hop.name")).as_deref() == Some(hop)
                    {
                        let mut ss = ss.clone();
                        ss["spans"] = json!([s]);
                        let mut rs = rs.clone();
                        rs["scopeSpans"] = json!([ss]);
                        return json!({ "resourceSpans": [rs] });
                    }
                }
            }
        }
    }
    panic!("no {hop} span in {trace}");
}

/// The trace id (hex, as the audit prints it) of a request of `pattern` that reached the target.
fn reached_trace(lines: &mut [Value], pattern: &str) -> String {
    spans_mut(lines)
        .into_iter()
        .find(|s| {
            str_value(attr(s, "tokentrail.hop.name")).as_deref() == Some("target.api")
                && str_value(attr(s, "tokentrail.pattern")).as_deref() == Some(pattern)
                && attr(s, "enduser.id").is_some()
        })
        .map(|s| s["traceId"].as_str().unwrap().to_ascii_lowercase())
        .expect("a request that reached the target")
}

fn hop_in<'a>(lines: &'a mut [Value], trace: &str, hop: &str) -> &'a mut Value {
    spans_mut(lines)
        .into_iter()
        .find(|s| {
            s["traceId"].as_str().unwrap().eq_ignore_ascii_case(trace)
                && str_value(attr(s, "tokentrail.hop.name")).as_deref() == Some(hop)
        })
        .unwrap_or_else(|| panic!("{hop} in {trace}"))
}

#[test]
fn planted_violations_fail_the_audit_with_their_reason() {
    let dir = support::tempdir("planted");
    let out = dir.join("demo");
    let demo = std::process::Command::new(support::bin())
        .args(["demo", "--pattern", "both", "--requests", "10", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stdout)
    );
    let (code, table) = audit(&out, None);
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("0 violation(s)"), "{table}");

    // The audit index: an unchanged store is read from it, with the same result as from the
    // spans; deleted, it is rebuilt.
    let stderr_of = |store: &Path| {
        let out = std::process::Command::new(support::bin())
            .args(["audit", "--store"])
            .arg(store)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (again, note) = stderr_of(&out);
    assert!(note.contains("read the audit index"), "{note}");
    assert_eq!(again, table);
    std::fs::remove_file(out.join(".traces.jsonl.audit-index.json")).unwrap();
    let (rebuilt, note) = stderr_of(&out);
    assert!(note.contains("built the audit index"), "{note}");
    assert_eq!(rebuilt, table);

    // 1. Broker: the user's JWT (its fingerprint, as the runtime saw it) at the target.
    let mut lines = read(&out);
    let trace = reached_trace(&mut lines, "broker");
    let user_fp = attr(
        hop_in(&mut lines, &trace, "runtime.inbound"),
        "tokentrail.credential.fingerprint",
    )
    .cloned()
    .unwrap();
    set_attr(
        hop_in(&mut lines, &trace, "target.api"),
        "tokentrail.credential.fingerprint",
        user_fp,
    );
    let planted = dir.join("broker-user-jwt");
    write(&planted, &lines);
    let (code, table) = audit(&planted, Some(&trace));
    assert_eq!(code, 1, "{table}");
    assert!(
        table.contains("VIOLATION") && table.contains("a user JWT reached the target"),
        "{table}"
    );
    // The X-Ray form of the id (as the X-Ray console shows it) selects the same request.
    let xray_form = format!("1-{}-{}", &trace[..8], &trace[8..]);
    assert_eq!(audit(&planted, Some(&xray_form)), (code, table));
    // The same change made to the indexed store itself: the index no longer matches and the
    // audit reads the spans again.
    write(&out, &lines);
    let (code, table) = audit(&out, Some(&trace));
    assert_eq!(
        code, 1,
        "the index of the unchanged store is not trusted: {table}"
    );
    assert!(table.contains("a user JWT reached the target"), "{table}");

    // 2. Passthrough: the target answered someone other than who entered.
    let mut lines = read(&out);
    let trace = reached_trace(&mut lines, "passthrough");
    let target = hop_in(&mut lines, &trace, "target.api");
    set_attr(target, "enduser.id", json!({"stringValue": "mallory"}));
    set_attr(
        target,
        "tokentrail.credential.subject",
        json!({"stringValue": "mallory"}),
    );
    let planted = dir.join("passthrough-subject");
    write(&planted, &lines);
    let (code, table) = audit(&planted, Some(&trace));
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("not the identity that entered"), "{table}");

    // 3. A hop missing from the chain (the interceptor's span is gone).
    let mut lines = read(&out);
    let trace = reached_trace(&mut lines, "passthrough");
    for line in lines.iter_mut() {
        for rs in line["resourceSpans"].as_array_mut().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array_mut().into_iter().flatten() {
                ss["spans"].as_array_mut().unwrap().retain(|s| {
                    !(s["traceId"].as_str().unwrap().eq_ignore_ascii_case(&trace)
                        && str_value(attr(s, "tokentrail.hop.name")).as_deref()
                            == Some("gateway.interceptor"))
                });
            }
        }
    }
    let planted = dir.join("missing-hop");
    write(&planted, &lines);
    let (code, table) = audit(&planted, Some(&trace));
    assert_eq!(code, 1, "{table}");
    assert!(
        table.contains("hop gateway.interceptor is missing"),
        "{table}"
    );

    // 4. A JWT-shaped attribute written directly into the store.
    let mut lines = read(&out);
    let trace = reached_trace(&mut lines, "broker");
    let jwt = format!(
        "{}.{}.{}",
        "eyJhbGciOiJSUzI1NiJ9", "eyJzdWIiOiJhbGljZSJ9", "cGxhbnRlZHNpZ25hdHVyZQ"
    );
    set_attr(
        hop_in(&mut lines, &trace, "gateway.inbound"),
        "app.note",
        json!({"stringValue": jwt}),
    );
    let planted = dir.join("jwt-attribute");
    write(&planted, &lines);
    let (code, table) = audit(&planted, Some(&trace));
    assert_eq!(code, 1, "{table}");
    assert!(
        table.contains("JWT-shaped value") && table.contains("app.note"),
        "{table}"
    );
    assert!(!table.contains(&jwt), "the report never repeats the value");

    // 5. Appended to an indexed store: a new export holding one more span of an existing request,
    //    with a JWT-shaped attribute. The index is extended (only the new line is parsed, the
    //    request's earlier lines are read back), and the result equals a rebuild from the spans.
    let grown = dir.join("appended");
    let lines = read(&out);
    write(&grown, &lines);
    let (_, clean) = audit(&grown, None);
    assert!(!clean.contains("JWT-shaped"), "{clean}");
    let mut extra = only_span(&lines, &trace, "gateway.inbound");
    {
        let span = &mut extra["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        span["spanId"] = json!("00000000000000aa");
        set_attr(span, "app.note", json!({"stringValue": jwt}));
    }
    let mut store = std::fs::OpenOptions::new()
        .append(true)
        .open(grown.join("traces.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut store, format!("{extra}\n").as_bytes()).unwrap();
    let (extended, note) = stderr_of(&grown);
    assert!(note.contains("extended the audit index"), "{note}");
    assert!(
        extended.contains("JWT-shaped value") && extended.contains(&trace),
        "{extended}"
    );
    assert_eq!(
        extended.lines().count(),
        clean.lines().count(),
        "the request was audited again, not added twice"
    );
    std::fs::remove_file(grown.join(".traces.jsonl.audit-index.json")).unwrap();
    let (rebuilt, note) = stderr_of(&grown);
    assert!(note.contains("built the audit index"), "{note}");
    assert_eq!(extended, rebuilt, "extending = rebuilding");
    let _ = std::fs::remove_dir_all(&dir);
}
