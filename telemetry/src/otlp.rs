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

/// A decoded export request.
#[derive(Debug, Clone)]
pub struct TraceExport(ExportTraceServiceRequest);

impl TraceExport {
    /// Decode a body according to its content type.
    pub fn decode(content_type: &str, body: &[u8]) -> Result<Self, OtlpError> {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            PROTOBUF | "application/protobuf" => Ok(Self(ExportTraceServiceRequest::decode(body)?)),
            JSON => Ok(Self(serde_json::from_slice(body)?)),
            other => Err(OtlpError::ContentType(other.to_owned())),
        }
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

    /// One line of OTLP/JSON (no newline), scrubbed of secret-shaped strings. The scrubber's
    /// patterns never span a quote or a backslash, so scrubbing the encoded text keeps it valid
    /// JSON.
    pub fn to_json_line(&self) -> Result<String, OtlpError> {
        let line = serde_json::to_string(&self.0)?;
        Ok(match crate::redact::scrub(&line) {
            std::borrow::Cow::Borrowed(_) => line,
            std::borrow::Cow::Owned(clean) => clean,
        })
    }

    /// Protobuf encoding (for forwarding).
    pub fn to_protobuf(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }
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
