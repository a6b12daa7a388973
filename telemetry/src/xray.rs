//! AWS X-Ray: spans as segment documents, the ways to send them, and reading them back.
//!
//! Mapping ([`segment_document`]):
//! - a span without a parent, and a server span, becomes a **segment** named after its service;
//!   its `parent_id` is the calling span, so the hops of one request link into one tree;
//! - client and internal spans become **subsegments** (`"type":"subsegment"`, `parent_id`),
//!   `namespace: aws` for AWS SDK calls and `remote` for calls to other services;
//! - in Lambda a hop's server span is a subsegment under the function segment Lambda owns (the
//!   `Parent` of `lambda-runtime-trace-id`), when Lambda's trace is the request's trace;
//! - `http` and `aws` blocks from the semantic conventions; `error` (4xx), `throttle` (429),
//!   `fault` (5xx, or an error status without an HTTP status) from the status;
//! - the low-cardinality tokentrail attributes become **annotations** (at most
//!   [`MAX_ANNOTATIONS_PER_SEGMENT`] per hop segment, so a whole request stays under X-Ray's 50
//!   per trace); everything else goes to metadata, from which [`spans_from_document`] restores the
//!   span for `tokentrail audit --xray`;
//! - a document larger than [`MAX_DOCUMENT_BYTES`] is trimmed (metadata first) and says so.
//!
//! Senders: UDP datagrams to the X-Ray daemon ([`datagram`]), `PutTraceSegments` with the AWS
//! SDK (batched; unprocessed segments retried, then counted and logged), and OTLP/HTTP to X-Ray's
//! OTLP endpoint signed with SigV4 ([`SigV4HttpClient`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde_json::{Map, Value, json};

use crate::attrs::{self, semconv};
use crate::otlp::StoredSpan;
use crate::redact;

/// Largest segment document sent (bytes): under X-Ray's 64 kB per document, and with the daemon
/// header it fits one UDP datagram.
pub const MAX_DOCUMENT_BYTES: usize = 64_000;
/// The line that starts every datagram to the X-Ray daemon.
pub const DAEMON_HEADER: &str = r#"{"format": "json", "version": 1}"#;
/// Default daemon address (`AWS_XRAY_DAEMON_ADDRESS` overrides it).
pub const DEFAULT_DAEMON_ADDRESS: &str = "127.0.0.1:2000";
/// Annotations on one hop segment. A broker request has 7 hops (app to target), so a trace
/// carries at most 49: X-Ray indexes at most 50 per trace.
pub const MAX_ANNOTATIONS_PER_SEGMENT: usize = 7;
/// Segments per `PutTraceSegments` call (what the X-Ray daemon batches).
pub const PUT_BATCH: usize = 50;
/// Attempts per batch: the first call and two retries of what came back unprocessed.
pub const PUT_ATTEMPTS: usize = 3;
/// X-Ray limits names to 200 characters.
const MAX_NAME_CHARS: usize = 200;
/// X-Ray limits annotation values to 1,000 characters.
const MAX_ANNOTATION_CHARS: usize = 1000;

/// Attributes indexed as annotations, and the annotation key of each (alphanumeric and `_`,
/// the key form every X-Ray release accepts).
pub const ANNOTATED: [(&str, &str); MAX_ANNOTATIONS_PER_SEGMENT] = [
    (attrs::PATTERN, "tokentrail_pattern"),
    (attrs::HOP_NAME, "tokentrail_hop"),
    (attrs::HOP_OUTCOME, "tokentrail_outcome"),
    (attrs::FAILURE_REASON, "tokentrail_failure_reason"),
    (attrs::CREDENTIAL_KIND, "tokentrail_credential_kind"),
    (attrs::CREDENTIAL_SUBJECT, "tokentrail_subject"),
    (attrs::CREDENTIAL_FINGERPRINT, "tokentrail_fingerprint"),
];

/// Metadata namespace holding the span as OpenTelemetry saw it.
const META_OTEL: &str = "otel";
/// Metadata namespace holding the attributes that are not annotations.
const META_ATTRS: &str = "attributes";

/// Errors reading X-Ray documents.
#[derive(Debug, thiserror::Error)]
pub enum XrayError {
    /// Not JSON.
    #[error("segment document is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field X-Ray requires is missing or malformed.
    #[error("segment document: {0}")]
    Invalid(String),
}

