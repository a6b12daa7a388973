//! OTLP trace payloads: decoding what exporters send (protobuf or JSON), the OTLP/JSON file
//! encoding of the store (`traces.jsonl`, one `ExportTraceServiceRequest` per line, as the OTel
//! Collector's file exporter writes), and a flat reader over that store.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde::Serialize;

/// Errors decoding or reading OTLP data.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The body is not a valid OTLP protobuf message.
    #[error("invalid OTLP protobuf body: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The body is not valid OTLP/JSON.
    #[error("invalid OTLP/JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// Content type other than protobuf or JSON.
    #[error("unsupported content type `{0}` (expected application/x-protobuf or application/json)")]
    ContentType(String),
    /// Reading the store failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line of the store is not an OTLP/JSON export request.
    #[error("{path}:{line}: not an OTLP/JSON export request: {source}")]
    StoreLine {
        /// File.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Content type of OTLP protobuf.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Content type of OTLP JSON.
pub const JSON: &str = "application/json";

/// Decode an OTLP request body (protobuf or JSON) according to its content type.
fn decode_body<M: Message + Default + serde::de::DeserializeOwned>(
    content_type: &str,
    body: &[u8],
) -> Result<M, OtlpError> {
    let ct = media_type(content_type);
    match ct.as_str() {
        _ if is_protobuf(&ct) => Ok(M::decode(body)?),
        JSON => Ok(serde_json::from_slice(body)?),
        other => Err(OtlpError::ContentType(other.to_owned())),
    }
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether a content type is OTLP protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        PROTOBUF | "application/protobuf"
    )
}

/// Scrub a line of OTLP/JSON in place, string by string (it is left as it is when nothing
/// matches).
fn scrub_line(line: &mut String) {
    if let std::borrow::Cow::Owned(clean) = crate::redact::scrub_json(line) {
        *line = clean;
    }
}

/// Write the store line of an OTLP/HTTP trace export body into `line` (replacing what it held;
/// no newline) and return the number of spans in it. The line is OTLP/JSON, scrubbed. Protobuf
/// bodies are transcoded to JSON in one pass over the wire bytes when they hold only what
/// tracers send; everything else (and every JSON body) goes through the full decoder, which also
/// reports what is wrong with a bad body. A collector passes the same buffer for every export:
/// a line of a few hundred spans is a megabyte, and a fresh one each time costs page faults.
pub fn trace_store_line(
    content_type: &str,
    body: &[u8],
    line: &mut String,
) -> Result<usize, OtlpError> {
    // The transcoder scrubs each string as it writes it.
    if is_protobuf(content_type)
        && let Some(spans) = crate::otlp_json::trace_export_json(body, line)
    {
        return Ok(spans);
    }
    let export = TraceExport::decode(content_type, body)?;
    *line = export.to_json_line()?;
    Ok(export.span_count())
}

/// One line of OTLP/JSON (no newline), scrubbed of secret-shaped strings.
fn json_line<M: Serialize>(message: &M) -> Result<String, OtlpError> {
    let mut line = serde_json::to_string(message)?;
    scrub_line(&mut line);
    Ok(line)
}

/// A decoded export request.
#[derive(Debug, Clone)]
pub struct TraceExport(ExportTraceServiceRequest);

impl TraceExport {
    /// Decode a body according to its content type.
    pub fn decode(content_type: &str, body: &[u8]) -> Result<Self, OtlpError> {
        decode_body(content_type, body).map(Self)
    }

    /// Number of spans in the request.
    pub fn span_count(&self) -> usize {
        self.0
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    /// One line of OTLP/JSON (no newline), scrubbed of secret-shaped strings.
    pub fn to_json_line(&self) -> Result<String, OtlpError> {
        json_line(&self.0)
    }

    /// Protobuf encoding (for forwarding).
    pub fn to_protobuf(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
}

/// A decoded OTLP metrics export request (what the embedded collector stores in
/// `metrics.jsonl`).
#[derive(Debug, Clone)]
pub struct MetricsExport(
    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
);

/// One data point series of a stored metric export, flattened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMetric {
    /// `service.name` of the resource.
    pub service: String,
    /// `service.instance.id` of the resource (one per process).
    pub instance: String,
    /// Metric name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// `histogram`, `sum` or `gauge` (others: `other`).
    pub kind: &'static str,
    /// Data point attributes (string values).
    pub attributes: BTreeMap<String, String>,
    /// Histogram count, or the sum's / gauge's value as an integer (cumulative).
    pub count: u64,
}

impl MetricsExport {
    /// Decode a body according to its content type.
    pub fn decode(content_type: &str, body: &[u8]) -> Result<Self, OtlpError> {
        decode_body(content_type, body).map(Self)
    }

    /// One line of OTLP/JSON (no newline), scrubbed like trace lines.
    pub fn to_json_line(&self) -> Result<String, OtlpError> {
        json_line(&self.0)
    }

