//! Trace context across hops: W3C `traceparent`/`tracestate`/`baggage` and `X-Amzn-Trace-Id`.
//!
//! Rule: **W3C across hops, X-Ray as secondary.** Extraction prefers a valid `traceparent`; if
//! there is none it reads `X-Amzn-Trace-Id` (or, in Lambda, `lambda-runtime-trace-id` /
//! `_X_AMZN_TRACE_ID`). Injection always writes both, with the same 128-bit trace id (ids are
//! generated X-Ray-compatible, see [`crate::idgen`]).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state header.
pub const TRACESTATE: &str = "tracestate";
/// W3C baggage header.
pub const BAGGAGE: &str = "baggage";
/// X-Ray trace header.
pub const X_AMZN_TRACE_ID: &str = "x-amzn-trace-id";
/// Header through which the Lambda Runtime API hands over the trace header.
pub const LAMBDA_RUNTIME_TRACE_ID: &str = "lambda-runtime-trace-id";
/// Environment variable Lambda runtimes set per invocation.
pub const LAMBDA_TRACE_ENV: &str = "_X_AMZN_TRACE_ID";

/// An opaque trace context: what a hop received and what it passes on.
#[derive(Debug, Clone, Default)]
pub struct TraceContext(pub(crate) Context);

impl TraceContext {
    /// No incoming context: the next span starts a new trace.
    pub fn none() -> Self {
        Self(Context::new())
    }

    /// A parent that says "not sampled": every span under it, in this process and in every hop
    /// it propagates to (ParentBased samplers), is dropped. Used to measure the chain with
    /// tracing off.
    pub fn unsampled_root() -> Self {
        let trace: [u8; 16] = rand::random();
        let span: [u8; 8] = rand::random();
        let sc = SpanContext::new(
            TraceId::from_bytes(trace),
            SpanId::from_bytes(span),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        Self(Context::new().with_remote_span_context(sc))
    }

    /// Whether a valid span context is present.
    pub fn is_valid(&self) -> bool {
        self.0.span().span_context().is_valid()
    }

    /// The trace id as 32 lower-case hex digits (all zeros when invalid).
    pub fn trace_id(&self) -> String {
        self.0.span().span_context().trace_id().to_string()
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        self.0.span().span_context().span_id().to_string()
    }

    /// The trace id in X-Ray form, `1-xxxxxxxx-xxxxxxxxxxxxxxxxxxxxxxxx`.
    pub fn xray_trace_id(&self) -> String {
        xray_trace_id(&self.trace_id())
    }

    /// Inject into an HTTP header map (`traceparent`, `tracestate`, `baggage`, `x-amzn-trace-id`).
    pub fn inject_headers(&self, headers: &mut http::HeaderMap) {
        let mut inj = HeaderInjector(headers);
        self.inject_into(&mut inj);
    }

    /// The propagation headers as an HTTP header map, to attach to an outgoing request.
    pub fn http_headers(&self) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        self.inject_headers(&mut h);
        h
    }

    /// Inject into a string map (lower-case names, as in the interceptor event).
    pub fn inject_map<M: StringMap>(&self, map: &mut M) {
        let mut inj = MapInjector(map);
        self.inject_into(&mut inj);
    }

    /// Inject into an MCP request's `params._meta` (creating it when absent).
    pub fn inject_mcp_meta(&self, request: &mut serde_json::Value) {
        let Some(obj) = request.as_object_mut() else {
            return;
        };
        let params = obj
            .entry("params")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        let Some(params) = params.as_object_mut() else {
            return;
        };
        let meta = params
            .entry("_meta")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        let Some(meta) = meta.as_object_mut() else {
            return;
        };
        let mut pairs = BTreeMap::new();
        self.inject_map(&mut pairs);
        for (k, v) in pairs {
            if k != X_AMZN_TRACE_ID {
                meta.insert(k, serde_json::Value::String(v));
            }
        }
    }

    fn inject_into(&self, injector: &mut dyn Injector) {
        TraceContextPropagator::new().inject_context(&self.0, injector);
        BaggagePropagator::new().inject_context(&self.0, injector);
        let sc = self.0.span().span_context().clone();
        if sc.is_valid() {
            let sampled = if sc.is_sampled() { 1 } else { 0 };
            injector.set(
                X_AMZN_TRACE_ID,
                format!(
                    "Root={};Parent={};Sampled={sampled}",
                    xray_trace_id(&sc.trace_id().to_string()),
                    sc.span_id()
                ),
            );
        }
    }

    /// Run `fut` with this context current, so log lines and `tracing` spans inside it carry its ids.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        fut.with_context(self.0.clone())
    }
}

/// Whether `s` is a trace id as W3C spells it: 32 hex digits.
pub fn is_w3c_trace_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `1-` + first 8 hex + `-` + remaining 24 hex; empty when `w3c_hex` is not 32 hex digits.
pub fn xray_trace_id(w3c_hex: &str) -> String {
    if !is_w3c_trace_id(w3c_hex) {
        return String::new();
    }
    format!("1-{}-{}", &w3c_hex[..8], &w3c_hex[8..])
}