/// `1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy` → 32 hex, when well formed.
pub fn w3c_trace_id(xray: &str) -> Option<String> {
    let mut parts = xray.split('-');
    let (one, epoch, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = one == "1"
        && parts.next().is_none()
        && epoch.len() == 8
        && rest.len() == 24
        && epoch
            .chars()
            .chain(rest.chars())
            .all(|c| c.is_ascii_hexdigit());
    ok.then(|| format!("{epoch}{rest}").to_ascii_lowercase())
}

fn seconds(unix_nano: u64) -> f64 {
    // Microsecond precision, as the X-Ray SDKs write it.
    (unix_nano / 1000) as f64 / 1e6
}

fn clean_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_CHARS)
        .collect();
    if s.trim().is_empty() {
        "unnamed".to_owned()
    } else {
        s
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn int_attr(span: &StoredSpan, key: &str) -> Option<i64> {
    span.attributes.get(key).and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
}

/// Where the span hangs in X-Ray: its parent id and whether it is a segment.
fn placement(span: &StoredSpan) -> (Option<String>, bool) {
    let lambda_parent = span
        .attr_str(attrs::XRAY_LAMBDA_PARENT_ID)
        .filter(|_| {
            span.attr_str(attrs::XRAY_LAMBDA_TRACE_ID)
                .and_then(w3c_trace_id)
                .is_some_and(|t| t == span.trace_id)
        })
        .map(str::to_owned);
    let parent = lambda_parent
        .clone()
        .or_else(|| (!span.parent_span_id.is_empty()).then(|| span.parent_span_id.clone()));
    let segment = parent.is_none() || (span.kind == "server" && lambda_parent.is_none());
    (parent, segment)
}

/// The X-Ray segment document of one span (before trimming; see [`segment_document`]).
pub fn segment_value(span: &StoredSpan) -> Value {
    let (parent, is_segment) = placement(span);
    let mut doc = Map::new();
    let name = if is_segment || span.kind == "server" {
        &span.service
    } else {
        &span.name
    };
    doc.insert("name".into(), json!(clean_name(name)));
    doc.insert("id".into(), json!(span.span_id));
    doc.insert(
        "trace_id".into(),
        json!(crate::propagation::xray_trace_id(&span.trace_id)),
    );
    doc.insert("start_time".into(), json!(seconds(span.start_unix_nano)));
    doc.insert(
        "end_time".into(),
        json!(seconds(span.end_unix_nano.max(span.start_unix_nano))),
    );
    if let Some(p) = &parent {
        doc.insert("parent_id".into(), json!(p));
    }
    let is_aws = span.attr_str(semconv::RPC_SYSTEM) == Some("aws-api");
    if !is_segment {
        doc.insert("type".into(), json!("subsegment"));
        if is_aws {
            doc.insert("namespace".into(), json!("aws"));
        } else if span.kind == "client" {
            doc.insert("namespace".into(), json!("remote"));
        }
    }

    let status = int_attr(span, semconv::HTTP_RESPONSE_STATUS_CODE);
    let mut request = Map::new();
    if let Some(m) = span.attr_str(semconv::HTTP_REQUEST_METHOD) {
        request.insert("method".into(), json!(m));
    }
    if let Some(u) = span
        .attr_str(semconv::URL_FULL)
        .or_else(|| span.attr_str(semconv::URL_PATH))
    {
        request.insert("url".into(), json!(u));
    }
    if !request.is_empty() || status.is_some() {
        let mut http = Map::new();
        if !request.is_empty() {
            http.insert("request".into(), Value::Object(request));
        }
        if let Some(code) = status {
            http.insert("response".into(), json!({ "status": code }));
        }
        doc.insert("http".into(), Value::Object(http));
    }
    if is_aws || span.attr_str(semconv::AWS_REQUEST_ID).is_some() {
        let mut aws = Map::new();
        if let Some(op) = span.attr_str(semconv::RPC_METHOD) {
            aws.insert("operation".into(), json!(op));
        }
        if let Some(id) = span.attr_str(semconv::AWS_REQUEST_ID) {
            aws.insert("request_id".into(), json!(id));
        }
        if let Some(r) = span.attr_str("cloud.region") {
            aws.insert("region".into(), json!(r));
        }
        doc.insert("aws".into(), Value::Object(aws));
    }
    match status {
        Some(429) => {
            doc.insert("error".into(), json!(true));
            doc.insert("throttle".into(), json!(true));
        }
        Some(400..=499) => {
            doc.insert("error".into(), json!(true));
        }
        Some(500..=599) => {
            doc.insert("fault".into(), json!(true));
        }
        _ if span.status == "error" => {
            doc.insert("fault".into(), json!(true));
        }
        _ => {}
    }

    let annotate = span
        .attr_str(attrs::HOP_NAME)
        .is_some_and(|h| h != attrs::Hop::Idp.as_str());
    let mut annotations = Map::new();
    let mut rest = Map::new();
    for (key, value) in &span.attributes {
        let indexed = ANNOTATED
            .iter()
            .find(|(attr, _)| attr == key)
            .map(|(_, k)| *k);
        match (annotate, indexed, value) {
            (true, Some(k), Value::String(s)) => {
                annotations.insert(k.into(), json!(truncate(s, MAX_ANNOTATION_CHARS)));
            }
            (true, Some(k), v @ (Value::Bool(_) | Value::Number(_))) => {
                annotations.insert(k.into(), v.clone());
            }
            _ => {
                rest.insert(key.clone(), value.clone());
            }
        }
    }
    if is_segment
        && let Some(user) = span.attr_str(attrs::ENDUSER_ID).or_else(|| {
            (span.attr_str(attrs::CREDENTIAL_KIND) == Some("user_jwt"))
                .then(|| span.attr_str(attrs::CREDENTIAL_SUBJECT))
                .flatten()
        })
    {
        doc.insert("user".into(), json!(truncate(user, MAX_ANNOTATION_CHARS)));
    }
    if !annotations.is_empty() {
        doc.insert("annotations".into(), Value::Object(annotations));
    }
    let mut otel = Map::new();
    otel.insert("name".into(), json!(span.name));
    otel.insert("kind".into(), json!(span.kind));
    otel.insert("service".into(), json!(span.service));
    otel.insert("status".into(), json!(span.status));
    otel.insert("parent_span_id".into(), json!(span.parent_span_id));
    if !span.events.is_empty() {
        otel.insert("events".into(), json!(span.events));
    }
    let mut metadata = Map::new();
    metadata.insert(META_OTEL.into(), Value::Object(otel));
    if !rest.is_empty() {
        metadata.insert(META_ATTRS.into(), Value::Object(rest));
    }
    doc.insert("metadata".into(), Value::Object(metadata));
    Value::Object(doc)
}

fn encoded(doc: &Value) -> String {
    let text = doc.to_string();
    // Last line: every string of the document, as the text it stands for.
    redact::scrub_json(&text).into_owned()
}

/// One span as a segment document (JSON text, scrubbed), at most [`MAX_DOCUMENT_BYTES`]: an
/// oversized document loses metadata attributes (largest first), then event names, and records
/// what was trimmed in `metadata.otel.trimmed`. Returns the document and whether it was trimmed.
pub fn segment_document(span: &StoredSpan) -> (String, bool) {
    let mut doc = segment_value(span);
    let text = encoded(&doc);
    if text.len() <= MAX_DOCUMENT_BYTES {
        return (text, false);
    }
    let original = text.len();
    let mut dropped: Vec<String> = Vec::new();
    let meta = doc
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut attrs_meta = meta
        .get(META_ATTRS)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut otel = meta
        .get(META_OTEL)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut sizes: Vec<(usize, String)> = attrs_meta
        .iter()
        .map(|(k, v)| (v.to_string().len() + k.len(), k.clone()))
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut sizes = sizes.into_iter();
    loop {
        otel.insert(
            "trimmed".into(),
            json!(format!(
                "document of {original} bytes exceeded the {MAX_DOCUMENT_BYTES}-byte limit; dropped: {}",
                if dropped.is_empty() { "-".to_owned() } else { dropped.join(", ") }
            )),
        );
        let mut metadata = Map::new();
        metadata.insert(META_OTEL.into(), Value::Object(otel.clone()));
        if !attrs_meta.is_empty() {
            metadata.insert(META_ATTRS.into(), Value::Object(attrs_meta.clone()));
        }
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("metadata".into(), Value::Object(metadata));
        }
        let text = encoded(&doc);
        if text.len() <= MAX_DOCUMENT_BYTES {
            return (text, true);
        }
        if let Some((_, key)) = sizes.next() {
            attrs_meta.remove(&key);
            dropped.push(format!("attribute {}", truncate(&key, 64)));
        } else if otel.remove("events").is_some() {
            dropped.push("event names".into());
        } else {
            // Only the fixed fields are left (names are capped, annotations too): cannot happen
            // with X-Ray's own limits, but never send an oversized document.
            otel.clear();
            dropped.push("all metadata".into());
            if let Some(obj) = doc.as_object_mut() {
                obj.remove("metadata");
                obj.remove("annotations");
                obj.remove("http");
            }
            return (encoded(&doc), true);
        }
    }
}

