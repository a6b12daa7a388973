//! JWKS from OIDC discovery, cached.
//!
//! - Keys are cached by `kid` and never dropped because a fetch failed: while the IdP is down,
//!   tokens signed with known keys keep verifying.
//! - An unknown `kid` triggers at most one refetch at a time (single flight), at most one per
//!   `min_refetch_interval`; a `kid` still unknown after a refetch is negatively cached, so a flood
//!   of made-up `kid`s cannot turn into a flood of requests to the IdP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use serde::Deserialize;
use tracing::instrument;

use crate::verify::AuthError;
use telemetry::FailureReason;

/// JWKS cache settings.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// `https://issuer/.well-known/openid-configuration`.
    pub discovery_url: String,
    /// Minimum time between two fetches triggered by unknown `kid`s.
    pub min_refetch_interval: Duration,
    /// How long an unknown `kid` stays known-unknown.
    pub negative_ttl: Duration,
    /// Bound on one HTTP request to the IdP.
    pub http_timeout: Duration,
}

impl JwksConfig {
    /// Defaults: 30 s between refetches (as jose and go-oidc), 60 s negative cache, 3 s timeout.
    pub fn new(discovery_url: impl Into<String>) -> Self {
        Self {
            discovery_url: discovery_url.into(),
            min_refetch_interval: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(60),
            http_timeout: Duration::from_secs(3),
        }
    }
}

/// A verification key, parsed once when the JWKS is read (an RSA key rebuilt from `n`/`e` on
/// every verification costs a tenth more), and the algorithm its JWK is for.
#[derive(Clone)]
pub struct CachedKey {
    /// The public key: RSA PKCS#1 v1.5 with SHA-256 (2048–8192 bits), or ECDSA P-256 with
    /// SHA-256 over a fixed-size `r || s` signature (the JWS encoding).
    pub key: Arc<ParsedPublicKey>,
    /// Algorithm implied by the JWK (`kty`/`crv`, or `alg` when present).
    pub alg: Algorithm,
}

/// The public key of `jwk` for `alg`; `None` when the JWK does not hold a usable one (wrong
/// type, bad encoding, RSA modulus under 2048 bits, point not on P-256).
fn parsed_key(jwk: &Jwk, alg: Algorithm) -> Option<ParsedPublicKey> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(rsa), Algorithm::RS256) => {
            let n = b64.decode(&rsa.n).ok()?;
            let e = b64.decode(&rsa.e).ok()?;
            RsaPublicKeyComponents {
                n: &n[..],
                e: &e[..],
            }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .ok()
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256)
            if ec.curve == EllipticCurve::P256 =>
        {
            let x = b64.decode(&ec.x).ok()?;
            let y = b64.decode(&ec.y).ok()?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).ok()
        }
        _ => None,
    }
}

#[derive(Default)]
struct State {
    keys: HashMap<String, CachedKey>,
    jwks_uri: Option<String>,
    last_fetch: Option<Instant>,
    negative: HashMap<String, Instant>,
}

/// The cache. Share one per issuer (`Arc`); creating one per request defeats it.
pub struct JwksCache {
    cfg: JwksConfig,
    http: reqwest::Client,
    state: RwLock<State>,
    single_flight: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("discovery_url", &self.cfg.discovery_url)
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

fn unavailable(detail: impl Into<String>) -> AuthError {
    AuthError::new(FailureReason::UpstreamUnavailable, detail)
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return match alg {
            jsonwebtoken::jwk::KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            jsonwebtoken::jwk::KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            _ => None,
        };
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec)
            if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
        {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

impl JwksCache {
    /// A new, empty cache.
    pub fn new(cfg: JwksConfig) -> Result<Arc<Self>, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.http_timeout)
            .build()
            .map_err(|e| AuthError::new(FailureReason::Internal, e.to_string()))?;
        Ok(Arc::new(Self {
            cfg,
            http,
            state: RwLock::new(State::default()),
            single_flight: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
        }))
    }

    /// Number of JWKS fetches made so far (successful or not).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Number of keys known.
    pub fn key_count(&self) -> usize {
        self.state.read().map(|s| s.keys.len()).unwrap_or_default()
    }

