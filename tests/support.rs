//! Helpers for the end-to-end tests: the CLI binary, a stack on free ports, the span store.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use telemetry::otlp::StoredSpan;
use tokentrail::stack::{Stack, StackOptions};

/// The CLI binary cargo built for these tests.
pub fn bin() -> PathBuf {
    // Integration tests live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("tokentrail-e2e{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test -p tokentrail-tests`",
        bin.display()
    );
    bin
}

/// A fresh temporary directory.
pub fn tempdir(name: &str) -> PathBuf {
    let nonce: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("tokentrail-{name}-{}-{nonce}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// Options for a passthrough stack writing to `out` with the test binary.
pub fn stack_options(out: &Path, forward_to: Option<String>) -> StackOptions {
    StackOptions {
        out: out.to_owned(),
        binary: bin(),
        forward_to,
        extra_env: Vec::new(),
        pattern: telemetry::Pattern::Passthrough,
        broker_fault: None,
        gateway_target_url: None,
    }
}

/// Start a passthrough stack writing to `out`, optionally forwarding to an OTLP/HTTP traces URL.
pub async fn start_stack(out: &Path, forward_to: Option<String>) -> Stack {
    Stack::start(&stack_options(out, forward_to))
        .await
        .expect("stack starts")
}

/// Spans of the store grouped by trace id.
pub fn traces(out: &Path) -> BTreeMap<String, Vec<StoredSpan>> {
    let spans = telemetry::otlp::read_store(&out.join("traces.jsonl")).expect("store readable");
    let mut by: BTreeMap<String, Vec<StoredSpan>> = BTreeMap::new();
    for s in spans {
        by.entry(s.trace_id.clone()).or_default().push(s);
    }
    by
}

/// The hop span named `hop` in a trace.
pub fn hop_span<'a>(trace: &'a [StoredSpan], hop: &str) -> Option<&'a StoredSpan> {
    trace
        .iter()
        .find(|s| s.attr_str(telemetry::attrs::HOP_NAME) == Some(hop))
}

/// Every file under `dir`, as (path, bytes).
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readable dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("readable file")));
            }
        }
    }
    out
}

/// A free loopback port (for tools that cannot bind port 0 themselves and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