/// A datagram for the X-Ray daemon: the header line, a newline, the document.
pub fn datagram(document: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(DAEMON_HEADER.len() + 1 + document.len());
    out.extend_from_slice(DAEMON_HEADER.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(document.as_bytes());
    out
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn nanos(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_f64)
        .map(|s| (s * 1e9).round().max(0.0) as u64)
        .unwrap_or_default()
}

fn restore(
    seg: &Value,
    trace_id: &str,
    parent: &str,
    jwt: bool,
    out: &mut Vec<StoredSpan>,
) -> Result<(), XrayError> {
    let id = str_field(seg, "id")
        .ok_or_else(|| XrayError::Invalid("a segment has no `id`".into()))?
        .to_owned();
    let otel = seg.get("metadata").and_then(|m| m.get(META_OTEL));
    let meta_str = |k: &str| otel.and_then(|o| str_field(o, k)).map(str::to_owned);
    let name = str_field(seg, "name").unwrap_or("unnamed").to_owned();
    let mut attributes: BTreeMap<String, Value> = seg
        .get("metadata")
        .and_then(|m| m.get(META_ATTRS))
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if let Some(ann) = seg.get("annotations").and_then(Value::as_object) {
        for (key, value) in ann {
            let attr = ANNOTATED
                .iter()
                .find(|(_, k)| k == key)
                .map(|(a, _)| (*a).to_owned())
                .unwrap_or_else(|| key.clone());
            attributes.insert(attr, value.clone());
        }
    }
    let status = meta_str("status").unwrap_or_else(|| {
        let flag = |k| seg.get(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("fault") || flag("error") {
            "error".to_owned()
        } else {
            "unset".to_owned()
        }
    });
    let kind = meta_str("kind").unwrap_or_else(|| {
        if str_field(seg, "type") == Some("subsegment") || !parent.is_empty() {
            "client".to_owned()
        } else {
            "server".to_owned()
        }
    });
    let events = otel
        .and_then(|o| o.get("events"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    out.push(StoredSpan {
        trace_id: trace_id.to_owned(),
        span_id: id.clone(),
        parent_span_id: meta_str("parent_span_id").unwrap_or_else(|| {
            str_field(seg, "parent_id")
                .map(str::to_owned)
                .unwrap_or_else(|| parent.to_owned())
        }),
        name: meta_str("name").unwrap_or_else(|| name.clone()),
        kind,
        service: meta_str("service").unwrap_or(name),
        start_unix_nano: nanos(seg, "start_time"),
        end_unix_nano: nanos(seg, "end_time"),
        status,
        attributes,
        events,
        jwt_shaped: if jwt {
            vec!["X-Ray segment document".to_owned()]
        } else {
            Vec::new()
        },
    });
    if let Some(subs) = seg.get("subsegments").and_then(Value::as_array) {
        for sub in subs {
            restore(sub, trace_id, &id, false, out)?;
        }
    }
    Ok(())
}

/// The spans of one segment document as `BatchGetTraces` returns it (nested subsegments
/// flattened). A document holding a JWT-shaped value says so in `jwt_shaped`.
pub fn spans_from_document(document: &str) -> Result<Vec<StoredSpan>, XrayError> {
    let seg: Value = serde_json::from_str(document)?;
    let xray_id =
        str_field(&seg, "trace_id").ok_or_else(|| XrayError::Invalid("no `trace_id`".into()))?;
    let trace_id = w3c_trace_id(xray_id)
        .ok_or_else(|| XrayError::Invalid(format!("malformed trace id `{xray_id}`")))?;
    let mut out = Vec::new();
    restore(
        &seg,
        &trace_id,
        "",
        redact::contains_jwt(document),
        &mut out,
    )?;
    Ok(out)
}

fn otel_to_json(v: &opentelemetry::Value) -> Value {
    use opentelemetry::{Array, Value as V};
    match v {
        V::Bool(b) => json!(b),
        V::I64(i) => json!(i),
        V::F64(f) => json!(f),
        V::String(s) => json!(s.as_str()),
        V::Array(Array::Bool(a)) => json!(a),
        V::Array(Array::I64(a)) => json!(a),
        V::Array(Array::F64(a)) => json!(a),
        V::Array(Array::String(a)) => json!(a.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        other => json!(other.to_string()),
    }
}

fn unix_nano(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// The flat form of an SDK span (what the store holds), for mapping.
pub(crate) fn stored_from_sdk(span: &SpanData, service: &str, region: Option<&str>) -> StoredSpan {
    let mut attributes: BTreeMap<String, Value> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_owned(), otel_to_json(&kv.value)))
        .collect();
    if let Some(r) = region {
        attributes
            .entry("cloud.region".into())
            .or_insert_with(|| json!(r));
    }
    let parent = if span.parent_span_id == opentelemetry::trace::SpanId::INVALID {
        String::new()
    } else {
        span.parent_span_id.to_string()
    };
    StoredSpan {
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent_span_id: parent,
        name: span.name.to_string(),
        kind: match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Internal => "internal",
        }
        .to_owned(),
        service: service.to_owned(),
        start_unix_nano: unix_nano(span.start_time),
        end_unix_nano: unix_nano(span.end_time),
        status: match span.status {
            Status::Ok => "ok",
            Status::Error { .. } => "error",
            Status::Unset => "unset",
        }
        .to_owned(),
        attributes,
        events: span
            .events
            .events
            .iter()
            .map(|e| e.name.to_string())
            .collect(),
        jwt_shaped: Vec::new(),
    }
}

/// Counters of one X-Ray exporter.
#[derive(Debug, Default)]
pub struct XrayStats {
    /// Documents handed to the daemon or accepted by `PutTraceSegments`.
    pub sent: AtomicU64,
    /// Documents trimmed to fit [`MAX_DOCUMENT_BYTES`].
    pub trimmed: AtomicU64,
    /// Documents re-sent after coming back in `UnprocessedTraceSegments`.
    pub retried: AtomicU64,
    /// Documents given up on (after [`PUT_ATTEMPTS`] attempts, or a failed send).
    pub dropped: AtomicU64,
}

/// What one `PutTraceSegments` round achieved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PutReport {
    /// Accepted documents.
    pub accepted: usize,
    /// Re-sent documents (counted per retry).
    pub retried: usize,
    /// Dropped documents.
    pub dropped: usize,
    /// Why documents were dropped (X-Ray's error codes and messages, or the call's error).
    pub errors: Vec<String>,
}

enum Job {
    #[cfg(feature = "xray-api")]
    Put(Vec<String>, mpsc::Sender<PutReport>),
    Credentials(mpsc::Sender<Result<aws_credential_types::Credentials, String>>),
}

/// A thread with its own Tokio runtime running the AWS SDK: span exporters run on the SDK's
/// batch thread (no runtime), and a runtime must not be built or dropped inside another one.
/// It resolves credentials (for SigV4 signing) and, with the `xray-api` feature, sends
/// `PutTraceSegments`.
#[derive(Debug)]
pub struct AwsWorker {
    tx: Mutex<mpsc::Sender<Job>>,
    timeout: Duration,
}

impl AwsWorker {
    /// Start the worker. The AWS configuration (region, credentials, `AWS_ENDPOINT_URL_XRAY`)
    /// comes from the standard chain, loaded on the worker's thread.
    pub fn start(timeout: Duration) -> std::io::Result<Self> {
        Self::start_with(timeout, crate::aws_http::config_loader())
    }

    /// Start the worker with an explicit AWS configuration loader (endpoint, region, credentials).
    pub fn start_with(
        timeout: Duration,
        loader: aws_config::ConfigLoader,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tokentrail-xray".into())
            .spawn(move || {
                let config = runtime.block_on(loader.load());
                #[cfg(feature = "xray-api")]
                let client = aws_sdk_xray::Client::new(&config);
                for job in rx {
                    match job {
                        #[cfg(feature = "xray-api")]
                        Job::Put(docs, reply) => {
                            let _ = reply.send(runtime.block_on(put_all(&client, docs)));
                        }
                        Job::Credentials(reply) => {
                            use aws_credential_types::provider::ProvideCredentials;
                            let creds = match config.credentials_provider() {
                                Some(p) => runtime
                                    .block_on(p.provide_credentials())
                                    .map_err(|e| e.to_string()),
                                None => Err("no AWS credentials configured".to_owned()),
                            };
                            let _ = reply.send(creds);
                        }
                    }
                }
            })?;
        Ok(Self {
            tx: Mutex::new(tx),
            timeout,
        })
    }

    fn ask<T>(&self, job: impl FnOnce(mpsc::Sender<T>) -> Job, bound: Duration) -> Option<T> {
        let (reply, rx) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .map(|tx| tx.send(job(reply)).is_ok())
            .unwrap_or(false);
        if !sent {
            return None;
        }
        rx.recv_timeout(bound).ok()
    }

    /// Send documents with `PutTraceSegments` (batches of [`PUT_BATCH`], unprocessed ones
    /// retried), waiting at most the worker's timeout per attempt.
    #[cfg(feature = "xray-api")]
    pub fn put(&self, docs: Vec<String>) -> PutReport {
        let n = docs.len();
        let bound = self.timeout * (PUT_ATTEMPTS as u32) * (n.div_ceil(PUT_BATCH).max(1) as u32);
        self.ask(|r| Job::Put(docs, r), bound)
            .unwrap_or_else(|| PutReport {
                dropped: n,
                errors: vec![format!(
                    "PutTraceSegments did not complete within {} ms",
                    bound.as_millis()
                )],
                ..PutReport::default()
            })
    }

    /// Current AWS credentials from the standard chain.
    pub fn credentials(&self) -> Result<aws_credential_types::Credentials, String> {
        self.ask(Job::Credentials, self.timeout)
            .unwrap_or_else(|| Err("AWS credentials were not resolved in time".to_owned()))
    }
}

#[cfg(feature = "xray-api")]
fn doc_id(doc: &str) -> Option<String> {
    serde_json::from_str::<Value>(doc)
        .ok()
        .and_then(|v| str_field(&v, "id").map(str::to_owned))
}

#[cfg(feature = "xray-api")]
async fn put_all(client: &aws_sdk_xray::Client, docs: Vec<String>) -> PutReport {
    let mut report = PutReport::default();
    for chunk in docs.chunks(PUT_BATCH) {
        let mut pending: Vec<String> = chunk.to_vec();
        for attempt in 1..=PUT_ATTEMPTS {
            let result = client
                .put_trace_segments()
                .set_trace_segment_documents(Some(pending.clone()))
                .send()
                .await;
            match result {
                Ok(out) => {
                    let unprocessed = out.unprocessed_trace_segments();
                    if unprocessed.is_empty() {
                        report.accepted += pending.len();
                        pending.clear();
                        break;
                    }
                    let ids: std::collections::HashSet<&str> =
                        unprocessed.iter().filter_map(|u| u.id()).collect();
                    let before = pending.len();
                    if ids.len() == unprocessed.len() {
                        pending.retain(|d| doc_id(d).is_some_and(|id| ids.contains(id.as_str())));
                    }
                    report.accepted += before - pending.len();
                    if attempt == PUT_ATTEMPTS {
                        report.errors.extend(unprocessed.iter().map(|u| {
                            format!(
                                "segment {}: {} {}",
                                u.id().unwrap_or("?"),
                                u.error_code().unwrap_or("?"),
                                u.message().unwrap_or_default()
                            )
                        }));
                    }
                }
                Err(e) => {
                    if attempt == PUT_ATTEMPTS {
                        report.errors.push(format!(
                            "PutTraceSegments failed: {}",
                            aws_sdk_xray::error::DisplayErrorContext(&e)
                        ));
                    }
                }
            }
            if attempt < PUT_ATTEMPTS {
                report.retried += pending.len();
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
        }
        report.dropped += pending.len();
    }
    report
}

/// Where an [`XrayExporter`] sends documents.
#[derive(Debug)]
pub enum XraySink {
    /// UDP to the X-Ray daemon.
    Daemon {
        /// Local socket.
        socket: UdpSocket,
        /// Daemon address.
        addr: SocketAddr,
    },
    /// `PutTraceSegments` (the `xray-api` feature).
    #[cfg(feature = "xray-api")]
    Api(AwsWorker),
}

impl XraySink {
    /// The daemon at `address` (`host:port`; `AWS_XRAY_DAEMON_ADDRESS` form, where a
    /// `tcp:… udp:…` pair names the UDP one).
    pub fn daemon(address: &str) -> std::io::Result<Self> {
        let udp = address
            .split_whitespace()
            .find_map(|p| p.strip_prefix("udp:"))
            .unwrap_or(address)
            .trim();
        let addr = udp.to_socket_addrs()?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("X-Ray daemon address `{udp}` resolves to nothing"),
            )
        })?;
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Ok(Self::Daemon {
            socket: UdpSocket::bind(bind)?,
            addr,
        })
    }
}

