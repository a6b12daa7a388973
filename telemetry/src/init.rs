//! `init`: resource, exporters, propagation, the `tracing` subscriber, and flushing.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::attrs::Service;
use crate::export::RedactingExporter;
use crate::logs::{JsonLogLayer, Sink};
use crate::otlp_export::OtlpHttpExporter;

/// How long a Lambda invocation waits for its spans to be flushed before it returns.
pub const LAMBDA_FLUSH_BOUND: Duration = Duration::from_millis(1500);

/// Endpoint (base URL) of the local stack's embedded collector.
pub const COLLECTOR_ENV: &str = "TOKENTRAIL_COLLECTOR_ENDPOINT";
/// X-Ray export, a comma-separated list of `daemon` (UDP segment documents to
/// `AWS_XRAY_DAEMON_ADDRESS`), `api` (`PutTraceSegments`), `otlp` (OTLP/HTTP to X-Ray's OTLP
/// endpoint, SigV4-signed).
pub const XRAY_ENV: &str = "TOKENTRAIL_XRAY";
/// Override of X-Ray's OTLP endpoint (default `https://xray.<region>.amazonaws.com/v1/traces`).
pub const XRAY_OTLP_ENDPOINT_ENV: &str = "TOKENTRAIL_XRAY_OTLP_ENDPOINT";
/// Log output: `json` (default, to stderr), `off`.
pub const LOG_ENV: &str = "TOKENTRAIL_LOG";
/// Which span pipeline the process runs: `tokentrail` (the default: hop spans with their
/// provenance, every string scrubbed, tokentrail's own OTLP encoder) or `plain`, the baseline
/// `scripts/hop-instructions.py` measures against: the same spans (name, kind, parent, status,
/// the OpenTelemetry semantic attributes) made through `tracing` and `tracing-opentelemetry`,
/// exported by `opentelemetry-otlp`'s batch exporter to the same endpoints, no provenance
/// recorded and nothing scrubbed (no attribute that could hold a credential is recorded in it).
pub const SPAN_PIPELINE_ENV: &str = "TOKENTRAIL_SPAN_PIPELINE";
/// The standard trace exporter selection: `otlp` (default: the embedded collector and
/// `OTEL_EXPORTER_OTLP_*`) or `none`. X-Ray export, asked for by name in [`XRAY_ENV`], is not
/// affected.
pub const TRACES_EXPORTER_ENV: &str = "OTEL_TRACES_EXPORTER";
/// The same for the hop metrics.
pub const METRICS_EXPORTER_ENV: &str = "OTEL_METRICS_EXPORTER";
/// The standard switch that turns the OpenTelemetry SDK off: `true` or `false` (default).
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";
/// The standard sampler selection (`parentbased_always_on` when unset).
pub const TRACES_SAMPLER_ENV: &str = "OTEL_TRACES_SAMPLER";
/// The ratio of the `traceidratio` samplers (1.0 when unset).
pub const TRACES_SAMPLER_ARG_ENV: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Errors from [`init`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An exporter could not be built from the configuration.
    #[error("cannot build the {which} span exporter: {reason}")]
    Exporter {
        /// Which exporter.
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` holds a value this build does not support.
    #[error(
        "unsupported OTLP protocol `{0}` (supported: `http/protobuf`, `grpc`); set OTEL_EXPORTER_OTLP_PROTOCOL"
    )]
    Protocol(String),
    /// `OTEL_TRACES_EXPORTER` or `OTEL_METRICS_EXPORTER` holds a value this build does not
    /// support.
    #[error(
        "{var}=`{value}`: supported values are `otlp` (the default: the embedded collector and OTEL_EXPORTER_OTLP_*) and `none`"
    )]
    Selection {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `OTEL_SDK_DISABLED` is neither `true` nor `false`.
    #[error("OTEL_SDK_DISABLED=`{0}`: use `true` (no spans, no OpenTelemetry metrics) or `false`")]
    SdkDisabled(String),
    /// A standard variable holds a value the SDK or the OTLP exporter would skip.
    #[error("{var}: {reason}")]
    Setting {
        /// The variable.
        var: &'static str,
        /// What is wrong with it (never its value).
        reason: String,
    },
    /// `OTEL_TRACES_SAMPLER` or `OTEL_TRACES_SAMPLER_ARG` holds a value the SDK would replace by
    /// sampling every trace.
    #[error("{var}=`{value}`: {reason}")]
    Sampler {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused, and what is accepted.
        reason: &'static str,
    },
}

/// Checks the sampler variables as the OpenTelemetry SDK reads them. For a sampler name it does
/// not know (names are case-sensitive) or does not implement (`jaeger_remote`, `xray`), or a ratio
/// that is not a number, the SDK samples every trace and says so only in its internal log: a typo
/// in `always_off` would trace every request. Refused here, with the reason. Unset or empty
/// variables keep the defaults (`parentbased_always_on`, ratio 1.0).
pub fn sampler_check(sampler: Option<&str>, arg: Option<&str>) -> Result<(), TelemetryError> {
    let refuse = |var, value: &str, reason| {
        Err(TelemetryError::Sampler {
            var,
            value: value.to_owned(),
            reason,
        })
    };
    let sampler = sampler.unwrap_or_default();
    match sampler {
        "" | "always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off" => {
            Ok(())
        }
        "traceidratio" | "parentbased_traceidratio" => match arg.unwrap_or_default() {
            "" => Ok(()),
            ratio => match ratio.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
                _ => refuse(
                    TRACES_SAMPLER_ARG_ENV,
                    ratio,
                    "the ratio of traces to sample must be a number from 0 to 1 (e.g. `0.25`)",
                ),
            },
        },
        "jaeger_remote" | "parentbased_jaeger_remote" | "xray" => refuse(
            TRACES_SAMPLER_ENV,
            sampler,
            "this sampler is not implemented by the OpenTelemetry SDK in this build; use \
             `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, \
             `parentbased_always_off` or `parentbased_traceidratio`",
        ),
        _ => refuse(
            TRACES_SAMPLER_ENV,
            sampler,
            "not a sampler; use `always_on`, `always_off`, `traceidratio`, \
             `parentbased_always_on` (the default), `parentbased_always_off` or \
             `parentbased_traceidratio` (lower case)",
        ),
    }
}

/// [`sampler_check`] of the variables as the environment sets them.
fn sampler_check_from_env() -> Result<(), TelemetryError> {
    let var = |name| std::env::var(name).ok();
    sampler_check(
        var(TRACES_SAMPLER_ENV).as_deref(),
        var(TRACES_SAMPLER_ARG_ENV).as_deref(),
    )
}

