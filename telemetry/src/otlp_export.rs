//! OTLP/HTTP protobuf span export written straight from the SDK's span records.
//!
//! `opentelemetry-otlp` first copies every span into owned `opentelemetry-proto` messages (each
//! attribute key and value cloned into a new `String`, every id into a new `Vec`), then encodes
//! them with prost. On a hop that copy and its frees cost more than the encoding itself, and the
//! hop pays it for every span. [`encode_request`] writes the `ExportTraceServiceRequest` bytes
//! directly from `&[SpanData]` — byte for byte what `opentelemetry-proto` + prost produce (a test
//! compares both on random spans, scrubbed) — and [`OtlpHttpExporter`] posts them.
//!
//! The encoder is also the exporter's last-line scrub: every string a span carries (its name,
//! status message, attribute values, event names) is written as [`scrub`] returns it, so this
//! exporter runs without [`crate::export::RedactingExporter`] in front (which would scrub each
//! string a second time). Recurring attributes are written from a [`Memo`] of their scrubbed
//! encodings.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_http::{Bytes, HttpClient};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::memo::Memo;
use crate::redact::scrub;

/// Protobuf wire types used here.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field, written even when empty (a oneof member, a present message).
fn len_always(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A proto3 `string`/`bytes` field: absent when empty.
fn len_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        len_always(buf, field, bytes);
    }
}

/// A proto3 varint field (`uint32`, `int32`, enum): absent when zero.
fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An embedded message: its body is written in place, then its length is put in front of it
/// (one byte reserved; a longer length shifts the body once).
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        // Shift the body right by the prefix's extra bytes (one memmove; `Vec::splice` costs
        // several hundred instructions more per span), then write the prefix in front. The
        // varint is written out here rather than through `varint` into a stack buffer: routing
        // `varint` through one cost ~220 instructions per span in `encode_request_into`.
        let mut prefix = [0u8; 10];
        let (mut n, mut v) = (0, len as u64);
        while v >= 0x80 {
            prefix[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        prefix[n] = v as u8;
        let end = buf.len();
        buf.extend_from_slice(&prefix[..n]);
        buf.copy_within(at + 1..end, at + 1 + n);
        buf[at..=at + n].copy_from_slice(&prefix[..=n]);
    }
}

/// An `AnyValue`, its strings scrubbed.
fn any_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::String(s) => len_always(buf, 1, scrub(s.as_str()).as_bytes()),
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(a) => message(buf, 5, |buf| array(buf, a)),
        // A value kind added to the API after this was written: its text, never a panic.
        other => len_always(buf, 1, scrub(&other.to_string()).as_bytes()),
    }
}

fn array(buf: &mut Vec<u8>, a: &Array) {
    fn each<T>(buf: &mut Vec<u8>, items: &[T], to_value: impl Fn(&T) -> Value) {
        for item in items {
            message(buf, 1, |buf| any_value(buf, &to_value(item)));
        }
    }
    match a {
        Array::Bool(v) => each(buf, v, |b| Value::Bool(*b)),
        Array::I64(v) => each(buf, v, |i| Value::I64(*i)),
        Array::F64(v) => each(buf, v, |f| Value::F64(*f)),
        Array::String(v) => {
            for s in v {
                message(buf, 1, |buf| {
                    len_always(buf, 1, scrub(s.as_str()).as_bytes())
                });
            }
        }
        other => message(buf, 1, |buf| {
            len_always(buf, 1, scrub(&other.to_string()).as_bytes())
        }),
    }
}

/// The attribute memo of this thread (the exporter's batch thread), and room for a memo key.
struct AttributeMemo {
    memo: Memo,
    key: Vec<u8>,
}

impl AttributeMemo {
    const fn new() -> Self {
        Self {
            memo: Memo::new(),
            key: Vec::new(),
        }
    }
}

thread_local! {
    static ATTRIBUTES: std::cell::RefCell<AttributeMemo> =
        const { std::cell::RefCell::new(AttributeMemo::new()) };
}

/// The memo key of an attribute whose value is a list of strings, as field `field`: the field,
/// the kind, the key's length and bytes, then each string after its length, which is all its
/// encoding depends on.
fn list_memo_key(out: &mut Vec<u8>, field: u32, k: &str, items: &[StringValue]) {
    out.clear();
    out.extend_from_slice(&[field as u8, 5]);
    varint(out, k.len() as u64);
    out.extend_from_slice(k.as_bytes());
    for s in items {
        varint(out, s.as_str().len() as u64);
        out.extend_from_slice(s.as_str().as_bytes());
    }
}

