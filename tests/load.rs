//! `tokentrail load` as a user runs it: both patterns interleaved on the local stacks with a fault
//! mix for ten seconds. The counts reconcile: requests sent = outcomes in `load.json` (warm-up
//! plus measured) = requests the audit finds in the span store, per pattern; none is lost.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::BufRead as _;

use serde_json::Value;

#[test]
fn a_ten_second_load_of_both_patterns_reconciles() {
    let out = support::tempdir("load");
    let stdout = run_ok(
        &[
            "load",
            "--local",
            "--pattern",
            "both",
            "--rate",
            "30",
            "--duration",
            "10s",
            "--warmup",
            "1s",
            "--faults",
            "expired=0.05,tampered=0.05,missing=0.05,wrong-audience=0.05",
        ],
        &out,
    );
    assert!(
        stdout.contains("p99 ms") && stdout.contains("load.json"),
        "{stdout}"
    );

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("load.json")).unwrap()).unwrap();
    assert_eq!(doc["mode"], "open");
    assert!(doc["command"].as_str().unwrap().contains("--rate 30"));
    let mut sent = BTreeMap::new();
    let mut total = 0;
    for pattern in ["passthrough", "broker"] {
        let p = &doc["patterns"][pattern];
        let (s, w, m) = (
            p["sent"].as_u64().unwrap(),
            p["warmup"].as_u64().unwrap(),
            p["measured"].as_u64().unwrap(),
        );
        let o = &p["outcomes"];
        assert_eq!(s, w + m, "{pattern}: sent = warm-up + measured");
        assert_eq!(
            m,
            o["ok"].as_u64().unwrap()
                + o["rejected"].as_u64().unwrap()
                + o["error"].as_u64().unwrap(),
            "{pattern}: every measured request has an outcome"
        );
        assert_eq!(o["error"], 0, "{pattern}: {p}");
        assert!(
            o["rejected"].as_u64().unwrap() > 0,
            "the fault mix is rejected somewhere"
        );
        let rejections: u64 = p["rejections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert_eq!(rejections, o["rejected"].as_u64().unwrap());
        let lat = &p["latency"];
        assert_eq!(lat["count"].as_u64().unwrap(), m);
        assert!(lat["p50_ms"].as_f64().unwrap() <= lat["p99_ms"].as_f64().unwrap());
        assert!(lat["p99_ms"].as_f64().unwrap() <= lat["max_ms"].as_f64().unwrap());
        sent.insert(pattern.to_owned(), s);
        total += s;
    }
    // 11 s at 30/s, interleaved: 330 requests, half per pattern.
    assert_eq!(total, 330);
    assert_eq!(sent["passthrough"], 165);

    // The span store holds exactly those requests, each ending at the target or a rejection.
    let audit = std::process::Command::new(support::bin())
        .args(["audit", "--format", "json", "--store"])
        .arg(&out)
        .output()
        .expect("audit runs");
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
    let records: Vec<Value> = serde_json::from_slice(&audit.stdout).unwrap();
    let mut in_store: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        assert_ne!(r["verdict"], "violation", "{r}");
        *in_store
            .entry(r["pattern"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        in_store, sent,
        "requests in the store = requests sent, per pattern"
    );
    let _ = std::fs::remove_dir_all(&out);
}

fn load(out: &std::path::Path, pacing: &[&str]) -> Value {
    let mut args = vec!["--pattern", "passthrough", "--stall", "runtime=500ms"];
    args.extend_from_slice(pacing);
    load_with(out, &args)["patterns"]["passthrough"]["latency"].clone()
}

/// The runtime stalls once for 500 ms. Open loop, every request due during the stall waits and
/// its latency counts from when it was due, so p99 shows the stall; a closed loop sends nothing
/// while it waits, so only one request sees it and p99 hides it (only max shows it).
#[test]
fn open_loop_p99_shows_a_stall_that_a_closed_loop_hides() {
    let dir = support::tempdir("load-stall");
    let open = load(&dir.join("open"), &["--rate", "40"]);
    let closed = load(&dir.join("closed"), &["--concurrency", "1"]);
    let p = |v: &Value, k: &str| v[k].as_f64().unwrap();
    assert!(p(&open, "p99_ms") >= 250.0, "open loop: {open}");
    assert!(
        p(&closed, "max_ms") >= 450.0,
        "the stall happened: {closed}"
    );
    assert!(
        p(&closed, "p99_ms") < 250.0,
        "closed loop hides it: {closed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tokentrail <args> --out <out>`, which must succeed; its standard output.
fn run_ok(args: &[&str], out: &std::path::Path) -> String {
    let run = std::process::Command::new(support::bin())
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("tokentrail runs");
    support::succeeded(&run)
}

fn load_with(out: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["load", "--local", "--duration", "6s", "--warmup", "1s"];
    all.extend_from_slice(args);
    run_ok(&all, out);
    serde_json::from_str(&std::fs::read_to_string(out.join("load.json")).unwrap()).unwrap()
}

/// Stack faults during the middle third of the measured period (2 s to 4 s of 6 s): a broker
/// outage stops broker requests at the interceptor (fail closed) and nothing else; the IdP and
/// the secret store being down changes nothing (cached keys, tokens and service credential);
/// added broker latency shows in the tail only; a collector outage loses telemetry, never
/// requests, and the audit then reports the incomplete traces.
#[test]
fn stack_faults_show_where_each_pattern_depends_on_what() {
    let dir = support::tempdir("load-faults");
    let doc = load_with(
        &dir.join("outages"),
        &[
            "--pattern",
            "both",
            "--rate",
            "30",
            "--outage",
            "broker=2s",
            "--outage",
            "idp",
            "--outage",
            "secrets",
        ],
    );
    let faults = doc["stack_faults"].as_array().unwrap();
    assert_eq!(faults.len(), 3, "{doc}");
    for f in faults {
        assert_eq!(
            (f["from_s"].as_f64(), f["until_s"].as_f64()),
            (Some(2.0), Some(4.0))
        );
    }
    let pt = &doc["patterns"]["passthrough"];
    assert_eq!(
        pt["outcomes"]["rejected"], 0,
        "the IdP outage is masked: {pt}"
    );
    assert_eq!(pt["outcomes"]["error"], 0, "{pt}");
    let br = &doc["patterns"]["broker"];
    let rejections = br["rejections"].as_array().unwrap();
    assert_eq!(
        rejections.len(),
        1,
        "only the broker outage stops requests: {br}"
    );
    assert_eq!(rejections[0]["hop"], "gateway.interceptor");
    assert_eq!(rejections[0]["reason"], "upstream_unavailable");
    // 2 s at 15 requests/s per pattern, give or take the window's edges.
    let stopped = rejections[0]["count"].as_u64().unwrap();
    assert!((15..=45).contains(&stopped), "{stopped}");
    assert!(br["outcomes"]["ok"].as_u64().unwrap() >= 50, "{br}");
    // The report shades each fault's window on both time charts.
    let report = std::process::Command::new(support::bin())
        .args(["report", "--store"])
        .arg(dir.join("outages"))
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let html = std::fs::read_to_string(dir.join("outages").join("report.html")).unwrap();
    assert_eq!(
        html.matches(r#"class="fault""#).count(),
        6,
        "3 faults x 2 charts"
    );
    assert!(html.contains("broker outage from 2.0 s to 4.0 s of the measured period"));

    let doc = load_with(
        &dir.join("latency"),
        &[
            "--pattern",
            "broker",
            "--rate",
            "20",
            "--latency",
            "broker=100ms",
            "--outage",
            "collector=2s",
        ],
    );
    let lat = &doc["patterns"]["broker"]["latency"];
    let ms = |k: &str| lat[k].as_f64().unwrap();
    assert!(ms("p50_ms") < 100.0 && ms("p99_ms") >= 100.0, "{lat}");
    assert_eq!(doc["patterns"]["broker"]["outcomes"]["ok"], 120, "{doc}");
    assert!(
        doc["collector_refused_exports"].as_u64().unwrap() > 0,
        "{doc}"
    );
    let audit = std::process::Command::new(support::bin())
        .args(["audit", "--format", "json", "--store"])
        .arg(dir.join("latency"))
        .output()
        .unwrap();
    assert_eq!(audit.status.code(), Some(1), "lost spans are reported");
    let records: Vec<Value> = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(records.iter().any(|r| {
        r["verdict"] == "violation"
            && r["violations"].as_array().unwrap().iter().any(|v| {
                v.as_str().unwrap().contains("missing") || v.as_str().unwrap().contains("neither")
            })
    }));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tokentrail bench` as a user runs it: both stacks, alternating rounds, the throughput table,
/// and the CPU each hop and this process spent per request with tracing on and off.
#[test]
fn bench_reports_throughput_and_the_cpu_tracing_adds_per_hop() {
    let out = support::tempdir("bench");
    let stdout = run_ok(
        &[
            "bench",
            "--requests",
            "64",
            "--concurrency",
            "2",
            "--rounds",
            "2",
        ],
        &out,
    );
    assert!(
        stdout.contains("throughput with tracing on / off") && stdout.contains("CPU per request"),
        "{stdout}"
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).expect("bench.json"))
            .expect("json");
    let results = doc["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "{doc}");
    for r in results {
        assert_eq!(r["requests"], 64, "{doc}");
        assert!(r["throughput_rps"].as_f64().expect("rps") > 0.0, "{doc}");
    }
    // One ratio per pair of rounds, and the spread on the ratio line.
    let pairs = doc["round_ratios"].as_array().expect("round_ratios");
    assert_eq!(pairs.len(), 2, "{doc}");
    assert!(
        pairs.iter().all(|r| r.as_f64().is_some_and(|r| r > 0.0)),
        "{doc}"
    );
    assert!(stdout.contains("(round by round: median "), "{stdout}");
    let cpu = &doc["cpu_us_per_request"];
    for row in [
        "runtime",
        "agent",
        "gateway",
        "interceptor",
        "target",
        "all hops",
        "app + collector",
        "everything",
    ] {
        for mode in ["on", "off"] {
            assert!(
                cpu[row][mode].as_f64().is_some_and(|v| v >= 0.0),
                "{row} {mode}: {doc}"
            );
        }
    }
    // Every request crosses every hop: some CPU shows up per hop in both modes, and the sum is
    // the sum of its parts.
    for mode in ["on", "off"] {
        let part = |row: &str| cpu[row][mode].as_f64().unwrap();
        assert!(part("gateway") > 0.0 && part("everything") > 0.0, "{doc}");
        let hops: f64 = ["runtime", "agent", "gateway", "interceptor", "target"]
            .iter()
            .map(|h| part(h))
            .sum();
        assert!((hops - part("all hops")).abs() < 1e-6, "{doc}");
        assert!((part("all hops") + part("app + collector") - part("everything")).abs() < 1e-6);
        // The hops' CPU split into serving requests and their export threads.
        assert!(part("all hops: exporting") >= 0.0, "{doc}");
        let split = part("all hops: serving") + part("all hops: exporting");
        assert!((split - part("all hops")).abs() < 1e-6, "{doc}");
    }
    // The traced stack stored its spans; the untraced one none.
    let first = support::traces(&out.join("tracing-on"));
    assert!(!first.is_empty());
    assert!(support::traces(&out.join("tracing-off")).is_empty());
    assert!(
        stdout.contains("the next bench run replaces them"),
        "{stdout}"
    );

    // A second run in the same directory starts from empty stores and logs (they would
    // otherwise grow by every run), and leaves files it did not write alone.
    let mine = out.join("tracing-on").join("notes.txt");
    std::fs::write(&mine, "kept").unwrap();
    let small_bench = |extra: &[&str]| {
        let small = [
            "bench",
            "--requests",
            "8",
            "--concurrency",
            "2",
            "--rounds",
            "2",
        ];
        run_ok(&[&small[..], extra].concat(), &out)
    };
    small_bench(&[]);
    let second = support::traces(&out.join("tracing-on"));
    assert!(!second.is_empty());
    let again = second.keys().filter(|t| first.contains_key(*t)).count();
    assert_eq!(
        again, 0,
        "traces of the first run kept in the second run's store"
    );
    let log = std::fs::read_to_string(out.join("tracing-on/logs/gateway.log")).unwrap();
    assert_eq!(log.matches("\"listening\"").count(), 1, "{log}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "kept");

    // A calibration run (two untraced stacks in their own directories) clears the traced
    // stack's directory too: the bench directory then holds that run alone.
    let stdout = small_bench(&["--calibrate"]);
    assert!(stdout.contains("this machine's noise"), "{stdout}");
    assert!(!out.join("tracing-on/traces.jsonl").exists());
    assert!(!out.join("tracing-on/logs/gateway.log").exists());
    assert!(out.join("tracing-off-a/logs/gateway.log").exists());
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "kept");

    // Tracing's cost split: spans sent to a receiver that keeps none (a collector elsewhere)
    // leave the store empty, and the receiver says what it was sent; spans only recorded
    // reach nothing.
    let stdout = small_bench(&["--traced", "send"]);
    assert!(
        stdout.contains("(spans sent to a receiver that keeps none) / off")
            && stdout.contains("app + receiver")
            && stdout.contains("the receiver kept none of the "),
        "{stdout}"
    );
    assert!(support::traces(&out.join("tracing-on")).is_empty());
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(doc["traced"], "send", "{doc}");
    assert!(doc["cpu_us_per_request"]["app + receiver"]["on"].is_number());

    // The receiver in a process of its own (`tokentrail receive`, to pin it to a core): the
    // bench reads what this run sent it from its counters, and it says what it was sent when
    // it stops.
    let mut receiver = std::process::Command::new(support::bin())
        .args(["receive"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receive starts");
    let mut lines = std::io::BufReader::new(receiver.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("a line").expect("readable");
    let url = ready
        .strip_prefix("READY receiver ")
        .expect("READY line")
        .to_owned();
    let stdout = small_bench(&["--traced", "send", "--receiver", &url]);
    let kept_none = stdout
        .lines()
        .find_map(|l| l.strip_prefix("the receiver kept none of the "))
        .expect("what the receiver was sent");
    let exports: u64 = kept_none
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(exports > 0, "{stdout}");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.join("bench.json")).unwrap()).unwrap();
    assert_eq!(doc["receiver"], url.as_str(), "{doc}");
    let killed = std::process::Command::new("kill")
        .arg(receiver.id().to_string())
        .status()
        .expect("kill runs");
    assert!(killed.success());
    assert!(receiver.wait().expect("receive stops").success());
    let last = lines.next().expect("a last line").expect("readable");
    assert!(
        last.starts_with(&format!("received {exports} trace exports")),
        "{last}"
    );
    let err = support::failed(
        &std::process::Command::new(support::bin())
            .args(["bench", "--receiver", &url, "--out"])
            .arg(&out)
            .output()
            .expect("tokentrail runs"),
    );
    assert!(err.contains("add `--traced send`"), "{err}");

    let stdout = small_bench(&["--traced", "record"]);
    assert!(
        stdout.contains("(spans recorded, none exported) / off") && !stdout.contains("receiver"),
        "{stdout}"
    );
    assert!(support::traces(&out.join("tracing-on")).is_empty());
    let err = support::failed(
        &std::process::Command::new(support::bin())
            .args(["bench", "--calibrate", "--traced", "send", "--out"])
            .arg(&out)
            .output()
            .expect("tokentrail runs"),
    );
    assert!(
        err.contains("--calibrate runs both stacks untraced, so `--traced send` has nothing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
