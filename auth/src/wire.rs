//! The rejection body every hop answers with, so the caller learns which hop stopped the request
//! and why.

use serde::{Deserialize, Serialize};
use telemetry::{FailureReason, Hop};

/// `{"error": {"hop": "...", "reason": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Hop that stopped the request.
    pub hop: Hop,
    /// Why.
    pub reason: FailureReason,
    /// Human explanation, free of secrets.
    pub message: String,
}

/// Envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionBody {
    /// The rejection.
    pub error: Rejection,
}

impl Rejection {
    /// New rejection with the reason's standard description.
    pub fn new(hop: Hop, reason: FailureReason) -> Self {
        Self {
            hop,
            reason,
            message: reason.describe().to_owned(),
        }
    }

    /// New rejection with a specific message.
    pub fn with_message(hop: Hop, reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            hop,
            reason,
            message: message.into(),
        }
    }

    /// HTTP status for this rejection.
    pub fn status(&self) -> u16 {
        self.reason.http_status()
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }

    /// JSON-RPC error object (`code` -32001 for auth failures, -32603 otherwise).
    pub fn jsonrpc_error(&self, id: serde_json::Value) -> serde_json::Value {
        let code = match self.status() {
            401 | 403 => -32001,
            400 => -32602,
            404 => -32601,
            _ => -32603,
        };
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": code, "message": self.message, "data": self}
        })
    }

    /// Read a rejection from a JSON body: `{"error": {...}}` or a JSON-RPC error's `data`.
    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let candidate = v
            .get("error")
            .and_then(|e| e.get("data").or(Some(e)))
            .cloned()?;
        serde_json::from_value(candidate).ok()
    }
}

/// The reason for a failed call to another service: `upstream_timeout` when it did not answer in
/// time, `upstream_unavailable` otherwise.
pub fn transport_failure(e: &reqwest::Error) -> FailureReason {
    if e.is_timeout() {
        FailureReason::UpstreamTimeout
    } else {
        FailureReason::UpstreamUnavailable
    }
}