/// The first eight bytes of `b` (fewer, zero-padded, when shorter).
#[inline(always)]
fn first_word(b: &[u8]) -> u64 {
    match b.first_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => b.iter().fold(0, |w, &x| w << 8 | u64::from(x)),
    }
}

/// A scalar attribute (string, boolean, integer) through the memo without building its key
/// unless it is new: the key is `[field, kind, key length, key bytes, value bytes]`, compared in
/// place. The slot is chosen by the key's address (attribute names are mostly `&'static str`),
/// the lengths and the value's first and last eight bytes: that only decides how often the
/// memo hits, never what it writes.
#[inline(always)]
fn scalar_attribute(
    memo: &mut Memo,
    buf: &mut Vec<u8>,
    head: [u8; 2],
    k: &str,
    value: &[u8],
    encode: impl FnOnce(&mut Vec<u8>) -> Option<()>,
) {
    let (k, len) = (k.as_bytes(), 3 + k.len() + value.len());
    if len > crate::memo::MAX_KEY {
        encode(buf);
        return;
    }
    use crate::memo::MIX;
    let last = value
        .len()
        .checked_sub(8)
        .map_or(0, |at| first_word(&value[at..]));
    let hash = ((k.as_ptr() as u64) ^ (len as u64) << 48 ^ u64::from(head[1]) << 60)
        .wrapping_mul(MIX)
        .rotate_left(23)
        ^ first_word(value);
    let hash = (hash.wrapping_mul(MIX).rotate_left(23) ^ last).wrapping_mul(MIX);
    let head = [head[0], head[1], k.len() as u8];
    memo.write_with(
        hash,
        |kept| {
            kept.len() == len
                && kept[..3] == head
                && &kept[3..3 + k.len()] == k
                && &kept[3 + k.len()..] == value
        },
        |kept| {
            kept.extend_from_slice(&head);
            kept.extend_from_slice(k);
            kept.extend_from_slice(value);
        },
        buf,
        encode,
    );
}

/// `KeyValue` messages as repeated field `field`, keys and values scrubbed; recurring ones from
/// the memo.
fn attributes<'a>(
    memo: &mut AttributeMemo,
    buf: &mut Vec<u8>,
    field: u32,
    kvs: impl IntoIterator<Item = (&'a str, &'a Value)>,
) {
    let encode = |buf: &mut Vec<u8>, k: &str, v: &Value| {
        message(buf, field, |buf| {
            len_field(buf, 1, scrub(k).as_bytes());
            message(buf, 2, |buf| any_value(buf, v));
        });
        Some(())
    };
    let AttributeMemo { memo, key } = memo;
    let field_byte = field as u8;
    for (k, v) in kvs {
        match v {
            Value::String(s) => scalar_attribute(
                memo,
                buf,
                [field_byte, 1],
                k,
                s.as_str().as_bytes(),
                |buf| encode(buf, k, v),
            ),
            Value::Bool(b) => {
                scalar_attribute(memo, buf, [field_byte, 2], k, &[u8::from(*b)], |buf| {
                    encode(buf, k, v)
                })
            }
            Value::I64(i) => {
                scalar_attribute(memo, buf, [field_byte, 3], k, &i.to_le_bytes(), |buf| {
                    encode(buf, k, v)
                })
            }
            Value::Array(Array::String(items)) => {
                list_memo_key(key, field, k, items);
                memo.write(key, buf, |buf| encode(buf, k, v));
            }
            _ => {
                encode(buf, k, v);
            }
        }
    }
}

/// A string field of a message (a span's or an event's name), scrubbed; a recurring one from
/// the memo (kind 0 keeps its keys apart from the attributes').
fn string_field(memo: &mut AttributeMemo, buf: &mut Vec<u8>, field: u32, text: &str) {
    if text.is_empty() {
        return;
    }
    scalar_attribute(
        &mut memo.memo,
        buf,
        [field as u8, 0],
        "",
        text.as_bytes(),
        |buf| {
            len_field(buf, field, scrub(text).as_bytes());
            Some(())
        },
    );
}

