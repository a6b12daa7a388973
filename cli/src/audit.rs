//! `tokentrail audit`: for every request, which identity entered, which reached the target (or
//! which hop stopped it and why), through which hops, and whether anything broke the pattern's
//! promise. Sources ([`Source`]): the local span store (`--store DIR`, OTLP JSON lines), Jaeger's
//! query API (`--jaeger URL`), X-Ray (`--xray`).
//!
//! Verdicts: `ok`, `rejected` (hop and reason), or `violation` with what broke:
//! - passthrough: the identity at the target differs from the one that entered;
//! - broker: a user JWT (kind or fingerprint) reached the target;
//! - any pattern: the target answered after a hop rejected; a hop of the pattern's chain is
//!   missing; a span carries a JWT-shaped value.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use telemetry::attrs;
use telemetry::otlp::StoredSpan;

/// The attributes an audit reads (a store scan decodes these and no others).
pub const AUDITED: &[&str] = &[
    attrs::PATTERN,
    attrs::HOP_NAME,
    attrs::HOP_INDEX,
    attrs::HOP_OUTCOME,
    attrs::FAILURE_REASON,
    attrs::CREDENTIAL_KIND,
    attrs::CREDENTIAL_FINGERPRINT,
    attrs::CREDENTIAL_ISSUER,
    attrs::CREDENTIAL_SUBJECT,
    attrs::ENDUSER_ID,
    attrs::BROKER_CACHE,
];

/// An identity as a hop recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `tokentrail.credential.kind`.
    pub kind: Option<String>,
    /// Issuer.
    pub issuer: Option<String>,
    /// Subject (or `enduser.id` at the target).
    pub subject: Option<String>,
    /// Keyed fingerprint.
    pub fingerprint: Option<String>,
}

/// One hop of a request's chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HopRecord {
    /// `tokentrail.hop.name`.
    pub hop: String,
    /// `service.name`.
    pub service: String,
    /// Credential kind it saw.
    pub credential_kind: Option<String>,
    /// Fingerprint of that credential.
    pub fingerprint: Option<String>,
    /// `ok`, `rejected`, `error`.
    pub outcome: Option<String>,
    /// Failure reason.
    pub reason: Option<String>,
    /// Span duration in milliseconds.
    pub duration_ms: f64,
    /// Time spent in this hop itself: its duration minus the hop spans nested in it (by time),
    /// milliseconds.
    pub self_ms: f64,
    /// Broker only: `hit` when the service token came from the broker's cache, `miss` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Reached the target as the pattern promises.
    Ok,
    /// Stopped on purpose (or by a failure) at a hop.
    Rejected {
        /// Hop.
        hop: String,
        /// Reason.
        reason: String,
    },
    /// The pattern's promise was broken.
    Violation {
        /// What broke, one line each.
        violations: Vec<String>,
    },
}

/// One audited request (the `--format json` schema, one object per request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// W3C trace id (32 hex).
    pub trace_id: String,
    /// Start of the request (the earliest span), Unix nanoseconds.
    pub start_unix_nano: u64,
    /// `passthrough` or `broker`.
    pub pattern: Option<String>,
    /// The identity that entered (the first hop that recorded a credential).
    pub entered: Identity,
    /// The identity that reached the target, if it answered.
    pub reached: Option<Identity>,
    /// Every hop span in chain order.
    pub chain: Vec<HopRecord>,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// Which requests to report.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this trace.
    pub trace: Option<String>,
    /// Only requests whose entering or reaching subject is this.
    pub user: Option<String>,
    /// Only this pattern.
    pub pattern: Option<String>,
    /// Only requests started at or after (Unix seconds).
    pub since: Option<i64>,
    /// Only requests started before (Unix seconds).
    pub until: Option<i64>,
    /// Only violations.
    pub violations_only: bool,
}

fn identity(s: &StoredSpan) -> Identity {
    Identity {
        kind: s.attr_str(attrs::CREDENTIAL_KIND).map(str::to_owned),
        issuer: s.attr_str(attrs::CREDENTIAL_ISSUER).map(str::to_owned),
        subject: s
            .attr_str(attrs::CREDENTIAL_SUBJECT)
            .or_else(|| s.attr_str(attrs::ENDUSER_ID))
            .map(str::to_owned),
        fingerprint: s.attr_str(attrs::CREDENTIAL_FINGERPRINT).map(str::to_owned),
    }
}

