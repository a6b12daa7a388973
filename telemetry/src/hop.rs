//! The hop span API: the only way handlers create spans.
//!
//! ```no_run
//! # use telemetry::{attrs::*, HopSpan, TraceContext};
//! let parent = TraceContext::none();
//! let mut span = HopSpan::hop(Hop::Target, Pattern::Passthrough, &parent);
//! span.carrier("header:authorization");
//! span.reject(FailureReason::Expired);
//! span.end();
//! ```

use std::borrow::Cow;

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value, global};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::attrs::{self, FailureReason, Hop, Outcome, Pattern};
use crate::propagation::TraceContext;
use crate::provenance::CredentialProvenance;

const TRACER: &str = "tokentrail";

/// A value for [`Span::attr`], without naming OpenTelemetry types.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// String.
    Str(String),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
    /// List of strings.
    StrList(Vec<String>),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(i64::from(v))
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::StrList(v)
    }
}

impl From<AttrValue> for Value {
    fn from(v: AttrValue) -> Self {
        match v {
            AttrValue::Str(s) => Value::String(s.into()),
            AttrValue::Int(i) => Value::I64(i),
            AttrValue::Bool(b) => Value::Bool(b),
            AttrValue::StrList(l) => Value::Array(Array::String(
                l.into_iter().map(StringValue::from).collect(),
            )),
        }
    }
}

/// In Lambda, `Some(true)` for the first hop span of the execution environment and
/// `Some(false)` afterwards; `None` outside Lambda.
fn lambda_cold_start() -> Option<bool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARM: AtomicBool = AtomicBool::new(false);
    if !crate::propagation::in_lambda() {
        return None;
    }
    Some(!WARM.swap(true, Ordering::Relaxed))
}

/// What kind of span to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Receiving a request (a hop's own span).
    Server,
    /// Calling another service.
    Client,
    /// Work inside the process.
    Internal,
}

impl From<Role> for SpanKind {
    fn from(r: Role) -> Self {
        match r {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
            Role::Internal => SpanKind::Internal,
        }
    }
}

/// Room for a hop span's attributes up front. Sixteen `KeyValue`s (896 bytes) stay within
/// glibc's per-thread allocation cache (chunks up to 1032 bytes), which the Lambda bootstraps
/// allocate from; room for 24 cost the interceptor core's paths about a microsecond there (a
/// fully verified span grows once, to 32).
const HOP_ATTRIBUTES: usize = 16;

/// A span. Ends when [`Span::end`] is called or when dropped.
#[derive(Debug)]
pub struct Span {
    cx: Context,
    /// For a hop span: what its metrics record when it ends.
    metric: Option<crate::metrics::HopMetric>,
    /// Under the plain pipeline ([`crate::init::SPAN_PIPELINE_ENV`]): the `tracing` span that
    /// `tracing-opentelemetry` makes this span of. It records the span's name, kind, parent and
    /// status and the OpenTelemetry semantic attributes, and none of tokentrail's provenance.
    plain: Option<tracing::Span>,
}

/// A hop span is a [`Span`] opened with [`Span::hop`].
pub type HopSpan = Span;

impl Span {
    /// Open the hop span of `hop` under `parent` (server kind; the app's root span is client kind).
    pub fn hop(hop: Hop, pattern: Pattern, parent: &TraceContext) -> Self {
        let role = if hop == Hop::App {
            Role::Client
        } else {
            Role::Server
        };
        let cold_start = lambda_cold_start();
        if crate::init::plain_spans() {
            let mut span = Self::open_plain(Cow::Borrowed(hop.as_str()), role, parent);
            if let (Some(cold), Some(plain)) = (cold_start, &span.plain) {
                plain.set_attribute(attrs::semconv::FAAS_COLDSTART, cold);
            }
            span.metric = Some(crate::metrics::HopMetric::start(hop, pattern, cold_start));
            return span;
        }
        // The span keeps this vector for every attribute set later: room for the contract's
        // attributes up front saves the regrowth as the hop adds them.
        let mut attributes = Vec::with_capacity(HOP_ATTRIBUTES);
        attributes.extend([
            KeyValue::new(attrs::PATTERN, pattern.as_str()),
            KeyValue::new(attrs::HOP_NAME, hop.as_str()),
            KeyValue::new(attrs::HOP_INDEX, hop.index()),
        ]);
        if let Some(cold) = cold_start {
            attributes.push(KeyValue::new(attrs::semconv::FAAS_COLDSTART, cold));
        }
        if let Some(l) = parent.0.get::<crate::propagation::LambdaSegment>() {
            attributes.push(KeyValue::new(
                attrs::XRAY_LAMBDA_TRACE_ID,
                l.trace_id.clone(),
            ));
            attributes.push(KeyValue::new(
                attrs::XRAY_LAMBDA_PARENT_ID,
                l.parent_id.clone(),
            ));
        }
        let mut span = Self::open(Cow::Borrowed(hop.as_str()), role, parent, attributes);
        span.metric = Some(crate::metrics::HopMetric::start(hop, pattern, cold_start));
        span
    }

