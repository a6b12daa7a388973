//! The embedded collector: an OTLP/HTTP receiver (protobuf and JSON) that appends every export
//! to `OUT/traces.jsonl` in the OTLP/JSON encoding (one `ExportTraceServiceRequest` per line, as
//! the OTel Collector's file exporter writes), and optionally forwards each export, unchanged, to
//! an OTLP/HTTP endpoint (Jaeger, an OTel Collector) like a collector pipeline with two exporters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::io::Write;
use telemetry::otlp::{TraceExport, success_response};

/// Collector state.
pub struct Collector {
    file: std::sync::Mutex<std::fs::File>,
    path: PathBuf,
    forward: Option<(reqwest::Client, String)>,
    spans: AtomicU64,
    forward_failures: AtomicU64,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("path", &self.path)
            .field("spans", &self.span_count())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Open (append) `dir/traces.jsonl`. `forward_to` is an OTLP/HTTP traces URL
    /// (`http://host:4318/v1/traces`).
    pub async fn open(dir: &Path, forward_to: Option<String>) -> std::io::Result<Arc<Self>> {
        tokio::fs::create_dir_all(dir).await?;
        let path = dir.join("traces.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
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
            forward,
            spans: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
        }))
    }

    /// Spans stored so far.
    pub fn span_count(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// Exports that could not be forwarded.
    pub fn forward_failures(&self) -> u64 {
        self.forward_failures.load(Ordering::Relaxed)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store (and forward) one export.
    pub async fn accept(&self, export: &TraceExport) -> Result<(), String> {
        let mut line = export.to_json_line().map_err(|e| e.to_string())?;
        line.push('\n');
        {
            // One append per export, straight to the file (small, so no detour through the
            // blocking pool); the lock keeps lines whole.
            let mut f = self
                .file
                .lock()
                .map_err(|_| "the span store lock is poisoned".to_owned())?;
            f.write_all(line.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        }
        self.spans
            .fetch_add(export.span_count() as u64, Ordering::Relaxed);
        if let Some((client, url)) = &self.forward {
            let sent = client
                .post(url)
                .header(header::CONTENT_TYPE, telemetry::otlp::PROTOBUF)
                .body(export.to_protobuf())
                .send()
                .await;
            if !matches!(&sent, Ok(r) if r.status().is_success()) {
                self.forward_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Router: `POST /v1/traces`, `GET /healthz`.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/traces", post(receive))
        .route(
            "/healthz",
            get(|State(c): State<Arc<Collector>>| async move {
                axum::Json(serde_json::json!({"spans": c.span_count(), "forward_failures": c.forward_failures()}))
            }),
        )
        .with_state(collector)
}

async fn receive(
    State(c): State<Arc<Collector>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(telemetry::otlp::PROTOBUF)
        .to_owned();
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "compressed OTLP bodies are not supported; send uncompressed",
        )
            .into_response();
    }
    let export = match TraceExport::decode(&ct, &body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if let Err(e) = c.accept(&export).await {
        return (StatusCode::SERVICE_UNAVAILABLE, e).into_response();
    }
    let (ct, bytes) = success_response(&ct);
    ([(header::CONTENT_TYPE, ct)], bytes).into_response()
}