fn hop_index(s: &StoredSpan) -> i64 {
    s.attributes
        .get(attrs::HOP_INDEX)
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|t| t.parse().ok()))
        })
        .unwrap_or(i64::MAX)
}

/// The hops a request of `pattern` passes through, in order (the app's span is optional: a
/// caller need not be instrumented).
pub fn expected_chain(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "broker" => &[
            "runtime.inbound",
            "agent.invocation",
            "gateway.inbound",
            "gateway.interceptor",
            "broker.token",
            "target.api",
        ],
        _ => &[
            "runtime.inbound",
            "agent.invocation",
            "gateway.inbound",
            "gateway.interceptor",
            "target.api",
        ],
    }
}

fn jwt_shaped(s: &StoredSpan) -> Option<String> {
    s.jwt_shaped.first().map(|w| {
        format!(
            "span `{}` ({}) {w}",
            telemetry::redact::scrub(&s.name),
            s.service
        )
    })
}

/// A hop's own time: its duration minus the hops directly nested in it (a hop nests in the
/// shortest hop whose span contains it in time; spans of one request come from one clock
/// locally, and from clocks close enough in AWS for whole-millisecond figures).
fn self_us(span: &StoredSpan, hops: &[&StoredSpan]) -> u64 {
    let contains = |a: &StoredSpan, b: &StoredSpan| {
        !std::ptr::eq(a, b)
            && a.start_unix_nano <= b.start_unix_nano
            && b.end_unix_nano <= a.end_unix_nano
    };
    let nested: u64 = hops
        .iter()
        .filter(|b| contains(span, b))
        .filter(|b| {
            // Directly nested: no other hop sits between `span` and `b`.
            !hops
                .iter()
                .any(|m| !std::ptr::eq(*m, span) && contains(span, m) && contains(m, b))
        })
        .map(|b| b.duration_us())
        .sum();
    span.duration_us().saturating_sub(nested)
}