/// Standard variables holding milliseconds; those holding the pause of an exporter's thread
/// between exports (above zero: with none, the SDK's thread exports without pause and keeps a
/// core busy while the hop is idle); and those holding a count of spans (at least one: a queue of
/// none would drop every span).
const MILLISECONDS_ENV: [&str; 4] = [
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
];
const INTERVAL_ENV: [&str; 2] = ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_METRIC_EXPORT_INTERVAL"];
const SPAN_COUNT_ENV: [&str; 2] = ["OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"];
/// Standard variables holding `name=value` lists: the OTLP request headers (often a
/// collector's credential) and the resource attributes.
const HEADERS_ENV: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
];
const RESOURCE_ATTRIBUTES_ENV: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// Checks one of the standard variables with a value the OpenTelemetry SDK or OTLP exporter
/// would skip without a word (the whole value, or an entry of a list): a delay that is not a
/// whole number of milliseconds, a pause between exports of zero (the SDK's export thread would
/// never sleep), a span count of zero, a header entry without a name or a value,
/// a resource attribute entry that is not `name=value` (blank entries carry nothing and are
/// passed over, as they do). Parsed as they parse it; the reason names the entry by position and
/// name, never by value, since a header's value is often a credential.
pub fn standard_var_check(var: &'static str, value: &str) -> Result<(), TelemetryError> {
    let refuse = |reason: String| Err(TelemetryError::Setting { var, reason });
    if value.is_empty() {
        return Ok(());
    }
    if MILLISECONDS_ENV.contains(&var) {
        if value.parse::<u64>().is_err() {
            return refuse("not a whole number of milliseconds".into());
        }
    } else if INTERVAL_ENV.contains(&var) {
        match value.parse::<u64>() {
            Err(_) => return refuse("not a whole number of milliseconds".into()),
            Ok(0) => {
                return refuse(
                    "0 ms would have the exporter's thread export without pause, keeping a core \
                     busy; unset it for the default"
                        .into(),
                );
            }
            Ok(_) => {}
        }
    } else if SPAN_COUNT_ENV.contains(&var) {
        if !value.parse::<usize>().is_ok_and(|n| n > 0) {
            return refuse("not a whole number of spans above zero".into());
        }
    } else if HEADERS_ENV.contains(&var) || var == RESOURCE_ATTRIBUTES_ENV {
        let headers = var != RESOURCE_ATTRIBUTES_ENV;
        for (i, entry) in value.split_terminator(',').map(str::trim).enumerate() {
            let n = i + 1;
            if entry.is_empty() {
                continue;
            }
            let Some((name, v)) = entry.split_once('=') else {
                return refuse(format!("entry {n} is not `name=value`"));
            };
            let (name, v) = (name.trim(), v.trim());
            if name.is_empty() {
                return refuse(format!("entry {n} has no name"));
            }
            if headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return refuse(format!("entry {n} is not a valid header name"));
                }
                if v.is_empty() {
                    return refuse(format!("entry {n} (`{name}`) has no value"));
                }
            }
        }
    }
    Ok(())
}

/// A tokentrail on/off variable: unset or empty → `None` (its default); `1`, `true`, `on`,
/// `yes` → on; `0`, `false`, `off`, `no` → off (any case); anything else is refused, so a
/// misspelt switch never falls back to its default without a word.
pub fn switch(var: &'static str, value: Option<&str>) -> Result<Option<bool>, TelemetryError> {
    let v = value.map(str::trim).unwrap_or_default();
    let is = |names: [&str; 4]| names.iter().any(|n| v.eq_ignore_ascii_case(n));
    if v.is_empty() {
        Ok(None)
    } else if is(["1", "true", "on", "yes"]) {
        Ok(Some(true))
    } else if is(["0", "false", "off", "no"]) {
        Ok(Some(false))
    } else {
        Err(TelemetryError::Setting {
            var,
            reason: "not a switch: use `1`, `true` or `on`, or `0`, `false` or `off`".into(),
        })
    }
}

/// Whether `TOKENTRAIL_LOG` turns logging off: `off` or `none` → yes; unset, empty or `json`
/// (the default: JSON lines on stderr) → no; any case; anything else is refused.
fn log_off(value: Option<&str>) -> Result<bool, TelemetryError> {
    let v = value.map(str::trim).unwrap_or_default();
    let is = |name: &str| v.eq_ignore_ascii_case(name);
    if is("off") || is("none") {
        Ok(true)
    } else if v.is_empty() || is("json") {
        Ok(false)
    } else {
        Err(TelemetryError::Setting {
            var: LOG_ENV,
            reason: "use `json` (log lines on stderr, the default) or `off`".into(),
        })
    }
}

/// [`switch`] as the environment sets it.
pub fn switch_from_env(var: &'static str) -> Result<Option<bool>, TelemetryError> {
    switch(var, std::env::var(var).ok().as_deref())
}

/// The standard variables as the environment sets them ([`sampler_check`], then
/// [`standard_var_check`] of every variable it knows) and the telemetry's own switches
/// (`TOKENTRAIL_PSEUDONYMIZE_SUBJECT`, `TOKENTRAIL_EMF`, `TOKENTRAIL_LOG`).
pub fn standard_vars_check_from_env() -> Result<(), TelemetryError> {
    for var in [crate::provenance::PSEUDONYMIZE_ENV, crate::metrics::EMF_ENV] {
        switch_from_env(var)?;
    }
    log_off(std::env::var(LOG_ENV).ok().as_deref())?;
    sampler_check_from_env()?;
    let vars = MILLISECONDS_ENV
        .iter()
        .chain(&INTERVAL_ENV)
        .chain(&SPAN_COUNT_ENV)
        .chain(&HEADERS_ENV)
        .chain([&RESOURCE_ATTRIBUTES_ENV]);
    for var in vars {
        if let Ok(value) = std::env::var(var) {
            standard_var_check(var, &value)?;
        }
    }
    Ok(())
}

/// Whether `OTEL_SDK_DISABLED` turns the SDK off: `true` (any case) → yes; unset, empty or
/// `false` → no; anything else is refused.
pub fn sdk_disabled(value: Option<&str>) -> Result<bool, TelemetryError> {
    match value.map(str::trim).unwrap_or_default() {
        v if v.eq_ignore_ascii_case("true") => Ok(true),
        v if v.is_empty() || v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(TelemetryError::SdkDisabled(
            value.unwrap_or_default().to_owned(),
        )),
    }
}

