//! The batch span processor of the OTLP/HTTP exporters (embedded collector, X-Ray's OTLP
//! endpoint): each span is scrubbed and encoded when it ends, on the thread that ends it, and the
//! export thread only posts bytes.
//!
//! The SDK's `BatchSpanProcessor` moves every `SpanData` (a few hundred bytes, plus a heap string
//! per attribute) through a channel to its export thread, which later reads all of it again,
//! cold, to scrub and encode it, and frees it there, away from the thread that allocated it. On
//! the local stack's hops, where each request passes once through each of seven processes sharing
//! two cores, that path cost several times what the same work costs while the span is still in
//! the cache of the thread that built it. Here a span becomes its protobuf bytes at once (the
//! encoding of [`crate::otlp_export`], byte for byte what `opentelemetry-otlp` sends) and is freed
//! where it was made.
//!
//! Behaves as the SDK's processor otherwise: `OTEL_BSP_SCHEDULE_DELAY`,
//! `OTEL_BSP_MAX_QUEUE_SIZE` (spans beyond it are dropped and counted) and
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (no request carries more spans); only sampled spans are
//! exported; `force_flush` and shutdown wait for the export thread, never longer than their bound.

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use crate::export::scrub_span;
use crate::otlp_export::{EncodedResource, OtlpHttpExporter, encode_span, write_request};

/// The batching limits, from the standard `OTEL_BSP_*` variables with the SDK's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Longest wait between two exports (`OTEL_BSP_SCHEDULE_DELAY`, ms; default 5000).
    pub schedule_delay: Duration,
    /// Spans held at most; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`; default 2048).
    pub max_queue: usize,
    /// Spans per request at most; reaching it starts an export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`;
    /// default 512, never more than the queue).
    pub max_batch: usize,
}

impl Limits {
    /// From the environment. As in the SDK, a value that is not a positive number is ignored.
    pub(crate) fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let num = |k: &str| {
            get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE").map_or(2048, |v| v as usize);
        Self {
            schedule_delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY").unwrap_or(5000)),
            max_queue,
            max_batch: num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .map_or(512, |v| v as usize)
                .min(max_queue),
        }
    }
}

/// The encoded spans of one instrumentation scope, waiting for export.
#[derive(Debug)]
struct ScopeSpans {
    scope: InstrumentationScope,
    /// `ScopeSpans.spans` entries (field 2, length-prefixed), back to back.
    bytes: Vec<u8>,
    /// Where each span's entry ends in `bytes`.
    ends: Vec<usize>,
}