    /// Every data point series, flattened.
    pub fn points(&self) -> Vec<StoredMetric> {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
        let text = |kvs: &[KeyValue]| -> BTreeMap<String, String> {
            kvs.iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(any_to_json).unwrap_or_default();
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (kv.key.clone(), v)
                })
                .collect()
        };
        let mut out = Vec::new();
        for rm in &self.0.resource_metrics {
            let resource = rm
                .resource
                .as_ref()
                .map(|r| text(&r.attributes))
                .unwrap_or_default();
            let service = resource
                .get("service.name")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            let instance = resource
                .get("service.instance.id")
                .cloned()
                .unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let mut push = |kind, attributes, count| {
                        out.push(StoredMetric {
                            service: service.clone(),
                            instance: instance.clone(),
                            name: m.name.clone(),
                            unit: m.unit.clone(),
                            kind,
                            attributes,
                            count,
                        })
                    };
                    let number = |v: &Option<N>| match v {
                        Some(N::AsInt(i)) => (*i).max(0) as u64,
                        Some(N::AsDouble(d)) => d.max(0.0) as u64,
                        None => 0,
                    };
                    match &m.data {
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .for_each(|p| push("histogram", text(&p.attributes), p.count)),
                        Some(Data::Sum(x)) => x
                            .data_points
                            .iter()
                            .for_each(|p| push("sum", text(&p.attributes), number(&p.value))),
                        Some(Data::Gauge(x)) => x
                            .data_points
                            .iter()
                            .for_each(|p| push("gauge", text(&p.attributes), number(&p.value))),
                        _ => push("other", BTreeMap::new(), 0),
                    }
                }
            }
        }
        out
    }
}

/// Every data point series in a metrics store (`metrics.jsonl`), in file order.
pub fn read_metrics_store(path: &Path) -> Result<Vec<StoredMetric>, OtlpError> {
    let io = |source| OtlpError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let export: opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest =
            serde_json::from_str(&line).map_err(|source| OtlpError::StoreLine {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?;
        out.extend(MetricsExport(export).points());
    }
    Ok(out)
}

/// The success response body for a content type.
pub fn success_response(content_type: &str) -> (&'static str, Vec<u8>) {
    if content_type.starts_with(JSON) {
        (JSON, b"{}".to_vec())
    } else {
        (
            PROTOBUF,
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
    }
}

/// One span from the store, flattened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredSpan {
    /// 32 hex.
    pub trace_id: String,
    /// 16 hex.
    pub span_id: String,
    /// 16 hex, empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `server`, `client`, `internal`, `producer`, `consumer` or `unspecified`.
    pub kind: String,
    /// `service.name` of the resource.
    pub service: String,
    /// Start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// `ok`, `error` or `unset`.
    pub status: String,
    /// Attributes as JSON values.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Event names.
    pub events: Vec<String>,
    /// Where this span, as stored, holds a JWT-shaped value (every attribute including repeated
    /// keys, the name, events and their attributes, the status message, the resource): what an
    /// audit must report even though the flattened fields above may not show it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_shaped: Vec<String>,
}

fn kv_jwt(kvs: &[KeyValue], what: &str, out: &mut Vec<String>) {
    for kv in kvs {
        let value = kv
            .value
            .as_ref()
            .map(|v| any_to_json(v).to_string())
            .unwrap_or_default();
        if crate::redact::contains_jwt(&kv.key) || crate::redact::contains_jwt(&value) {
            out.push(format!("{what} `{}`", crate::redact::scrub(&kv.key)));
        }
    }
}

fn span_jwt(s: &opentelemetry_proto::tonic::trace::v1::Span, resource: &[KeyValue]) -> Vec<String> {
    let mut out = Vec::new();
    if crate::redact::contains_jwt(&s.name) {
        out.push("name".to_owned());
    }
    kv_jwt(&s.attributes, "attribute", &mut out);
    for e in &s.events {
        if crate::redact::contains_jwt(&e.name) {
            out.push("event name".to_owned());
        }
        kv_jwt(&e.attributes, "event attribute", &mut out);
    }
    if s.status
        .as_ref()
        .is_some_and(|st| crate::redact::contains_jwt(&st.message))
    {
        out.push("status message".to_owned());
    }
    kv_jwt(resource, "resource attribute", &mut out);
    out
}

impl StoredSpan {
    /// String attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(|v| v.as_str())
    }

    /// Duration in microseconds.
    pub fn duration_us(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano) / 1000
    }
}

fn any_to_json(v: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.value {
        Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
        Some(any_value::Value::IntValue(i)) => J::from(*i),
        Some(any_value::Value::DoubleValue(d)) => J::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(any_to_json).unwrap_or(J::Null),
                    )
                })
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => J::String(hex::encode(b)),
        _ => J::Null,
    }
}