/// The [`SPAN_PIPELINE_ENV`] value: `Ok(true)` for `plain`, `Ok(false)` for `tokentrail` or
/// unset; anything else is refused.
pub fn plain_pipeline(value: Option<&str>) -> Result<bool, TelemetryError> {
    match value.map(str::trim).unwrap_or_default() {
        "" | "tokentrail" => Ok(false),
        "plain" => Ok(true),
        _ => Err(TelemetryError::Setting {
            var: SPAN_PIPELINE_ENV,
            reason: "use `tokentrail` (the default) or `plain` (the benchmark baseline)".into(),
        }),
    }
}

/// Whether this process runs the plain span pipeline ([`SPAN_PIPELINE_ENV`]), as [`init`] set it.
pub(crate) fn plain_spans() -> bool {
    PLAIN_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

static PLAIN_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// [`sdk_disabled`] as the environment sets it.
pub fn sdk_disabled_from_env() -> Result<bool, TelemetryError> {
    sdk_disabled(std::env::var(SDK_DISABLED_ENV).ok().as_deref())
}

/// Whether a signal's automatically configured exporters (the embedded collector,
/// `OTEL_EXPORTER_OTLP_*`) run, from its `OTEL_<SIGNAL>_EXPORTER` value: unset, empty or `otlp`
/// (a comma-separated list may repeat it) → yes; `none` alone → no; anything else, or `none`
/// next to `otlp`, is refused.
pub fn exporter_selection(var: &'static str, value: Option<&str>) -> Result<bool, TelemetryError> {
    let names: Vec<&str> = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() || names.iter().all(|n| n.eq_ignore_ascii_case("otlp")) {
        return Ok(true);
    }
    if names.iter().all(|n| n.eq_ignore_ascii_case("none")) {
        return Ok(false);
    }
    Err(TelemetryError::Selection {
        var,
        value: value.unwrap_or_default().to_owned(),
    })
}

/// [`exporter_selection`] of `var` as the environment sets it.
pub fn exporter_selection_from_env(var: &'static str) -> Result<bool, TelemetryError> {
    exporter_selection(var, std::env::var(var).ok().as_deref())
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTo {
    /// Standard error (default).
    Stderr,
    /// Append to a file.
    File(std::path::PathBuf),
    /// Nowhere.
    Off,
}

/// Telemetry configuration. [`TelemetryConfig::from_env`] reads the standard `OTEL_*` variables
/// and `TOKENTRAIL_*` ones.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of this process.
    pub service: Service,
    /// Base URL of the embedded collector (`TOKENTRAIL_COLLECTOR_ENDPOINT`), OTLP/HTTP protobuf.
    pub collector_endpoint: Option<String>,
    /// Export over OTLP to `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` when set.
    pub otlp_from_env: bool,
    /// Logs.
    pub log_to: LogTo,
    /// Bound on one export.
    pub export_timeout: Duration,
    /// X-Ray export modes (`TOKENTRAIL_XRAY`: `daemon`, `api`, `otlp`, comma-separated).
    pub xray: Option<String>,
}

impl TelemetryConfig {
    /// Configuration from the environment.
    pub fn from_env(service: Service) -> Self {
        // A value that is neither (refused at start by `standard_vars_check_from_env`) logs.
        let log_to = match log_off(std::env::var(LOG_ENV).ok().as_deref()) {
            Ok(true) => LogTo::Off,
            _ => LogTo::Stderr,
        };
        Self {
            service,
            collector_endpoint: std::env::var(COLLECTOR_ENV).ok().filter(|s| !s.is_empty()),
            otlp_from_env: true,
            log_to,
            export_timeout: Duration::from_secs(5),
            xray: std::env::var(XRAY_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

fn otlp_env_endpoint() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// The OTLP protocol the standard variables ask for (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
/// `OTEL_EXPORTER_OTLP_PROTOCOL`; default `http/protobuf`).
pub fn otlp_env_protocol() -> String {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    .unwrap_or_else(|| "http/protobuf".to_owned())
}

fn resource(service: Service) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.namespace", "tokentrail"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(
            "service.instance.id",
            format!("{}-{}", service.as_str(), std::process::id()),
        ),
        KeyValue::new("telemetry.sdk.language", "rust"),
    ];
    if let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        attrs.push(KeyValue::new("cloud.provider", "aws"));
        attrs.push(KeyValue::new("cloud.platform", "aws_lambda"));
        attrs.push(KeyValue::new("faas.name", function));
        if let Ok(v) = std::env::var("AWS_REGION") {
            attrs.push(KeyValue::new("cloud.region", v));
        }
        if let Ok(v) = std::env::var("AWS_LAMBDA_FUNCTION_VERSION") {
            attrs.push(KeyValue::new("faas.version", v));
        }
        if let Ok(v) = std::env::var("AWS_LAMBDA_LOG_STREAM_NAME") {
            attrs.push(KeyValue::new("faas.instance", v));
        }
        if let Some(mb) = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            attrs.push(KeyValue::new("faas.max_memory", mb * 1024 * 1024));
        }
    }
    // Resource::builder() applies OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME first; the
    // hop's own service name wins, because it is the hop's identity in every trace.
    Resource::builder()
        .with_attributes(attrs)
        .with_service_name(service.as_str())
        .build()
}

/// `opentelemetry-otlp`'s own OTLP/HTTP protobuf exporter, to `endpoint` with `timeout`, or,
/// when `None`, where the standard variables say (per-signal endpoint verbatim, generic endpoint
/// + `/v1/traces`, `OTEL_EXPORTER_OTLP_TIMEOUT`).
fn otlp_http_exporter(
    endpoint: Option<String>,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint).with_timeout(timeout);
    }
    exporter.build().map_err(|e| TelemetryError::Exporter {
        which: "otlp-http",
        reason: e.to_string(),
    })
}

/// The plain pipeline's batch processor ([`SPAN_PIPELINE_ENV`]): `opentelemetry-otlp`'s exporter
/// with no redaction in front.
fn plain_batch(exporter: opentelemetry_otlp::SpanExporter) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter).build()
}

/// tokentrail's own OTLP/HTTP exporter in the SDK's batch processor: its encoder scrubs every
/// string it writes (see [`crate::otlp_export`]), so no [`RedactingExporter`] goes in front.
fn batch_scrubbing_itself(exporter: OtlpHttpExporter) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter).build()
}