/// Parse an `X-Amzn-Trace-Id` value. A header without `Parent` carries no span to hang from and
/// is ignored (a new trace starts), as X-Ray treats it as a root.
pub fn parse_xray_header(value: &str) -> Option<SpanContext> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = true;
    for part in value.split(';') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Root" => root = Some(v.trim()),
            "Parent" => parent = Some(v.trim()),
            "Sampled" => sampled = v.trim() != "0",
            _ => {}
        }
    }
    let root = root?;
    let mut segs = root.split('-');
    if segs.next()? != "1" {
        return None;
    }
    let (epoch, rest) = (segs.next()?, segs.next()?);
    if segs.next().is_some() || epoch.len() != 8 || rest.len() != 24 {
        return None;
    }
    let trace_id = TraceId::from_hex(&format!("{epoch}{rest}")).ok()?;
    let parent = parent?;
    if parent.len() != 16 {
        return None;
    }
    let span_id = SpanId::from_hex(parent).ok()?;
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

/// A case-insensitive string map view used for extraction and injection.
pub trait StringMap {
    /// Value for a lower-case key, matched case-insensitively.
    fn get_ci(&self, key: &str) -> Option<&str>;
    /// All keys.
    fn key_list(&self) -> Vec<&str>;
    /// Insert (key is lower-case).
    fn put(&mut self, key: String, value: String);
}

/// The same implementation for both string maps (their APIs match).
macro_rules! string_map {
    ($($map:ty),*) => {$(
        impl StringMap for $map {
            fn get_ci(&self, key: &str) -> Option<&str> {
                self.get(key).map(String::as_str).or_else(|| {
                    self.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.as_str())
                })
            }
            fn key_list(&self) -> Vec<&str> {
                self.keys().map(String::as_str).collect()
            }
            fn put(&mut self, key: String, value: String) {
                self.insert(key, value);
            }
        }
    )*};
}

string_map!(HashMap<String, String>, BTreeMap<String, String>);

struct MapExtractor<'a, M: StringMap>(&'a M);
impl<M: StringMap> Extractor for MapExtractor<'_, M> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_ci(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.key_list()
    }
}

struct MapInjector<'a, M: StringMap>(&'a mut M);
impl<M: StringMap> Injector for MapInjector<'_, M> {
    fn set(&mut self, key: &str, value: String) {
        self.0.put(key.to_ascii_lowercase(), value);
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);
impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);
impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(val)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, val);
        }
    }
}

/// The function segment Lambda opened for this invocation (`Root` and `Parent` of
/// `lambda-runtime-trace-id`). A hop span records it so that, in X-Ray, the hop hangs under the
/// function segment when Lambda's trace is the request's trace (W3C ids rule across hops; the
/// X-Ray link is secondary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaSegment {
    /// Lambda's trace id, X-Ray form (`1-…-…`).
    pub trace_id: String,
    /// The function segment's id (16 hex).
    pub parent_id: String,
}

impl LambdaSegment {
    /// Parse an X-Ray trace header as Lambda hands it over.
    pub fn parse(value: &str) -> Option<Self> {
        let sc = parse_xray_header(value)?;
        Some(Self {
            trace_id: xray_trace_id(&sc.trace_id().to_string()),
            parent_id: sc.span_id().to_string(),
        })
    }
}

/// Whether this process runs as a Lambda function (read once).
pub(crate) fn in_lambda() -> bool {
    static IN_LAMBDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some())
}

fn extract_from(extractor: &dyn Extractor, lambda_fallback: Option<&str>) -> TraceContext {
    let lambda = lambda_fallback
        .or_else(|| {
            // Only a Lambda front door sets this header (from the invocation's context, after
            // removing any the caller sent); elsewhere it is not trusted.
            in_lambda()
                .then(|| extractor.get(LAMBDA_RUNTIME_TRACE_ID))
                .flatten()
        })
        .and_then(LambdaSegment::parse);
    let TraceContext(cx) = extract_trace(extractor, lambda_fallback);
    TraceContext(match lambda {
        Some(l) => cx.with_value(l),
        None => cx,
    })
}

fn extract_trace(extractor: &dyn Extractor, lambda_fallback: Option<&str>) -> TraceContext {
    // Start from an empty context, never from `Context::current()`: inside lambda_runtime the
    // current context is the runtime's own invoke span, which is not the caller's trace.
    let cx = BaggagePropagator::new().extract_with_context(&Context::new(), extractor);
    let cx = TraceContextPropagator::new().extract_with_context(&cx, extractor);
    if cx.span().span_context().is_valid() {
        return TraceContext(cx);
    }
    let xray = extractor
        .get(X_AMZN_TRACE_ID)
        .and_then(parse_xray_header)
        .or_else(|| {
            extractor
                .get(LAMBDA_RUNTIME_TRACE_ID)
                .and_then(parse_xray_header)
        })
        .or_else(|| lambda_fallback.and_then(parse_xray_header));
    match xray {
        Some(sc) => TraceContext(cx.with_remote_span_context(sc)),
        None => TraceContext(cx),
    }
}

