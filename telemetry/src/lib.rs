//! tokentrail telemetry: the only crate that knows OpenTelemetry.
//!
//! Handlers speak this small API:
//! - [`init`] / [`TelemetryConfig`]: resource, exporters (embedded collector, OTLP/HTTP, OTLP/gRPC),
//!   the `tracing` subscriber with the OpenTelemetry layer and JSON logs;
//! - [`HopSpan`]: one span per hop with the attributes of the span contract ([`attrs`]);
//! - [`TraceContext`] and [`propagation`]: W3C + X-Ray extraction and injection;
//! - [`CredentialProvenance`] and [`fingerprint`]: what may be recorded about a credential;
//! - [`redact`]: the last-line scrubber applied to every exported string;
//! - [`Telemetry::flush`]: bounded per-invocation flush for Lambda.

pub mod attrs;
mod export;
pub mod fingerprint;
pub mod hop;
mod idgen;
mod init;
mod logs;
pub mod otlp;
pub mod propagation;
pub mod provenance;
pub mod redact;

pub use attrs::{CredentialKind, FailureReason, Hop, Outcome, Pattern, Service};
pub use hop::{AttrValue, HopSpan, Role, Span};
pub use init::{
    COLLECTOR_ENV, FlushOutcome, LOG_ENV, LogTo, Telemetry, TelemetryConfig, TelemetryError, init,
    install_discarding_pipeline,
};
pub use propagation::TraceContext;
pub use provenance::{ClaimSummary, CredentialProvenance, Verification};
