//! `tokentrail up`, `tokentrail call` and `tokentrail audit` as a user runs them, each its own
//! process: the calls end where they should, the audit of what they left agrees (the app's
//! fingerprints match the hops', a refused login is a rejection, not a violation), and Ctrl-C
//! stops the stack with no hop left running; so does a hangup, and a killed stack's hops end
//! with it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// The child's exit status if it exits within `limit`.
fn exited_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `tokentrail up` that the test stops (as Ctrl-C would, then by force) if it ends first, so a
/// failing test leaves no stack running.
struct Up(Child);

impl Up {
    /// `tokentrail up --out OUT`.
    fn start(out: &std::path::Path, stdout: Stdio, stderr: Stdio) -> Self {
        Self::start_with(out, stdout, stderr, &[])
    }

    /// `tokentrail up --out OUT` with `env` added to its environment.
    fn start_with(
        out: &std::path::Path,
        stdout: Stdio,
        stderr: Stdio,
        env: &[(&str, &str)],
    ) -> Self {
        Self(
            Command::new(support::bin())
                .arg("up")
                .arg("--out")
                .arg(out)
                .envs(env.iter().copied())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .expect("tokentrail up starts"),
        )
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            if exited_within(&mut self.0, Duration::from_secs(10)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

/// Send `signal` (a `kill` option) to `up`: it must exit successfully within 30 s.
fn stops_cleanly_on(up: &mut Up, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &up.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = exited_within(&mut up.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("`tokentrail up` did not stop within 30 s of {signal}"));
    assert!(
        status.success(),
        "`tokentrail up` after {signal}: {status:?}"
    );
}

/// The lines `tokentrail up` printed, up to the end of its endpoint list (the line that suggests
/// a call); what it prints later is read and dropped.
fn wait_until_up(up: &mut Up) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = up.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("stack is up")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!("`tokentrail up` did not say it was up: {printed:?}"),
        }
    }
    // Wait for the endpoint list to finish (the line that suggests a call ends it).
    while !printed
        .iter()
        .any(|l| l.starts_with("try: tokentrail call"))
    {
        printed.push(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("endpoint list"),
        );
    }
    printed
}

#[test]
fn up_call_audit_and_ctrl_c() {
    let out = support::tempdir("up-call");
    let mut up = Up::start(&out, Stdio::piped(), Stdio::null());
    let printed = wait_until_up(&mut up);
    // Every hop's endpoint (the app is this test's calls).
    for hop in &support::PASSTHROUGH_SERVICES[1..] {
        assert!(
            printed
                .iter()
                .any(|l| l.trim_start().starts_with(hop) && l.contains("http://127.0.0.1:")),
            "{hop} endpoint printed: {printed:?}"
        );
    }
    let key = out.join("stack-passthrough.key");
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the stack's key file is owner-only");
    let hops = children_of(up.0.id());
    assert_eq!(hops.len(), 6, "one process per hop: {hops:?}");

    // A second stack of the pattern in the same directory is refused, and the first keeps its
    // description, key and store.
    let mut second = Up::start(&out, Stdio::null(), Stdio::piped());
    let status = exited_within(&mut second.0, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second stack started in the same directory: {status:?}"
    );
    let mut said = String::new();
    second
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut said)
        .expect("stderr readable");
    assert!(
        said.contains("a passthrough stack is already running"),
        "{said}"
    );
    assert!(key.exists() && out.join("stack-passthrough.json").exists());

    let call = |args: &[&str]| call(&out, args);
    let valid = support::succeeded(&call(&["--user", "alice"]));
    let row = valid.lines().nth(1).expect("result row");
    assert!(row.contains(" ok "), "{valid}");
    let valid_trace = row.split_whitespace().last().expect("trace id").to_owned();
    let expired = call(&["--token-fault", "expired"]);
    assert_eq!(expired.status.code(), Some(1));
    let expired = String::from_utf8_lossy(&expired.stdout).into_owned();
    assert!(
        expired.contains("gateway.interceptor") && expired.contains("expired"),
        "{expired}"
    );
    let refused = support::failed(&call(&["--user", "mallory"]));
    assert!(refused.contains("login of `mallory` failed"), "{refused}");

    // `load` drives both patterns unless told otherwise: with one stack up it says what to do,
    // before sending anything.
    let said = support::failed(
        &Command::new(support::bin())
            .args([
                "load",
                "--duration",
                "1s",
                "--rate",
                "5",
                "--warmup",
                "0s",
                "--out",
            ])
            .arg(&out)
            .output()
            .expect("tokentrail load runs"),
    );
    assert!(
        said.contains("start the broker stack too, or load one with `--pattern passthrough`"),
        "{said}"
    );

    // Ctrl-C: the stack stops, flushing every hop's spans, and leaves no hop running.
    stops_cleanly_on(&mut up, "-INT");
    let left: Vec<u32> = hops.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "hop processes left running: {left:?}");
    assert!(!key.exists() && !out.join("stack-passthrough.json").exists());

    let records = audit_json(&out);
    let verdict = |r: &serde_json::Value| {
        format!(
            "{} {} {}",
            r["verdict"].as_str().unwrap_or("?"),
            r["hop"].as_str().unwrap_or("-"),
            r["reason"].as_str().unwrap_or("-")
        )
    };
    let mut verdicts: Vec<String> = records.iter().map(verdict).collect();
    verdicts.sort();
    assert_eq!(
        verdicts,
        [
            "ok - -",
            "rejected gateway.interceptor expired",
            "rejected idp.token forbidden"
        ],
        "{records:#?}"
    );
    let ok = records
        .iter()
        .find(|r| r["trace_id"] == valid_trace.as_str())
        .expect("the valid call audited");
    assert_eq!(ok["entered"]["fingerprint"], ok["reached"]["fingerprint"]);
    let _ = std::fs::remove_dir_all(&out);
}