/// Extract from HTTP headers.
pub fn extract_headers(headers: &http::HeaderMap) -> TraceContext {
    extract_from(&HeaderExtractor(headers), None)
}

/// Extract from a string map with any header-name case (the interceptor event's `headers`).
pub fn extract_map<M: StringMap>(map: &M) -> TraceContext {
    extract_from(&MapExtractor(map), None)
}

/// Extract inside a Lambda invocation: HTTP-ish headers first, then the runtime's trace id
/// (`lambda-runtime-trace-id`, as lambda_runtime's `Context::xray_trace_id`), then `_X_AMZN_TRACE_ID`.
pub fn extract_lambda(headers: &http::HeaderMap, runtime_trace_id: Option<&str>) -> TraceContext {
    let env = std::env::var(LAMBDA_TRACE_ENV).ok();
    let fallback = runtime_trace_id.or(env.as_deref());
    extract_from(&HeaderExtractor(headers), fallback)
}

/// Extract from an MCP request's `params._meta` (W3C keys only).
pub fn extract_mcp_meta(request: &serde_json::Value) -> TraceContext {
    let mut map = BTreeMap::new();
    if let Some(meta) = request
        .get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.as_object())
    {
        for (k, v) in meta {
            if let Some(s) = v.as_str() {
                map.insert(k.to_ascii_lowercase(), s.to_owned());
            }
        }
    }
    extract_map(&map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xray_trace_id_of_32_hex_digits_only() {
        assert_eq!(
            xray_trace_id("6b11a85b86a147241e67fc6a6a90aea4"),
            "1-6b11a85b-86a147241e67fc6a6a90aea4"
        );
        // 32 bytes, not 32 hex digits (the 9th byte is inside a character): no id, no panic.
        for bad in [
            "6b11a85\u{e9}6a147241e67fc6a6a90aea4",
            "6b11a85b86a147241e67fc6a6a90aeaz",
            "",
        ] {
            assert_eq!(xray_trace_id(bad), "", "{bad}");
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn w3c_round_trip_and_xray_injected_with_same_id() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static(TP));
        let cx = extract_headers(&h);
        assert!(cx.is_valid());
        assert_eq!(cx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = http::HeaderMap::new();
        cx.inject_headers(&mut out);
        assert_eq!(out.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(TP));
        assert_eq!(
            out.get(X_AMZN_TRACE_ID).and_then(|v| v.to_str().ok()),
            Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1")
        );
    }

    #[test]
    fn xray_only_is_extracted() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "X-Amzn-Trace-Id",
            http::HeaderValue::from_static(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            ),
        );
        let cx = extract_headers(&h);
        assert_eq!(cx.trace_id(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(cx.span_id(), "53995c3f42cd8ad8");
    }

    #[test]
    fn w3c_parent_wins_and_the_lambda_segment_is_kept_beside_it() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static(TP));
        let cx = extract_lambda(
            &h,
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=1111222233334444;Sampled=1"),
        );
        assert_eq!(cx.span_id(), &TP[36..52]);
        assert_eq!(
            cx.0.get::<LambdaSegment>().map(|l| l.parent_id.as_str()),
            Some("1111222233334444")
        );
        // Outside Lambda a caller cannot plant a function segment through the header.
        h.insert(
            LAMBDA_RUNTIME_TRACE_ID,
            http::HeaderValue::from_static(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=1111222233334444",
            ),
        );
        assert!(extract_headers(&h).0.get::<LambdaSegment>().is_none());
    }

    #[test]
    fn w3c_wins_over_xray() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static(TP));
        h.insert(
            "x-amzn-trace-id",
            http::HeaderValue::from_static(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            ),
        );
        assert_eq!(
            extract_headers(&h).trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_xray_headers_are_ignored() {
        for bad in [
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "Root=1-zz59e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
            "garbage",
            "",
        ] {
            assert!(parse_xray_header(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lowercase_event_headers_and_lambda_runtime_header() {
        let mut m = HashMap::new();
        m.insert("TraceParent".to_owned(), TP.to_owned());
        assert!(extract_map(&m).is_valid());
        let h = http::HeaderMap::new();
        let cx = extract_lambda(
            &h,
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
        );
        assert_eq!(cx.span_id(), "53995c3f42cd8ad8");
        assert_eq!(
            cx.0.get::<LambdaSegment>(),
            Some(&LambdaSegment {
                trace_id: "1-5759e988-bd862e3fe1be46a994272793".into(),
                parent_id: "53995c3f42cd8ad8".into(),
            })
        );
    }

    #[test]
    fn mcp_meta_round_trip() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, http::HeaderValue::from_static(TP));
        let cx = extract_headers(&h);
        let mut req =
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}});
        cx.inject_mcp_meta(&mut req);
        assert_eq!(req["params"]["_meta"]["traceparent"], TP);
        assert_eq!(extract_mcp_meta(&req).trace_id(), cx.trace_id());
    }
}
