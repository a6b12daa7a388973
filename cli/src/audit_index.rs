//! The audit index of a span store: every request's audit record, saved next to the store
//! (`.<store file>.audit-index.json`) with the store's length and content digest
//! ([`telemetry::otlp::store_digest`]: SHA-256 over its 64 MiB blocks' SHA-256, hashed on every
//! core). An audit or a report of an unchanged store reads the index instead of parsing every
//! span again; any change to the store (an appended export, an edited byte) changes the digest, and
//! the index is rebuilt from the spans. The digest is taken before the spans are read, so an
//! export appended meanwhile can only make the next run rebuild, never hide a request.
//!
//! The index has the same trust as the store beside it: whoever can rewrite one can rewrite the
//! other. Delete it at any time; `tokentrail audit` rebuilds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::audit::Record;

/// Bumped when [`Record`] changes shape or the audit's rules change.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    tokentrail_version: String,
    store_len: u64,
    store_sha256: String,
    records: Vec<Record>,
}

/// Every request of a store, audited, and what happened to the index (for stderr).
#[derive(Debug)]
pub struct Indexed {
    /// Every audited request, oldest first.
    pub records: Vec<Record>,
    /// Notes for the user (index used, built, or not writable).
    pub notes: Vec<String>,
}

/// The store file of a store path (a directory holding `traces.jsonl`, or the file).
pub fn store_file(store: &Path) -> PathBuf {
    if store.is_dir() {
        store.join("traces.jsonl")
    } else {
        store.to_owned()
    }
}

/// Where the index of `file` lives.
pub fn index_file(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "traces.jsonl".into());
    file.with_file_name(format!(".{name}.audit-index.json"))
}

/// Every request of `store`, from its index when the index matches the store, else audited
/// from the spans (and the index written for next time).
pub fn records(store: &Path) -> Result<Indexed> {
    let file = store_file(store);
    let (len, digest) = telemetry::otlp::store_digest(&file)
        .map_err(|e| anyhow::anyhow!("cannot read the span store: {e}"))?;
    let index_path = index_file(&file);
    if let Ok(bytes) = std::fs::read(&index_path)
        && let Ok(index) = serde_json::from_slice::<Index>(&bytes)
        && index.format == FORMAT
        && index.tokentrail_version == env!("CARGO_PKG_VERSION")
        && index.store_len == len
        && index.store_sha256 == digest
    {
        return Ok(Indexed {
            records: index.records,
            notes: vec![format!(
                "read the audit index {} (it matches the store's {len} bytes, SHA-256 {})",
                index_path.display(),
                &digest[..12]
            )],
        });
    }
    let spans = crate::sources::store(&file)?.spans;
    let records = crate::audit::audit_all(spans);
    let index = Index {
        format: FORMAT,
        tokentrail_version: env!("CARGO_PKG_VERSION").to_owned(),
        store_len: len,
        store_sha256: digest,
        records,
    };
    let notes = match write(&index_path, &index) {
        Ok(()) => vec![format!(
            "built the audit index {} (the next audit of this store reads it)",
            index_path.display()
        )],
        Err(e) => vec![format!("the audit index was not written: {e:#}")],
    };
    Ok(Indexed {
        records: index.records,
        notes,
    })
}

/// Write the index next to the store, whole or not at all (a temporary file renamed).
fn write(path: &Path, index: &Index) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let bytes = serde_json::to_vec(index).context("encoding the index")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}", tmp.display(), path.display())
    })
}
