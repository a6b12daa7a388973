//! JSON log lines carrying `trace_id`/`span_id`, scrubbed before they are written.

use std::io::Write;
use std::sync::Mutex;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::redact::scrub_json;

/// Where log lines go.
pub(crate) type Sink = Box<dyn Write + Send>;

/// A `tracing` layer writing one JSON object per event.
pub(crate) struct JsonLogLayer {
    service: &'static str,
    sink: Mutex<Sink>,
}

impl JsonLogLayer {
    pub(crate) fn new(service: &'static str, sink: Sink) -> Self {
        Self {
            service,
            sink: Mutex::new(sink),
        }
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

/// Format one event as a JSON line (without the newline), scrubbed.
pub(crate) fn format_event(
    service: &str,
    level: &tracing::Level,
    target: &str,
    span: Option<&str>,
    fields: Map<String, Value>,
) -> String {
    let mut obj = Map::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    obj.insert("ts_ms".into(), Value::from(now));
    obj.insert("level".into(), Value::String(level.to_string()));
    obj.insert("service".into(), Value::String(service.to_owned()));
    obj.insert("target".into(), Value::String(target.to_owned()));
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        obj.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
        obj.insert("span_id".into(), Value::String(sc.span_id().to_string()));
    }
    if let Some(span) = span {
        obj.insert("span".into(), Value::String(span.to_owned()));
    }
    for (k, v) in fields {
        obj.insert(k, v);
    }
    let line = Value::Object(obj).to_string();
    scrub_json(&line).into_owned()
}

impl<S> Layer<S> for JsonLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let meta = event.metadata();
        let span = ctx.lookup_current().map(|s| s.name());
        let line = format_event(self.service, meta.level(), meta.target(), span, fields);
        if let Ok(mut sink) = self.sink.lock() {
            // A log line that cannot be written is dropped; logging never fails a request.
            let _ = writeln!(sink, "{line}");
            let _ = sink.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_log_fields_are_scrubbed() {
        let token = crate::fixtures::jwt("alice");
        let token = token.as_str();
        let mut fields = Map::new();
        fields.insert(
            "message".into(),
            Value::String(format!("got header Authorization: Bearer {token}")),
        );
        fields.insert(
            "nested".into(),
            Value::String(format!("{{\"t\":\"{token}\"}}")),
        );
        // An opaque credential after a line break: escaped in the line as `\n`.
        fields.insert(
            "headers".into(),
            Value::String("accept: */*\nauthorization:\nBearer opaque0123456789".into()),
        );
        let line = format_event("agent", &tracing::Level::INFO, "t", None, fields);
        assert!(!line.contains(token), "{line}");
        assert!(!line.contains("opaque0123456789"), "{line}");
        assert!(serde_json::from_str::<Value>(&line).is_ok(), "{line}");
    }
}
