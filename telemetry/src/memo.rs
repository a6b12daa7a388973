//! A direct-mapped memo of encodings, shared by the two places that encode the same attributes
//! span after span: the exporter writing OTLP protobuf ([`crate::otlp_export`]) and the
//! collector's OTLP/JSON transcoder ([`crate::otlp_json`]).
//!
//! Most of a hop span's attributes (pattern, hop, issuer, audience, outcome, …) are the same in
//! span after span. A hit is a hash, a compare and a copy where a miss encodes the attribute and
//! scrubs every string of it. What the memo keeps for a key is what encoding that key's bytes
//! produced (scrubbing included), so a hit writes exactly what a miss would. Direct-mapped: a new
//! key replaces the slot's, so crafted attributes can only cause misses, never longer lookups or
//! more memory.

use std::hash::Hasher as _;

/// Slots of a memo: 2^[`SLOT_BITS`].
pub(crate) const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 9;
/// An odd 64-bit constant for multiplicative hashing.
pub(crate) const MIX: u64 = 0xf135_7aea_2e62_a9c5;
/// The longest key a memo keeps; longer ones, rare, are encoded each time.
pub(crate) const MAX_KEY: usize = 160;

/// The last key seen at each slot and its encoding. An empty key is an empty slot (an empty key
/// is never kept).
pub(crate) struct Memo {
    slots: Vec<Slot>,
}

/// Encodings up to this long are kept zero-padded to it, and a hit copies this many bytes (a
/// copy of constant length, inlined, where one of the text's own length calls `memcpy`) and
/// then drops the padding.
const SHORT_TEXT: usize = 64;

#[derive(Clone, Default)]
struct Slot {
    key: Vec<u8>,
    /// The encoding, zero-padded to at least [`SHORT_TEXT`] bytes.
    text: Vec<u8>,
    /// Its length without the padding.
    len: usize,
}

impl Memo {
    /// An empty memo (its slots are allocated at first use).
    pub(crate) const fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// Append the encoding of `key` to `out`: the kept one when this slot holds `key`, else what
    /// `encode` appends (then kept). `None` when `encode` fails (nothing is kept then).
    pub(crate) fn write(
        &mut self,
        key: &[u8],
        out: &mut Vec<u8>,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return encode(out);
        }
        let hash = {
            let mut h = rustc_hash::FxHasher::default();
            h.write(key);
            // FxHasher's output is rotated for hash tables that index by its low bits: one more
            // multiply gives top bits that depend on all of it.
            h.finish().wrapping_mul(MIX)
        };
        self.write_with(
            hash,
            |kept| kept == key,
            |kept| kept.extend_from_slice(key),
            out,
            encode,
        )
    }

    /// [`Memo::write`] for a key the caller does not hold as bytes: `hash` is any hash of it
    /// whose top bits mix all of it
    /// (the memo's correctness does not depend on it, only how often it hits), `is_key` tells
    /// whether a kept key is it, `key` writes it (at most [`MAX_KEY`] bytes, not empty; longer
    /// or empty keys are not kept).
    #[inline(always)]
    pub(crate) fn write_with(
        &mut self,
        hash: u64,
        is_key: impl FnOnce(&[u8]) -> bool,
        key: impl FnOnce(&mut Vec<u8>),
        out: &mut Vec<u8>,
        encode: impl FnOnce(&mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        if self.slots.is_empty() {
            self.slots = vec![Slot::default(); SLOTS];
        }
        // The top bits: those of a multiplicative hash depend on every bit of its input.
        let slot = (hash >> (u64::BITS - SLOT_BITS)) as usize;
        let Slot {
            key: kept,
            text,
            len,
        } = &mut self.slots[slot];
        if !kept.is_empty() && is_key(kept) {
            match text.first_chunk::<SHORT_TEXT>() {
                Some(padded) if *len <= SHORT_TEXT => {
                    let end = out.len() + *len;
                    out.extend_from_slice(padded);
                    out.truncate(end);
                }
                _ => out.extend_from_slice(&text[..*len]),
            }
            return Some(());
        }
        let start = out.len();
        encode(out)?;
        kept.clear();
        key(kept);
        if kept.is_empty() || kept.len() > MAX_KEY {
            kept.clear();
            return Some(());
        }
        text.clear();
        text.extend_from_slice(&out[start..]);
        *len = text.len();
        if text.len() < SHORT_TEXT {
            text.resize(SHORT_TEXT, 0);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_is_written_without_encoding_and_a_new_one_replaces_it() {
        let mut memo = Memo::new();
        let mut out = Vec::new();
        let mut calls = 0;
        for _ in 0..3 {
            memo.write(b"k1", &mut out, |o| {
                calls += 1;
                o.extend_from_slice(b"<one>");
                Some(())
            });
        }
        assert_eq!((calls, out.as_slice()), (1, &b"<one><one><one>"[..]));
        // A failed encoding keeps nothing; empty and overlong keys are encoded every time.
        assert_eq!(memo.write(b"k2", &mut out, |_| None), None);
        let long = [b'x'; MAX_KEY + 1];
        for key in [&b""[..], &long[..]] {
            let mut encoded = 0;
            for _ in 0..2 {
                memo.write(key, &mut out, |_| {
                    encoded += 1;
                    Some(())
                });
            }
            assert_eq!(encoded, 2);
        }
    }
}
