//! Hop metrics, recorded when a hop span ends: the histogram `tokentrail.hop.duration` (ms) and
//! the counter `tokentrail.hop.outcomes`, with the low-cardinality attributes pattern / hop /
//! outcome / reason ([`crate::attrs::metric`]).
//!
//! They leave the process two ways:
//! - through the OpenTelemetry meter provider [`crate::init`] builds (OTLP to the embedded
//!   collector and/or `OTEL_EXPORTER_OTLP_*`, every `OTEL_METRIC_EXPORT_INTERVAL` and on flush);
//! - in Lambda (or with `TOKENTRAIL_EMF=on`), as CloudWatch Embedded Metric Format lines on
//!   stdout: namespace `TokenTrail`, dimensions Pattern/Hop/Outcome, the failure reason and the
//!   trace id as searchable properties, and a `ColdStart` metric on the first hop of an execution
//!   environment. CloudWatch Logs turns them into metrics with no API call from the function.

use std::io::Write as _;
use std::sync::RwLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::attrs::{FailureReason, Hop, Outcome, Pattern, metric};

/// `on` / `off`: write EMF lines to stdout (default: on in Lambda, off elsewhere).
pub const EMF_ENV: &str = "TOKENTRAIL_EMF";

/// Histogram bucket bounds (ms): hops take from tens of microseconds to seconds.
const DURATION_BOUNDS_MS: [f64; 19] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
    2500.0, 5000.0, 10000.0,
];

struct Instruments {
    duration: Histogram<f64>,
    outcomes: Counter<u64>,
    cold_starts: Counter<u64>,
}

/// The instruments of the installed meter provider (replaced when telemetry is initialised again).
static INSTRUMENTS: RwLock<Option<Instruments>> = RwLock::new(None);

/// Create the hop instruments on `provider` and record into them from now on.
pub(crate) fn install(provider: &SdkMeterProvider) {
    let meter = provider.meter("tokentrail");
    let instruments = Instruments {
        duration: meter
            .f64_histogram(metric::HOP_DURATION)
            .with_unit(metric::DURATION_UNIT)
            .with_description("Time a hop spent on a request, from its span's start to its end")
            .with_boundaries(DURATION_BOUNDS_MS.to_vec())
            .build(),
        outcomes: meter
            .u64_counter(metric::HOP_OUTCOMES)
            .with_description("Hop spans ended, by pattern, hop, outcome and failure reason")
            .build(),
        cold_starts: meter
            .u64_counter(metric::HOP_COLD_STARTS)
            .with_description("First hop span of a Lambda execution environment")
            .build(),
    };
    if let Ok(mut slot) = INSTRUMENTS.write() {
        *slot = Some(instruments);
    }
}

/// What a hop span measures, kept from its start to its end.
#[derive(Debug, Clone)]
pub(crate) struct HopMetric {
    pub(crate) hop: Hop,
    pub(crate) pattern: Pattern,
    pub(crate) start: Instant,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) reason: Option<FailureReason>,
    /// `Some` in Lambda: whether this was the environment's first hop span.
    pub(crate) cold_start: Option<bool>,
}

impl HopMetric {
    pub(crate) fn start(hop: Hop, pattern: Pattern, cold_start: Option<bool>) -> Self {
        Self {
            hop,
            pattern,
            start: Instant::now(),
            outcome: None,
            reason: None,
            cold_start,
        }
    }

    fn outcome_str(&self) -> &'static str {
        self.outcome.map_or("unset", Outcome::as_str)
    }

    fn reason_str(&self) -> &'static str {
        self.reason.map_or("none", FailureReason::as_str)
    }

    /// Record the ended hop: OTel instruments, then EMF when enabled (with the X-Ray trace id
    /// `trace_id` gives, so a metric leads to its trace).
    pub(crate) fn record(&self, trace_id: impl FnOnce() -> String) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if let Ok(slot) = INSTRUMENTS.read()
            && let Some(i) = slot.as_ref()
        {
            let attributes = [
                KeyValue::new(metric::PATTERN, self.pattern.as_str()),
                KeyValue::new(metric::HOP, self.hop.as_str()),
                KeyValue::new(metric::OUTCOME, self.outcome_str()),
                KeyValue::new(metric::REASON, self.reason_str()),
            ];
            i.duration.record(ms, &attributes);
            i.outcomes.add(1, &attributes);
            if self.cold_start == Some(true) {
                i.cold_starts.add(1, &attributes[..2]);
            }
        }
        if emf_enabled() {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            let line = emf_line(self, ms, now_ms, &trace_id());
            // One write per line, so lines from concurrent invocations never interleave.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }
}

fn emf_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match crate::init::switch_from_env(EMF_ENV) {
        Ok(Some(on)) => on,
        _ => crate::propagation::in_lambda(),
    })
}