/// Any other exporter in the SDK's batch processor, behind the [`RedactingExporter`]. Each export
/// is bounded by the exporter's own timeout (`export_timeout`, or `OTEL_EXPORTER_OTLP_TIMEOUT`).
fn batch<E: SpanExporter + 'static>(exporter: E) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(RedactingExporter(exporter)).build()
}

/// A running telemetry pipeline. Call [`Telemetry::flush`] before a Lambda invocation returns
/// and [`Telemetry::shutdown`] before the process exits.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Hop metrics over OTLP, when an OTLP destination is configured.
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    exporters: Vec<&'static str>,
    xray_stats: Option<std::sync::Arc<crate::xray::XrayStats>>,
}

/// What a bounded flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every exporter acknowledged.
    Flushed,
    /// An exporter reported an error.
    Failed,
    /// The bound elapsed; the handler went on without waiting further.
    TimedOut,
}

impl Telemetry {
    /// Names of the active exporters (`collector`, `otlp-http`, `otlp-grpc`).
    pub fn exporters(&self) -> &[&'static str] {
        &self.exporters
    }

    /// Counters of the X-Ray segment exporters (daemon, API), when one is active.
    pub fn xray_stats(&self) -> Option<&crate::xray::XrayStats> {
        self.xray_stats.as_deref()
    }

    /// Flush every pending span, waiting at most `bound`. Safe on any Tokio runtime (the
    /// blocking flush runs on the blocking pool, so a current-thread runtime cannot deadlock) and
    /// never waits longer than `bound`, even if an exporter hangs.
    ///
    /// Spans and metrics are flushed side by side (each export is its own round trip to the
    /// collector), so an invocation waits for the slower of the two, not their sum.
    pub async fn flush(&self, bound: Duration) -> FlushOutcome {
        let provider = self.provider.clone();
        let spans = tokio::task::spawn_blocking(move || provider.force_flush().is_ok());
        let metrics = self
            .meters
            .clone()
            .map(|meters| tokio::task::spawn_blocking(move || meters.force_flush().is_ok()));
        let both = async move {
            let spans_ok = matches!(spans.await, Ok(true));
            let metrics_ok = match metrics {
                Some(task) => matches!(task.await, Ok(true)),
                None => true,
            };
            spans_ok && metrics_ok
        };
        match tokio::time::timeout(bound, both).await {
            Ok(true) => FlushOutcome::Flushed,
            Ok(false) => FlushOutcome::Failed,
            Err(_) => FlushOutcome::TimedOut,
        }
    }

    /// Run `work` (one Lambda invocation), then flush its spans (bounded) before returning its
    /// output: a frozen function loses what it did not flush.
    pub async fn flushed<F: std::future::Future>(&self, work: F, bound: Duration) -> F::Output {
        let out = work.await;
        self.flush(bound).await;
        out
    }

    /// Flush and stop exporting (blocking, bounded by the export timeout).
    pub fn shutdown(&self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
        if let Some(m) = &self.meters {
            let _ = m.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// The embedded collector's exporter: OTLP/HTTP protobuf written straight from the span records
/// ([`crate::otlp_export`]).
fn build_otlp_http(
    endpoint: String,
    timeout: Duration,
) -> Result<OtlpHttpExporter, TelemetryError> {
    let fail = |reason: String| TelemetryError::Exporter {
        which: "collector",
        reason,
    };
    let client = OtlpHttpExporter::blocking_client(&endpoint, timeout).map_err(fail)?;
    OtlpHttpExporter::new(client, &endpoint, timeout).map_err(fail)
}

/// Build exporters. Runs on its own thread: the blocking HTTP client must not be created inside
/// an async runtime.
fn build_provider(
    cfg: &TelemetryConfig,
    metrics_cfg: &TelemetryConfig,
    grpc: Option<opentelemetry_otlp::SpanExporter>,
    grpc_metrics: Option<opentelemetry_otlp::MetricExporter>,
) -> Result<Telemetry, TelemetryError> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource(cfg.service))
        .with_id_generator(crate::idgen::XrayCompatibleIdGenerator);
    let mut exporters = Vec::new();
    let plain = plain_spans();
    if let Some(base) = &cfg.collector_endpoint {
        let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
        builder = if plain {
            builder.with_span_processor(plain_batch(otlp_http_exporter(
                Some(endpoint),
                cfg.export_timeout,
            )?))
        } else {
            builder.with_span_processor(batch_scrubbing_itself(build_otlp_http(
                endpoint,
                cfg.export_timeout,
            )?))
        };
        exporters.push("collector");
    }
    if cfg.otlp_from_env && otlp_env_endpoint().is_some() {
        match otlp_env_protocol().as_str() {
            "http/protobuf" => {
                // No explicit endpoint: the exporter resolves the OTEL_* variables itself.
                let exporter = otlp_http_exporter(None, cfg.export_timeout)?;
                builder = builder.with_span_processor(if plain {
                    plain_batch(exporter)
                } else {
                    batch(exporter)
                });
                exporters.push("otlp-http");
            }
            "grpc" => {
                let exporter = grpc.ok_or_else(|| TelemetryError::Exporter {
                    which: "otlp-grpc",
                    reason: "not constructed".into(),
                })?;
                builder = builder.with_span_processor(batch(exporter));
                exporters.push("otlp-grpc");
            }
            other => return Err(TelemetryError::Protocol(other.to_owned())),
        }
    }
    let mut xray_stats = None;
    if let Some(modes) = &cfg.xray {
        let stats = std::sync::Arc::new(crate::xray::XrayStats::default());
        for mode in modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            let fail =
                |which: &'static str, reason: String| TelemetryError::Exporter { which, reason };
            match mode {
                "daemon" => {
                    let address = std::env::var("AWS_XRAY_DAEMON_ADDRESS")
                        .ok()
                        .filter(|a| !a.trim().is_empty())
                        .unwrap_or_else(|| crate::xray::DEFAULT_DAEMON_ADDRESS.to_owned());
                    let sink = crate::xray::XraySink::daemon(&address).map_err(|e| {
                        fail(
                            "xray-daemon",
                            format!("AWS_XRAY_DAEMON_ADDRESS `{address}`: {e}"),
                        )
                    })?;
                    builder = builder.with_span_processor(batch(crate::xray::XrayExporter::new(
                        sink,
                        cfg.service.as_str(),
                        stats.clone(),
                    )));
                    exporters.push("xray-daemon");
                }
                #[cfg(feature = "xray-api")]
                "api" => {
                    let worker = crate::xray::AwsWorker::start(cfg.export_timeout)
                        .map_err(|e| fail("xray-api", e.to_string()))?;
                    builder = builder.with_span_processor(batch(crate::xray::XrayExporter::new(
                        crate::xray::XraySink::Api(worker),
                        cfg.service.as_str(),
                        stats.clone(),
                    )));
                    exporters.push("xray-api");
                }
                #[cfg(not(feature = "xray-api"))]
                "api" => return Err(fail("xray-api", not_built_in("xray-api"))),
                "otlp" => {
                    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                        .iter()
                        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
                        .ok_or_else(|| {
                            fail(
                                "xray-otlp",
                                "set AWS_REGION: the OTLP endpoint and the SigV4 signature need it"
                                    .into(),
                            )
                        })?;
                    let endpoint = std::env::var(XRAY_OTLP_ENDPOINT_ENV)
                        .ok()
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| {
                            format!("https://xray.{region}.amazonaws.com/v1/traces")
                        });
                    let client = crate::xray::SigV4HttpClient::new(&region, cfg.export_timeout)
                        .map_err(|e| fail("xray-otlp", e.to_string()))?;
                    let exporter = OtlpHttpExporter::new(
                        std::sync::Arc::new(client),
                        &endpoint,
                        cfg.export_timeout,
                    )
                    .map_err(|e| fail("xray-otlp", e))?;
                    builder = builder.with_span_processor(batch_scrubbing_itself(exporter));
                    exporters.push("xray-otlp");
                }
                other => {
                    return Err(fail(
                        "xray",
                        format!("{XRAY_ENV}: unknown mode `{other}` (use daemon, api, otlp)"),
                    ));
                }
            }
        }
        xray_stats = Some(stats);
    }
    Ok(Telemetry {
        provider: builder.build(),
        meters: build_meters(metrics_cfg, grpc_metrics)?,
        exporters,
        xray_stats,
    })
}

