//! The embedded collector: an OTLP/HTTP receiver (protobuf and JSON) that appends every trace
//! export to `OUT/traces.jsonl` in the OTLP/JSON encoding (one `ExportTraceServiceRequest` per
//! line, as the OTel Collector's file exporter writes) and every metrics export to
//! `OUT/metrics.jsonl` (one `ExportMetricsServiceRequest` per line), and optionally forwards each
//! trace export, unchanged, to an OTLP/HTTP endpoint (Jaeger, an OTel Collector) like a collector
//! pipeline with two exporters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::io::Write;
use telemetry::otlp::{MetricsExport, TraceExport, success_response};

/// Collector state.
pub struct Collector {
    file: std::sync::Mutex<std::fs::File>,
    path: PathBuf,
    metrics_file: std::sync::Mutex<std::fs::File>,
    metrics_path: PathBuf,
    metric_exports: AtomicU64,
    forward: Option<(reqwest::Client, String)>,
    spans: AtomicU64,
    forward_failures: AtomicU64,
    /// An injected outage, Unix ms `[from, until)`: exports are refused with 503 meanwhile.
    outage: (AtomicU64, AtomicU64),
    refused: AtomicU64,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("path", &self.path)
            .field("spans", &self.span_count())
            .finish_non_exhaustive()
    }
}

/// The span store's file name in the collector's directory.
pub const TRACES_FILE: &str = "traces.jsonl";
/// The metrics store's file name in the collector's directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

impl Collector {
    /// Open (append) `dir/traces.jsonl`. `forward_to` is an OTLP/HTTP traces URL
    /// (`http://host:4318/v1/traces`).
    pub async fn open(dir: &Path, forward_to: Option<String>) -> std::io::Result<Arc<Self>> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join(TRACES_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let metrics_path = dir.join(METRICS_FILE);
        let metrics_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)?;
        let forward = match forward_to {
            Some(url) => Some((
                reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(5))
                    .build()
                    .map_err(std::io::Error::other)?,
                url,
            )),
            None => None,
        };
        Ok(Arc::new(Self {
            file: std::sync::Mutex::new(file),
            path,
            metrics_file: std::sync::Mutex::new(metrics_file),
            metrics_path,
            metric_exports: AtomicU64::new(0),
            forward,
            spans: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            outage: (AtomicU64::new(0), AtomicU64::new(0)),
            refused: AtomicU64::new(0),
        }))
    }

    /// Spans stored so far.
    pub fn span_count(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Metrics exports stored so far.
    pub fn metric_export_count(&self) -> u64 {
        self.metric_exports.load(Ordering::Relaxed)
    }

    /// The metrics store file.
    pub fn metrics_path(&self) -> &Path {
        &self.metrics_path
    }

    /// Decode one metrics export and append it to `metrics.jsonl`.
    pub fn store_metrics(&self, content_type: &str, body: &[u8]) -> Result<(), StoreError> {
        let export = MetricsExport::decode(content_type, body)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let line = export
            .to_json_line()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        append_line(&self.metrics_file, &self.metrics_path, &(line + "\n"))?;
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Refuse every export (503, as a collector that is down behind its load balancer) between
    /// the two instants (Unix milliseconds): a collector outage for load tests.
    pub fn set_outage(&self, from_unix_ms: u64, until_unix_ms: u64) {
        self.outage.0.store(from_unix_ms, Ordering::Relaxed);
        self.outage.1.store(until_unix_ms, Ordering::Relaxed);
    }

    /// Exports refused during an injected outage.
    pub fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Whether an injected outage is on now; counts the refusal.
    fn refuses(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let on = (self.outage.0.load(Ordering::Relaxed)..self.outage.1.load(Ordering::Relaxed))
            .contains(&now);
        if on {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        on
    }

    /// Exports that could not be forwarded.
    pub fn forward_failures(&self) -> u64 {
        self.forward_failures.load(Ordering::Relaxed)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encode one export as OTLP/JSON and append it to the store; the protobuf to forward when
    /// a forward target is configured. CPU and file work: the receiver runs it on the blocking
    /// pool so the async workers stay free.
    pub fn store(&self, content_type: &str, body: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let invalid = |e: telemetry::otlp::OtlpError| StoreError::Invalid(e.to_string());
        // One line buffer per blocking-pool thread, kept between exports.
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let spans = LINE.with_borrow_mut(|line| {
            let spans = telemetry::otlp::trace_store_line(content_type, body, line);
            let written = spans.map_err(invalid).and_then(|spans| {
                line.push('\n');
                append_line(&self.file, &self.path, line).map(|()| spans)
            });
            if line.capacity() > LINE_KEPT {
                *line = String::new();
            }
            written
        })?;
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        if !self.forwards() {
            return Ok(None);
        }
        Ok(Some(if telemetry::otlp::is_protobuf(content_type) {
            body.to_vec()
        } else {
            TraceExport::decode(content_type, body)
                .map_err(invalid)?
                .to_protobuf()
        }))
    }

    /// Forward one export (as OTLP/HTTP protobuf) when a forward target is configured. Failures
    /// are counted, never fatal: the store has the data.
    pub async fn forward(&self, protobuf: Vec<u8>) {
        if let Some((client, url)) = &self.forward {
            let sent = client
                .post(url)
                .header(header::CONTENT_TYPE, telemetry::otlp::PROTOBUF)
                .body(protobuf)
                .send()
                .await;
            if !matches!(&sent, Ok(r) if r.status().is_success()) {
                self.forward_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn forwards(&self) -> bool {
        self.forward.is_some()
    }
}

/// The largest line buffer a thread keeps for the next export.
const LINE_KEPT: usize = 8 << 20;

/// Append one line (ending in a newline) to a store file; the lock keeps lines whole.
fn append_line(
    file: &std::sync::Mutex<std::fs::File>,
    path: &Path,
    line: &str,
) -> Result<(), StoreError> {
    let mut f = file.lock().map_err(|_| {
        StoreError::Unavailable(format!("the lock of {} is poisoned", path.display()))
    })?;
    f.write_all(line.as_bytes())
        .map_err(|e| StoreError::Unavailable(format!("cannot write {}: {e}", path.display())))
}

/// Why an export was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The body is not an OTLP trace export.
    #[error("{0}")]
    Invalid(String),
    /// The store cannot be written.
    #[error("{0}")]
    Unavailable(String),
}

/// Router: `POST /v1/traces`, `POST /v1/metrics`, `GET /healthz`.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/traces", post(receive))
        .route("/v1/metrics", post(receive_metrics))
        .route(
            "/healthz",
            get(|State(c): State<Arc<Collector>>| async move {
                axum::Json(serde_json::json!({"spans": c.span_count(), "forward_failures": c.forward_failures()}))
            }),
        )
        .with_state(collector)
}

/// The content type of an OTLP request, or why it is refused (a compressed body, an injected
/// outage).
fn otlp_content_type(
    c: &Collector,
    headers: &HeaderMap,
) -> Result<String, (StatusCode, &'static str)> {
    if c.refuses() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the collector is unavailable (injected outage)",
        ));
    }
    uncompressed_content_type(headers)
}

/// The content type of an OTLP request, or why it is refused (a compressed body).
fn uncompressed_content_type(headers: &HeaderMap) -> Result<String, (StatusCode, &'static str)> {
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed OTLP bodies are not supported; send uncompressed",
        ));
    }
    Ok(headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(telemetry::otlp::PROTOBUF)
        .to_owned())
}