/// A stack started with `TOKENTRAIL_PSEUDONYMIZE_SUBJECT=on` records no user in clear: not as
/// the credential's subject, not as `enduser.id` at the target, not in the spans of a `call`
/// made without the switch (the app follows the stack); a `call` whose own switch says
/// otherwise is refused; the audit still matches the identity that entered with the one that
/// reached the target.
#[test]
fn a_pseudonymizing_stack_records_no_user_in_clear() {
    let out = support::tempdir("up-pseudonym");
    const KEY: &str = "a-fingerprint-key-the-auditor-also-has";
    let mut up = Up::start_with(
        &out,
        Stdio::piped(),
        Stdio::null(),
        &[
            ("TOKENTRAIL_PSEUDONYMIZE_SUBJECT", "on"),
            ("TOKENTRAIL_FINGERPRINT_KEY", KEY),
        ],
    );
    wait_until_up(&mut up);
    let valid = support::succeeded(&call(&out, &["--user", "alice"]));
    assert!(valid.contains(" ok "), "{valid}");
    let refused = support::failed(
        &Command::new(support::bin())
            .args(["call", "--user", "alice", "--out"])
            .arg(&out)
            .env("TOKENTRAIL_PSEUDONYMIZE_SUBJECT", "0")
            .output()
            .expect("tokentrail call runs"),
    );
    assert!(
        refused.contains(
            "TOKENTRAIL_PSEUDONYMIZE_SUBJECT: off here, on in the running stack: the app would \
             record subjects in clear"
        ),
        "{refused}"
    );
    stops_cleanly_on(&mut up, "-INT");

    let store = std::fs::read_to_string(out.join("traces.jsonl")).expect("span store");
    assert!(
        store.contains("\"enduser.id\""),
        "the target's span is stored"
    );
    assert!(!store.contains("\"alice\""), "a user in clear: {store}");
    let records = audit_json(&out);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["verdict"], "ok", "{r:#}");
    let entered = r["entered"]["subject"].as_str().expect("entered subject");
    assert!(entered.starts_with("anon:"), "{r:#}");
    assert_eq!(r["reached"]["subject"], entered, "{r:#}");

    // `--user alice`: found by its pseudonym with the switch and the stack's key; without the
    // key, refused; without the switch, nothing matches and the audit says how to match.
    let audit_user = |env: &[(&str, &str)]| {
        Command::new(support::bin())
            .args(["audit", "--format", "json", "--user", "alice", "--store"])
            .arg(out.join("traces.jsonl"))
            .env_remove("TOKENTRAIL_PSEUDONYMIZE_SUBJECT")
            .env_remove("TOKENTRAIL_FINGERPRINT_KEY")
            .envs(env.iter().copied())
            .output()
            .expect("audit runs")
    };
    let found = audit_user(&[
        ("TOKENTRAIL_PSEUDONYMIZE_SUBJECT", "1"),
        ("TOKENTRAIL_FINGERPRINT_KEY", KEY),
    ]);
    let found: Vec<serde_json::Value> =
        serde_json::from_slice(support::succeeded(&found).as_bytes()).expect("audit JSON");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0]["entered"]["subject"], entered);
    let refused = support::failed(&audit_user(&[("TOKENTRAIL_PSEUDONYMIZE_SUBJECT", "1")]));
    assert!(
        refused.contains("set TOKENTRAIL_FINGERPRINT_KEY to it"),
        "{refused}"
    );
    let unmatched = audit_user(&[]);
    assert_eq!(support::succeeded(&unmatched).trim(), "[]");
    let said = String::from_utf8_lossy(&unmatched.stderr);
    assert!(
        said.contains("no subject is `alice`, and the subjects here are pseudonyms"),
        "{said}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `tokentrail audit --format json` of the store in `out`: its records.
fn audit_json(out: &std::path::Path) -> Vec<serde_json::Value> {
    let audit = Command::new(support::bin())
        .args(["audit", "--format", "json", "--store"])
        .arg(out.join("traces.jsonl"))
        .output()
        .expect("audit runs");
    serde_json::from_slice(support::succeeded(&audit).as_bytes()).expect("audit JSON")
}

/// `tokentrail call --out OUT ARGS…`.
fn call(out: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(support::bin())
        .arg("call")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("tokentrail call runs")
}

/// Hop processes of `hops` still running after up to `limit`.
fn left_running(hops: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = hops.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stack whose `tokentrail up` was killed takes its hops with it, and `call` says it is gone
/// instead of failing to connect; a new stack starts in the same directory, and a hangup (its
/// terminal closed) stops it as Ctrl-C does.
#[test]
fn a_killed_stack_is_gone_and_a_hangup_stops_one() {
    let out = support::tempdir("up-killed");
    let mut up = Up::start(&out, Stdio::piped(), Stdio::null());
    wait_until_up(&mut up);
    let hops = children_of(up.0.id());
    assert_eq!(hops.len(), 6, "one process per hop: {hops:?}");
    up.0.kill().expect("SIGKILL");
    up.0.wait().expect("reaped");
    let left = left_running(&hops, Duration::from_secs(15));
    assert!(left.is_empty(), "hops outlived a killed stack: {left:?}");
    assert!(
        out.join("stack-passthrough.json").exists(),
        "a killed stack leaves its description"
    );
    assert!(out.join("stack-passthrough.key").exists());
    let said = support::failed(&call(&out, &["--user", "alice"]));
    assert!(
        said.contains("is not running any more")
            && said.contains("Its description and fingerprint key were removed."),
        "{said}"
    );
    // The secret key does not outlive the stack longer than the next call that finds it dead.
    assert!(
        !out.join("stack-passthrough.key").exists() && !out.join("stack-passthrough.json").exists()
    );
    let said = support::failed(&call(&out, &["--user", "alice"]));
    assert!(
        said.contains("no running passthrough stack found"),
        "{said}"
    );

    let mut up = Up::start(&out, Stdio::piped(), Stdio::null());
    wait_until_up(&mut up);
    let hops = children_of(up.0.id());
    let valid = support::succeeded(&call(&out, &["--user", "alice"]));
    assert!(
        valid.lines().nth(1).is_some_and(|row| row.contains(" ok ")),
        "{valid}"
    );
    stops_cleanly_on(&mut up, "-HUP");
    let left = left_running(&hops, Duration::from_secs(5));
    assert!(left.is_empty(), "hop processes left running: {left:?}");
    assert!(
        !out.join("stack-passthrough.key").exists() && !out.join("stack-passthrough.json").exists(),
        "a stack stopped by a hangup removes its key and description"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// `TOKENTRAIL_HOP_WRAPPER`: every hop of the stack runs under the wrapper command (here a
/// script that notes the hop's name from `{hop}` and then runs it), and the stack still answers.
#[test]
fn every_hop_runs_under_the_hop_wrapper() {
    let out = support::tempdir("up-wrapper");
    std::fs::create_dir_all(&out).expect("out dir");
    let marks = out.join("wrapped.txt");
    let script = out.join("wrap.sh");
    support::write_executable(
        &script,
        &format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nshift\nexec \"$@\"\n",
            marks.display()
        ),
    );
    let wrapper = format!("{} {{hop}}", script.display());
    let mut up = Up::start_with(
        &out,
        Stdio::piped(),
        Stdio::null(),
        &[("TOKENTRAIL_HOP_WRAPPER", &wrapper)],
    );
    wait_until_up(&mut up);
    let valid = support::succeeded(&call(&out, &["--user", "alice"]));
    assert!(valid.contains(" ok "), "{valid}");
    stops_cleanly_on(&mut up, "-INT");
    let wrapped = std::fs::read_to_string(&marks).expect("the wrapper ran");
    let mut hops: Vec<&str> = wrapped.lines().collect();
    hops.sort_unstable();
    assert_eq!(
        hops,
        [
            "agent",
            "gateway",
            "idp",
            "interceptor",
            "runtime",
            "target"
        ],
        "{wrapped}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