/// The meter provider of the hop metrics: OTLP/HTTP to the embedded collector (`/v1/metrics`)
/// and/or to `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT` (HTTP or gRPC, as for traces); `None` when
/// neither is configured (EMF lines in Lambda need no provider). The export interval is the
/// SDK's, from `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s); flush and shutdown export at once.
fn build_meters(
    cfg: &TelemetryConfig,
    grpc: Option<opentelemetry_otlp::MetricExporter>,
) -> Result<Option<opentelemetry_sdk::metrics::SdkMeterProvider>, TelemetryError> {
    use opentelemetry_otlp::MetricExporter;
    let fail = |which: &'static str| {
        move |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            which,
            reason: e.to_string(),
        }
    };
    let mut builder = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource(cfg.service));
    let mut any = false;
    if let Some(base) = &cfg.collector_endpoint {
        let exporter = MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/metrics", base.trim_end_matches('/')))
            .with_timeout(cfg.export_timeout)
            .build()
            .map_err(fail("collector metrics"))?;
        builder = builder.with_periodic_exporter(exporter);
        any = true;
    }
    if cfg.otlp_from_env && otlp_env_endpoint().is_some() {
        if otlp_env_protocol() == "grpc" {
            if let Some(exporter) = grpc {
                builder = builder.with_periodic_exporter(exporter);
                any = true;
            }
        } else {
            // The exporter resolves OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, or the generic endpoint
            // plus /v1/metrics, itself.
            let exporter = MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build()
                .map_err(fail("otlp-http metrics"))?;
            builder = builder.with_periodic_exporter(exporter);
            any = true;
        }
    }
    Ok(any.then(|| {
        let provider = builder.build();
        crate::metrics::install(&provider);
        provider
    }))
}

/// Why an exporter asked for is missing: the crate feature that brings it was left out of this
/// build (the Lambda bootstraps leave out `grpc` and `xray-api`; the `tokentrail` CLI has both).
#[cfg(not(all(feature = "grpc", feature = "xray-api")))]
fn not_built_in(feature: &str) -> String {
    format!(
        "this build has no such exporter: it was built without the telemetry crate's `{feature}` \
         feature (the Lambda bootstraps are; the `tokentrail` CLI is not)"
    )
}

/// The OTLP/gRPC span and metric exporters, where asked for.
type GrpcExporters = (
    Option<opentelemetry_otlp::SpanExporter>,
    Option<opentelemetry_otlp::MetricExporter>,
);

/// The OTLP/gRPC span and metric exporters asked for. They bind to the caller's Tokio runtime.
#[cfg(feature = "grpc")]
fn grpc_exporters(traces: bool, metrics: bool) -> Result<GrpcExporters, TelemetryError> {
    if (traces || metrics) && tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::Exporter {
            which: "otlp-grpc",
            reason: "OTLP/gRPC export needs a Tokio runtime: call init from inside one".into(),
        });
    }
    let fail = |which: &'static str| {
        move |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            which,
            reason: e.to_string(),
        }
    };
    let spans = traces
        .then(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(fail("otlp-grpc"))
        })
        .transpose()?;
    let meters = metrics
        .then(|| {
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(fail("otlp-grpc metrics"))
        })
        .transpose()?;
    Ok((spans, meters))
}

/// Without the `grpc` feature, asking for OTLP/gRPC is refused (never a silent fallback).
#[cfg(not(feature = "grpc"))]
fn grpc_exporters(traces: bool, metrics: bool) -> Result<GrpcExporters, TelemetryError> {
    if traces || metrics {
        return Err(TelemetryError::Exporter {
            which: "otlp-grpc",
            reason: format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc: {}; set it to http/protobuf",
                not_built_in("grpc")
            ),
        });
    }
    Ok((None, None))
}