/// Span exporter producing X-Ray segment documents.
#[derive(Debug)]
pub struct XrayExporter {
    sink: XraySink,
    service: String,
    region: Option<String>,
    stats: Arc<XrayStats>,
}

impl XrayExporter {
    /// An exporter for `service` sending to `sink`.
    pub fn new(sink: XraySink, service: &str, stats: Arc<XrayStats>) -> Self {
        Self {
            sink,
            service: service.to_owned(),
            region: std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()),
            stats,
        }
    }

    /// Map and send spans (the store's flat form); the SDK path converts and calls this.
    pub fn send(&self, spans: &[StoredSpan]) -> Result<(), String> {
        let mut docs = Vec::with_capacity(spans.len());
        for s in spans {
            let (doc, trimmed) = segment_document(s);
            if trimmed {
                self.stats.trimmed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    span_id = %s.span_id,
                    "x-ray segment document over {MAX_DOCUMENT_BYTES} bytes: trimmed (see metadata.otel.trimmed)"
                );
            }
            docs.push(doc);
        }
        match &self.sink {
            XraySink::Daemon { socket, addr } => {
                let mut failed = 0usize;
                let mut last = String::new();
                for d in &docs {
                    match socket.send_to(&datagram(d), addr) {
                        Ok(_) => {
                            self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failed += 1;
                            last = e.to_string();
                        }
                    }
                }
                if failed > 0 {
                    self.stats
                        .dropped
                        .fetch_add(failed as u64, Ordering::Relaxed);
                    return Err(format!(
                        "{failed} datagram(s) to the X-Ray daemon at {addr} failed: {last}"
                    ));
                }
                Ok(())
            }
            #[cfg(feature = "xray-api")]
            XraySink::Api(worker) => {
                let report = worker.put(docs);
                self.stats
                    .sent
                    .fetch_add(report.accepted as u64, Ordering::Relaxed);
                self.stats
                    .retried
                    .fetch_add(report.retried as u64, Ordering::Relaxed);
                if report.dropped > 0 {
                    self.stats
                        .dropped
                        .fetch_add(report.dropped as u64, Ordering::Relaxed);
                    let why = redact::scrub(&report.errors.join("; ")).into_owned();
                    tracing::warn!(
                        dropped = report.dropped,
                        "x-ray PutTraceSegments dropped {} segment document(s): {why}",
                        report.dropped
                    );
                    return Err(format!(
                        "{} segment document(s) dropped: {why}",
                        report.dropped
                    ));
                }
                Ok(())
            }
        }
    }
}