/// Why an export was refused, as the HTTP answer's status and body.
type Refusal = (StatusCode, String);

fn store_error(e: StoreError) -> Refusal {
    match e {
        StoreError::Invalid(e) => (StatusCode::BAD_REQUEST, e),
        StoreError::Unavailable(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Check an OTLP request (content type, encoding, injected outage), then run `store` on the
/// blocking pool (decoding and file work must not hold the async workers); the request's content
/// type and what `store` returned.
async fn store_blocking<T: Send + 'static>(
    c: &Arc<Collector>,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    store: impl FnOnce(&Collector, &str, &[u8]) -> Result<T, StoreError> + Send + 'static,
) -> Result<(String, T), Refusal> {
    let ct = otlp_content_type(c, headers).map_err(|(code, why)| (code, why.to_owned()))?;
    let (collector, content_type) = (c.clone(), ct.clone());
    match tokio::task::spawn_blocking(move || store(&collector, &content_type, &body)).await {
        Ok(Ok(stored)) => Ok((ct, stored)),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "the store task failed".to_owned(),
        )),
    }
}

/// The OTLP success answer in the request's content type.
fn accepted(content_type: &str) -> Response {
    let (ct, bytes) = success_response(content_type);
    ([(header::CONTENT_TYPE, ct)], bytes).into_response()
}

async fn receive_metrics(
    State(c): State<Arc<Collector>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match store_blocking(&c, &headers, body, |c, ct, body| c.store_metrics(ct, body)).await {
        Ok((ct, ())) => accepted(&ct),
        Err(refused) => refused.into_response(),
    }
}

async fn receive(
    State(c): State<Arc<Collector>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let stored = store_blocking(&c, &headers, body, |c, ct, body| c.store(ct, body)).await;
    match stored {
        Ok((ct, forward)) => {
            if let Some(protobuf) = forward {
                c.forward(protobuf).await;
            }
            accepted(&ct)
        }
        Err(refused) => refused.into_response(),
    }
}

/// An OTLP/HTTP receiver that answers every export as the collector does (a compressed body is
/// refused the same way) and keeps nothing: it stands in for a collector on another machine, so
/// `tokentrail bench --traced send` measures what exporting costs the hops without the local
/// store's decoding and writing on the same CPUs. It counts what it was sent.
#[derive(Debug, Default)]
pub struct Discard {
    trace_exports: AtomicU64,
    trace_bytes: AtomicU64,
}

impl Discard {
    /// Trace exports answered.
    pub fn trace_exports(&self) -> u64 {
        self.trace_exports.load(Ordering::Relaxed)
    }

    /// Bytes of those exports' bodies.
    pub fn trace_bytes(&self) -> u64 {
        self.trace_bytes.load(Ordering::Relaxed)
    }
}

/// Router of a [`Discard`] receiver: `POST /v1/traces`, `POST /v1/metrics`.
pub fn discard_router(sink: Arc<Discard>) -> Router {
    async fn traces(
        State(sink): State<Arc<Discard>>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Response {
        match uncompressed_content_type(&headers) {
            Ok(ct) => {
                sink.trace_exports.fetch_add(1, Ordering::Relaxed);
                sink.trace_bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                accepted(&ct)
            }
            Err(refused) => refused.into_response(),
        }
    }
    async fn metrics(headers: HeaderMap) -> Response {
        match uncompressed_content_type(&headers) {
            Ok(ct) => accepted(&ct),
            Err(refused) => refused.into_response(),
        }
    }
    async fn stats(State(sink): State<Arc<Discard>>) -> axum::Json<serde_json::Value> {
        axum::Json(serde_json::json!({
            "trace_exports": sink.trace_exports(),
            "trace_bytes": sink.trace_bytes(),
        }))
    }
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route(DISCARD_STATS_PATH, axum::routing::get(stats))
        .with_state(sink)
}

/// Where a receiver that keeps nothing says what it was sent:
/// `{"trace_exports": N, "trace_bytes": B}`.
pub const DISCARD_STATS_PATH: &str = "/stats";