/// Audit one trace's spans.
pub fn audit_trace(trace_id: &str, spans: &[StoredSpan]) -> Record {
    let mut hops: Vec<&StoredSpan> = spans
        .iter()
        .filter(|s| {
            s.attr_str(attrs::HOP_NAME)
                .is_some_and(|h| h != "idp.token")
        })
        .collect();
    hops.sort_by_key(|s| (hop_index(s), s.start_unix_nano));
    let pattern = hops
        .iter()
        .find_map(|s| s.attr_str(attrs::PATTERN))
        .map(str::to_owned);
    let entered = hops
        .iter()
        .find(|s| {
            s.attr_str(attrs::CREDENTIAL_KIND)
                .is_some_and(|k| k == "user_jwt")
        })
        .map(|s| identity(s))
        .unwrap_or_default();
    let target = hops
        .iter()
        .find(|s| s.attr_str(attrs::HOP_NAME) == Some("target.api"));
    let reached = target
        .filter(|s| s.attr_str(attrs::HOP_OUTCOME) == Some("ok"))
        .map(|s| identity(s));
    let stopped = |s: &&StoredSpan| {
        matches!(
            s.attr_str(attrs::HOP_OUTCOME),
            Some("rejected") | Some("error")
        )
    };
    // A login the IdP refused stops the request before it enters the chain: then the app's is
    // the only hop span, and the IdP's span says why. (Once the request is in the chain, an
    // `idp.token` span is a hop's own token, e.g. the agent's, and that hop reports the failure.)
    let login_refused = || {
        hops.iter()
            .all(|s| s.attr_str(attrs::HOP_NAME) == Some("app.request"))
            .then(|| {
                spans
                    .iter()
                    .find(|s| s.attr_str(attrs::HOP_NAME) == Some("idp.token") && stopped(s))
            })
            .flatten()
    };
    let rejection = hops.iter().copied().find(stopped).or_else(login_refused);
    let mut violations = Vec::new();
    // Every source yields the W3C form (X-Ray's is converted); anything else was not written by
    // an OpenTelemetry SDK through this chain, so its spans are not taken at their word.
    if !telemetry::propagation::is_w3c_trace_id(trace_id) {
        violations.push(format!(
            "the trace id `{trace_id}` is not 32 hex digits: these spans were not recorded by the \
             chain as they are (an edited or foreign store)"
        ));
    }
    let pattern_name = pattern.as_deref().unwrap_or("passthrough");
    if let Some(r) = &reached {
        if let Some(stop) = rejection {
            violations.push(format!(
                "the target answered although {} rejected the request ({})",
                stop.attr_str(attrs::HOP_NAME).unwrap_or("?"),
                stop.attr_str(attrs::FAILURE_REASON).unwrap_or("?")
            ));
        }
        match pattern_name {
            "broker" => {
                let user_fps: Vec<&str> = hops
                    .iter()
                    .filter(|s| s.attr_str(attrs::CREDENTIAL_KIND) == Some("user_jwt"))
                    .filter_map(|s| s.attr_str(attrs::CREDENTIAL_FINGERPRINT))
                    .collect();
                if r.kind.as_deref() == Some("user_jwt")
                    || r.fingerprint
                        .as_deref()
                        .is_some_and(|fp| user_fps.contains(&fp))
                {
                    violations.push(
                        "broker pattern: a user JWT reached the target (it must only see a service token)"
                            .into(),
                    );
                }
            }
            _ => {
                if r.fingerprint != entered.fingerprint || r.subject != entered.subject {
                    violations.push(format!(
                        "passthrough pattern: the target saw {} ({}), not the identity that entered, {} ({})",
                        r.subject.as_deref().unwrap_or("?"),
                        r.fingerprint.as_deref().unwrap_or("?"),
                        entered.subject.as_deref().unwrap_or("?"),
                        entered.fingerprint.as_deref().unwrap_or("?"),
                    ));
                }
            }
        }
    }
    // Every hop up to where the request ended must be present.
    let chain = expected_chain(pattern_name);
    // How many hops of the chain the request went through.
    let went_through = match (&reached, rejection) {
        (Some(_), _) => Some(chain.len()),
        (None, Some(stop)) => match stop.attr_str(attrs::HOP_NAME).unwrap_or("") {
            // Stopped before the chain: at the app, or at the user's login.
            "app.request" | "idp.token" => Some(0),
            name => chain.iter().position(|h| *h == name).map(|p| p + 1),
        },
        (None, None) => None,
    };
    match went_through {
        Some(n) => {
            for h in &chain[..n] {
                if !hops.iter().any(|s| s.attr_str(attrs::HOP_NAME) == Some(h)) {
                    violations.push(format!("hop {h} is missing from the chain"));
                }
            }
        }
        None if !hops.is_empty() => violations.push(
            "the request neither reached the target nor was rejected by a hop (spans missing)"
                .into(),
        ),
        None => {}
    }
    for s in spans {
        if let Some(where_) = jwt_shaped(s) {
            violations.push(format!("a JWT-shaped value is stored in {where_}"));
        }
    }
    let verdict = if !violations.is_empty() {
        Verdict::Violation { violations }
    } else if reached.is_some() {
        Verdict::Ok
    } else if let Some(stop) = rejection {
        Verdict::Rejected {
            hop: stop.attr_str(attrs::HOP_NAME).unwrap_or("?").to_owned(),
            reason: stop
                .attr_str(attrs::FAILURE_REASON)
                .unwrap_or("?")
                .to_owned(),
        }
    } else {
        Verdict::Ok
    };
    Record {
        trace_id: trace_id.to_owned(),
        start_unix_nano: spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0),
        pattern,
        entered,
        reached,
        chain: hops
            .iter()
            .map(|s| HopRecord {
                self_ms: self_us(s, &hops) as f64 / 1000.0,
                cache: s.attr_str(attrs::BROKER_CACHE).map(str::to_owned),
                hop: s.attr_str(attrs::HOP_NAME).unwrap_or("?").to_owned(),
                service: s.service.clone(),
                credential_kind: s.attr_str(attrs::CREDENTIAL_KIND).map(str::to_owned),
                fingerprint: s.attr_str(attrs::CREDENTIAL_FINGERPRINT).map(str::to_owned),
                outcome: s.attr_str(attrs::HOP_OUTCOME).map(str::to_owned),
                reason: s.attr_str(attrs::FAILURE_REASON).map(str::to_owned),
                duration_ms: s.duration_us() as f64 / 1000.0,
            })
            .collect(),
        verdict,
    }
}