impl SpanExporter for XrayExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans: Vec<StoredSpan> = batch
            .iter()
            .map(|s| stored_from_sdk(s, &self.service, self.region.as_deref()))
            .collect();
        self.send(&spans).map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(name) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
            self.service = name.to_string();
        }
    }
}

/// OTLP/HTTP client for X-Ray's OTLP endpoint: signs each request with SigV4 (service `xray`)
/// using the standard credential chain, then sends it with a blocking client (the batch
/// exporter runs outside any async runtime).
#[derive(Debug)]
pub struct SigV4HttpClient {
    inner: reqwest::blocking::Client,
    region: String,
    worker: AwsWorker,
}

impl SigV4HttpClient {
    /// A client signing for `region`. Build it outside an async runtime.
    pub fn new(region: &str, timeout: Duration) -> std::io::Result<Self> {
        let inner = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            inner,
            region: region.to_owned(),
            worker: AwsWorker::start(timeout)?,
        })
    }
}

/// Sign `request` with SigV4 for `service` in `region` (headers `authorization`, `x-amz-date`,
/// `x-amz-security-token` when the credentials have a session token).
pub fn sigv4_sign(
    request: &mut http::Request<bytes::Bytes>,
    creds: &aws_credential_types::Credentials,
    region: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = request.uri().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &uri,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for SigV4HttpClient {
    async fn send_bytes(
        &self,
        mut request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let creds = self.worker.credentials().map_err(|e| {
            Box::new(std::io::Error::other(format!(
                "cannot sign the OTLP request for X-Ray: {e}"
            ))) as opentelemetry_http::HttpError
        })?;
        sigv4_sign(
            &mut request,
            &creds,
            &self.region,
            "xray",
            SystemTime::now(),
        )
        .map_err(|e| Box::new(std::io::Error::other(e)) as opentelemetry_http::HttpError)?;
        self.inner.send_bytes(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: &str, parent: &str, attrs: &[(&str, Value)]) -> StoredSpan {
        StoredSpan {
            trace_id: "6b0aeb080123456789abcdef01234567".into(),
            span_id: "70de5b6f19ff9a0a".into(),
            parent_span_id: parent.into(),
            name: "gateway.interceptor".into(),
            kind: kind.into(),
            service: "interceptor".into(),
            start_unix_nano: 1_795_877_638_500_000_000,
            end_unix_nano: 1_795_877_638_512_345_000,
            status: "unset".into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            events: vec![],
            jwt_shaped: vec![],
        }
    }

    fn hop_attrs() -> Vec<(&'static str, Value)> {
        vec![
            (attrs::PATTERN, json!("broker")),
            (attrs::HOP_NAME, json!("gateway.interceptor")),
            (attrs::HOP_INDEX, json!(4)),
            (attrs::HOP_OUTCOME, json!("rejected")),
            (attrs::FAILURE_REASON, json!("wrong_audience")),
            (attrs::CREDENTIAL_KIND, json!("user_jwt")),
            (attrs::CREDENTIAL_SUBJECT, json!("bob")),
            (attrs::CREDENTIAL_FINGERPRINT, json!("6b0b4ba4c0ffee00")),
            (attrs::CREDENTIAL_ISSUER, json!("http://127.0.0.1:1/")),
            (semconv::HTTP_RESPONSE_STATUS_CODE, json!(401)),
            (semconv::HTTP_REQUEST_METHOD, json!("POST")),
        ]
    }

    #[test]
    fn server_span_is_a_segment_with_annotations_and_flags() {
        let s = span("server", "53995c3f42cd8ad8", &hop_attrs());
        let (doc, trimmed) = segment_document(&s);
        assert!(!trimmed);
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["name"], "interceptor");
        assert_eq!(v["trace_id"], "1-6b0aeb08-0123456789abcdef01234567");
        assert_eq!(v["parent_id"], "53995c3f42cd8ad8");
        assert!(v.get("type").is_none(), "a server span is a segment");
        assert_eq!(v["start_time"], json!(1_795_877_638.5));
        assert_eq!(v["error"], true);
        assert!(v.get("fault").is_none());
        assert_eq!(v["http"]["response"]["status"], 401);
        assert_eq!(v["user"], "bob");
        let ann = v["annotations"].as_object().unwrap();
        assert_eq!(ann.len(), MAX_ANNOTATIONS_PER_SEGMENT);
        assert_eq!(ann["tokentrail_failure_reason"], "wrong_audience");
        for key in ann.keys() {
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        }
        assert_eq!(
            v["metadata"]["attributes"][attrs::CREDENTIAL_ISSUER],
            "http://127.0.0.1:1/"
        );
    }

    #[test]
    fn client_spans_are_remote_or_aws_subsegments() {
        let mut s = span("client", "53995c3f42cd8ad8", &[]);
        s.name = "POST /token".into();
        let v: Value = serde_json::from_str(&segment_document(&s).0).unwrap();
        assert_eq!(v["type"], "subsegment");
        assert_eq!(v["namespace"], "remote");
        assert_eq!(v["name"], "POST /token");
        let aws = span(
            "client",
            "53995c3f42cd8ad8",
            &[
                (semconv::RPC_SYSTEM, json!("aws-api")),
                (semconv::RPC_METHOD, json!("GetCallerIdentity")),
                (semconv::AWS_REQUEST_ID, json!("req-1")),
                (semconv::HTTP_RESPONSE_STATUS_CODE, json!(503)),
            ],
        );
        let v: Value = serde_json::from_str(&segment_document(&aws).0).unwrap();
        assert_eq!(v["namespace"], "aws");
        assert_eq!(v["aws"]["operation"], "GetCallerIdentity");
        assert_eq!(v["aws"]["request_id"], "req-1");
        assert_eq!(v["fault"], true);
        let mut internal = span("internal", "53995c3f42cd8ad8", &[]);
        internal.status = "error".into();
        let v: Value = serde_json::from_str(&segment_document(&internal).0).unwrap();
        assert!(v.get("namespace").is_none());
        assert_eq!(v["fault"], true);
        let root = span("client", "", &[]);
        let v: Value = serde_json::from_str(&segment_document(&root).0).unwrap();
        assert!(v.get("type").is_none(), "a root span is a segment");
    }

    #[test]
    fn lambda_hop_hangs_under_the_function_segment_only_in_the_same_trace() {
        let mut a = hop_attrs();
        a.push((
            attrs::XRAY_LAMBDA_TRACE_ID,
            json!("1-6b0aeb08-0123456789abcdef01234567"),
        ));
        a.push((attrs::XRAY_LAMBDA_PARENT_ID, json!("1111222233334444")));
        let v: Value =
            serde_json::from_str(&segment_document(&span("server", "53995c3f42cd8ad8", &a)).0)
                .unwrap();
        assert_eq!(v["type"], "subsegment");
        assert_eq!(v["parent_id"], "1111222233334444");
        assert_eq!(v["name"], "interceptor");
        // The W3C parent survives in metadata for the audit.
        assert_eq!(v["metadata"]["otel"]["parent_span_id"], "53995c3f42cd8ad8");

        let mut other = hop_attrs();
        other.push((
            attrs::XRAY_LAMBDA_TRACE_ID,
            json!("1-6b0aeb08-ffffffffffffffffffffffff"),
        ));
        other.push((attrs::XRAY_LAMBDA_PARENT_ID, json!("1111222233334444")));
        let v: Value =
            serde_json::from_str(&segment_document(&span("server", "53995c3f42cd8ad8", &other)).0)
                .unwrap();
        assert!(v.get("type").is_none());
        assert_eq!(v["parent_id"], "53995c3f42cd8ad8");
    }

    #[test]
    fn idp_spans_carry_no_annotations() {
        let s = span(
            "server",
            "53995c3f42cd8ad8",
            &[
                (attrs::HOP_NAME, json!("idp.token")),
                (attrs::PATTERN, json!("broker")),
            ],
        );
        let v: Value = serde_json::from_str(&segment_document(&s).0).unwrap();
        assert!(v.get("annotations").is_none());
        assert_eq!(v["metadata"]["attributes"][attrs::HOP_NAME], "idp.token");
    }

    #[test]
    fn documents_round_trip_to_the_same_span() {
        let mut s = span("server", "53995c3f42cd8ad8", &hop_attrs());
        s.events = vec!["rejected".into()];
        s.status = "error".into();
        let back = spans_from_document(&segment_document(&s).0).unwrap();
        assert_eq!(back.len(), 1);
        let b = &back[0];
        assert_eq!(b.trace_id, s.trace_id);
        assert_eq!(b.parent_span_id, s.parent_span_id);
        assert_eq!(b.name, s.name);
        assert_eq!(b.kind, s.kind);
        assert_eq!(b.service, s.service);
        assert_eq!(b.status, s.status);
        assert_eq!(b.events, s.events);
        assert_eq!(b.attributes, s.attributes);
        assert!(b.start_unix_nano.abs_diff(s.start_unix_nano) < 1000);
        assert!(b.end_unix_nano.abs_diff(s.end_unix_nano) < 1000);
    }

    #[test]
    fn foreign_segments_with_nested_subsegments_are_flattened() {
        let doc = r#"{"name":"my-fn","id":"1111222233334444","trace_id":"1-6b0aeb08-0123456789abcdef01234567","start_time":1795877638.5,"end_time":1795877639.5,"origin":"AWS::Lambda::Function","subsegments":[{"name":"Invocation","id":"aaaabbbbccccdddd","start_time":1795877638.6,"end_time":1795877639.4}]}"#;
        let spans = spans_from_document(doc).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].parent_span_id, "1111222233334444");
        assert_eq!(spans[1].service, "Invocation");
        assert!(spans_from_document(r#"{"id":"x","trace_id":"nope"}"#).is_err());
        assert!(spans_from_document("not json").is_err());
    }

    #[test]
    fn datagram_is_header_newline_document() {
        let d = datagram(r#"{"a":1}"#);
        let text = String::from_utf8(d).unwrap();
        let (head, body) = text.split_once('\n').unwrap();
        assert_eq!(head, DAEMON_HEADER);
        let h: Value = serde_json::from_str(head).unwrap();
        assert_eq!(h, json!({"format": "json", "version": 1}));
        assert_eq!(body, r#"{"a":1}"#);
    }

    #[test]
    fn oversized_span_is_trimmed_not_dropped() {
        let mut a = hop_attrs();
        let big = "x".repeat(40_000);
        a.push(("app.big_one", json!(big.clone())));
        a.push(("app.big_two", json!(big)));
        a.push(("app.small", json!("kept")));
        let s = span("server", "53995c3f42cd8ad8", &a);
        let (doc, trimmed) = segment_document(&s);
        assert!(trimmed);
        assert!(doc.len() <= MAX_DOCUMENT_BYTES, "{}", doc.len());
        assert!(datagram(&doc).len() <= 65_507, "fits one UDP datagram");
        let v: Value = serde_json::from_str(&doc).unwrap();
        let note = v["metadata"]["otel"]["trimmed"].as_str().unwrap();
        assert!(
            note.contains("app.big_one") || note.contains("app.big_two"),
            "{note}"
        );
        assert_eq!(v["metadata"]["attributes"]["app.small"], "kept");
        assert_eq!(v["annotations"]["tokentrail_hop"], "gateway.interceptor");
        assert_eq!(v["id"], "70de5b6f19ff9a0a");
    }

    #[test]
    fn daemon_sink_sends_one_datagram_per_span() {
        let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(XrayStats::default());
        let exporter = XrayExporter::new(
            XraySink::daemon(&format!("tcp:{addr} udp:{addr}")).unwrap(),
            "interceptor",
            stats.clone(),
        );
        let mut a = hop_attrs();
        a.push(("app.big", json!("y".repeat(70_000))));
        exporter
            .send(&[span("server", "53995c3f42cd8ad8", &a)])
            .unwrap();
        let mut buf = vec![0u8; 70_000];
        let n = listener.recv(&mut buf).unwrap();
        assert!(n <= DAEMON_HEADER.len() + 1 + MAX_DOCUMENT_BYTES);
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let (head, body) = text.split_once('\n').unwrap();
        assert_eq!(head, DAEMON_HEADER);
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["name"], "interceptor");
        assert_eq!(stats.sent.load(Ordering::Relaxed), 1);
        assert_eq!(stats.trimmed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn secrets_never_reach_a_document() {
        let jwt = crate::fixtures::jwt("alice");
        let s = span(
            "server",
            "53995c3f42cd8ad8",
            &[
                (attrs::HOP_NAME, json!("target.api")),
                (attrs::CREDENTIAL_SUBJECT, json!(jwt.clone())),
                ("app.note", json!(format!("Bearer {jwt}"))),
            ],
        );
        let (doc, _) = segment_document(&s);
        assert!(!doc.contains(&jwt));
        assert!(!redact::contains_jwt(&doc));
        serde_json::from_str::<Value>(&doc).unwrap();
    }

    #[test]
    fn sigv4_signs_for_xray() {
        let creds =
            aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        let mut req = http::Request::builder()
            .method("POST")
            .uri("https://xray.us-east-1.amazonaws.com/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(bytes::Bytes::from_static(b"\x0a\x00"))
            .unwrap();
        sigv4_sign(&mut req, &creds, "us-east-1", "xray", SystemTime::now()).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
        assert!(auth.contains("/us-east-1/xray/aws4_request"));
        assert!(req.headers().contains_key("x-amz-date"));
    }

    #[cfg(feature = "xray-api")]
    /// A PutTraceSegments endpoint answering with `answers[n]` to the n-th call (then `{}`),
    /// recording the documents of each call.
    fn fake_xray(answers: Vec<Value>) -> (String, Arc<Mutex<Vec<Vec<String>>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let addr = crate::test_http::serve(move |body| {
            let req: Value = serde_json::from_slice(body).unwrap();
            let docs: Vec<String> = req["TraceSegmentDocuments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect();
            let n = {
                let mut c = seen.lock().unwrap();
                c.push(docs);
                c.len() - 1
            };
            let answer = answers.get(n).cloned().unwrap_or(json!({})).to_string();
            ("application/json", answer)
        });
        let url = format!("http://{addr}");
        (url, calls)
    }

    #[cfg(feature = "xray-api")]
    fn worker(url: &str) -> AwsWorker {
        let loader = crate::aws_http::config_loader()
            .endpoint_url(url)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ));
        AwsWorker::start_with(Duration::from_secs(5), loader).unwrap()
    }

    #[cfg(feature = "xray-api")]
    fn docs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let mut s = span("server", "", &hop_attrs());
                s.span_id = format!("{i:016x}");
                segment_document(&s).0
            })
            .collect()
    }

    #[cfg(feature = "xray-api")]
    #[test]
    fn unprocessed_segments_are_retried_then_accepted() {
        let first = docs(60);
        let unprocessed = json!({"UnprocessedTraceSegments": [
            {"Id": "0000000000000003", "ErrorCode": "ThrottledException", "Message": "slow down"}
        ]});
        let (url, calls) = fake_xray(vec![unprocessed]);
        let report = worker(&url).put(first);
        assert_eq!(report.accepted, 60, "{report:?}");
        assert_eq!(report.retried, 1);
        assert_eq!(report.dropped, 0);
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 3, "50 + the retried one + the other 10");
        assert_eq!(calls[0].len(), PUT_BATCH);
        assert_eq!(calls[1].len(), 1);
        assert!(calls[1][0].contains("\"id\":\"0000000000000003\""));
        assert_eq!(calls[2].len(), 10);
    }

    #[cfg(feature = "xray-api")]
    #[test]
    fn segments_unprocessed_every_time_are_counted_as_dropped_with_the_reason() {
        let always = json!({"UnprocessedTraceSegments": [
            {"Id": "0000000000000001", "ErrorCode": "InvalidSegment", "Message": "bad doc"}
        ]});
        let (url, calls) = fake_xray(vec![always.clone(), always.clone(), always]);
        let report = worker(&url).put(docs(2));
        assert_eq!(report.accepted, 1);
        assert_eq!(report.dropped, 1);
        assert_eq!(report.retried, 2);
        assert!(
            report.errors[0].contains("InvalidSegment") && report.errors[0].contains("bad doc"),
            "{report:?}"
        );
        assert_eq!(calls.lock().unwrap().len(), PUT_ATTEMPTS);
    }

    #[test]
    fn trace_ids_convert_both_ways() {
        assert_eq!(
            w3c_trace_id("1-6b0aeb08-0123456789abcdef01234567").as_deref(),
            Some("6b0aeb080123456789abcdef01234567")
        );
        assert!(w3c_trace_id("1-6b0aeb08-0123").is_none());
        assert!(w3c_trace_id("2-6b0aeb08-0123456789abcdef01234567").is_none());
    }
}
