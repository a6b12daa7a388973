//! Signing keys and token minting (the local IdP's side; tests use it to forge bad tokens).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::Serialize;

/// Errors minting tokens or generating keys.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Key generation failed.
    #[error("cannot generate an RSA signing key: {0}")]
    KeyGen(String),
    /// Signing failed.
    #[error("cannot sign a token: {0}")]
    Sign(String),
}

/// An RS256 signing key with its public JWK.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Read one DER TLV at `pos`: returns (tag, content, next position).
fn der_tlv(buf: &[u8], pos: usize) -> Option<(u8, &[u8], usize)> {
    let tag = *buf.get(pos)?;
    let first = *buf.get(pos + 1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *buf.get(pos + 2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let start = pos + hdr;
    let content = buf.get(start..start + len)?;
    Some((tag, content, start + len))
}

/// Modulus and exponent of a PKCS#1 `RSAPublicKey`.
fn rsa_components(pkcs1: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (tag, seq, _) = der_tlv(pkcs1, 0)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, n, next) = der_tlv(seq, 0)?;
    let (t2, e, _) = der_tlv(seq, next)?;
    if t1 != 0x02 || t2 != 0x02 {
        return None;
    }
    let strip = |v: &[u8]| {
        let skip = v.iter().take_while(|b| **b == 0).count();
        v[skip..].to_vec()
    };
    Some((strip(n), strip(e)))
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Generate a fresh RSA-2048 key for RS256.
    pub fn generate_rs256(kid: impl Into<String>) -> Result<Self, MintError> {
        let kid = kid.into();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .map_err(|e| MintError::KeyGen(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes())
            .map_err(|e| MintError::KeyGen(e.to_string()))?;
        let (n, e) = rsa_components(pair.public_key_raw())
            .ok_or_else(|| MintError::KeyGen("unexpected RSA public key encoding".into()))?;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": kid,
            "n": b64url(&n),
            "e": b64url(&e),
        });
        Ok(Self { kid, encoding, jwk })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Public JWK (for the JWKS document).
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// Sign claims as an RS256 JWT with this key's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<SecretString, MintError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map(SecretString::from)
            .map_err(|e| MintError::Sign(e.to_string()))
    }

    /// Sign with an explicit header (tests: a `kid` the JWKS does not have, a missing `kid`).
    pub fn sign_with_kid<T: Serialize>(
        &self,
        claims: &T,
        kid: Option<&str>,
    ) -> Result<SecretString, MintError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map(SecretString::from)
            .map_err(|e| MintError::Sign(e.to_string()))
    }
}

/// Current time in epoch seconds.
pub fn now_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_parser_rejects_garbage() {
        assert!(rsa_components(&[]).is_none());
        assert!(rsa_components(&[0x30, 0x05, 0x02]).is_none());
        assert!(rsa_components(&[0x31, 0x00]).is_none());
    }
}
