//! Keyed fingerprints of credentials: equal fingerprints across hops mean the same token.
//!
//! `sha256:` + the first 12 hex digits of HMAC-SHA256(key, whole token). The key comes from
//! `TOKENTRAIL_FINGERPRINT_KEY` (any string; the local stack shares one so fingerprints match across
//! processes) or is random per process. Without the key a fingerprint cannot be tested against a
//! guessed token.

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use secrecy::{ExposeSecret, SecretString};

/// Environment variable holding the fingerprint key.
pub const KEY_ENV: &str = "TOKENTRAIL_FINGERPRINT_KEY";

static KEY: OnceLock<hmac::Key> = OnceLock::new();

fn key_from_material(material: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, material)
}

/// Install the process-wide key. The first call wins; returns false if a key was already set.
pub fn install_key(material: &SecretString) -> bool {
    KEY.set(key_from_material(material.expose_secret().as_bytes()))
        .is_ok()
}

fn key() -> &'static hmac::Key {
    KEY.get_or_init(|| match std::env::var(KEY_ENV) {
        Ok(v) if !v.is_empty() => key_from_material(v.as_bytes()),
        _ => {
            let random: [u8; 32] = rand::random();
            key_from_material(&random)
        }
    })
}

/// Fingerprint of a token (or any secret string).
pub fn fingerprint(token: &SecretString) -> String {
    fingerprint_bytes(token.expose_secret().as_bytes())
}

/// Fingerprint of raw secret bytes.
pub fn fingerprint_bytes(bytes: &[u8]) -> String {
    let tag = hmac::sign(key(), bytes);
    let hex = hex::encode(&tag.as_ref()[..6]);
    format!("sha256:{hex}")
}

/// A stable pseudonym for an identifier (used when subjects are pseudonymised).
pub fn pseudonym(id: &str) -> String {
    let tag = hmac::sign(key(), format!("subject:{id}").as_bytes());
    format!("anon:{}", hex::encode(&tag.as_ref()[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_token_same_fingerprint_different_token_different() {
        let a = SecretString::from("token-a");
        let b = SecretString::from("token-b");
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        let fp = fingerprint(&a);
        assert!(fp.starts_with("sha256:"));
        assert_eq!(fp.len(), "sha256:".len() + 12);
        assert!(!fp.contains("token-a"));
    }
}
