//! Trace ids valid in both W3C and X-Ray: the first 32 bits are the epoch seconds.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::IdGenerator;

/// Generates X-Ray-compatible trace ids (`1-<8 hex epoch>-<24 hex random>`) and random span ids.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct XrayCompatibleIdGenerator;

impl IdGenerator for XrayCompatibleIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default() as u32;
        let random: [u8; 12] = rand::random();
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&secs.to_be_bytes());
        bytes[4..].copy_from_slice(&random);
        TraceId::from_bytes(bytes)
    }

    fn new_span_id(&self) -> SpanId {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return SpanId::from_bytes(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_starts_with_epoch_seconds() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let id = XrayCompatibleIdGenerator.new_trace_id().to_string();
        let epoch = u64::from_str_radix(&id[..8], 16).unwrap_or_default();
        assert!(epoch.abs_diff(now) <= 2, "{id} vs {now}");
    }
}