/// Start telemetry for this process: tracer provider (installed globally), W3C + X-Ray
/// propagation helpers, and a `tracing` subscriber with the OpenTelemetry layer and JSON logs.
pub fn init(cfg: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    // `OTEL_SDK_DISABLED=true`: no exporter at all (X-Ray included), the no-op tracer (a hop's
    // span is its parent's context, so the trace passes through unchanged), logs as usual.
    let disabled = sdk_disabled_from_env()?;
    standard_vars_check_from_env()?;
    let plain = plain_pipeline(std::env::var(SPAN_PIPELINE_ENV).ok().as_deref())? && !disabled;
    PLAIN_SPANS.store(plain, std::sync::atomic::Ordering::Relaxed);
    // `OTEL_<SIGNAL>_EXPORTER=none` turns a signal's collector and OTLP exporters off.
    let signal = |on: bool| TelemetryConfig {
        collector_endpoint: cfg.collector_endpoint.clone().filter(|_| on && !disabled),
        otlp_from_env: cfg.otlp_from_env && on && !disabled,
        xray: cfg.xray.clone().filter(|_| !disabled),
        ..cfg.clone()
    };
    let traces_cfg = signal(exporter_selection_from_env(TRACES_EXPORTER_ENV)?);
    let metrics_cfg = signal(exporter_selection_from_env(METRICS_EXPORTER_ENV)?);
    // The gRPC (tonic) exporters bind to the caller's Tokio runtime, so they are built here; the
    // HTTP exporters' blocking client must not be built inside a runtime, so they are built on a
    // thread of their own.
    let wants_grpc = |c: &TelemetryConfig| {
        c.otlp_from_env && otlp_env_endpoint().is_some() && otlp_env_protocol() == "grpc"
    };
    let (grpc, grpc_metrics) = grpc_exporters(wants_grpc(&traces_cfg), wants_grpc(&metrics_cfg))?;
    let telemetry =
        std::thread::spawn(move || build_provider(&traces_cfg, &metrics_cfg, grpc, grpc_metrics))
            .join()
            .map_err(|_| TelemetryError::Exporter {
                which: "any",
                reason: "exporter construction panicked".into(),
            })??;
    let otel_layer = if disabled {
        opentelemetry::global::set_tracer_provider(
            opentelemetry::trace::noop::NoopTracerProvider::new(),
        );
        None
    } else {
        opentelemetry::global::set_tracer_provider(telemetry.provider.clone());
        let tracer = telemetry.provider.tracer("tokentrail");
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // lambda_runtime's own "Lambda runtime invoke" span would start a trace of its
                // own (aws-lambda-rust-runtime#618): hops hang from the trace header instead.
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    !m.target().starts_with("lambda_runtime")
                })),
        )
    };

    let (filter, not_understood) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let sink: Option<Sink> = match &cfg.log_to {
        LogTo::Stderr => Some(Box::new(std::io::stderr())),
        LogTo::File(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                return Err(TelemetryError::Exporter {
                    which: "log file",
                    reason: format!("{}: {e}", path.display()),
                });
            }
        },
        LogTo::Off => None,
    };
    let logs = sink.map(|s| JsonLogLayer::new(cfg.service.as_str(), s));
    // A subscriber may already be set (tests running several stacks in one process): keep it.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel_layer)
        .try_init();
    if let Some(why) = not_understood {
        tracing::warn!("{why}");
    }
    if plain {
        tracing::warn!(
            "{SPAN_PIPELINE_ENV}=plain: the benchmark baseline; spans carry no provenance and are \
             exported by opentelemetry-otlp without tokentrail's scrub"
        );
    }
    if disabled {
        tracing::info!(
            "{SDK_DISABLED_ENV}=true: no spans and no OpenTelemetry metrics are recorded; trace \
             context passes through unchanged"
        );
    }
    Ok(telemetry)
}