fn attrs_to_map(kvs: &[KeyValue]) -> BTreeMap<String, serde_json::Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value
                    .as_ref()
                    .map(any_to_json)
                    .unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

impl TraceExport {
    /// Flatten into spans.
    pub fn spans(&self) -> Vec<StoredSpan> {
        let mut out = Vec::with_capacity(self.span_count());
        for rs in &self.0.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attrs_to_map(&r.attributes))
                .unwrap_or_default();
            let service = resource
                .get("service.name")
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let status = match s.status.as_ref().map(|st| st.code) {
                        Some(1) => "ok",
                        Some(2) => "error",
                        _ => "unset",
                    };
                    out.push(StoredSpan {
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: kind_name(s.kind).to_owned(),
                        service: service.clone(),
                        start_unix_nano: s.start_time_unix_nano,
                        end_unix_nano: s.end_time_unix_nano,
                        status: status.to_owned(),
                        attributes: attrs_to_map(&s.attributes),
                        events: s.events.iter().map(|e| e.name.clone()).collect(),
                        jwt_shaped: span_jwt(
                            s,
                            rs.resource
                                .as_ref()
                                .map(|r| r.attributes.as_slice())
                                .unwrap_or_default(),
                        ),
                    });
                }
            }
        }
        out
    }
}

/// Read every span of an OTLP/JSON-lines store file.
pub fn read_store(path: &Path) -> Result<Vec<StoredSpan>, OtlpError> {
    let file = std::fs::File::open(path).map_err(|source| OtlpError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut spans = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| OtlpError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let req: ExportTraceServiceRequest =
            serde_json::from_str(&line).map_err(|source| OtlpError::StoreLine {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?;
        spans.extend(TraceExport(req).spans());
    }
    Ok(spans)
}

/// One part's spans and newline count, or the part's failing line (0-based) and why.
type PartResult = Result<(Vec<(usize, StoredSpan)>, usize), (usize, serde_json::Error)>;

/// The threads to spread store work over: one per core, at most 16.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16)
}

/// Length and content digest of a store file: SHA-256 over the SHA-256 of each 64 MiB block
/// (blocks hashed on every core), hex. Any change to any byte changes it.
pub fn store_digest(path: &Path) -> Result<(u64, String), OtlpError> {
    store_digest_upto(path, None)
}

/// [`store_digest`] of the first `limit` bytes (`None`: all). Digests of the same bytes are
/// equal whatever follows them.
pub fn store_digest_upto(path: &Path, limit: Option<u64>) -> Result<(u64, String), OtlpError> {
    store_digests(path, None, limit).map(|d| (d.len, d.digest))
}

/// A SHA-256 digest.
type Sha256 = [u8; 32];

/// What [`store_digests`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDigests {
    /// Bytes read.
    pub len: u64,
    /// [`store_digest`] of those bytes.
    pub digest: String,
    /// [`store_digest`] of the first `prefix` bytes, when the store had that many.
    pub prefix: Option<String>,
}

/// [`store_digest_upto`], and in the same pass the digest of a shorter prefix (what an audit
/// index needs to check that a grown store still starts with the bytes it indexed): the store is
/// read and hashed once, not once per length.
pub fn store_digests(
    path: &Path,
    prefix: Option<u64>,
    limit: Option<u64>,
) -> Result<StoreDigests, OtlpError> {
    digests_in_blocks(path, prefix, limit, 64 << 20)
}