/// Audit every request among `spans` that `filter` selects, oldest first. Traces without any
/// hop span (e.g. a bare IdP call) are not requests and are skipped, unless a span in them
/// carries a JWT-shaped value (then they are a violation too).
pub fn audit(spans: Vec<StoredSpan>, filter: &Filter) -> Vec<Record> {
    let spans = match &filter.trace {
        Some(t) => spans.into_iter().filter(|s| s.trace_id == *t).collect(),
        None => spans,
    };
    select(audit_all(spans), filter)
}

/// The requests of `records` that `filter` selects, in the same order.
pub fn select(records: Vec<Record>, filter: &Filter) -> Vec<Record> {
    records
        .into_iter()
        .filter(|r| {
            let secs = (r.start_unix_nano / 1_000_000_000) as i64;
            filter.trace.as_ref().is_none_or(|t| *t == r.trace_id)
                && filter.since.is_none_or(|s| secs >= s)
                && filter.until.is_none_or(|u| secs < u)
                && filter
                    .pattern
                    .as_ref()
                    .is_none_or(|p| r.pattern.as_deref() == Some(p.as_str()))
                && filter.user.as_ref().is_none_or(|u| {
                    r.entered.subject.as_deref() == Some(u.as_str())
                        || r.reached.as_ref().and_then(|x| x.subject.as_deref()) == Some(u.as_str())
                })
                && (!filter.violations_only || matches!(r.verdict, Verdict::Violation { .. }))
        })
        .collect()
}

