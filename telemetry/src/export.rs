//! The redacting wrapper every span exporter sits behind, except tokentrail's own OTLP/HTTP
//! exporter, whose encoder scrubs the same strings as it writes them ([`crate::otlp_export`]).

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::{Event, Status};
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use crate::redact::scrub;

/// Wraps an exporter and scrubs every string of every span before it leaves the process.
#[derive(Debug)]
pub(crate) struct RedactingExporter<E>(pub(crate) E);

fn scrub_cow(s: &mut Cow<'static, str>) {
    if let Cow::Owned(clean) = scrub(s) {
        *s = Cow::Owned(clean);
    }
}

fn scrub_string_value(s: &StringValue) -> Option<StringValue> {
    match scrub(s.as_str()) {
        Cow::Owned(clean) => Some(StringValue::from(clean)),
        Cow::Borrowed(_) => None,
    }
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some(clean) = scrub_string_value(s) {
                *s = clean;
            }
        }
        Value::Array(Array::String(items)) => {
            for s in items.iter_mut() {
                if let Some(clean) = scrub_string_value(s) {
                    *s = clean;
                }
            }
        }
        _ => {}
    }
}

fn scrub_kvs(kvs: &mut [KeyValue]) {
    for kv in kvs {
        if let Cow::Owned(clean) = scrub(kv.key.as_str()) {
            kv.key = Key::from(clean);
        }
        scrub_value(&mut kv.value);
    }
}

/// Scrub one span in place.
pub(crate) fn scrub_span(span: &mut SpanData) {
    scrub_cow(&mut span.name);
    scrub_kvs(&mut span.attributes);
    for ev in span.events.events.iter_mut() {
        scrub_event(ev);
    }
    for link in span.links.links.iter_mut() {
        scrub_kvs(&mut link.attributes);
    }
    if let Status::Error { description } = &mut span.status {
        scrub_cow(description);
    }
}

fn scrub_event(ev: &mut Event) {
    scrub_cow(&mut ev.name);
    scrub_kvs(&mut ev.attributes);
}

impl<E: SpanExporter> SpanExporter for RedactingExporter<E> {
    async fn export(&self, mut batch: Vec<SpanData>) -> OTelSdkResult {
        batch.iter_mut().for_each(scrub_span);
        self.0.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}