    /// Open a plain span (an outgoing call, or internal work) under `parent`.
    pub fn child(name: &'static str, role: Role, parent: &TraceContext) -> Self {
        if crate::init::plain_spans() {
            return Self::open_plain(Cow::Borrowed(name), role, parent);
        }
        Self::open(Cow::Borrowed(name), role, parent, Vec::new())
    }

    /// The plain pipeline's span: a `tracing` span under `parent`, named and kinded through the
    /// fields `tracing-opentelemetry` reads.
    fn open_plain(name: Cow<'static, str>, role: Role, parent: &TraceContext) -> Self {
        let kind = match role {
            Role::Server => "server",
            Role::Client => "client",
            Role::Internal => "internal",
        };
        let span =
            tracing::info_span!(target: "tokentrail", "span", otel.name = %name, otel.kind = kind);
        // Refused only for a span already started, which this one is not.
        let _ = span.set_parent(parent.0.clone());
        Self {
            cx: span.context(),
            metric: None,
            plain: Some(span),
        }
    }

    fn open(
        name: Cow<'static, str>,
        role: Role,
        parent: &TraceContext,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(name)
            .with_kind(role.into())
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent.0);
        Self {
            cx: parent.0.with_span(span),
            metric: None,
            plain: None,
        }
    }

    /// The context to propagate to the next hop, or to parent children with.
    pub fn context(&self) -> TraceContext {
        TraceContext(self.cx.clone())
    }

    /// Trace id (32 hex).
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Span id (16 hex).
    pub fn span_id(&self) -> String {
        self.cx.span().span_context().span_id().to_string()
    }

    /// Set any attribute (names come from [`crate::attrs`]). The plain pipeline records the
    /// OpenTelemetry semantic ones only.
    pub fn attr(&self, key: &'static str, value: impl Into<AttrValue>) {
        self.set(key, Value::from(value.into()));
    }

    /// Record `key` = `value` on the span; on the plain pipeline, through `tracing-opentelemetry`
    /// and only when it is an OpenTelemetry semantic attribute.
    fn set(&self, key: &'static str, value: Value) {
        match &self.plain {
            Some(_) if key.starts_with(attrs::NAMESPACE) => {}
            Some(plain) => plain.set_attribute(key, value),
            None => self.cx.span().set_attribute(KeyValue::new(key, value)),
        }
    }

    /// Set the span's status, through `tracing-opentelemetry` on the plain pipeline.
    fn status(&self, status: Status) {
        match &self.plain {
            Some(plain) => plain.set_status(status),
            None => self.cx.span().set_status(status),
        }
    }

    /// Where the credential travelled, e.g. `header:x-custom-usertoken`.
    pub fn carrier(&self, carrier: &str) {
        if self.plain.is_some() {
            return;
        }
        self.attr(attrs::HOP_CARRIER, carrier.to_ascii_lowercase());
    }

    /// Record the redacted provenance of the credential this hop saw.
    pub fn credential(&self, p: &CredentialProvenance) {
        if self.plain.is_some() {
            return;
        }
        let span = self.cx.span();
        let mut kv = vec![
            KeyValue::new(attrs::CREDENTIAL_KIND, p.kind.as_str()),
            KeyValue::new(attrs::CREDENTIAL_VERIFICATION, p.verification.as_str()),
        ];
        if let Some(fp) = &p.fingerprint {
            kv.push(KeyValue::new(attrs::CREDENTIAL_FINGERPRINT, fp.clone()));
        }
        if let Some(c) = &p.claims {
            let mut push = |k: &'static str, v: &Option<String>| {
                if let Some(v) = v {
                    kv.push(KeyValue::new(k, v.clone()));
                }
            };
            push(attrs::CREDENTIAL_ISSUER, &c.issuer);
            push(attrs::CREDENTIAL_SUBJECT, &c.subject);
            push(attrs::CREDENTIAL_CLIENT_ID, &c.client_id);
            push(attrs::CREDENTIAL_KID, &c.kid);
            push(attrs::CREDENTIAL_ALG, &c.alg);
            if !c.audience.is_empty() {
                kv.push(KeyValue::new(
                    attrs::CREDENTIAL_AUDIENCE,
                    Value::from(AttrValue::StrList(c.audience.clone())),
                ));
            }
            if !c.scopes.is_empty() {
                kv.push(KeyValue::new(
                    attrs::CREDENTIAL_SCOPES,
                    Value::from(AttrValue::StrList(c.scopes.clone())),
                ));
            }
            if let Some(exp) = c.expires_at {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or_default();
                kv.push(KeyValue::new(attrs::CREDENTIAL_EXPIRES_IN_S, exp - now));
            }
        }
        span.set_attributes(kv);
    }

    /// Record the identity that reached the target (its pseudonym when subjects are
    /// pseudonymised, as `tokentrail.credential.subject` is).
    pub fn enduser(&self, id: &str) {
        if self.plain.is_some() {
            return;
        }
        self.attr(
            attrs::ENDUSER_ID,
            crate::provenance::recorded_subject(id).as_ref(),
        );
    }

    /// The hop let the request through.
    pub fn ok(&mut self) {
        self.set(attrs::HOP_OUTCOME, Outcome::Ok.as_str().into());
        self.status(Status::Ok);
        if let Some(m) = &mut self.metric {
            m.outcome = Some(Outcome::Ok);
            m.reason = None;
        }
    }

    /// The hop stopped the request (or failed) for `reason`.
    pub fn reject(&mut self, reason: FailureReason) {
        let outcome = reason.outcome();
        if self.plain.is_some() {
            self.set(attrs::semconv::ERROR_TYPE, reason.as_str().into());
            self.status(Status::error(reason.describe()));
        } else {
            self.record_reject(reason, outcome);
        }
        if let Some(m) = &mut self.metric {
            m.outcome = Some(outcome);
            m.reason = Some(reason);
        }
    }

    fn record_reject(&self, reason: FailureReason, outcome: Outcome) {
        let span = self.cx.span();
        span.set_attributes([
            KeyValue::new(attrs::HOP_OUTCOME, outcome.as_str()),
            KeyValue::new(attrs::FAILURE_REASON, reason.as_str()),
            KeyValue::new(attrs::semconv::ERROR_TYPE, reason.as_str()),
        ]);
        span.add_event(
            outcome.as_str(),
            vec![KeyValue::new(attrs::FAILURE_REASON, reason.as_str())],
        );
        span.set_status(Status::error(reason.describe()));
    }

    /// This hop passed the request on, and a later hop stopped it for `reason`. The hop's own
    /// outcome stays `ok` (only the stopping hop is `rejected`); the span is marked as an error so
    /// trace views show the failed path.
    pub fn downstream_failed(&mut self, reason: FailureReason) {
        self.set(attrs::HOP_OUTCOME, Outcome::Ok.as_str().into());
        self.set(attrs::semconv::ERROR_TYPE, reason.as_str().into());
        self.status(Status::error(format!("stopped downstream: {reason}")));
        if let Some(m) = &mut self.metric {
            m.outcome = Some(Outcome::Ok);
            m.reason = None;
        }
    }

    /// Mark a client call as failed without hop semantics (status + `error.type`).
    pub fn fail(&self, error_type: &str) {
        self.set(attrs::semconv::ERROR_TYPE, error_type.to_owned().into());
        self.status(Status::error(error_type.to_owned()));
    }

    /// End the span now.
    pub fn end(self) {
        // Drop ends it.
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let span = self.cx.span();
        // A plain span ends when its `tracing` span closes, as its layer ends it.
        if self.plain.take().is_none() {
            span.end();
        }
        if let Some(m) = &self.metric {
            let trace_id = span.span_context().trace_id();
            m.record(|| crate::propagation::xray_trace_id(&trace_id.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_room_fits_glibc_thread_cache() {
        // glibc's tcache serves chunks of up to 1032 usable bytes; an OpenTelemetry upgrade that
        // grows `KeyValue` should revisit HOP_ATTRIBUTES.
        let bytes = HOP_ATTRIBUTES * std::mem::size_of::<KeyValue>();
        assert!(bytes <= 1032, "{bytes} bytes");
    }
}