/// Audit every request among `spans`, oldest first (see [`audit`]).
pub fn audit_all(spans: Vec<StoredSpan>) -> Vec<Record> {
    let mut by_trace: BTreeMap<String, Vec<StoredSpan>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s);
    }
    let traces: Vec<(&String, &Vec<StoredSpan>)> = by_trace.iter().collect();
    let audit_chunk = |chunk: &[(&String, &Vec<StoredSpan>)]| -> Vec<Record> {
        chunk
            .iter()
            .filter(|(_, spans)| {
                spans.iter().any(|s| {
                    s.attr_str(attrs::HOP_NAME)
                        .is_some_and(|h| h != "idp.token")
                        || jwt_shaped(s).is_some()
                })
            })
            .map(|(id, spans)| audit_trace(id, spans))
            .collect()
    };
    // Traces are independent: audit them on every core.
    let threads = telemetry::otlp::cores();
    let chunk = traces.len().div_ceil(threads).max(1);
    let mut out: Vec<Record> = std::thread::scope(|s| {
        let handles: Vec<_> = traces
            .chunks(chunk)
            .map(|c| s.spawn(move || audit_chunk(c)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    out.sort_by_key(|r| r.start_unix_nano);
    // Freeing a million spans takes seconds; nothing waits for it (a CLI exits right after).
    std::thread::spawn(move || drop(by_trace));
    out
}

/// `--user`: the subject as the spans record it. With `TOKENTRAIL_PSEUDONYMIZE_SUBJECT` on in the
/// auditor's environment, that is the user's keyed pseudonym, which needs the stack's
/// `TOKENTRAIL_FINGERPRINT_KEY` (with any other key the pseudonym matches nothing). A name given
/// as a pseudonym (`anon:…`) is taken as it is.
pub fn user_filter(user: &str) -> Result<String> {
    let var = telemetry::provenance::PSEUDONYMIZE_ENV;
    if user.starts_with("anon:") || !telemetry::switch_from_env(var)?.unwrap_or(false) {
        return Ok(user.to_owned());
    }
    let key_var = telemetry::fingerprint::KEY_ENV;
    if std::env::var(key_var).unwrap_or_default().is_empty() {
        bail!(
            "{var} is on, so --user `{user}` is matched by its pseudonym, which depends on the \
             stack's key: set {key_var} to it (a running stack keeps it in \
             OUT/stack-<pattern>.key)"
        );
    }
    Ok(telemetry::provenance::recorded_subject(user).into_owned())
}

/// Whether a record's entering or reaching subject is a pseudonym.
fn pseudonymous(r: &Record) -> bool {
    [Some(&r.entered), r.reached.as_ref()]
        .into_iter()
        .flatten()
        .any(|i| i.subject.as_deref().is_some_and(|s| s.starts_with("anon:")))
}

/// The records of `all` that `filter` selects, and, when its `--user` name selected nothing where
/// the subjects are pseudonyms, a note on how to match one.
pub fn select_with_hint(all: Vec<Record>, filter: &Filter) -> (Vec<Record>, Option<String>) {
    let user = filter.user.clone().filter(|u| !u.starts_with("anon:"));
    let anon = user.is_some() && all.iter().any(pseudonymous);
    let selected = select(all, filter);
    let hint = user.filter(|_| anon && selected.is_empty()).map(|user| {
        format!(
            "no subject is `{user}`, and the subjects here are pseudonyms (anon:…): to match \
             one, audit with {}=1 and the stack's {} (a stack started without one used a random \
             key, and its pseudonyms cannot be matched to names)",
            telemetry::provenance::PSEUDONYMIZE_ENV,
            telemetry::fingerprint::KEY_ENV
        )
    });
    (selected, hint)
}

/// `--trace`: a W3C trace id (32 hex digits, as the demo, `call` and Jaeger show it) or an X-Ray
/// one (`1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy`, as the X-Ray console shows it), as the 32 lower-case
/// hex digits the records hold. Anything else is refused: it would select nothing.
pub fn parse_trace_id(s: &str) -> Result<String> {
    let s = s.trim();
    let w3c = telemetry::propagation::is_w3c_trace_id(s)
        .then(|| s.to_ascii_lowercase())
        .or_else(|| telemetry::xray::w3c_trace_id(s));
    match w3c {
        Some(id) if id.bytes().any(|b| b != b'0') => Ok(id),
        _ => bail!(
            "`{s}` is not a trace id: use 32 hex digits (W3C, as `tokentrail call` prints it) or \
             1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy (X-Ray)"
        ),
    }
}

/// `--since`/`--until`: RFC 3339 (`2026-11-28T20:00:00Z`), Unix seconds, or an age (`90s`,
/// `15m`, `2h`, `1d`) counted back from now.
pub fn parse_time(s: &str, now: i64) -> Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Some((num, unit)) = s.split_at_checked(s.len().saturating_sub(1))
        && let Ok(n) = num.parse::<i64>()
    {
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => bail!("`{s}`: unknown unit (use s, m, h or d)"),
        };
        return Ok(now - n * mult);
    }
    let compact: String = s.chars().filter(|c| *c != '-' && *c != ':').collect();
    auth::iam::amz_date_to_epoch(&compact).with_context(|| {
        format!("`{s}` is not RFC 3339 (2026-11-28T20:00:00Z), Unix seconds or an age like 15m")
    })
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// One JSON array of records.
    Json,
    /// CSV, one row per request.
    Csv,
}

fn short(s: Option<&str>) -> String {
    s.unwrap_or("-").to_owned()
}

fn who(i: &Identity) -> String {
    format!(
        "{}:{}",
        short(i.kind.as_deref()),
        short(i.subject.as_deref())
    )
}

fn verdict_text(v: &Verdict) -> (String, String) {
    match v {
        Verdict::Ok => ("ok".into(), String::new()),
        Verdict::Rejected { hop, reason } => ("rejected".into(), format!("{hop} {reason}")),
        Verdict::Violation { violations } => ("VIOLATION".into(), violations.join("; ")),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Render `records`. The output is scrubbed like telemetry: a JWT-shaped value planted in a store
/// is reported, never repeated.
pub fn render(records: &[Record], format: Format, jaeger: Option<&str>) -> Result<String> {
    let text = render_raw(records, format, jaeger)?;
    Ok(match format {
        Format::Json => telemetry::redact::scrub_json(&text).into_owned(),
        _ => telemetry::redact::scrub(&text).into_owned(),
    })
}

fn render_raw(records: &[Record], format: Format, jaeger: Option<&str>) -> Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(records)? + "\n",
        Format::Csv => {
            let mut out = String::from(
                "trace_id,pattern,entered_kind,entered_subject,entered_fingerprint,reached_kind,reached_subject,reached_fingerprint,verdict,detail,hops\n",
            );
            for r in records {
                let (v, detail) = verdict_text(&r.verdict);
                let reached = r.reached.clone().unwrap_or_default();
                let hops: Vec<&str> = r.chain.iter().map(|h| h.hop.as_str()).collect();
                let fields = [
                    r.trace_id.clone(),
                    short(r.pattern.as_deref()),
                    short(r.entered.kind.as_deref()),
                    short(r.entered.subject.as_deref()),
                    short(r.entered.fingerprint.as_deref()),
                    short(reached.kind.as_deref()),
                    short(reached.subject.as_deref()),
                    short(reached.fingerprint.as_deref()),
                    v,
                    detail,
                    hops.join(" > "),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let reached = |r: &Record| r.reached.as_ref().map(who).unwrap_or_else(|| "-".into());
            // Identity columns as wide as their longest value, so the verdicts line up.
            let ew = records
                .iter()
                .map(|r| who(&r.entered).len())
                .max()
                .unwrap_or(0)
                .max(22);
            let rw = records
                .iter()
                .map(|r| reached(r).len())
                .max()
                .unwrap_or(0)
                .max(27);
            let mut out = format!(
                "{:<32}  {:<11}  {:<ew$}  {:<rw$}  {:<9}  {}\n",
                "trace id", "pattern", "entered", "reached the target", "verdict", "detail"
            );
            for r in records {
                let (v, detail) = verdict_text(&r.verdict);
                let line = format!(
                    "{:<32}  {:<11}  {:<ew$}  {:<rw$}  {:<9}  {}",
                    r.trace_id,
                    short(r.pattern.as_deref()),
                    who(&r.entered),
                    reached(r),
                    v,
                    detail
                );
                out.push_str(line.trim_end());
                out.push('\n');
                if let Some(j) = jaeger {
                    out.push_str(&format!(
                        "    {}/trace/{}\n",
                        j.trim_end_matches('/'),
                        r.trace_id
                    ));
                }
            }
            let violations = records
                .iter()
                .filter(|r| matches!(r.verdict, Verdict::Violation { .. }))
                .count();
            let reached = records.iter().filter(|r| r.reached.is_some()).count();
            out.push_str(&format!(
                "{} requests, {reached} reached the target, {violations} violation(s)\n",
                records.len()
            ));
            out
        }
    })
}

/// Where to read spans from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The local store (directory or file).
    Store(std::path::PathBuf),
    /// Jaeger's query API (UI base URL).
    Jaeger(String),
    /// AWS X-Ray.
    Xray(crate::sources::XrayTarget),
}

/// `tokentrail audit`: fetch, audit, print; exit status 1 when a violation is found.
pub async fn run(source: &Source, filter: &Filter, format: Format) -> Result<ExitCode> {
    let now = auth::iam::now_epoch();
    let (records, notes) = match source {
        Source::Store(path) => {
            let path = path.clone();
            let indexed = tokio::task::spawn_blocking(move || crate::audit_index::records(&path))
                .await
                .context("the audit task failed")??;
            let mut notes = indexed.notes;
            let (selected, hint) = select_with_hint(indexed.records, filter);
            notes.extend(hint);
            (selected, notes)
        }
        Source::Jaeger(url) => {
            let f = crate::sources::jaeger(url, filter, now).await?;
            let mut notes = f.notes;
            let (selected, hint) = select_with_hint(audit_all(f.spans), filter);
            notes.extend(hint);
            (selected, notes)
        }
        Source::Xray(target) => {
            let f = crate::sources::xray(target, filter, now).await?;
            (audit(f.spans, filter), f.notes)
        }
    };
    for note in &notes {
        eprintln!("note: {}", telemetry::redact::scrub(note));
    }
    let jaeger = match source {
        Source::Jaeger(url) => Some(url.as_str()),
        _ => None,
    };
    print!("{}", render(&records, format, jaeger)?);
    let violation = records
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Violation { .. }));
    Ok(if violation {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trace_ids_are_w3c_or_xray_else_refused() {
        let w3c = "6b11a85b86a147241e67fc6a6a90aea4";
        for given in [
            w3c,
            "6B11A85B86A147241E67FC6A6A90AEA4",
            " 6b11a85b86a147241e67fc6a6a90aea4 ",
            "1-6b11a85b-86a147241e67fc6a6a90aea4",
        ] {
            assert_eq!(parse_trace_id(given).expect(given), w3c);
        }
        for bad in [
            "xyz",
            "6b11a85b86a147241e67fc6a6a90aea",
            "6b11a85b86a147241e67fc6a6a90aeag",
            "2-6b11a85b-86a147241e67fc6a6a90aea4",
            "00000000000000000000000000000000",
            "",
        ] {
            let e = parse_trace_id(bad).expect_err(bad).to_string();
            assert!(e.contains("is not a trace id: use 32 hex digits"), "{e}");
        }
    }

    /// A trace id as the SDK writes them.
    const T1: &str = "6b11caee091cdb11b7178d331943565d";

    fn span(hop: &str, index: i64, service: &str, kv: &[(&str, &str)]) -> StoredSpan {
        let mut attributes = BTreeMap::new();
        attributes.insert(attrs::HOP_NAME.to_owned(), json!(hop));
        attributes.insert(attrs::HOP_INDEX.to_owned(), json!(index));
        for (k, v) in kv {
            attributes.insert((*k).to_owned(), json!(v));
        }
        StoredSpan {
            trace_id: T1.into(),
            span_id: format!("{index:016x}"),
            parent_span_id: String::new(),
            name: hop.into(),
            kind: "server".into(),
            service: service.into(),
            start_unix_nano: 1_000 + index as u64,
            end_unix_nano: 2_000 + index as u64,
            status: String::new(),
            attributes,
            events: Vec::new(),
            jwt_shaped: Vec::new(),
        }
    }

    fn chain(
        pattern: &str,
        target_kind: &str,
        target_fp: &str,
        target_sub: &str,
    ) -> Vec<StoredSpan> {
        let user = [
            (attrs::PATTERN, pattern),
            (attrs::CREDENTIAL_KIND, "user_jwt"),
            (attrs::CREDENTIAL_FINGERPRINT, "sha256:user00000000"),
            (attrs::CREDENTIAL_SUBJECT, "alice"),
            (attrs::HOP_OUTCOME, "ok"),
        ];
        let plain = [(attrs::PATTERN, pattern), (attrs::HOP_OUTCOME, "ok")];
        let mut v = vec![
            span("runtime.inbound", 1, "runtime", &user),
            span("agent.invocation", 2, "agent", &user),
            span("gateway.inbound", 3, "gateway", &plain),
            span("gateway.interceptor", 4, "interceptor", &user),
        ];
        if pattern == "broker" {
            v.push(span("broker.token", 5, "broker", &plain));
        }
        v.push(span(
            "target.api",
            6,
            "target",
            &[
                (attrs::PATTERN, pattern),
                (attrs::CREDENTIAL_KIND, target_kind),
                (attrs::CREDENTIAL_FINGERPRINT, target_fp),
                (attrs::CREDENTIAL_SUBJECT, target_sub),
                (attrs::HOP_OUTCOME, "ok"),
            ],
        ));
        v
    }

    fn violations(spans: &[StoredSpan]) -> Vec<String> {
        match audit_trace(T1, spans).verdict {
            Verdict::Violation { violations } => violations,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn faithful_chains_are_ok() {
        let pt = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        assert_eq!(audit_trace(T1, &pt).verdict, Verdict::Ok);
        let br = chain(
            "broker",
            "service_token",
            "sha256:svc000000000",
            "orders-service",
        );
        let r = audit_trace(T1, &br);
        assert_eq!(r.verdict, Verdict::Ok);
        assert_eq!(r.entered.subject.as_deref(), Some("alice"));
        assert_eq!(r.reached.unwrap().kind.as_deref(), Some("service_token"));
    }

    #[test]
    fn planted_violations_are_reported_with_their_reason() {
        // Broker: the user's JWT (its fingerprint) at the target.
        let v = violations(&chain(
            "broker",
            "service_token",
            "sha256:user00000000",
            "orders-service",
        ));
        assert!(v[0].contains("a user JWT reached the target"), "{v:?}");
        let v = violations(&chain("broker", "user_jwt", "sha256:other0000000", "alice"));
        assert!(v[0].contains("a user JWT reached the target"), "{v:?}");
        // Passthrough: a changed subject.
        let v = violations(&chain(
            "passthrough",
            "user_jwt",
            "sha256:user00000000",
            "mallory",
        ));
        assert!(v[0].contains("not the identity that entered"), "{v:?}");
        // A missing hop.
        let mut missing = chain(
            "broker",
            "service_token",
            "sha256:svc000000000",
            "orders-service",
        );
        missing.retain(|s| s.name != "broker.token");
        let v = violations(&missing);
        assert!(
            v.iter().any(|x| x.contains("hop broker.token is missing")),
            "{v:?}"
        );
        // Target reached after a rejection.
        let mut after = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        after[3]
            .attributes
            .insert(attrs::HOP_OUTCOME.into(), json!("rejected"));
        after[3]
            .attributes
            .insert(attrs::FAILURE_REASON.into(), json!("expired"));
        let v = violations(&after);
        assert!(
            v[0].contains("although gateway.interceptor rejected"),
            "{v:?}"
        );
        // A JWT-shaped value in a span.
        let mut leaky = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        let jwt = format!(
            "{}.{}.{}",
            "eyJhbGciOiJSUzI1NiJ9", "eyJzdWIiOiJhbGljZSJ9", "c2lnbmF0dXJlc2lnbmF0dXJl"
        );
        assert!(telemetry::redact::contains_jwt(&jwt));
        leaky[1].jwt_shaped.push("attribute `note`".into());
        let v = violations(&leaky);
        assert!(
            v[0].contains("JWT-shaped value") && v[0].contains("note"),
            "{v:?}"
        );
        assert!(
            !v[0].contains("eyJ"),
            "the report does not repeat the value"
        );
        // A faithful chain under a trace id no SDK writes (an edited store).
        let faithful = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        for bad in ["zz11caee091cdb11b7178d331943565d", "t1", ""] {
            match audit_trace(bad, &faithful).verdict {
                Verdict::Violation { violations } => assert!(
                    violations[0].contains(&format!("the trace id `{bad}` is not 32 hex digits")),
                    "{violations:?}"
                ),
                other => panic!("{bad}: expected a violation, got {other:?}"),
            }
        }
    }

    #[test]
    fn rejections_name_the_hop_and_filters_select() {
        let mut rejected = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        rejected.pop();
        rejected[3]
            .attributes
            .insert(attrs::HOP_OUTCOME.into(), json!("rejected"));
        rejected[3]
            .attributes
            .insert(attrs::FAILURE_REASON.into(), json!("expired"));
        assert_eq!(
            audit_trace(T1, &rejected).verdict,
            Verdict::Rejected {
                hop: "gateway.interceptor".into(),
                reason: "expired".into()
            }
        );
        let spans = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        let all = audit(spans.clone(), &Filter::default());
        assert_eq!(all.len(), 1);
        let f = Filter {
            user: Some("bob".into()),
            ..Filter::default()
        };
        assert!(audit(spans.clone(), &f).is_empty());
        let f = Filter {
            violations_only: true,
            ..Filter::default()
        };
        assert!(audit(spans, &f).is_empty());
        assert_eq!(
            parse_time("2026-11-28T20:00:00Z", 0).unwrap(),
            1_795_896_000
        );
        assert_eq!(parse_time("15m", 10_000).unwrap(), 9_100);
        assert!(parse_time("yesterday", 0).is_err());
        let csv = render(&all, Format::Csv, None).unwrap();
        assert_eq!(csv.lines().count(), 2);
    }

    #[test]
    fn a_request_stopped_before_the_chain_is_rejected_where_it_stopped() {
        let rejected = |hop: &str, reason: &str| Verdict::Rejected {
            hop: hop.into(),
            reason: reason.into(),
        };
        let app = span("app.request", 0, "app", &[(attrs::PATTERN, "passthrough")]);
        // The IdP refused the user's login: the app's span and the IdP's, nothing else.
        let idp = |outcome: &str| {
            span(
                "idp.token",
                0,
                "idp",
                &[
                    (attrs::HOP_OUTCOME, outcome),
                    (attrs::FAILURE_REASON, "forbidden"),
                ],
            )
        };
        let login = vec![app.clone(), idp("rejected")];
        assert_eq!(
            audit_trace(T1, &login).verdict,
            rejected("idp.token", "forbidden")
        );
        // The IdP could not be reached: the app says so.
        let mut unreachable = app.clone();
        unreachable
            .attributes
            .insert(attrs::HOP_OUTCOME.into(), json!("error"));
        unreachable
            .attributes
            .insert(attrs::FAILURE_REASON.into(), json!("upstream_unavailable"));
        assert_eq!(
            audit_trace(T1, &[unreachable]).verdict,
            rejected("app.request", "upstream_unavailable")
        );
        // Without either, spans are missing.
        assert!(matches!(
            audit_trace(T1, &[app.clone(), idp("ok")]).verdict,
            Verdict::Violation { .. }
        ));
        // Once in the chain, a refused `idp.token` (a hop's own token) is not where it stopped.
        let mut entered = chain("passthrough", "user_jwt", "sha256:user00000000", "alice");
        entered.truncate(3);
        entered.push(idp("rejected"));
        assert!(matches!(
            audit_trace(T1, &entered).verdict,
            Verdict::Violation { .. }
        ));
    }
}