/// The EMF line(s) for one ended hop (newline-terminated): the hop metrics, and on a cold start
/// a second document with `ColdStart` (dimensions Pattern/Hop).
fn emf_line(m: &HopMetric, ms: f64, timestamp_ms: u64, trace_id: &str) -> String {
    let [p, h, o] = metric::EMF_DIMENSIONS;
    let mut fields = serde_json::json!({
        (p): m.pattern.as_str(),
        (h): m.hop.as_str(),
        (o): m.outcome_str(),
        (metric::EMF_REASON): m.reason_str(),
        (metric::HOP_DURATION): (ms * 1000.0).round() / 1000.0,
        (metric::HOP_OUTCOMES): 1,
    });
    if let Some(obj) = fields.as_object_mut()
        && !trace_id.is_empty()
    {
        obj.insert("traceId".into(), trace_id.into());
    }
    let directive = |dimensions: serde_json::Value, metrics: serde_json::Value| {
        serde_json::json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": metric::EMF_NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": metrics,
            }],
        })
    };
    let mut out = document(
        &directive(
            serde_json::json!([[p, h, o]]),
            serde_json::json!([
                {"Name": metric::HOP_DURATION, "Unit": "Milliseconds"},
                {"Name": metric::HOP_OUTCOMES, "Unit": "Count"},
            ]),
        ),
        &fields,
    );
    if m.cold_start == Some(true) {
        out.push_str(&document(
            &directive(
                serde_json::json!([[p, h]]),
                serde_json::json!([{"Name": metric::EMF_COLD_START, "Unit": "Count"}]),
            ),
            &serde_json::json!({
                (p): m.pattern.as_str(),
                (h): m.hop.as_str(),
                (metric::EMF_COLD_START): 1,
            }),
        ));
    }
    out
}

/// One EMF document line: `_aws` first (as CloudWatch's own libraries write it), then the
/// members.
fn document(aws: &serde_json::Value, fields: &serde_json::Value) -> String {
    let rest = fields.to_string();
    let rest = rest.strip_prefix('{').unwrap_or(&rest);
    format!("{{\"_aws\":{aws},{rest}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(
        outcome: Option<Outcome>,
        reason: Option<FailureReason>,
        cold: Option<bool>,
    ) -> HopMetric {
        HopMetric {
            outcome,
            reason,
            ..HopMetric::start(Hop::Interceptor, Pattern::Broker, cold)
        }
    }

    /// Every EMF rule CloudWatch applies: `_aws` with a millisecond timestamp, each directive's
    /// namespace, dimension sets naming root members that are strings, each metric a root
    /// member that is a number, at most 100 metrics and 30 dimensions per directive.
    fn check_emf(doc: &serde_json::Value) {
        let aws = &doc["_aws"];
        assert!(
            aws["Timestamp"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000)
        );
        for d in aws["CloudWatchMetrics"].as_array().into_iter().flatten() {
            assert_eq!(d["Namespace"], metric::EMF_NAMESPACE);
            for set in d["Dimensions"].as_array().into_iter().flatten() {
                let set = set.as_array().map(Vec::as_slice).unwrap_or_default();
                assert!(!set.is_empty() && set.len() <= 30);
                for name in set {
                    let name = name.as_str().unwrap_or_default();
                    assert!(doc[name].is_string(), "dimension {name} is a string member");
                }
            }
            let metrics = d["Metrics"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().unwrap_or_default();
                assert!(doc[name].is_number(), "metric {name} is a number member");
            }
        }
    }

    #[test]
    fn emf_lines_follow_the_format() {
        let m = ended(
            Some(Outcome::Rejected),
            Some(FailureReason::Expired),
            Some(false),
        );
        let text = emf_line(
            &m,
            1.23456,
            1_795_900_000_000,
            "1-6b0b3770-3ad3c041573c1cd4c6000000",
        );
        assert_eq!(text.lines().count(), 1);
        let doc: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap_or_default();
        check_emf(&doc);
        assert_eq!(doc["Pattern"], "broker");
        assert_eq!(doc["Hop"], "gateway.interceptor");
        assert_eq!(doc["Outcome"], "rejected");
        assert_eq!(doc["Reason"], "expired");
        assert_eq!(doc[metric::HOP_DURATION], 1.235);
        assert_eq!(doc[metric::HOP_OUTCOMES], 1);
        assert_eq!(doc["traceId"], "1-6b0b3770-3ad3c041573c1cd4c6000000");
    }

    #[test]
    fn a_cold_start_adds_the_cold_start_metric() {
        let m = ended(Some(Outcome::Ok), None, Some(true));
        let text = emf_line(&m, 5.0, 1_795_900_000_000, "");
        let docs: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_default())
            .collect();
        assert_eq!(docs.len(), 2);
        docs.iter().for_each(check_emf);
        assert_eq!(docs[0]["Outcome"], "ok");
        assert_eq!(docs[0]["Reason"], "none");
        assert!(docs[0].get("traceId").is_none());
        assert_eq!(docs[1][metric::EMF_COLD_START], 1);
        assert_eq!(docs[1]["Hop"], "gateway.interceptor");
    }

    #[test]
    fn an_unended_hop_is_unset() {
        let m = ended(None, None, None);
        let text = emf_line(&m, 5.0, 1_795_900_000_000, "");
        assert!(text.contains(r#""Outcome":"unset""#));
    }
}
