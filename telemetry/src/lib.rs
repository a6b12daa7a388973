//! tokentrail telemetry: the only crate that knows OpenTelemetry.
//!
//! Handlers speak this small API:
//! - [`init`] / [`TelemetryConfig`]: resource, exporters (embedded collector, OTLP/HTTP, OTLP/gRPC),
//!   the `tracing` subscriber with the OpenTelemetry layer and JSON logs;
//! - [`HopSpan`]: one span per hop with the attributes of the span contract ([`attrs`]);
//! - [`TraceContext`] and [`propagation`]: W3C + X-Ray extraction and injection;
//! - [`CredentialProvenance`] and [`fingerprint`]: what may be recorded about a credential;
//! - [`redact`]: the last-line scrubber applied to every exported string;
//! - [`xray`]: span → X-Ray segment documents, daemon / `PutTraceSegments` / SigV4 OTLP export;
//! - [`Telemetry::flush`]: bounded per-invocation flush for Lambda;
//! - [`aws_http`]: the HTTP client of every AWS SDK client (reqwest, shared with the rest).
//!
//! Cargo features, both off by default so the Lambda bootstraps stay small (the `tokentrail` CLI
//! turns both on): `grpc`, the OTLP/gRPC exporters (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`), and
//! `xray-api`, X-Ray's `PutTraceSegments` (`TOKENTRAIL_XRAY=api`). Asking a build without one for
//! it fails [`init`] with the reason.

pub mod attrs;
pub mod aws_http;
mod export;
pub mod fingerprint;
pub mod hop;
mod idgen;
mod init;
mod logs;
mod memo;
pub mod metrics;
pub mod otlp;
mod otlp_export;
mod otlp_json;
pub mod propagation;
pub mod provenance;
pub mod redact;
#[cfg(test)]
mod test_http;
pub mod xray;

pub use attrs::{CredentialKind, FailureReason, Hop, Outcome, Pattern, Service};
pub use hop::{AttrValue, HopSpan, Role, Span};
pub use init::{
    COLLECTOR_ENV, FlushOutcome, LAMBDA_FLUSH_BOUND, LOG_ENV, LogTo, METRICS_EXPORTER_ENV,
    SDK_DISABLED_ENV, SPAN_PIPELINE_ENV, TRACES_EXPORTER_ENV, TRACES_SAMPLER_ARG_ENV,
    TRACES_SAMPLER_ENV, Telemetry, TelemetryConfig, TelemetryError, XRAY_ENV,
    XRAY_OTLP_ENDPOINT_ENV, exporter_selection, exporter_selection_from_env, init,
    install_discarding_pipeline, otlp_env_protocol, plain_pipeline, sampler_check, sdk_disabled,
    sdk_disabled_from_env, standard_var_check, standard_vars_check_from_env, switch,
    switch_from_env,
};
pub use propagation::TraceContext;
pub use provenance::{ClaimSummary, CredentialProvenance, Verification};

/// Test fixtures: JWT-shaped strings built from their JSON parts (no token literals in sources).
#[cfg(test)]
pub(crate) mod fixtures {
    use base64::Engine;

    /// A compact JWS with the given subject and a fake signature.
    pub(crate) fn jwt(sub: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"RS256","kid":"k1"}"#),
            b64.encode(format!(r#"{{"sub":"{sub}","aud":"t"}}"#)),
            b64.encode("not-a-real-signature-not-a-real-signature")
        )
    }
}