/// Targets whose own logs would only be noise in a hop's log (HTTP plumbing, the SDK itself).
const QUIET_TARGETS: &str = "hyper=off,hyper_util=off,reqwest=off,h2=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// The log filter from `RUST_LOG` (default `info`): comma-separated `level` and `target=level`
/// directives. Span and field directives (`target[span{field}]=level`) are not supported; such
/// a `RUST_LOG` is refused with the reason, which is then logged, and `info` applies.
fn log_filter(rust_log: Option<&str>) -> (Targets, Option<String>) {
    let base = rust_log
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("info");
    // `Targets` would take `target[span]` for a target's name, which no target has.
    let parsed = if base.contains(['[', ']', '{', '}']) {
        Err("span and field directives are not supported".to_owned())
    } else {
        format!("{base},{QUIET_TARGETS}")
            .parse::<Targets>()
            .map_err(|e| e.to_string())
    };
    match parsed {
        Ok(filter) => (filter, None),
        Err(e) => {
            let fallback = format!("info,{QUIET_TARGETS}")
                .parse::<Targets>()
                .unwrap_or_default();
            let why = format!(
                "RUST_LOG `{base}` is not understood ({e}): use `level` and `target=level` \
                 directives, separated by commas; logging at `info`"
            );
            (fallback, Some(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otel_sdk_disabled_is_true_false_or_refused() {
        for on in ["true", "TRUE", " True "] {
            assert!(sdk_disabled(Some(on)).expect("understood"), "{on}");
        }
        for off in [None, Some(""), Some("false"), Some("FALSE")] {
            assert!(!sdk_disabled(off).expect("understood"), "{off:?}");
        }
        for bad in ["1", "yes", "on", "maybe"] {
            let e = sdk_disabled(Some(bad)).expect_err("refused").to_string();
            assert!(e.contains(&format!("OTEL_SDK_DISABLED=`{bad}`")), "{e}");
            assert!(e.contains("use `true`"), "{e}");
        }
    }

    /// Every sampler the SDK implements, with any ratio it reads as one, is accepted; what the
    /// SDK would replace by sampling every trace is refused, naming the variable.
    #[test]
    fn samplers_the_sdk_would_replace_are_refused() {
        for name in [
            None,
            Some(""),
            Some("always_on"),
            Some("always_off"),
            Some("parentbased_always_on"),
            Some("parentbased_always_off"),
        ] {
            sampler_check(name, Some("not read")).expect("accepted");
        }
        for name in ["traceidratio", "parentbased_traceidratio"] {
            for arg in [
                None,
                Some(""),
                Some("0"),
                Some("0.25"),
                Some("1"),
                Some("1.0"),
            ] {
                sampler_check(Some(name), arg).expect("accepted");
            }
            for arg in ["1.5", "-0.1", "NaN", "half", " 0.5", "25%"] {
                let e = sampler_check(Some(name), Some(arg)).expect_err("refused");
                let e = e.to_string();
                assert!(
                    e.starts_with(&format!("OTEL_TRACES_SAMPLER_ARG=`{arg}`: ")),
                    "{e}"
                );
                assert!(e.contains("a number from 0 to 1"), "{e}");
            }
        }
        for (name, says) in [
            ("always-off", "not a sampler"),
            ("Always_Off", "(lower case)"),
            ("off", "not a sampler"),
            ("xray", "not implemented"),
            ("jaeger_remote", "not implemented"),
            ("parentbased_jaeger_remote", "not implemented"),
        ] {
            let e = sampler_check(Some(name), None).expect_err("refused");
            let e = e.to_string();
            assert!(
                e.starts_with(&format!("OTEL_TRACES_SAMPLER=`{name}`: ")),
                "{e}"
            );
            assert!(e.contains(says), "{e}");
        }
    }

    /// `TOKENTRAIL_LOG` is `json`, `off`/`none` or unset; anything else is refused.
    #[test]
    fn log_is_json_or_off() {
        for (value, off) in [
            (None, false),
            (Some(""), false),
            (Some("json"), false),
            (Some("JSON"), false),
            (Some("off"), true),
            (Some("OFF"), true),
            (Some("none"), true),
        ] {
            assert_eq!(log_off(value).expect("accepted"), off, "{value:?}");
        }
        let e = log_off(Some("quiet")).expect_err("refused").to_string();
        assert_eq!(
            e,
            "TOKENTRAIL_LOG: use `json` (log lines on stderr, the default) or `off`"
        );
    }

    /// A switch is on, off or unset; anything else is refused with the variable's name.
    #[test]
    fn switches_are_on_off_or_refused() {
        const VAR: &str = "TOKENTRAIL_EMF";
        for (value, want) in [
            (None, None),
            (Some(""), None),
            (Some(" "), None),
            (Some("1"), Some(true)),
            (Some("TRUE"), Some(true)),
            (Some("on"), Some(true)),
            (Some("Yes"), Some(true)),
            (Some("0"), Some(false)),
            (Some("false"), Some(false)),
            (Some("OFF"), Some(false)),
            (Some(" no "), Some(false)),
        ] {
            assert_eq!(switch(VAR, value).expect("a switch"), want, "{value:?}");
        }
        for value in ["2", "enabled", "tru", "y"] {
            let e = switch(VAR, Some(value)).expect_err(value).to_string();
            assert_eq!(
                e,
                "TOKENTRAIL_EMF: not a switch: use `1`, `true` or `on`, or `0`, `false` or `off`"
            );
        }
    }

    /// Values the SDK reads are accepted; what it would skip is refused, and the reason never
    /// holds a header's value.
    #[test]
    fn standard_values_the_sdk_would_skip_are_refused() {
        for (var, value) in [
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", ""),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2048"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", ""),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=abc%20def, tenant = blue",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=abc,, tenant=blue, ",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Basic%20dXNlcg==,",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=dev,team=",
            ),
        ] {
            standard_var_check(var, value).expect("accepted");
        }
        for (var, value, says) in [
            (
                "OTEL_BSP_SCHEDULE_DELAY",
                "200ms",
                "not a whole number of milliseconds",
            ),
            (
                "OTEL_BSP_SCHEDULE_DELAY",
                "0",
                "0 ms would have the exporter's thread export without pause, keeping a core busy; \
                 unset it for the default",
            ),
            (
                "OTEL_METRIC_EXPORT_INTERVAL",
                "0",
                "0 ms would have the exporter's thread export without pause, keeping a core busy; \
                 unset it for the default",
            ),
            (
                "OTEL_METRIC_EXPORT_INTERVAL",
                "5s",
                "not a whole number of milliseconds",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                " 5",
                "not a whole number of milliseconds",
            ),
            (
                "OTEL_BSP_EXPORT_TIMEOUT",
                "-1",
                "not a whole number of milliseconds",
            ),
            (
                "OTEL_BSP_MAX_QUEUE_SIZE",
                "0",
                "not a whole number of spans above zero",
            ),
            (
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "many",
                "not a whole number of spans above zero",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=1,s3cr3t-only",
                "entry 2 is not `name=value`",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "=s3cr3t",
                "entry 1 has no name",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "x api=s3cr3t",
                "entry 1 is not a valid header name",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=",
                "entry 1 (`x-api-key`) has no value",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "team=blue,garbage",
                "entry 2 is not `name=value`",
            ),
        ] {
            let e = standard_var_check(var, value)
                .expect_err("refused")
                .to_string();
            assert_eq!(e, format!("{var}: {says}"));
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    /// The Lambda bootstraps build this crate without `grpc`: asking for it is refused.
    #[cfg(not(feature = "grpc"))]
    #[test]
    fn without_the_grpc_feature_otlp_grpc_is_refused_with_the_reason() {
        for (traces, metrics) in [(true, false), (false, true), (true, true)] {
            let e = grpc_exporters(traces, metrics).err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(
                e.starts_with(
                    "cannot build the otlp-grpc span exporter: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this build"
                )
                    && e.contains("without the telemetry crate's `grpc` feature")
                    && e.ends_with("set it to http/protobuf"),
                "{e}"
            );
        }
        assert!(matches!(grpc_exporters(false, false), Ok((None, None))));
    }

    /// Likewise `xray-api`: `TOKENTRAIL_XRAY=api` is refused, `daemon` still works.
    #[cfg(not(feature = "xray-api"))]
    #[test]
    fn without_the_xray_api_feature_the_api_exporter_is_refused_with_the_reason() {
        let cfg = |modes: &str| TelemetryConfig {
            service: Service::Interceptor,
            collector_endpoint: None,
            otlp_from_env: false,
            log_to: LogTo::Off,
            export_timeout: Duration::from_secs(1),
            xray: Some(modes.to_owned()),
        };
        let e = build_provider(&cfg("daemon,api"), &cfg(""), None, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with(
                "cannot build the xray-api span exporter: this build has no such exporter"
            ) && e.contains("`xray-api` feature"),
            "{e}"
        );
        let ok = build_provider(&cfg("daemon"), &cfg(""), None, None).map(|t| t.exporters);
        assert_eq!(ok.ok(), Some(vec!["xray-daemon"]));
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn with_the_grpc_feature_nothing_is_built_unless_asked_for() {
        assert!(matches!(grpc_exporters(false, false), Ok((None, None))));
    }

    #[test]
    fn rust_log_sets_levels_per_target_and_plumbing_stays_quiet() {
        use tracing::Level;
        let (f, why) = log_filter(None);
        assert!(why.is_none());
        assert!(f.would_enable("interceptor", &Level::INFO));
        assert!(!f.would_enable("interceptor", &Level::DEBUG));
        let (f, why) = log_filter(Some("warn,interceptor=debug"));
        assert!(why.is_none());
        assert!(f.would_enable("interceptor::core", &Level::DEBUG));
        assert!(!f.would_enable("target", &Level::INFO));
        let (f, _) = log_filter(Some("trace"));
        assert!(f.would_enable("auth", &Level::TRACE));
        assert!(!f.would_enable("hyper::proto", &Level::ERROR));
        assert!(!f.would_enable("opentelemetry_sdk", &Level::ERROR));
    }

    #[test]
    fn a_rust_log_not_understood_is_reported_and_info_applies() {
        use tracing::Level;
        let (f, why) = log_filter(Some("interceptor[invoke{user=alice}]=debug"));
        let why = why.unwrap();
        assert!(
            why.starts_with("RUST_LOG `interceptor[invoke{user=alice}]=debug` is not understood ("),
            "{why}"
        );
        assert!(f.would_enable("interceptor", &Level::INFO));
        assert!(!f.would_enable("interceptor", &Level::DEBUG));
        assert!(!f.would_enable("hyper", &Level::ERROR));
        let (f, why) = log_filter(Some("interceptor[invoke]=debug"));
        assert_eq!(
            why.as_deref(),
            Some(
                "RUST_LOG `interceptor[invoke]=debug` is not understood (span and field \
                 directives are not supported): use `level` and `target=level` directives, \
                 separated by commas; logging at `info`"
            )
        );
        assert!(f.would_enable("interceptor", &Level::INFO));
        assert!(log_filter(Some("interceptor=loud")).1.is_some());
    }

    #[test]
    fn the_exporter_selection_is_otlp_by_default_none_on_request_and_refuses_the_rest() {
        let pick = |v: Option<&str>| exporter_selection(TRACES_EXPORTER_ENV, v);
        for on in [
            None,
            Some(""),
            Some(" "),
            Some("otlp"),
            Some("OTLP"),
            Some("otlp, otlp"),
        ] {
            assert!(matches!(pick(on), Ok(true)), "{on:?}");
        }
        for off in [Some("none"), Some(" None "), Some("none,")] {
            assert!(matches!(pick(off), Ok(false)), "{off:?}");
        }
        for refused in ["zipkin", "console", "otlp,none", "otlp,zipkin", "jaeger"] {
            let e = pick(Some(refused)).map_err(|e| e.to_string());
            assert_eq!(
                e,
                Err(format!(
                    "OTEL_TRACES_EXPORTER=`{refused}`: supported values are `otlp` (the \
                     default: the embedded collector and OTEL_EXPORTER_OTLP_*) and `none`"
                ))
            );
        }
    }
    use crate::attrs::{CredentialKind, FailureReason, Hop, Pattern};
    use crate::provenance::{ClaimSummary, CredentialProvenance};
    use crate::{HopSpan, TraceContext};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::SpanData;
    use secrecy::SecretString;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Default)]
    struct Capture(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Capture {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Ok(mut v) = self.0.lock() {
                v.extend(batch);
            }
            Ok(())
        }
    }

    /// An exporter that never finishes an export (a collector that accepted the connection and
    /// went silent).
    #[derive(Debug)]
    struct Hang;

    impl SpanExporter for Hang {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending::<()>().await;
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_placed_anywhere_never_reach_the_exporter() {
        let capture = Capture::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(RedactingExporter(capture.clone()))
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());

        let token = crate::fixtures::jwt("alice");
        let secret = SecretString::from(token.clone());
        let claims = ClaimSummary {
            subject: Some(format!("alice {token}")),
            issuer: Some("https://idp".into()),
            audience: vec![token.clone()],
            ..Default::default()
        };
        let mut span = HopSpan::hop(Hop::Target, Pattern::Passthrough, &TraceContext::none());
        span.credential(&CredentialProvenance::verified(
            CredentialKind::UserJwt,
            &secret,
            claims,
        ));
        span.attr(
            "http.request.header.authorization",
            format!("Bearer {token}"),
        );
        span.attr("nested", format!("{{\"a\":{{\"b\":\"{token}\"}}}}"));
        span.attr("list", vec![token.clone(), "ok".to_owned()]);
        span.carrier(&format!("header:{token}"));
        span.reject(FailureReason::Expired);
        let fp = crate::fingerprint::fingerprint(&secret);
        span.end();
        let _ = provider.force_flush();

        let spans = capture.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(spans.len(), 1);
        let dump = format!("{spans:?}");
        assert!(!dump.contains(&token), "token leaked: {dump}");
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!dump.contains(signature), "signature leaked");
        assert!(dump.contains(&fp), "fingerprint recorded");
        assert!(dump.contains("expired"));
    }

    #[test]
    fn flush_is_bounded_even_when_the_exporter_hangs_on_a_current_thread_runtime() {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(Hang).build())
            .build();
        let telemetry = Telemetry {
            provider: provider.clone(),
            meters: None,
            exporters: vec!["hang"],
            xray_stats: None,
        };
        provider.tracer("t").in_span("work", |_| {});
        let started = std::time::Instant::now();
        let outcome = rt.block_on(telemetry.flush(Duration::from_millis(300)));
        assert_ne!(outcome, FlushOutcome::Flushed);
        // Generous bound: the point is that it returns at all, long before the SDK gives up.
        assert!(started.elapsed() < Duration::from_secs(3));
        // Do not wait for the stuck flush thread when the runtime goes away.
        rt.shutdown_timeout(Duration::ZERO);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn flush_delivers_spans_on_a_current_thread_runtime() {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};
        let capture = Capture::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(capture.clone()).build())
            .build();
        let telemetry = Telemetry {
            provider: provider.clone(),
            meters: None,
            exporters: vec!["capture"],
            xray_stats: None,
        };
        provider.tracer("t").in_span("one-invocation", |_| {});
        let outcome = telemetry.flush(Duration::from_secs(10)).await;
        assert_eq!(outcome, FlushOutcome::Flushed);
        assert_eq!(capture.0.lock().map(|v| v.len()).unwrap_or_default(), 1);
    }
}

/// An exporter that drops what it receives.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Install a global pipeline that runs every span through the full export path synchronously
/// (redaction included) and then discards it: for benchmarks measuring the cost of
/// instrumentation, and for tools that want spans to cost what they cost without exporting.
pub fn install_discarding_pipeline() -> Telemetry {
    let provider = SdkTracerProvider::builder()
        .with_resource(resource(Service::App))
        .with_id_generator(crate::idgen::XrayCompatibleIdGenerator)
        .with_simple_exporter(RedactingExporter(Discard))
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Telemetry {
        provider,
        meters: None,
        exporters: vec!["discard"],
        xray_stats: None,
    }
}
