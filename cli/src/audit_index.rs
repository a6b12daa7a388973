//! The audit index of a span store: every request's audit record, and for every request the
//! store lines holding its spans, saved next to the store (`.<store file>.audit-index.json`) with
//! the store's length and content digest ([`telemetry::otlp::store_digest`]: SHA-256 over its
//! 64 MiB blocks' SHA-256, hashed on every core).
//!
//! - The store is unchanged (same length and digest): the records are read from the index.
//! - The store grew and its first bytes are the indexed ones (same digest over the indexed
//!   length, taken in the same read as the grown store's): only the appended lines are parsed;
//!   a request they add spans to is audited again from all its spans (its earlier lines are
//!   read back through the index), a new request is audited, the rest is kept.
//! - Anything else (an edited byte, a shorter store, another version): rebuilt from the spans.
//!
//! The digest is taken before the spans are read and only whole lines up to the digested
//! length are read, so an export appended meanwhile is left for the next run, never half-read or
//! hidden. The index has the same trust as the store beside it: whoever can rewrite one can
//! rewrite the other. Delete it at any time; `tokentrail audit` rebuilds it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use telemetry::otlp::StoredSpan;

use crate::audit::Record;

/// Bumped when [`Record`] or the index changes shape, or the audit's rules change.
const FORMAT: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    tokentrail_version: String,
    store_len: u64,
    store_sha256: String,
    records: Vec<Record>,
    /// Trace id → offsets of the store lines holding its audited spans.
    lines: BTreeMap<String, Vec<u64>>,
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
        store.join(local::collector::TRACES_FILE)
    } else {
        store.to_owned()
    }
}

/// Where the index of `file` lives.
pub fn index_file(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| local::collector::TRACES_FILE.into());
    file.with_file_name(format!(".{name}.audit-index.json"))
}

/// The store's length up to the end of its last whole line (an export being appended may be
/// half-written).
fn whole_lines_len(file: &Path) -> Result<u64> {
    use std::io::{Read, Seek};
    let cannot =
        |e: std::io::Error| anyhow::anyhow!("cannot read the span store {}: {e}", file.display());
    let mut f = std::fs::File::open(file).map_err(cannot)?;
    let mut end = f.metadata().map_err(cannot)?.len();
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let from = end.saturating_sub(buf.len() as u64);
        let n = (end - from) as usize;
        f.seek(std::io::SeekFrom::Start(from)).map_err(cannot)?;
        f.read_exact(&mut buf[..n]).map_err(cannot)?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

fn digest(file: &Path, len: u64) -> Result<String> {
    Ok(digests(file, None, len)?.0)
}

/// The digest of the first `len` bytes and, from the same read, of the first `prefix` bytes.
fn digests(file: &Path, prefix: Option<u64>, len: u64) -> Result<(String, Option<String>)> {
    let d = telemetry::otlp::store_digests(file, prefix, Some(len))
        .map_err(|e| anyhow::anyhow!("cannot read the span store: {e}"))?;
    anyhow::ensure!(
        d.len == len,
        "the span store {} shrank while it was read",
        file.display()
    );
    Ok((d.digest, d.prefix))
}

fn scan(file: &Path, from: u64, to: u64) -> Result<Vec<(u64, StoredSpan)>> {
    telemetry::otlp::scan_store_range(file, &crate::sources::audit_scan_filter(), from, Some(to))
        .map_err(|e| anyhow::anyhow!("cannot read the span store: {e}"))
}

fn read_index(path: &Path) -> Option<Index> {
    let bytes = std::fs::read(path).ok()?;
    let index: Index = serde_json::from_slice(&bytes).ok()?;
    (index.format == FORMAT && index.tokentrail_version == env!("CARGO_PKG_VERSION"))
        .then_some(index)
}

/// Add the spans of `[index.store_len, len)` to the index.
fn extend(file: &Path, index: &mut Index, len: u64) -> Result<()> {
    let tail = scan(file, index.store_len, len)?;
    let touched: BTreeSet<String> = tail.iter().map(|(_, s)| s.trace_id.clone()).collect();
    let earlier: BTreeSet<u64> = touched
        .iter()
        .filter_map(|t| index.lines.get(t))
        .flatten()
        .copied()
        .collect();
    let earlier: Vec<u64> = earlier.into_iter().collect();
    let before =
        telemetry::otlp::scan_store_lines(file, &crate::sources::audit_scan_filter(), &earlier)
            .map_err(|e| anyhow::anyhow!("cannot read the span store: {e}"))?;
    let mut spans: Vec<StoredSpan> = before
        .into_iter()
        .filter(|(_, s)| touched.contains(&s.trace_id))
        .map(|(_, s)| s)
        .collect();
    for (at, s) in tail {
        let lines = index.lines.entry(s.trace_id.clone()).or_default();
        if lines.last() != Some(&at) {
            lines.push(at);
        }
        spans.push(s);
    }
    let fresh = crate::audit::audit_all(spans);
    index.records.retain(|r| !touched.contains(&r.trace_id));
    index.records.extend(fresh);
    index.records.sort_by_key(|r| r.start_unix_nano);
    Ok(())
}

/// Every request of `store`, from its index when the index matches the store (extended over
/// appended lines), else audited from the spans; the index is written for next time.
pub fn records(store: &Path) -> Result<Indexed> {
    let file = store_file(store);
    let len = whole_lines_len(&file)?;
    let index_path = index_file(&file);
    let mut notes = Vec::new();
    if let Some(mut index) = read_index(&index_path) {
        if index.store_len == len {
            let digest = digest(&file, len)?;
            if digest == index.store_sha256 {
                notes.push(format!(
                    "read the audit index {} (it matches the store's {len} bytes, SHA-256 {})",
                    index_path.display(),
                    &digest[..12]
                ));
                return Ok(Indexed {
                    records: index.records,
                    notes,
                });
            }
        } else if index.store_len < len
            && let (digest, Some(indexed)) = digests(&file, Some(index.store_len), len)?
            && indexed == index.store_sha256
        {
            let appended = len - index.store_len;
            // A bad appended line fails the extension: the full read below reports it with its
            // line number.
            if extend(&file, &mut index, len).is_ok() {
                index.store_len = len;
                index.store_sha256 = digest;
                notes.push(format!(
                    "extended the audit index {} over the {appended} bytes appended to the store",
                    index_path.display()
                ));
                if let Err(e) = write(&index_path, &index) {
                    notes.push(format!("the audit index was not written: {e:#}"));
                }
                return Ok(Indexed {
                    records: index.records,
                    notes,
                });
            }
        }
    }
    let digest = digest(&file, len)?;
    let spans = scan(&file, 0, len)?;
    let mut lines: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let spans: Vec<StoredSpan> = spans
        .into_iter()
        .map(|(at, s)| {
            let l = lines.entry(s.trace_id.clone()).or_default();
            if l.last() != Some(&at) {
                l.push(at);
            }
            s
        })
        .collect();
    let index = Index {
        format: FORMAT,
        tokentrail_version: env!("CARGO_PKG_VERSION").to_owned(),
        store_len: len,
        store_sha256: digest,
        records: crate::audit::audit_all(spans),
        lines,
    };
    match write(&index_path, &index) {
        Ok(()) => notes.push(format!(
            "built the audit index {} (the next audit of this store reads it)",
            index_path.display()
        )),
        Err(e) => notes.push(format!("the audit index was not written: {e:#}")),
    }
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