/// [`store_digests`] with blocks of `block` bytes (small ones in tests).
fn digests_in_blocks(
    path: &Path,
    prefix: Option<u64>,
    limit: Option<u64>,
    block: usize,
) -> Result<StoreDigests, OtlpError> {
    use std::io::Read;
    let io = |source| OtlpError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path)
        .map_err(io)?
        .take(limit.unwrap_or(u64::MAX));
    let threads = cores();
    let mut digests: Vec<Sha256> = Vec::new();
    // Where the prefix ends, once reached: how many whole blocks lie before it, and the digest of
    // its part of the block it ends in (none when it ends on a block boundary).
    let mut prefix_cut: Option<(usize, Option<Sha256>)> = None;
    let mut len = 0u64;
    let mut bufs: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; block]).collect();
    let sha = |ctx: aws_lc_rs::digest::Context| {
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    };
    loop {
        // Fill up to one block per thread, then hash them in parallel.
        let mut filled = Vec::with_capacity(threads);
        for buf in bufs.iter_mut() {
            let mut n = 0;
            while n < block {
                match file.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(io(e)),
                }
            }
            if n == 0 {
                break;
            }
            filled.push(n);
            if n < block {
                break;
            }
        }
        if filled.is_empty() {
            break;
        }
        let first = len;
        len += filled.iter().map(|n| *n as u64).sum::<u64>();
        // Where the prefix ends inside this batch: (block, bytes of that block), the block's
        // hasher cloned there.
        let cut = prefix
            .filter(|p| prefix_cut.is_none() && (first..len).contains(p))
            .map(|p| {
                let at = usize::try_from(p - first).unwrap_or(usize::MAX);
                (at / block, at % block)
            });
        let hashed: Option<Vec<(Sha256, Option<Sha256>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = bufs
                .iter()
                .zip(&filled)
                .enumerate()
                .map(|(i, (buf, n))| {
                    let cut = cut.filter(|(b, _)| *b == i).map(|(_, at)| at);
                    s.spawn(move || {
                        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                        let part = cut.map(|at| {
                            ctx.update(&buf[..at]);
                            (at > 0).then(|| sha(ctx.clone()))
                        });
                        ctx.update(&buf[cut.unwrap_or(0)..*n]);
                        (sha(ctx), part.flatten())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        let hashed =
            hashed.ok_or_else(|| io(std::io::Error::other("a hashing thread panicked")))?;
        let last = filled.last().is_some_and(|n| *n < block);
        for (i, (whole, part)) in hashed.into_iter().enumerate() {
            if cut.is_some_and(|(b, _)| b == i) {
                prefix_cut = Some((digests.len(), part));
            }
            digests.push(whole);
        }
        if last {
            break;
        }
    }
    let finish = |digests: &mut dyn Iterator<Item = &Sha256>| {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for d in digests {
            ctx.update(d);
        }
        hex::encode(ctx.finish().as_ref())
    };
    let digest = finish(&mut digests.iter());
    let prefix = match prefix {
        Some(p) if p == len => Some(digest.clone()),
        Some(_) => prefix_cut
            .map(|(before, part)| finish(&mut digests[..before].iter().chain(part.as_ref()))),
        None => None,
    };
    Ok(StoreDigests {
        len,
        digest,
        prefix,
    })
}

/// What [`scan_store`] keeps.
pub struct ScanFilter<'a> {
    /// Attributes kept (by key); the others are dropped.
    pub keep: &'a (dyn Fn(&str) -> bool + Sync),
    /// Keep only spans carrying this attribute (and every span holding a JWT-shaped value);
    /// `None` keeps every span.
    pub only_with: Option<&'a str>,
}

/// A fast reader for audits over large stores: the store's lines parsed in parallel into minimal
/// borrowed structures, keeping only the spans and attributes the filter selects (what an audit
/// reads), while still finding every JWT-shaped value anywhere in a line (a line with one is
/// decoded in full to say where). Same spans, same order within a line, as [`read_store`] minus
/// what the filter drops.
pub fn scan_store(path: &Path, filter: &ScanFilter<'_>) -> Result<Vec<StoredSpan>, OtlpError> {
    Ok(scan_store_range(path, filter, 0, None)?
        .into_iter()
        .map(|(_, s)| s)
        .collect())
}

/// [`scan_store`] over the bytes `[start, end)` of the store (`start` at a line start; `end`
/// `None`: to the end), each span with the file offset of the line it is on. Line numbers in
/// errors count from `start`.
pub fn scan_store_range(
    path: &Path,
    filter: &ScanFilter<'_>,
    start: u64,
    end: Option<u64>,
) -> Result<Vec<(u64, StoredSpan)>, OtlpError> {
    scan_store_in_blocks(path, filter, 64 << 20, start, end)
}

/// The spans of the store lines starting at `offsets` (as [`scan_store_range`] gave them), each
/// with its line's offset.
pub fn scan_store_lines(
    path: &Path,
    filter: &ScanFilter<'_>,
    offsets: &[u64],
) -> Result<Vec<(u64, StoredSpan)>, OtlpError> {
    use std::io::{BufRead, Seek};
    let io = |source| OtlpError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut out = Vec::new();
    let mut line = Vec::new();
    for offset in offsets {
        file.seek(std::io::SeekFrom::Start(*offset)).map_err(io)?;
        line.clear();
        file.read_until(b'\n', &mut line).map_err(io)?;
        let spans = scan_part(&line, filter).map_err(|(_, source)| OtlpError::StoreLine {
            path: format!("{} (the line at byte {offset})", path.display()),
            line: 1,
            source,
        })?;
        out.extend(spans.into_iter().map(|(_, s)| (*offset, s)));
    }
    Ok(out)
}

fn scan_store_in_blocks(
    path: &Path,
    filter: &ScanFilter<'_>,
    block_bytes: usize,
    start: u64,
    end: Option<u64>,
) -> Result<Vec<(u64, StoredSpan)>, OtlpError> {
    use std::io::{Read, Seek};
    let io = |source| OtlpError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    file.seek(std::io::SeekFrom::Start(start)).map_err(io)?;
    let mut file = file.take(end.map_or(u64::MAX, |e| e.saturating_sub(start)));
    let threads = cores();
    let block_bytes = block_bytes.max(1);
    // One thread reads blocks of whole lines while the others parse the previous block. The
    // block buffers go back to the reader once parsed: reused memory is neither faulted in nor
    // zeroed again (fresh 64 MB blocks spent a fifth of an audit in the kernel).
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<(Vec<u8>, usize)>>(1);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut carry: Vec<u8> = Vec::new();
            let mut eof = false;
            while !eof {
                let mut buf = recycled.try_recv().unwrap_or_else(|_| vec![0; block_bytes]);
                if buf.len() < carry.len() + block_bytes {
                    buf.resize(carry.len() + block_bytes, 0);
                }
                buf[..carry.len()].copy_from_slice(&carry);
                let mut filled = carry.len();
                // Fill the buffer (growing it while it holds no whole line) or reach the end.
                let complete = loop {
                    while filled < buf.len() {
                        match file.read(&mut buf[filled..]) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(n) => filled += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    if eof {
                        break filled;
                    }
                    match memchr::memrchr(b'\n', &buf[..filled]) {
                        Some(i) => break i + 1,
                        None => {
                            let grown = buf.len() * 2;
                            buf.resize(grown, 0);
                        }
                    }
                };
                carry.clear();
                carry.extend_from_slice(&buf[complete..filled]);
                if complete > 0 && tx.send(Ok((buf, complete))).is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let mut lines_before = 0usize;
        let mut block_base = start;
        for block in rx {
            let (buf, len) = block.map_err(io)?;
            let block = &buf[..len];
            // Split into one part per thread, at line boundaries.
            let mut parts = Vec::with_capacity(threads);
            let mut start = 0;
            for t in 1..=threads {
                let mut cut = (block.len() * t / threads).max(start);
                while cut < block.len() && cut > 0 && block[cut - 1] != b'\n' {
                    cut += 1;
                }
                if t == threads {
                    cut = block.len();
                }
                parts.push((start, &block[start..cut]));
                start = cut;
            }
            let results: Vec<PartResult> = std::thread::scope(|s| {
                let handles: Vec<_> = parts
                    .iter()
                    .map(|(part_start, part)| {
                        s.spawn(move || {
                            let spans = scan_part(part, filter)?;
                            let spans = spans
                                .into_iter()
                                .map(|(at, s)| (part_start + at, s))
                                .collect();
                            Ok((spans, memchr::memchr_iter(b'\n', part).count()))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err((0, serde::de::Error::custom("parser thread panicked")))
                        })
                    })
                    .collect()
            });
            for result in results {
                match result {
                    Ok((spans, newlines)) => {
                        out.extend(spans.into_iter().map(|(at, s)| (block_base + at as u64, s)));
                        lines_before += newlines;
                    }
                    Err((line, source)) => {
                        return Err(OtlpError::StoreLine {
                            path: path.display().to_string(),
                            line: lines_before + line + 1,
                            source,
                        });
                    }
                }
            }
            block_base += len as u64;
            let _ = recycle.send(buf);
        }
        Ok(out)
    })
}

/// The spans of a run of whole lines, each with the offset (in `part`) of the line it is on.
fn scan_part(
    part: &[u8],
    filter: &ScanFilter<'_>,
) -> Result<Vec<(usize, StoredSpan)>, (usize, serde_json::Error)> {
    let mut out = Vec::new();
    // The quoted key spans must carry to be kept, searched for once per part.
    let wanted = filter
        .only_with
        .map(|k| memchr::memmem::Finder::new(&format!("\"{k}\"")).into_owned());
    let escape = memchr::memmem::Finder::new(b"\\u");
    let mut from = 0;
    let ends = memchr::memchr_iter(b'\n', part).chain(std::iter::once(part.len()));
    for (i, end) in ends.enumerate() {
        let line_start = from;
        let line = &part[from..end];
        from = (end + 1).min(part.len());
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = crate::redact::may_contain_jwt(line).then(|| String::from_utf8_lossy(line));
        if let Some(text) = text.filter(|t| crate::redact::contains_jwt(t)) {
            // Rare: a JWT-shaped value somewhere in this line. Decode it in full to say where.
            let full: ExportTraceServiceRequest =
                serde_json::from_str(&text).map_err(|e| (i, e))?;
            for mut s in TraceExport(full).spans() {
                if filter
                    .only_with
                    .is_some_and(|k| !s.attributes.contains_key(k))
                    && s.jwt_shaped.is_empty()
                {
                    continue;
                }
                s.attributes.retain(|k, _| (filter.keep)(k));
                out.push((line_start, s));
            }
            continue;
        }
        let req: scan::Req<'_> = serde_json::from_slice(line).map_err(|e| (i, e))?;
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(scan::Val::to_json)
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            for ss in &rs.scope_spans {
                for raw in &ss.spans {
                    // Most spans lack the attribute asked for: find that out without parsing (a
                    // span with a `\u` escape, which could spell the key, is always parsed).
                    let bytes = raw.get().as_bytes();
                    if wanted
                        .as_ref()
                        .is_some_and(|w| w.find(bytes).is_none() && escape.find(bytes).is_none())
                    {
                        continue;
                    }
                    let s: scan::Span<'_> = serde_json::from_str(raw.get()).map_err(|e| (i, e))?;
                    if filter.only_with.is_none_or(|k| s.has(k)) {
                        out.push((
                            line_start,
                            s.to_stored(&service, filter.keep).map_err(|e| (i, e))?,
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Minimal borrowed views of OTLP/JSON, for [`scan_store`].
mod scan {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{StoredSpan, kind_name};

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Req<'a> {
        #[serde(borrow, default)]
        pub(super) resource_spans: Vec<Rs<'a>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Rs<'a> {
        #[serde(borrow, default)]
        pub(super) resource: Option<Res<'a>>,
        #[serde(borrow, default)]
        pub(super) scope_spans: Vec<Ss<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Res<'a> {
        #[serde(borrow, default)]
        pub(super) attributes: Vec<Attr<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Ss<'a> {
        #[serde(borrow, default)]
        pub(super) spans: Vec<&'a serde_json::value::RawValue>,
    }

    #[derive(Deserialize)]
    pub(super) struct Attr<'a> {
        #[serde(borrow)]
        pub(super) key: Cow<'a, str>,
        #[serde(borrow, default)]
        pub(super) value: Option<Val<'a>>,
    }

    /// An attribute whose value is left unparsed until it is kept: most are not.
    #[derive(Deserialize)]
    pub(super) struct RawAttr<'a> {
        #[serde(borrow)]
        key: Cow<'a, str>,
        #[serde(borrow, default)]
        value: Option<&'a serde_json::value::RawValue>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Val<'a> {
        #[serde(borrow, default)]
        string_value: Option<Cow<'a, str>>,
        #[serde(default)]
        bool_value: Option<bool>,
        #[serde(default, deserialize_with = "num_or_string")]
        int_value: Option<i64>,
        #[serde(default)]
        double_value: Option<f64>,
        #[serde(borrow, default)]
        array_value: Option<Arr<'a>>,
        #[serde(borrow, default)]
        kvlist_value: Option<KvList<'a>>,
        #[serde(borrow, default)]
        bytes_value: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Arr<'a> {
        #[serde(borrow, default)]
        values: Vec<Val<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct KvList<'a> {
        #[serde(borrow, default)]
        values: Vec<Attr<'a>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Event<'a> {
        #[serde(borrow, default)]
        name: Cow<'a, str>,
    }

    #[derive(Deserialize)]
    pub(super) struct Status {
        #[serde(default)]
        code: i32,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Span<'a> {
        #[serde(borrow, default)]
        trace_id: Cow<'a, str>,
        #[serde(borrow, default)]
        span_id: Cow<'a, str>,
        #[serde(borrow, default)]
        parent_span_id: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Cow<'a, str>,
        #[serde(default)]
        kind: i32,
        #[serde(default, deserialize_with = "num_or_string")]
        start_time_unix_nano: Option<i64>,
        #[serde(default, deserialize_with = "num_or_string")]
        end_time_unix_nano: Option<i64>,
        #[serde(borrow, default)]
        attributes: Vec<RawAttr<'a>>,
        #[serde(borrow, default)]
        events: Vec<Event<'a>>,
        #[serde(default)]
        status: Option<Status>,
    }

    /// OTLP/JSON writes 64-bit integers as strings; accept numbers too.
    fn num_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Option<i64>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer or a string holding one")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v).map(Some).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse::<i64>()
                    .map(Some)
                    .map_err(|_| E::custom(format!("`{v}` is not an integer")))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }

    impl Val<'_> {
        /// The same JSON value the full decoder gives ([`super::any_to_json`]).
        pub(super) fn to_json(&self) -> serde_json::Value {
            use serde_json::Value as J;
            if let Some(s) = &self.string_value {
                J::String(s.to_string())
            } else if let Some(b) = self.bool_value {
                J::Bool(b)
            } else if let Some(i) = self.int_value {
                J::from(i)
            } else if let Some(d) = self.double_value {
                J::from(d)
            } else if let Some(a) = &self.array_value {
                J::Array(a.values.iter().map(Val::to_json).collect())
            } else if let Some(kv) = &self.kvlist_value {
                J::Object(
                    kv.values
                        .iter()
                        .map(|a| {
                            (
                                a.key.to_string(),
                                a.value.as_ref().map(Val::to_json).unwrap_or(J::Null),
                            )
                        })
                        .collect(),
                )
            } else if let Some(b) = &self.bytes_value {
                // OTLP/JSON carries bytes as base64; the full decoder shows them as hex.
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map(|raw| J::String(hex::encode(raw)))
                    .unwrap_or(J::Null)
            } else {
                J::Null
            }
        }
    }

    impl Span<'_> {
        pub(super) fn has(&self, key: &str) -> bool {
            self.attributes.iter().any(|a| a.key == key)
        }

        pub(super) fn to_stored(
            &self,
            service: &str,
            keep: &(dyn Fn(&str) -> bool + Sync),
        ) -> Result<StoredSpan, serde_json::Error> {
            let mut attributes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
            for a in self.attributes.iter().filter(|a| keep(&a.key)) {
                let value = match a.value {
                    Some(raw) => serde_json::from_str::<Val<'_>>(raw.get())?.to_json(),
                    None => serde_json::Value::Null,
                };
                attributes.insert(a.key.to_string(), value);
            }
            Ok(StoredSpan {
                trace_id: self.trace_id.to_ascii_lowercase(),
                span_id: self.span_id.to_ascii_lowercase(),
                parent_span_id: self.parent_span_id.to_ascii_lowercase(),
                name: self.name.to_string(),
                kind: kind_name(self.kind).to_owned(),
                service: service.to_owned(),
                start_unix_nano: self.start_time_unix_nano.unwrap_or(0).max(0) as u64,
                end_unix_nano: self.end_time_unix_nano.unwrap_or(0).max(0) as u64,
                status: match self.status.as_ref().map(|s| s.code) {
                    Some(1) => "ok",
                    Some(2) => "error",
                    _ => "unset",
                }
                .to_owned(),
                attributes,
                events: self.events.iter().map(|e| e.name.to_string()).collect(),
                jwt_shaped: Vec::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn line(trace: u8, note: &str) -> String {
        use any_value::Value as V;
        let span = |id: u8, parent: u8, hop: &str| Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            name: hop.into(),
            kind: 2,
            start_time_unix_nano: 1_795_877_638_500_000_000 + u64::from(id),
            end_time_unix_nano: 1_795_877_638_600_000_000,
            attributes: vec![
                kv("tokentrail.hop.name", V::StringValue(hop.into())),
                kv("tokentrail.hop.index", V::IntValue(i64::from(id))),
                kv("tokentrail.ok", V::BoolValue(true)),
                kv("tokentrail.ratio", V::DoubleValue(0.5)),
                kv(
                    "tokentrail.scopes",
                    V::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: vec![AnyValue {
                            value: Some(V::StringValue("orders:read".into())),
                        }],
                    }),
                ),
                kv("app.note", V::StringValue(note.into())),
                kv("app.bytes", V::BytesValue(vec![1, 2, 255])),
            ],
            events: vec![span::Event {
                name: "rejected".into(),
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: String::new(),
            }),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", V::StringValue("gateway".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(1, 0, "runtime.inbound"), span(2, 1, "gateway.inbound")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        serde_json::to_string(&req).unwrap()
    }

    fn store(lines: &[String]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "tokentrail-scan-{}-{}.jsonl",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    /// A credential that JSON escaping hides from a scrub of the encoded line (after a tab, or
    /// an AWS secret after a newline) is scrubbed from the store line, on the transcoder's path
    /// and on the full decoder's (a bytes value sends the export there).
    #[test]
    fn the_store_line_scrubs_what_escaping_hides() {
        use any_value::Value as V;
        let opaque = "opaqueS3cretValue0123456789";
        let aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        for extra in [None, Some(kv("app.bytes", V::BytesValue(vec![1, 2])))] {
            let mut attributes = vec![
                kv(
                    "http.request.header.authorization",
                    V::StringValue(format!("Bearer\t{opaque}")),
                ),
                kv("app.note", V::StringValue(format!("key:\n{aws}"))),
            ];
            attributes.extend(extra.clone());
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span {
                            trace_id: vec![1; 16],
                            span_id: vec![2; 8],
                            name: "x".into(),
                            attributes,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let mut line = String::new();
            let spans = trace_store_line(PROTOBUF, &req.encode_to_vec(), &mut line).unwrap();
            assert_eq!(spans, 1);
            assert!(
                !line.contains(opaque) && !line.contains(aws),
                "{extra:?}: {line}"
            );
            assert!(line.contains(r#""Bearer [REDACTED]""#), "{line}");
            serde_json::from_str::<serde_json::Value>(&line).expect("still JSON");
        }
    }

    #[test]
    fn fast_scan_reads_what_the_full_decoder_reads() {
        let jwt = crate::fixtures::jwt("alice");
        let lines: Vec<String> = (1..=40u8)
            .map(|t| line(t, if t == 7 { jwt.as_str() } else { "plain" }))
            .collect();
        let path = store(&lines);
        let full = read_store(&path).unwrap();
        let all = ScanFilter {
            keep: &|_| true,
            only_with: None,
        };
        let fast = scan_store(&path, &all).unwrap();
        assert_eq!(full.len(), 80);
        assert_eq!(fast, full);
        // Blocks smaller than a line, and a few lines per block: the same spans.
        for block in [700, 5000, 50_000] {
            let spans: Vec<StoredSpan> = scan_store_in_blocks(&path, &all, block, 0, None)
                .unwrap()
                .into_iter()
                .map(|(_, s)| s)
                .collect();
            assert_eq!(spans, full, "{block}");
        }
        // Every span's line offset, read back line by line, gives the same spans; a range
        // from a line start gives the spans from there on.
        let with_lines = scan_store_range(&path, &all, 0, None).unwrap();
        let offsets: Vec<u64> = {
            let mut o: Vec<u64> = with_lines.iter().map(|(at, _)| *at).collect();
            o.dedup();
            o
        };
        assert_eq!(offsets.len(), 40, "one offset per line");
        assert_eq!(scan_store_lines(&path, &all, &offsets).unwrap(), with_lines);
        let tail = scan_store_range(&path, &all, offsets[30], None).unwrap();
        assert_eq!(tail, with_lines[60..].to_vec());
        let middle = scan_store_range(&path, &all, offsets[10], Some(offsets[12])).unwrap();
        assert_eq!(middle, with_lines[20..24].to_vec());
        assert_eq!(
            fast.iter().filter(|s| !s.jwt_shaped.is_empty()).count(),
            2,
            "both spans of the planted line say where"
        );
        let hop_attrs = ScanFilter {
            keep: &|k| k.starts_with("tokentrail.hop."),
            only_with: None,
        };
        let only_hops = scan_store(&path, &hop_attrs).unwrap();
        assert_eq!(only_hops[0].attributes.len(), 2);
        assert!(
            !only_hops[13].jwt_shaped.is_empty(),
            "found even when not kept"
        );
        // Only the spans of one hop, plus every span holding a JWT-shaped value.
        let runtime_only = scan_store(
            &path,
            &ScanFilter {
                keep: &|_| true,
                only_with: Some("tokentrail.absent"),
            },
        )
        .unwrap();
        assert_eq!(runtime_only.len(), 2, "the planted line's spans only");
        assert!(runtime_only.iter().all(|s| !s.jwt_shaped.is_empty()));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_store_digest_changes_with_any_byte() {
        let path = store(&["{\"resourceSpans\":[]}".to_owned(), "{}".to_owned()]);
        let (len, d1) = store_digest(&path).unwrap();
        assert_eq!(len, std::fs::metadata(&path).unwrap().len());
        assert_eq!(store_digest(&path).unwrap().1, d1, "stable");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_ne!(store_digest(&path).unwrap().1, d1);
        // A prefix's digest does not depend on what follows it.
        let (n, prefix) = store_digest_upto(&path, Some(10)).unwrap();
        assert_eq!(n, 10);
        bytes.extend_from_slice(b"{\"appended\":1}\n");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(store_digest_upto(&path, Some(10)).unwrap().1, prefix);
        assert_ne!(store_digest(&path).unwrap().1, prefix);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(store_digest(&path).unwrap().0, 0);
        assert!(store_digest(Path::new("/nonexistent/traces.jsonl")).is_err());
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn one_pass_gives_the_digest_of_the_prefix_and_of_the_whole() {
        let text: Vec<u8> = (0..200u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = store(&[]);
        std::fs::write(&path, &text).unwrap();
        // Small blocks put the prefix's end at block and batch boundaries and inside blocks.
        for block in [1, 7, 16, 64, 256] {
            let alone = |n: u64| {
                digests_in_blocks(&path, None, Some(n), block)
                    .unwrap()
                    .digest
            };
            for p in [0u64, 1, 6, 7, 8, 15, 16, 17, 63, 64, 100, 199, 200] {
                let d = digests_in_blocks(&path, Some(p), None, block).unwrap();
                assert_eq!(d.len, 200);
                assert_eq!(d.digest, alone(200), "block {block}");
                assert_eq!(d.prefix, Some(alone(p)), "block {block}, prefix {p}");
            }
            let longer = digests_in_blocks(&path, Some(201), None, block).unwrap();
            assert_eq!(
                longer.prefix, None,
                "a prefix longer than the store has no digest"
            );
            let limited = digests_in_blocks(&path, Some(50), Some(120), block).unwrap();
            assert_eq!((limited.len, limited.prefix), (120, Some(alone(50))));
        }
        assert_eq!(
            store_digests(&path, Some(10), None).unwrap().prefix,
            Some(store_digest_upto(&path, Some(10)).unwrap().1)
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn fast_scan_names_the_bad_line() {
        let mut lines: Vec<String> = (1..=5u8).map(|t| line(t, "x")).collect();
        lines.insert(3, "{not json".into());
        let path = store(&lines);
        let all = ScanFilter {
            keep: &|_| true,
            only_with: None,
        };
        for block in [700, 3000, 64 << 20] {
            match scan_store_in_blocks(&path, &all, block, 0, None) {
                Err(OtlpError::StoreLine { line, .. }) => assert_eq!(line, 4, "{block}"),
                other => panic!("{other:?}"),
            }
        }
        let _ = std::fs::remove_file(path);
    }
}