    fn cached(&self, kid: &str) -> Option<CachedKey> {
        self.state.read().ok()?.keys.get(kid).cloned()
    }

    fn negatively_cached(&self, kid: &str) -> bool {
        self.state
            .read()
            .ok()
            .and_then(|s| s.negative.get(kid).copied())
            .is_some_and(|at| at.elapsed() < self.cfg.negative_ttl)
    }

    /// Fetch keys now (e.g. at start-up). Subject to the same single flight.
    pub async fn prefetch(&self) -> Result<(), AuthError> {
        let _flight = self.single_flight.lock().await;
        self.fetch_and_merge().await
    }

    /// The key for `kid`, refetching once if it is unknown.
    pub async fn key(&self, kid: &str) -> Result<CachedKey, AuthError> {
        // What the cache already says: the key, or that the issuer does not know `kid`.
        let known = || {
            if let Some(k) = self.cached(kid) {
                return Some(Ok(k));
            }
            self.negatively_cached(kid).then(|| {
                Err(AuthError::new(
                    FailureReason::UnknownKid,
                    "kid unknown to the issuer (cached)",
                ))
            })
        };
        if let Some(answer) = known() {
            return answer;
        }
        let _flight = self.single_flight.lock().await;
        // Another task may have fetched while we waited.
        if let Some(answer) = known() {
            return answer;
        }
        let recently = self
            .state
            .read()
            .ok()
            .and_then(|s| s.last_fetch)
            .is_some_and(|at| at.elapsed() < self.cfg.min_refetch_interval);
        let fetched = if recently {
            Ok(())
        } else {
            self.fetch_and_merge().await
        };
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        // No key for this kid and the IdP is unreachable: a dependency failure, not a forgery.
        fetched?;
        if let Ok(mut s) = self.state.write() {
            s.negative.insert(kid.to_owned(), Instant::now());
            // Keep the negative cache bounded under a flood of random kids.
            if s.negative.len() > 10_000 {
                let ttl = self.cfg.negative_ttl;
                s.negative.retain(|_, at| at.elapsed() < ttl);
            }
        }
        Err(AuthError::new(
            FailureReason::UnknownKid,
            "kid unknown to the issuer",
        ))
    }

    #[instrument(skip_all, name = "jwks.fetch")]
    async fn fetch_and_merge(&self) -> Result<(), AuthError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.write() {
            s.last_fetch = Some(Instant::now());
        }
        let result = self.fetch().await;
        match result {
            Ok(keys) => {
                if let Ok(mut s) = self.state.write() {
                    for kid in keys.keys() {
                        s.negative.remove(kid);
                    }
                    s.keys = keys;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(reason = %e.reason, detail = %e.detail, "JWKS fetch failed; keeping the keys already known");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, CachedKey>, AuthError> {
        let jwks_uri = match self.state.read().ok().and_then(|s| s.jwks_uri.clone()) {
            Some(uri) => uri,
            None => {
                let resp = self
                    .http
                    .get(&self.cfg.discovery_url)
                    .send()
                    .await
                    .map_err(|e| unavailable(format!("OIDC discovery: {e}")))?;
                if !resp.status().is_success() {
                    return Err(unavailable(format!(
                        "OIDC discovery answered {}",
                        resp.status()
                    )));
                }
                let doc: Discovery = resp
                    .json()
                    .await
                    .map_err(|e| unavailable(format!("OIDC discovery document: {e}")))?;
                if let Ok(mut s) = self.state.write() {
                    s.jwks_uri = Some(doc.jwks_uri.clone());
                }
                doc.jwks_uri
            }
        };
        let resp = self
            .http
            .get(&jwks_uri)
            .send()
            .await
            .map_err(|e| unavailable(format!("JWKS: {e}")))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("JWKS answered {}", resp.status())));
        }
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("JWKS document: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk_algorithm(jwk)) else {
                continue;
            };
            if let Some(key) = parsed_key(jwk, alg) {
                keys.insert(
                    kid,
                    CachedKey {
                        key: Arc::new(key),
                        alg,
                    },
                );
            }
        }
        if keys.is_empty() {
            return Err(unavailable("JWKS holds no usable RS256/ES256 key"));
        }
        Ok(keys)
    }
}