#[derive(Debug, Default)]
struct State {
    scopes: Vec<ScopeSpans>,
    /// Spans in `scopes`.
    spans: usize,
    /// Spans dropped because the queue was full, not reported yet.
    dropped: u64,
    /// Flushes asked for, and the last one the export thread finished (with its result).
    flush_asked: u64,
    flush_done: u64,
    flush_failed: bool,
    shutdown: bool,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread (a full batch, a flush, the shutdown).
    wake: Condvar,
    /// Wakes whoever waits for a flush or for the thread to stop.
    done: Condvar,
    resource: Mutex<Arc<EncodedResource>>,
    limits: Limits,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct EncodingBatchProcessor {
    shared: Arc<Shared>,
    /// Bound of a flush and of the shutdown's wait: the exporter's own timeout, with its retries.
    wait_bound: Duration,
}

thread_local! {
    /// Each thread encodes its span here before taking the lock, so the lock is held for a copy.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EncodingBatchProcessor {
    /// Start the export thread. `wait_bound` bounds `force_flush` and the shutdown.
    pub(crate) fn new(
        exporter: OtlpHttpExporter,
        limits: Limits,
        wait_bound: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            resource: Mutex::new(Arc::new(EncodedResource::default())),
            limits,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("tokentrail-otlp-export".into())
            .spawn(move || export_thread(&thread_shared, &exporter))?;
        Ok(Self { shared, wait_bound })
    }

    /// Ask the export thread for a flush (or, with `stop`, a last export and exit), and wait for
    /// it at most the bound.
    fn flush_and_wait(&self, stop: bool, bound: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + bound;
        let mut st = self.shared.lock();
        if st.shutdown && !stop {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        st.flush_asked += 1;
        let asked = st.flush_asked;
        st.shutdown |= stop;
        self.shared.wake.notify_one();
        loop {
            let finished = if stop {
                st.stopped
            } else {
                st.flush_done >= asked
            };
            if finished {
                return if st.flush_done >= asked && !st.flush_failed {
                    Ok(())
                } else {
                    Err(OTelSdkError::InternalFailure(
                        "the last export failed".into(),
                    ))
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(OTelSdkError::Timeout(bound));
            }
            st = self
                .shared
                .done
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl SpanProcessor for EncodingBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        scrub_span(&mut span);
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode_span(scratch, &span);
            let limits = self.shared.limits;
            let mut st = self.shared.lock();
            if st.shutdown {
                return;
            }
            if st.spans >= limits.max_queue {
                st.dropped += 1;
                return;
            }
            let at = match st
                .scopes
                .iter()
                .position(|s| s.scope == span.instrumentation_scope)
            {
                Some(at) => at,
                None => {
                    st.scopes.push(ScopeSpans {
                        scope: span.instrumentation_scope.clone(),
                        bytes: Vec::new(),
                        ends: Vec::new(),
                    });
                    st.scopes.len() - 1
                }
            };
            let scope = &mut st.scopes[at];
            scope.bytes.extend_from_slice(scratch);
            scope.ends.push(scope.bytes.len());
            st.spans += 1;
            if st.spans == limits.max_batch {
                self.shared.wake.notify_one();
            }
        });
        // `span` is freed here, on the thread that built it.
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_and_wait(false, self.wait_bound)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.shared.lock().stopped {
            return Ok(());
        }
        self.flush_and_wait(true, timeout.min(self.wait_bound))
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Ok(mut r) = self.shared.resource.lock() {
            *r = Arc::new(EncodedResource::new(resource));
        }
    }
}

impl Drop for EncodingBatchProcessor {
    fn drop(&mut self) {
        // The provider shuts its processors down first; this only stops a thread left running.
        let mut st = self.shared.lock();
        st.shutdown = true;
        self.shared.wake.notify_one();
    }
}

/// The largest span buffer kept from one export to the next.
const KEPT_BUFFER: usize = 4 << 20;

/// The export thread: waits for a full batch, a flush, the shutdown or the schedule delay, then
/// posts what is pending in requests of at most `max_batch` spans.
fn export_thread(shared: &Shared, exporter: &OtlpHttpExporter) {
    let limits = shared.limits;
    // The buffers of the last export, reused for the next one.
    let mut spare: Vec<ScopeSpans> = Vec::new();
    loop {
        let mut st = shared.lock();
        let deadline = Instant::now() + limits.schedule_delay;
        loop {
            if st.shutdown || st.flush_asked > st.flush_done || st.spans >= limits.max_batch {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = shared
                .wake
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let flush = st.flush_asked;
        let stop = st.shutdown;
        let dropped = std::mem::take(&mut st.dropped);
        let spans = std::mem::take(&mut st.spans);
        let mut taken = std::mem::take(&mut st.scopes);
        // The last export's buffers (emptied, capacity kept) take the next spans.
        st.scopes.append(&mut spare);
        drop(st);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_queue = limits.max_queue,
                "spans dropped: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
        }
        let resource = shared
            .resource
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let mut failed = false;
        if spans > 0 {
            for request in requests(&taken, limits.max_batch) {
                let count = request.iter().map(|c| c.spans.len()).sum();
                let parts: Vec<(&InstrumentationScope, &[u8])> = request
                    .iter()
                    .map(|c| {
                        let s = &taken[c.scope];
                        let from = c.spans.start.checked_sub(1).map_or(0, |i| s.ends[i]);
                        (&s.scope, &s.bytes[from..s.ends[c.spans.end - 1]])
                    })
                    .collect();
                let sent =
                    exporter.export_encoded(count, |buf| write_request(buf, &resource, &parts));
                if let Err(e) = sent {
                    failed = true;
                    tracing::warn!(error = %e, "span export failed");
                }
            }
        }
        // Keep the buffers for the next round, unless a burst made one too large to hold on to.
        taken.retain(|s| s.bytes.capacity() <= KEPT_BUFFER);
        for s in &mut taken {
            s.bytes.clear();
            s.ends.clear();
        }
        spare = taken;
        let mut st = shared.lock();
        if flush > st.flush_done {
            st.flush_done = flush;
            st.flush_failed = failed;
        }
        if stop {
            st.stopped = true;
            shared.done.notify_all();
            return;
        }
        shared.done.notify_all();
    }
}

/// A run of consecutive spans of one scope in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    scope: usize,
    spans: std::ops::Range<usize>,
}

/// Split the pending spans into requests of at most `max_batch` spans, scopes in order.
fn requests(scopes: &[ScopeSpans], max_batch: usize) -> Vec<Vec<Chunk>> {
    let max_batch = max_batch.max(1);
    let mut out: Vec<Vec<Chunk>> = Vec::new();
    let mut current: Vec<Chunk> = Vec::new();
    let mut room = max_batch;
    for (i, s) in scopes.iter().enumerate() {
        let mut next = 0;
        while next < s.ends.len() {
            let take = room.min(s.ends.len() - next);
            current.push(Chunk {
                scope: i,
                spans: next..next + take,
            });
            next += take;
            room -= take;
            if room == 0 {
                out.push(std::mem::take(&mut current));
                room = max_batch;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
    use opentelemetry::{KeyValue, Value};
    use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message;

    /// Records every request body; while `held` is set, answers only once it is cleared.
    #[derive(Debug, Default)]
    struct Capture {
        /// Requests that reached the client, answered or not.
        entered: std::sync::atomic::AtomicUsize,
        bodies: Mutex<Vec<Vec<u8>>>,
        held: Mutex<bool>,
        release: Condvar,
    }

    impl Capture {
        fn hold(&self, on: bool) {
            if let Ok(mut h) = self.held.lock() {
                *h = on;
            }
            self.release.notify_all();
        }

        fn requests(&self) -> Vec<ExportTraceServiceRequest> {
            let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
            bodies
                .iter()
                .map(|b| ExportTraceServiceRequest::decode(b.as_slice()).expect("protobuf body"))
                .collect()
        }

        fn span_names(&self) -> Vec<String> {
            self.requests()
                .iter()
                .flat_map(|r| r.resource_spans.iter())
                .flat_map(|rs| rs.scope_spans.iter())
                .flat_map(|ss| ss.spans.iter())
                .map(|s| s.name.clone())
                .collect()
        }
    }

    #[async_trait::async_trait]
    impl HttpClient for Capture {
        async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut held = self.held.lock().map_err(|e| e.to_string())?;
            while *held {
                held = self.release.wait(held).map_err(|e| e.to_string())?;
            }
            drop(held);
            self.bodies
                .lock()
                .map_err(|e| e.to_string())?
                .push(request.body().to_vec());
            Ok(Response::builder()
                .status(200)
                .body(Bytes::new())
                .map_err(|e| e.to_string())?)
        }
    }

    fn limits(delay_ms: u64, max_queue: usize, max_batch: usize) -> Limits {
        Limits {
            schedule_delay: Duration::from_millis(delay_ms),
            max_queue,
            max_batch,
        }
    }

    fn provider(limits: Limits, bound: Duration) -> (SdkTracerProvider, Arc<Capture>) {
        sampled_provider(limits, bound, opentelemetry_sdk::trace::Sampler::AlwaysOn)
    }

    fn sampled_provider(
        limits: Limits,
        bound: Duration,
        sampler: impl opentelemetry_sdk::trace::ShouldSample + 'static,
    ) -> (SdkTracerProvider, Arc<Capture>) {
        let capture = Arc::new(Capture::default());
        let exporter = OtlpHttpExporter::new(
            capture.clone(),
            "http://127.0.0.1:9/v1/traces",
            Duration::from_secs(5),
        )
        .expect("endpoint");
        let processor = EncodingBatchProcessor::new(exporter, limits, bound).expect("thread");
        let provider = SdkTracerProvider::builder()
            .with_resource(Resource::builder().with_service_name("probe").build())
            .with_sampler(sampler)
            .with_span_processor(processor)
            .build();
        (provider, capture)
    }

    fn end_spans(provider: &SdkTracerProvider, names: &[&'static str]) {
        let tracer = provider.tracer("tokentrail");
        for name in names {
            let mut span = tracer.start(*name);
            span.set_attribute(KeyValue::new("tokentrail.hop.name", *name));
            span.end();
        }
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn limits_come_from_the_standard_variables_as_the_sdk_reads_them() {
        let none = Limits::from_lookup(|_| None);
        assert_eq!(none, limits(5000, 2048, 512));
        let set = Limits::from_lookup(|k| {
            Some(
                match k {
                    "OTEL_BSP_SCHEDULE_DELAY" => "200",
                    "OTEL_BSP_MAX_QUEUE_SIZE" => "100",
                    _ => "400",
                }
                .to_owned(),
            )
        });
        // The batch never exceeds the queue.
        assert_eq!(set, limits(200, 100, 100));
        let bad = Limits::from_lookup(|_| Some("soon".to_owned()));
        assert_eq!(bad, none);
        let zero = Limits::from_lookup(|_| Some("0".to_owned()));
        assert_eq!(zero, none);
    }

    fn pending(counts: &[usize]) -> Vec<ScopeSpans> {
        counts
            .iter()
            .enumerate()
            .map(|(i, n)| ScopeSpans {
                scope: InstrumentationScope::builder(format!("scope-{i}")).build(),
                bytes: vec![0; *n],
                ends: (1..=*n).collect(),
            })
            .collect()
    }

    #[test]
    fn requests_carry_at_most_the_batch_size_scopes_in_order() {
        let chunk = |scope, spans| Chunk { scope, spans };
        assert_eq!(
            requests(&pending(&[5, 3]), 4),
            vec![vec![chunk(0, 0..4)], vec![chunk(0, 4..5), chunk(1, 0..3)],]
        );
        assert_eq!(
            requests(&pending(&[2, 0, 2]), 512),
            vec![vec![chunk(0, 0..2), chunk(2, 0..2)]]
        );
        assert_eq!(
            requests(&pending(&[4]), 2),
            vec![vec![chunk(0, 0..2)], vec![chunk(0, 2..4)]]
        );
        assert!(requests(&pending(&[0]), 2).is_empty());
    }

    #[test]
    fn a_flush_posts_every_ended_span_scrubbed_as_the_sdk_encodes_it() {
        let (provider, capture) = provider(limits(3_600_000, 2048, 512), Duration::from_secs(5));
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";
        let tracer = provider.tracer("tokentrail");
        let mut span = tracer.start("gateway.inbound");
        span.set_attribute(KeyValue::new("note", format!("Bearer {jwt}")));
        span.end();
        let other = provider.tracer("tracing-opentelemetry");
        other.start("jwks.fetch").end();
        end_spans(&provider, &["target.api"]);
        provider.force_flush().expect("flushed");
        let requests = capture.requests();
        assert_eq!(requests.len(), 1);
        let rs = &requests[0].resource_spans[0];
        let service = rs
            .resource
            .as_ref()
            .map(|r| r.attributes.clone())
            .unwrap_or_default();
        assert!(service.iter().any(|kv| kv.key == "service.name"));
        let scopes: Vec<(String, Vec<String>)> = rs
            .scope_spans
            .iter()
            .map(|ss| {
                (
                    ss.scope
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    ss.spans.iter().map(|s| s.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            scopes,
            vec![
                (
                    "tokentrail".to_owned(),
                    vec!["gateway.inbound".to_owned(), "target.api".to_owned()]
                ),
                (
                    "tracing-opentelemetry".to_owned(),
                    vec!["jwks.fetch".to_owned()]
                ),
            ]
        );
        let bodies = capture
            .bodies
            .lock()
            .map(|b| b.concat())
            .unwrap_or_default();
        assert!(memchr::memmem::find(&bodies, jwt.as_bytes()).is_none());
        assert!(memchr::memmem::find(&bodies, b"eyJ").is_none());
        let note = &rs.scope_spans[0].spans[0].attributes[0];
        assert_eq!(note.key, "note");
        let value = note.value.as_ref().and_then(|v| v.value.as_ref());
        assert_eq!(
            value,
            Some(
                &opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                    crate::redact::BEARER_REDACTED.to_owned()
                )
            )
        );
        // Nothing is left to post afterwards.
        provider.force_flush().expect("flushed");
        assert_eq!(capture.requests().len(), 1);
        let _ = provider.shutdown();
    }

    #[test]
    fn the_encoding_is_the_exporters_own() {
        // The same spans through the SpanExporter path give the same request.
        let (provider, capture) = provider(limits(3_600_000, 2048, 512), Duration::from_secs(5));
        let tracer = provider.tracer("tokentrail");
        let parent = tracer.start("app.request");
        let cx = Context::current_with_span(parent);
        let mut child = tracer.start_with_context("runtime.invoke_agent_runtime", &cx);
        child.set_attribute(KeyValue::new("http.response.status_code", Value::I64(200)));
        child.add_event("retry", vec![KeyValue::new("attempt", 2)]);
        child.end();
        cx.span().end();
        provider.force_flush().expect("flushed");
        let posted = capture
            .bodies
            .lock()
            .map(|b| b[0].clone())
            .unwrap_or_default();
        let decoded = ExportTraceServiceRequest::decode(posted.as_slice()).expect("protobuf");
        assert_eq!(decoded.encode_to_vec(), posted, "canonical protobuf");
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].events.len(), 1);
        assert_eq!(spans[0].parent_span_id, spans[1].span_id);
        let _ = provider.shutdown();
    }

    #[test]
    fn a_full_batch_is_posted_without_waiting_for_the_delay() {
        let (provider, capture) = provider(limits(3_600_000, 2048, 3), Duration::from_secs(5));
        end_spans(&provider, &["a", "b"]);
        std::thread::sleep(Duration::from_millis(50));
        assert!(capture.requests().is_empty(), "two of three: no export yet");
        end_spans(&provider, &["c"]);
        assert!(wait_for(|| capture.requests().len() == 1));
        assert_eq!(capture.span_names(), ["a", "b", "c"]);
        let _ = provider.shutdown();
    }

    #[test]
    fn the_schedule_delay_posts_a_partial_batch() {
        let (provider, capture) = provider(limits(20, 2048, 512), Duration::from_secs(5));
        end_spans(&provider, &["a"]);
        assert!(wait_for(|| capture.span_names() == ["a"]));
        let _ = provider.shutdown();
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_and_the_rest_arrive() {
        let (provider, capture) = provider(limits(3_600_000, 3, 3), Duration::from_secs(5));
        capture.hold(true);
        // Three spans start an export, which hangs; three more fill the queue; two are dropped.
        end_spans(&provider, &["a", "b", "c"]);
        assert!(wait_for(|| capture
            .entered
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1));
        end_spans(&provider, &["d", "e", "f", "g", "h"]);
        capture.hold(false);
        provider.force_flush().expect("flushed");
        let names = capture.span_names();
        assert_eq!(names, ["a", "b", "c", "d", "e", "f"]);
        let _ = provider.shutdown();
    }

    #[test]
    fn a_hanging_endpoint_bounds_the_flush() {
        let (provider, capture) =
            provider(limits(3_600_000, 2048, 512), Duration::from_millis(200));
        capture.hold(true);
        end_spans(&provider, &["a"]);
        let started = Instant::now();
        let flushed = provider.force_flush();
        let waited = started.elapsed();
        assert!(flushed.is_err(), "{flushed:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        capture.hold(false);
        assert!(wait_for(|| capture.span_names() == ["a"]));
        let _ = provider.shutdown();
    }

    #[test]
    fn shutdown_posts_what_is_pending_and_later_spans_are_ignored() {
        let (provider, capture) = provider(limits(3_600_000, 2048, 512), Duration::from_secs(5));
        end_spans(&provider, &["a", "b"]);
        provider.shutdown().expect("shut down");
        assert_eq!(capture.span_names(), ["a", "b"]);
        end_spans(&provider, &["c"]);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(capture.span_names(), ["a", "b"]);
    }

    /// Records only (does not sample) spans named `record-only`; samples the others.
    #[derive(Debug, Clone)]
    struct RecordOnlyByName;

    impl opentelemetry_sdk::trace::ShouldSample for RecordOnlyByName {
        fn should_sample(
            &self,
            parent: Option<&Context>,
            _trace_id: opentelemetry::trace::TraceId,
            name: &str,
            _kind: &opentelemetry::trace::SpanKind,
            _attributes: &[KeyValue],
            _links: &[opentelemetry::trace::Link],
        ) -> opentelemetry_sdk::trace::SamplingResult {
            use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult};
            SamplingResult {
                decision: if name == "record-only" {
                    SamplingDecision::RecordOnly
                } else {
                    SamplingDecision::RecordAndSample
                },
                attributes: Vec::new(),
                trace_state: parent
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            }
        }
    }

    #[test]
    fn spans_recorded_but_not_sampled_are_not_exported() {
        let (provider, capture) = sampled_provider(
            limits(3_600_000, 2048, 512),
            Duration::from_secs(5),
            RecordOnlyByName,
        );
        end_spans(&provider, &["record-only", "sampled"]);
        provider.force_flush().expect("flushed");
        assert_eq!(capture.span_names(), ["sampled"]);
        let _ = provider.shutdown();
    }
}