fn kv_pairs<'a>(
    kvs: impl IntoIterator<Item = &'a KeyValue>,
) -> impl Iterator<Item = (&'a str, &'a Value)> {
    kvs.into_iter().map(|kv| (kv.key.as_str(), &kv.value))
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `SpanFlags`: the W3C trace flags, plus "has is-remote" and "is remote" bits.
fn flags(remote: bool, cx: &SpanContext) -> u32 {
    u32::from(cx.trace_flags().to_u8()) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn span(memo: &mut AttributeMemo, buf: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    len_field(buf, 1, &cx.trace_id().to_bytes());
    len_field(buf, 2, &cx.span_id().to_bytes());
    len_field(buf, 3, cx.trace_state().header().as_bytes());
    if s.parent_span_id != SpanId::INVALID {
        len_field(buf, 4, &s.parent_span_id.to_bytes());
    }
    string_field(memo, buf, 5, &s.name);
    varint_field(buf, 6, kind(&s.span_kind));
    fixed64_field(buf, 7, nanos(s.start_time));
    fixed64_field(buf, 8, nanos(s.end_time));
    attributes(memo, buf, 9, kv_pairs(&s.attributes));
    varint_field(buf, 10, u64::from(s.dropped_attributes_count));
    for e in &s.events.events {
        message(buf, 11, |buf| {
            fixed64_field(buf, 1, nanos(e.timestamp));
            string_field(memo, buf, 2, &e.name);
            attributes(memo, buf, 3, kv_pairs(&e.attributes));
            varint_field(buf, 4, u64::from(e.dropped_attributes_count));
        });
    }
    varint_field(buf, 12, u64::from(s.events.dropped_count));
    for l in &s.links.links {
        message(buf, 13, |buf| {
            let lcx = &l.span_context;
            len_field(buf, 1, &lcx.trace_id().to_bytes());
            len_field(buf, 2, &lcx.span_id().to_bytes());
            len_field(buf, 3, lcx.trace_state().header().as_bytes());
            attributes(memo, buf, 4, kv_pairs(&l.attributes));
            varint_field(buf, 5, u64::from(l.dropped_attributes_count));
            fixed32_field(buf, 6, flags(lcx.is_remote(), lcx));
        });
    }
    varint_field(buf, 14, u64::from(s.links.dropped_count));
    message(buf, 15, |buf| {
        let (code, text) = match &s.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        len_field(buf, 2, scrub(text).as_bytes());
        varint_field(buf, 3, code);
    });
    // prost writes fields in tag order: `flags` (16) comes last.
    fixed32_field(buf, 16, flags(s.parent_span_is_remote, cx));
}

fn scope(memo: &mut AttributeMemo, buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    len_field(buf, 1, scope.name().as_bytes());
    len_field(buf, 2, scope.version().unwrap_or_default().as_bytes());
    attributes(memo, buf, 3, kv_pairs(scope.attributes()));
}

/// The resource part of every request, encoded once: the `Resource` message (field 1 of
/// `ResourceSpans`) and the resource's schema URL (field 3).
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedResource {
    message: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut message = Vec::new();
        attributes(
            &mut AttributeMemo::new(),
            &mut message,
            1,
            resource.iter().map(|(k, v)| (k.as_str(), v)),
        );
        Self {
            message,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// One `ExportTraceServiceRequest`: one `ResourceSpans`, one `ScopeSpans` per instrumentation
/// scope in order of first appearance, spans in batch order.
#[cfg(test)]
pub(crate) fn encode_request(resource: &EncodedResource, spans: &[SpanData]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_request_into(resource, spans, &mut buf);
    buf
}

/// [`encode_request`] into `buf` (cleared first), so an exporter can keep one buffer: a fresh
/// one of a few hundred kilobytes per export costs page faults and zeroed huge pages.
pub(crate) fn encode_request_into(
    resource: &EncodedResource,
    spans: &[SpanData],
    buf: &mut Vec<u8>,
) {
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for s in spans {
        match scopes
            .iter_mut()
            .find(|(sc, _)| *sc == &s.instrumentation_scope)
        {
            Some((_, members)) => members.push(s),
            None => scopes.push((&s.instrumentation_scope, vec![s])),
        }
    }
    buf.clear();
    buf.reserve(64 + spans.len() * 768 + resource.message.len());
    ATTRIBUTES.with_borrow_mut(|memo| {
        message(buf, 1, |buf| {
            len_always(buf, 1, &resource.message);
            for (sc, members) in &scopes {
                message(buf, 2, |buf| {
                    message(buf, 1, |buf| scope(memo, buf, sc));
                    for s in members {
                        message(buf, 2, |buf| span(memo, buf, s));
                    }
                    len_field(buf, 3, sc.schema_url().unwrap_or_default().as_bytes());
                });
            }
            len_field(buf, 3, resource.schema_url.as_bytes());
        });
    });
}

/// Statuses worth another attempt (as the OTLP/HTTP specification lists them).
fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// OTLP/HTTP protobuf span exporter over any [`HttpClient`] (the blocking reqwest client for the
/// embedded collector, the SigV4-signing one for X-Ray). Retries throttling and gateway errors
/// with backoff inside the export's time bound.
#[derive(Debug)]
pub(crate) struct OtlpHttpExporter {
    client: Arc<dyn HttpClient>,
    endpoint: http::Uri,
    timeout: Duration,
    resource: EncodedResource,
    /// The request buffer of the last export, for the next one.
    scratch: std::sync::Mutex<Scratch>,
}

/// The largest request buffer kept for the next export.
const SCRATCH_KEPT: usize = 16 << 20;

/// The last request's buffer. The HTTP client may still hold its copy of the body for a moment
/// after the answer (its connection task lets go when next polled), so the buffer is kept
/// shared and taken back when the next export starts, by when that copy is gone.
#[derive(Debug, Default)]
struct Scratch(Option<Bytes>);

impl Scratch {
    /// A buffer to encode into: the last one when nothing else holds it any more, else new.
    fn take(&mut self) -> Vec<u8> {
        self.0
            .take()
            .and_then(|b| b.try_into_mut().ok())
            .map(Vec::from)
            .unwrap_or_default()
    }

    /// Keep `body` for the next export (unless it grew too large to be worth keeping).
    fn keep(&mut self, body: Bytes) {
        self.0 = (body.len() <= SCRATCH_KEPT).then_some(body);
    }
}

impl OtlpHttpExporter {
    pub(crate) fn new(
        client: Arc<dyn HttpClient>,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Self, String> {
        let endpoint: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
        if endpoint.scheme().is_none() || endpoint.host().is_none() {
            return Err(format!(
                "endpoint `{endpoint}`: needs a scheme and a host (http://host:port/v1/traces)"
            ));
        }
        Ok(Self {
            client,
            endpoint,
            timeout,
            resource: EncodedResource::default(),
            scratch: std::sync::Mutex::new(Scratch::default()),
        })
    }

    /// The blocking reqwest client every export to `endpoint` (the embedded collector) goes
    /// through. Must be built outside an async runtime.
    pub(crate) fn blocking_client(
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn HttpClient>, String> {
        let client = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let url = reqwest::Url::parse(endpoint).map_err(|e| {
            format!("endpoint `{endpoint}`: {e} (it needs a scheme and a host: http://host:port/v1/traces)")
        })?;
        let uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
        Ok(Arc::new(BlockingClient { client, uri, url }))
    }

    /// Post one request body, retrying as [`RETRIES`] says.
    async fn post(&self, body: &Bytes, spans: usize) -> OTelSdkResult {
        let started = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut attempt = 0;
        loop {
            match self.post_once(body).await {
                Ok(()) => return Ok(()),
                Err((again, after, why)) => {
                    let wait = after.map_or(delay, |a| a.max(delay));
                    if !again || attempt == RETRIES || started.elapsed() + wait >= self.timeout {
                        return Err(OTelSdkError::InternalFailure(format!(
                            "OTLP export of {spans} spans failed: {why}"
                        )));
                    }
                    attempt += 1;
                    // The export runs on the batch processor's own thread.
                    std::thread::sleep(wait);
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    /// One attempt. On failure: whether to try again, after at least how long (`Retry-After`),
    /// and why it failed.
    async fn post_once(&self, body: &Bytes) -> Result<(), (bool, Option<Duration>, String)> {
        let request = http::Request::post(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, crate::otlp::PROTOBUF)
            .body(body.clone())
            .map_err(|e| (false, None, format!("cannot build the request: {e}")))?;
        match self.client.send_bytes(request).await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status();
                let after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Err((
                    retryable(status.as_u16()),
                    after,
                    format!("{} answered {status}", self.endpoint),
                ))
            }
            Err(e) => Err((true, None, format!("{}: {e}", self.endpoint))),
        }
    }
}

/// The blocking reqwest client for one endpoint, its URL parsed once: `opentelemetry-http`'s
/// client converts each `http::Request` to reqwest's, which parses the URI again (URL parser,
/// IDNA), several thousand instructions per export. Requests to another URI go that way.
#[derive(Debug)]
struct BlockingClient {
    client: reqwest::blocking::Client,
    uri: http::Uri,
    url: reqwest::Url,
}

/// The largest response body read (as `opentelemetry-http` bounds it).
const MAX_RESPONSE_BODY: u64 = 4 * 1024 * 1024;

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        use std::io::Read as _;
        if request.uri() != &self.uri {
            return self.client.send_bytes(request).await;
        }
        let (parts, body) = request.into_parts();
        let mut response = self
            .client
            .request(parts.method, self.url.clone())
            .headers(parts.headers)
            .body(body)
            .send()?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut read = Vec::new();
        response
            .take(MAX_RESPONSE_BODY + 1)
            .read_to_end(&mut read)?;
        if read.len() as u64 > MAX_RESPONSE_BODY {
            return Err(format!("response body over {MAX_RESPONSE_BODY} bytes").into());
        }
        let mut answer = http::Response::builder()
            .status(status)
            .body(Bytes::from(read))?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// Retries after a retryable failure, as the OpenTelemetry SDK's default policy: at most three,
/// 100 ms doubling up to 1.6 s (or what `Retry-After` asks), never past the export's bound.
const RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);

impl SpanExporter for OtlpHttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let mut buf = self
            .scratch
            .lock()
            .map(|mut kept| kept.take())
            .unwrap_or_default();
        encode_request_into(&self.resource, &batch, &mut buf);
        let body = Bytes::from(buf);
        let sent = self.post(&body, batch.len()).await;
        if let Ok(mut kept) = self.scratch.lock() {
            kept.keep(body);
        }
        sent
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use proptest::prelude::*;
    use prost::Message;
    use std::borrow::Cow;

    /// What `opentelemetry-otlp` sends for the same batch behind the redacting wrapper.
    fn reference(resource: &Resource, mut spans: Vec<SpanData>) -> Vec<u8> {
        spans.iter_mut().for_each(crate::export::scrub_span);
        let rs = ResourceAttributesWithSchema::from(resource);
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &rs),
        }
        .encode_to_vec()
    }

    fn value(seed: u64, text: &str) -> Value {
        match seed % 9 {
            0 => Value::Bool(seed.is_multiple_of(2)),
            1 => Value::I64(seed as i64 - 1_000_000),
            2 => Value::I64(-(seed as i64)),
            3 => Value::F64(seed as f64 / 7.0),
            4 => Value::Array(Array::String(vec![
                StringValue::from(text.to_owned()),
                StringValue::from(""),
            ])),
            5 => Value::Array(Array::I64(vec![0, -1, seed as i64])),
            6 => Value::Array(Array::Bool(vec![true, false])),
            7 => Value::Array(Array::F64(vec![0.0, -2.5])),
            _ => Value::String(text.to_owned().into()),
        }
    }

    #[derive(Debug, Clone)]
    struct Shape {
        seed: u64,
        text: String,
        attrs: usize,
        events: usize,
        links: usize,
        status: u8,
        scope: u8,
        remote: bool,
        parent: bool,
        state: bool,
        time_zero: bool,
    }

    fn shape() -> impl Strategy<Value = Shape> {
        (
            any::<u64>(),
            "\\PC{0,300}",
            0usize..40,
            0usize..3,
            0usize..3,
            0u8..3,
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(seed, text, attrs, events, links, status, scope, remote, parent, state, tz)| {
                    Shape {
                        seed,
                        text,
                        attrs,
                        events,
                        links,
                        status,
                        scope,
                        remote,
                        parent,
                        state,
                        time_zero: tz,
                    }
                },
            )
    }

    fn kvs(seed: u64, n: usize, text: &str) -> Vec<KeyValue> {
        (0..n)
            .map(|i| {
                let key = match i {
                    3 => String::new(),
                    5 => text.to_owned(),
                    _ => format!("tokentrail.k{i}"),
                };
                KeyValue::new(key, value(seed.wrapping_add(i as u64 * 7919), text))
            })
            .collect()
    }

    fn span_data(s: &Shape) -> SpanData {
        let state = if s.state {
            TraceState::from_key_value([("vendor", "v1"), ("other", "x")]).unwrap_or_default()
        } else {
            TraceState::default()
        };
        let cx = SpanContext::new(
            TraceId::from(u128::from(s.seed) << 64 | 0x5f00_0000),
            SpanId::from(s.seed | 1),
            if s.seed.is_multiple_of(3) {
                TraceFlags::default()
            } else {
                TraceFlags::SAMPLED
            },
            false,
            state,
        );
        let t0 = if s.time_zero {
            UNIX_EPOCH
        } else {
            UNIX_EPOCH + Duration::from_nanos(1_764_000_000_000_000_000 + s.seed % 1_000_000)
        };
        let mut events = SpanEvents::default();
        for i in 0..s.events {
            events.events.push(Event::new(
                if i == 0 { "rejected" } else { "" },
                t0 + Duration::from_micros(i as u64),
                kvs(s.seed ^ 0xe, i * 2, &s.text),
                i as u32,
            ));
        }
        events.dropped_count = (s.seed % 2) as u32;
        let mut links = SpanLinks::default();
        for i in 0..s.links {
            links.links.push(Link::new(
                SpanContext::new(
                    TraceId::from(u128::from(s.seed ^ i as u64) + 1),
                    SpanId::from(i as u64 + 9),
                    TraceFlags::SAMPLED,
                    i % 2 == 0,
                    TraceState::default(),
                ),
                kvs(s.seed ^ 0x1, i, &s.text),
                i as u32,
            ));
        }
        let scope = match s.scope {
            0 => InstrumentationScope::builder("tokentrail").build(),
            1 => InstrumentationScope::builder("tracing-opentelemetry")
                .with_version("0.34")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .with_attributes([KeyValue::new("lib", "x")])
                .build(),
            _ => InstrumentationScope::builder("").build(),
        };
        SpanData {
            span_context: cx,
            parent_span_id: if s.parent {
                SpanId::from(s.seed.rotate_left(7) | 2)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: s.remote,
            span_kind: match s.seed % 5 {
                0 => SpanKind::Internal,
                1 => SpanKind::Server,
                2 => SpanKind::Client,
                3 => SpanKind::Producer,
                _ => SpanKind::Consumer,
            },
            name: if s.seed.is_multiple_of(4) {
                Cow::Owned(s.text.clone())
            } else {
                Cow::Borrowed("gateway.inbound")
            },
            start_time: t0,
            end_time: t0 + Duration::from_nanos(s.seed % 10_000_000),
            attributes: kvs(s.seed, s.attrs, &s.text),
            dropped_attributes_count: (s.seed % 3) as u32,
            events,
            links,
            status: match s.status {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error(s.text.clone()),
            },
            instrumentation_scope: scope,
        }
    }

    fn resource(with_schema: bool) -> Resource {
        let b = Resource::builder_empty().with_attributes([
            KeyValue::new("service.name", "gateway"),
            KeyValue::new("service.namespace", "tokentrail"),
            KeyValue::new("faas.max_memory", 128),
        ]);
        if with_schema {
            b.with_schema_url(
                [KeyValue::new("cloud.provider", "aws")],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build()
        } else {
            b.build()
        }
    }

    /// Equal bytes; on a difference, the first differing line of the decoded messages.
    fn same(ours: &[u8], theirs: &[u8]) -> Result<(), String> {
        if ours == theirs {
            return Ok(());
        }
        let show = |b: &[u8]| match ExportTraceServiceRequest::decode(b) {
            Ok(m) => format!("{m:#?}"),
            Err(e) => format!("undecodable: {e}"),
        };
        let (a, b) = (show(ours), show(theirs));
        let at = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        Err(format!(
            "{} vs {} bytes; first difference at decoded line {at:?}: {:?} vs {:?}",
            ours.len(),
            theirs.len(),
            at.and_then(|i| a.lines().nth(i)),
            at.and_then(|i| b.lines().nth(i)),
        ))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn the_request_is_byte_for_byte_what_opentelemetry_otlp_sends(
            shapes in prop::collection::vec(shape(), 0..12),
            with_schema in any::<bool>(),
        ) {
            let res = resource(with_schema);
            let spans: Vec<SpanData> = shapes.iter().map(span_data).collect();
            let ours = encode_request(&EncodedResource::new(&res), &spans);
            if let Err(e) = same(&ours, &reference(&res, spans)) {
                prop_assert!(false, "{}", e);
            }
        }
    }

    /// The encoder is this exporter's last-line scrub: a credential in any string a span
    /// carries is gone from the bytes, the first time (memo miss) and the next (memo hit).
    #[test]
    fn every_string_of_a_span_is_scrubbed_as_it_is_encoded() {
        let jwt = crate::fixtures::jwt("alice");
        let bearer = format!("Bearer {jwt}");
        let mut shape = span_data(&Shape {
            seed: 7,
            text: bearer.clone(),
            attrs: 12,
            events: 2,
            links: 1,
            status: 2,
            scope: 0,
            remote: false,
            parent: true,
            state: false,
            time_zero: false,
        });
        shape.name = Cow::Owned(bearer.clone());
        shape.status = Status::error(bearer.clone());
        shape.attributes.push(KeyValue::new(
            "list",
            Value::Array(Array::String(vec![StringValue::from(jwt.clone())])),
        ));
        let res = resource(false);
        for _ in 0..2 {
            let ours = encode_request(&EncodedResource::new(&res), std::slice::from_ref(&shape));
            let signature = jwt.rsplit('.').next().unwrap_or_default();
            assert!(
                !ours
                    .windows(signature.len())
                    .any(|w| w == signature.as_bytes()),
                "the token's signature reached the encoded request"
            );
            if let Err(e) = same(&ours, &reference(&res, vec![shape.clone()])) {
                panic!("{e}");
            }
        }
    }

    /// Attributes that share a memo slot (same key, same length, same first and last eight
    /// bytes: the same hash) are told apart by their bytes, and each is written as itself.
    #[test]
    fn attributes_sharing_a_memo_slot_are_each_written_as_themselves() {
        let mut span = span_data(&Shape {
            seed: 3,
            text: String::new(),
            attrs: 0,
            events: 0,
            links: 0,
            status: 0,
            scope: 0,
            remote: false,
            parent: false,
            state: false,
            time_zero: false,
        });
        let res = resource(false);
        for round in 0..4 {
            span.attributes = ["X", "Y", "X", "Z"]
                .iter()
                .map(|mid| {
                    let v = format!("aaaaaaaa{mid}{round}aaaaaaaa");
                    KeyValue::new("tokentrail.same", v)
                })
                .collect();
            let ours = encode_request(&EncodedResource::new(&res), std::slice::from_ref(&span));
            if let Err(e) = same(&ours, &reference(&res, vec![span.clone()])) {
                panic!("round {round}: {e}");
            }
        }
    }

    #[test]
    fn a_real_hop_span_encodes_as_the_sdk_would_and_decodes() {
        let shape = Shape {
            seed: 42,
            text: "x".repeat(200),
            attrs: 20,
            events: 1,
            links: 0,
            status: 2,
            scope: 0,
            remote: true,
            parent: true,
            state: false,
            time_zero: false,
        };
        let res = resource(false);
        let spans = vec![span_data(&shape); 300];
        let ours = encode_request(&EncodedResource::new(&res), &spans);
        let theirs = reference(&res, spans);
        if let Err(e) = same(&ours, &theirs) {
            panic!("{e}");
        }
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice());
        let spans_back: usize = decoded
            .map(|r| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| rs.scope_spans.iter())
                    .map(|ss| ss.spans.len())
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(spans_back, 300);
    }
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use opentelemetry_http::{HttpError, Request, Response};
    use std::sync::Mutex;

    /// Answers with the given statuses in turn (the last one repeats) and records each request.
    #[derive(Debug)]
    struct Scripted {
        statuses: Vec<u16>,
        seen: Mutex<Vec<(String, Option<String>, usize)>>,
    }

    #[async_trait::async_trait]
    impl HttpClient for Scripted {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            let mut seen = self.seen.lock().map_err(|e| e.to_string())?;
            seen.push((
                request.uri().to_string(),
                request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                request.body().len(),
            ));
            let status = self.statuses[(seen.len() - 1).min(self.statuses.len() - 1)];
            Ok(Response::builder()
                .status(status)
                .body(Bytes::new())
                .map_err(|e| e.to_string())?)
        }
    }

    fn exporter(statuses: &[u16], timeout: Duration) -> (OtlpHttpExporter, Arc<Scripted>) {
        let client = Arc::new(Scripted {
            statuses: statuses.to_vec(),
            seen: Mutex::new(Vec::new()),
        });
        let e = OtlpHttpExporter::new(client.clone(), "http://127.0.0.1:9/v1/traces", timeout);
        (e.expect("valid endpoint"), client)
    }

    fn one_span() -> Vec<SpanData> {
        use opentelemetry::trace::{TraceFlags, TraceId, TraceState};
        vec![SpanData {
            span_context: SpanContext::new(
                TraceId::from(7u128),
                SpanId::from(9u64),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: "target.api".into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: vec![KeyValue::new("tokentrail.hop.name", "target")],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Ok,
            instrumentation_scope: InstrumentationScope::builder("tokentrail").build(),
        }]
    }

    /// Drive one export to completion on this thread, as the batch processor does on its own
    /// (no async runtime: the blocking client must not run inside one).
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::yield_now();
        }
    }

    /// Bytes of the buffer kept for the next export.
    fn kept(e: &OtlpHttpExporter) -> usize {
        e.scratch
            .lock()
            .expect("lock")
            .0
            .as_ref()
            .map_or(0, Bytes::len)
    }

    #[test]
    fn the_request_buffer_is_kept_for_the_next_export() {
        let (e, _) = exporter(&[200], Duration::from_secs(1));
        assert_eq!(kept(&e), 0);
        assert!(run(e.export(one_span())).is_ok());
        assert!(kept(&e) > 0);
    }

    /// With the real blocking client and a real HTTP server: the client lets go of its copy of
    /// the body (at once, or when its connection task is next polled), and the next export
    /// takes the same buffer to encode into.
    #[test]
    fn the_blocking_client_gives_the_buffer_back() {
        let port = crate::test_http::serve(|_| ("application/x-protobuf", String::new())).port();
        let e = std::thread::spawn(move || {
            let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
            let client = OtlpHttpExporter::blocking_client(&endpoint, Duration::from_secs(5))
                .expect("client");
            OtlpHttpExporter::new(client, &endpoint, Duration::from_secs(5)).expect("exporter")
        })
        .join()
        .expect("built");
        assert!(run(e.export(one_span())).is_ok());
        let first = e
            .scratch
            .lock()
            .expect("lock")
            .0
            .as_ref()
            .map(|b| b.as_ptr());
        assert!(first.is_some(), "the buffer is kept");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !e
            .scratch
            .lock()
            .expect("lock")
            .0
            .as_ref()
            .is_some_and(Bytes::is_unique)
        {
            assert!(
                Instant::now() < deadline,
                "the client never let go of the body"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // What the next export encodes into: the same allocation.
        let next = e.scratch.lock().expect("lock").take();
        assert_eq!(Some(next.as_ptr()), first, "the buffer came back");
        assert!(next.capacity() > 0);
    }

    #[test]
    fn a_batch_is_posted_as_protobuf_to_the_endpoint() {
        let (e, seen) = exporter(&[200], Duration::from_secs(1));
        assert!(run(e.export(one_span())).is_ok());
        let seen = seen.seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "http://127.0.0.1:9/v1/traces");
        assert_eq!(seen[0].1.as_deref(), Some("application/x-protobuf"));
        assert!(seen[0].2 > 0);
    }

    #[test]
    fn throttling_and_gateway_errors_are_retried_until_accepted() {
        let (e, seen) = exporter(&[503, 429, 200], Duration::from_secs(2));
        assert!(run(e.export(one_span())).is_ok());
        assert_eq!(seen.seen.lock().expect("lock").len(), 3);
    }

    #[test]
    fn a_refused_batch_is_an_error_at_once() {
        let (e, seen) = exporter(&[400], Duration::from_secs(2));
        let err = run(e.export(one_span())).expect_err("400 is an error");
        assert!(err.to_string().contains("400"), "{err}");
        assert_eq!(seen.seen.lock().expect("lock").len(), 1);
    }

    #[test]
    fn retries_stop_within_the_export_bound() {
        let (e, seen) = exporter(&[503], Duration::from_millis(400));
        let started = Instant::now();
        let err = run(e.export(one_span())).expect_err("never accepted");
        assert!(err.to_string().contains("503"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(400));
        let attempts = seen.seen.lock().expect("lock").len();
        assert!((2..=4).contains(&attempts), "{attempts} attempts");
    }

    #[test]
    fn an_outage_longer_than_three_retries_loses_the_batch() {
        let (e, seen) = exporter(&[503], Duration::from_secs(10));
        let started = Instant::now();
        assert!(run(e.export(one_span())).is_err());
        assert_eq!(
            seen.seen.lock().expect("lock").len(),
            4,
            "one try and three retries"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700),
            "backoff 100 + 200 + 400 ms: {took:?}"
        );
    }

    #[test]
    fn endpoints_without_scheme_or_host_are_refused() {
        let client: Arc<dyn HttpClient> = Arc::new(Scripted {
            statuses: vec![200],
            seen: Mutex::new(Vec::new()),
        });
        for bad in ["127.0.0.1:4318/v1/traces", "/v1/traces", "not a url"] {
            assert!(
                OtlpHttpExporter::new(client.clone(), bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }
}
