//! IAM caller proof for the token broker, as Vault's AWS authenticator does it: the caller signs
//! (SigV4, header form) an `sts:GetCallerIdentity` request with its own credentials without
//! sending it, and hands the signed request ([`CallerProof`]: URL and signed headers) to the
//! broker; the broker checks what the request asks for ([`check_proof`]), then sends it to STS
//! and learns the caller's ARN from the answer. No secret is shared between the accounts.
//!
//! The signature covers one extra header, [`BROKER_ID_HEADER`], whose value is the broker's id: a
//! proof made for one broker cannot be replayed to another (STS rejects the signature when the
//! broker adds its own id). The header form, rather than a query-string presign, is what STS
//! emulators route by (the `Authorization` header's credential scope names the service).
//!
//! Also here: SigV4 verification ([`verify_sigv4`]) for the local STS stand-in, which must reject a
//! bad signature as STS does, and the few date conversions SigV4 and STS responses need.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac};
use http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};

/// Header bound into every caller proof: the broker's id.
pub const BROKER_ID_HEADER: &str = "x-tokentrail-broker-id";
/// The query that asks STS who the caller is.
pub const GET_CALLER_IDENTITY_QUERY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// Temporary (or long-term) AWS credentials. `Debug` shows only the access key id.
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id (not secret).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// Session token of temporary credentials.
    pub session_token: Option<SecretString>,
    /// When they expire, for temporary credentials.
    pub expires_at: Option<SystemTime>,
}

impl AwsCredentials {
    /// The same credentials as the AWS SDK's type (for its clients and the SigV4 signer).
    pub fn to_sdk(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.expose_secret().to_owned(),
            self.session_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            self.expires_at,
            "tokentrail",
        )
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Errors of this module. Messages never carry a signature, a key or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IamError {
    /// The proof could not be signed.
    #[error("cannot sign the caller proof: {0}")]
    Presign(String),
    /// Not a usable caller proof.
    #[error("caller proof is malformed: {0}")]
    Malformed(String),
    /// The URL points somewhere other than the configured STS endpoint.
    #[error("caller proof is aimed at {got}, not at the configured STS endpoint {expected}")]
    WrongEndpoint {
        /// Where it points (scheme://host:port).
        got: String,
        /// Where it must point.
        expected: String,
    },
    /// The URL asks STS for something other than `GetCallerIdentity`.
    #[error("caller proof must be sts:GetCallerIdentity (Version 2011-06-15), not {0}")]
    WrongAction(String),
    /// The proof is not bound to this broker.
    #[error("caller proof does not sign the {BROKER_ID_HEADER} header")]
    NotBound,
    /// Signed too long ago.
    #[error("caller proof was signed {age_s} s ago; at most {max_s} s are accepted")]
    Stale {
        /// Age.
        age_s: i64,
        /// Window.
        max_s: u64,
    },
    /// Signed in the future.
    #[error("caller proof is dated {ahead_s} s in the future")]
    FutureDated {
        /// How far ahead.
        ahead_s: i64,
    },
    /// The request carries no (or no well-formed) SigV4 signature.
    #[error("missing or malformed SigV4 signature: {0}")]
    Unsigned(String),
    /// The signature does not match.
    #[error("the request signature we calculated does not match the signature you provided")]
    SignatureMismatch,
}

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn uri_encode(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

fn endpoint_origin(u: &url::Url) -> String {
    let port = u
        .port_or_known_default()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!("{}://{}{port}", u.scheme(), u.host_str().unwrap_or(""))
}

fn query_pairs(u: &url::Url) -> Vec<(String, String)> {
    u.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Result<&'a str, IamError> {
    let mut it = pairs.iter().filter(|(k, _)| k == key);
    match (it.next(), it.next()) {
        (Some((_, v)), None) => Ok(v),
        (None, _) => Err(IamError::Malformed(format!("no {key}"))),
        (Some(_), Some(_)) => Err(IamError::Malformed(format!("{key} given twice"))),
    }
}

/// Headers of a caller proof the broker forwards to STS (everything else is refused).
pub const PROOF_HEADERS: &[&str] = &["authorization", "x-amz-date", "x-amz-security-token"];

/// A signed, unsent `sts:GetCallerIdentity` request. It is a credential for as long as STS
/// accepts the signature: `Debug` shows only the URL, and the headers are secrets.
pub struct CallerProof {
    /// `https://sts.…/?Action=GetCallerIdentity&Version=2011-06-15` (nothing secret).
    pub url: String,
    /// The signed headers to send ([`PROOF_HEADERS`]), lower-case names.
    pub headers: Vec<(String, SecretString)>,
}

impl std::fmt::Debug for CallerProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerProof")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl CallerProof {
    /// The wire form: `{"url": …, "headers": {name: value}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::String(v.expose_secret().to_owned()),
                )
            })
            .collect();
        serde_json::json!({"url": self.url, "headers": headers})
    }

    /// From the wire form.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, IamError> {
        let url = v
            .get("url")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| IamError::Malformed("no url".into()))?
            .to_owned();
        let headers = v
            .get("headers")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| IamError::Malformed("no headers".into()))?
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.to_ascii_lowercase(), SecretString::from(s.to_owned())))
                    .ok_or_else(|| IamError::Malformed(format!("header `{k}` is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { url, headers })
    }

    fn header(&self, name: &str) -> Option<&SecretString> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Sign `sts:GetCallerIdentity` against `sts_endpoint` with `creds`, bound to `broker_id`, at
/// `now`, without sending it.
pub fn sign_get_caller_identity(
    creds: &AwsCredentials,
    sts_endpoint: &str,
    region: &str,
    broker_id: &str,
    now: SystemTime,
) -> Result<CallerProof, IamError> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;

    let base = url::Url::parse(sts_endpoint)
        .map_err(|e| IamError::Presign(format!("STS endpoint `{sts_endpoint}`: {e}")))?;
    // The origin without a default port: the Host header a client sends is signed as is.
    let url = format!(
        "{}/?{GET_CALLER_IDENTITY_QUERY}",
        base.origin().ascii_serialization()
    );
    let identity = creds.to_sdk().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| IamError::Presign(e.to_string()))?
        .into();
    let headers = [(BROKER_ID_HEADER, broker_id)];
    let signable = SignableRequest::new(
        "GET",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| IamError::Presign(e.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| IamError::Presign(e.to_string()))?
        .into_parts();
    let mut req = http::Request::builder()
        .method("GET")
        .uri(&url)
        .body(())
        .map_err(|e| IamError::Presign(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut req);
    let mut out = Vec::new();
    for name in PROOF_HEADERS {
        if let Some(v) = req.headers().get(*name) {
            let v = v
                .to_str()
                .map_err(|_| IamError::Presign(format!("{name} is not text")))?;
            out.push(((*name).to_owned(), SecretString::from(v.to_owned())));
        }
    }
    Ok(CallerProof { url, headers: out })
}

/// What the broker accepts as a caller proof.
#[derive(Debug, Clone)]
pub struct ProofPolicy {
    /// The STS endpoint the proof must be aimed at (`https://sts.us-east-1.amazonaws.com`).
    pub sts_endpoint: String,
    /// This broker's id (the value of [`BROKER_ID_HEADER`]).
    pub broker_id: String,
    /// Oldest accepted signature.
    pub max_age: Duration,
    /// Tolerated clock skew into the future.
    pub max_skew: Duration,
}

/// What [`check_proof`] learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    /// The access key id that signed it (not secret).
    pub access_key_id: String,
    /// Seconds since the signature was made.
    pub age_s: i64,
}

/// Check a caller proof before sending it: aimed at the configured STS endpoint,
/// `GetCallerIdentity` only, only the expected headers, signed with SigV4 for `sts` including the
/// broker-id header, and fresh.
pub fn check_proof(
    proof: &CallerProof,
    policy: &ProofPolicy,
    now_epoch: i64,
) -> Result<CheckedProof, IamError> {
    let u =
        url::Url::parse(&proof.url).map_err(|e| IamError::Malformed(format!("not a URL ({e})")))?;
    let expected = url::Url::parse(&policy.sts_endpoint)
        .map_err(|e| IamError::Malformed(format!("configured STS endpoint is not a URL ({e})")))?;
    let (got, want) = (endpoint_origin(&u), endpoint_origin(&expected));
    if !got.eq_ignore_ascii_case(&want) || !u.username().is_empty() || u.password().is_some() {
        return Err(IamError::WrongEndpoint {
            got,
            expected: want,
        });
    }
    if u.path() != "/" || u.fragment().is_some() {
        return Err(IamError::Malformed("path must be `/`".into()));
    }
    let pairs = query_pairs(&u);
    let action = one(&pairs, "Action")?;
    let version = one(&pairs, "Version")?;
    if action != "GetCallerIdentity" || version != "2011-06-15" {
        return Err(IamError::WrongAction(format!("{action} ({version})")));
    }
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k != "Action" && k != "Version") {
        return Err(IamError::Malformed(format!("unexpected parameter `{k}`")));
    }
    if let Some((k, _)) = proof
        .headers
        .iter()
        .find(|(k, _)| !PROOF_HEADERS.contains(&k.as_str()))
    {
        return Err(IamError::Malformed(format!("unexpected header `{k}`")));
    }
    let authz = proof
        .header("authorization")
        .ok_or_else(|| IamError::Malformed("no authorization header".into()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        authz
            .expose_secret()
            .parse()
            .map_err(|_| IamError::Malformed("authorization is not a header value".into()))?,
    );
    if let Some(d) = proof.header("x-amz-date") {
        headers.insert(
            "x-amz-date",
            d.expose_secret()
                .parse()
                .map_err(|_| IamError::Malformed("x-amz-date is not a header value".into()))?,
        );
    }
    let params = sigv4_params(&ReceivedRequest {
        method: "GET",
        path: "/",
        query: "",
        headers: &headers,
        body: b"",
    })
    .map_err(|e| IamError::Malformed(e.to_string()))?;
    if params.service != "sts" {
        return Err(IamError::Malformed(format!(
            "signed for service `{}`, not `sts`",
            params.service
        )));
    }
    if !params.signed_headers.iter().any(|h| h == BROKER_ID_HEADER) {
        return Err(IamError::NotBound);
    }
    let age_s = now_epoch - params.signed_at;
    if age_s < -(policy.max_skew.as_secs() as i64) {
        return Err(IamError::FutureDated { ahead_s: -age_s });
    }
    if age_s > policy.max_age.as_secs() as i64 {
        return Err(IamError::Stale {
            age_s,
            max_s: policy.max_age.as_secs(),
        });
    }
    Ok(CheckedProof {
        access_key_id: params.access_key_id,
        age_s,
    })
}

/// A request as received, for [`verify_sigv4`].
#[derive(Debug, Clone, Copy)]
pub struct ReceivedRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// Path as received (percent-encoded).
    pub path: &'a str,
    /// Raw query string (without `?`), empty if none.
    pub query: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Body.
    pub body: &'a [u8],
}

/// The signature's parameters, read from the `Authorization` header or the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Params {
    /// Access key id.
    pub access_key_id: String,
    /// Credential scope date (`yyyymmdd`).
    pub scope_date: String,
    /// Region.
    pub region: String,
    /// Service.
    pub service: String,
    /// `X-Amz-Date` as epoch seconds.
    pub signed_at: i64,
    /// `X-Amz-Date` as sent.
    pub amz_date: String,
    /// Signed header names.
    pub signed_headers: Vec<String>,
    /// `X-Amz-Expires` of a presigned request.
    pub expires_s: Option<i64>,
    /// Whether the signature was in the query string.
    pub presigned: bool,
    signature: String,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

fn decoded_pairs(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Read the SigV4 parameters of a received request (header or presigned form).
pub fn sigv4_params(req: &ReceivedRequest<'_>) -> Result<SigV4Params, IamError> {
    let pairs = decoded_pairs(req.query);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (credential, signed, signature, amz_date, expires, presigned) =
        if let Some(sig) = get("X-Amz-Signature") {
            if get("X-Amz-Algorithm").as_deref() != Some("AWS4-HMAC-SHA256") {
                return Err(IamError::Unsigned(
                    "X-Amz-Algorithm must be AWS4-HMAC-SHA256".into(),
                ));
            }
            let expires = get("X-Amz-Expires")
                .map(|e| e.parse::<i64>())
                .transpose()
                .map_err(|_| IamError::Unsigned("X-Amz-Expires is not a number".into()))?;
            (
                get("X-Amz-Credential").unwrap_or_default(),
                get("X-Amz-SignedHeaders").unwrap_or_default(),
                sig,
                get("X-Amz-Date").unwrap_or_default(),
                expires,
                true,
            )
        } else {
            let authz = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| IamError::Unsigned("no Authorization header".into()))?;
            let rest = authz
                .strip_prefix("AWS4-HMAC-SHA256 ")
                .ok_or_else(|| IamError::Unsigned("not AWS4-HMAC-SHA256".into()))?;
            let mut cred = String::new();
            let mut sh = String::new();
            let mut sig = String::new();
            for part in rest.split(',') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("Credential=") {
                    cred = v.to_owned();
                } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                    sh = v.to_owned();
                } else if let Some(v) = part.strip_prefix("Signature=") {
                    sig = v.to_owned();
                }
            }
            let date = req
                .headers
                .get("x-amz-date")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (cred, sh, sig, date, None, false)
        };
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
        return Err(IamError::Unsigned("credential scope is malformed".into()));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IamError::Unsigned("signature is not 64 hex digits".into()));
    }
    let signed_at = amz_date_to_epoch(&amz_date)
        .ok_or_else(|| IamError::Unsigned("X-Amz-Date is missing or malformed".into()))?;
    if !amz_date.starts_with(scope[1]) {
        return Err(IamError::Unsigned(
            "credential scope date differs from X-Amz-Date".into(),
        ));
    }
    let signed_headers: Vec<String> = signed
        .split(';')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(IamError::Unsigned("the host header is not signed".into()));
    }
    Ok(SigV4Params {
        access_key_id: scope[0].to_owned(),
        scope_date: scope[1].to_owned(),
        region: scope[2].to_owned(),
        service: scope[3].to_owned(),
        signed_at,
        amz_date,
        signed_headers,
        expires_s: expires,
        presigned,
        signature,
    })
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Verify the signature of `req` (parameters from [`sigv4_params`]) with `secret`: recompute the
/// canonical request and the signature as AWS does and compare in constant time.
pub fn verify_sigv4(
    req: &ReceivedRequest<'_>,
    params: &SigV4Params,
    secret: &SecretString,
) -> Result<(), IamError> {
    // Canonical query: every parameter but the signature, encoded, sorted.
    let mut q: Vec<(String, String)> = decoded_pairs(req.query)
        .into_iter()
        .filter(|(k, _)| !(params.presigned && k == "X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k), uri_encode(&v)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &params.signed_headers {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(IamError::Unsigned(format!(
                "signed header `{name}` is missing"
            )));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    // Presigned or not, STS hashes the (empty) payload; S3's UNSIGNED-PAYLOAD is not used here.
    let payload_hash = req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| sha256_hex(req.body));
    let path = if req.path.is_empty() { "/" } else { req.path };
    let canonical_path = path
        .split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/");
    let canonical = format!(
        "{}\n{canonical_path}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        req.method,
        params.signed_headers.join(";"),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        params.scope_date, params.region, params.service
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        params.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", secret.expose_secret()).as_bytes(),
        params.scope_date.as_bytes(),
    );
    for part in [
        params.region.as_str(),
        params.service.as_str(),
        "aws4_request",
    ] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let expected = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    constant_time::verify_slices_are_equal(expected.as_bytes(), params.signature.as_bytes())
        .map_err(|_| IamError::SignatureMismatch)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `20261128T200000Z` → epoch seconds.
pub fn amz_date_to_epoch(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Epoch seconds → `20261128T200000Z`.
pub fn epoch_to_amz_date(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Epoch seconds → `2026-11-28T20:00:00Z` (the form STS uses for `Expiration`).
pub fn epoch_to_rfc3339(t: i64) -> String {
    let a = epoch_to_amz_date(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &a[0..4],
        &a[4..6],
        &a[6..8],
        &a[9..11],
        &a[11..13],
        &a[13..15]
    )
}

/// Seconds since the epoch now.
pub fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The role an STS caller ARN belongs to, with the session name dropped:
/// `arn:aws:sts::111122223333:assumed-role/Name/session` → `arn:aws:iam::111122223333:role/Name`.
/// Role ARNs (with or without a path) are normalised to the same form; other identities are
/// returned unchanged (no policy names them as roles).
pub fn caller_role(arn: &str) -> String {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() == 6 && parts[0] == "arn" {
        let (partition, account, resource) = (parts[1], parts[4], parts[5]);
        if parts[2] == "sts"
            && let Some(rest) = resource.strip_prefix("assumed-role/")
            && let Some((name, _session)) = rest.split_once('/')
        {
            return format!("arn:{partition}:iam::{account}:role/{name}");
        }
        if parts[2] == "iam"
            && let Some(rest) = resource.strip_prefix("role/")
        {
            let name = rest.rsplit('/').next().unwrap_or(rest);
            return format!("arn:{partition}:iam::{account}:role/{name}");
        }
    }
    arn.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIATESTKEY0000001".into(),
            secret_access_key: SecretString::from("c2VjcmV0LXNlY3JldC1zZWNyZXQ".to_owned()),
            session_token: Some(SecretString::from("session-token-value".to_owned())),
            expires_at: None,
        }
    }

    fn policy() -> ProofPolicy {
        ProofPolicy {
            sts_endpoint: "https://sts.us-east-1.amazonaws.com".into(),
            broker_id: "broker-a".into(),
            max_age: Duration::from_secs(60),
            max_skew: Duration::from_secs(30),
        }
    }

    fn proof_at(endpoint: &str, at: SystemTime) -> CallerProof {
        sign_get_caller_identity(&creds(), endpoint, "us-east-1", "broker-a", at).unwrap()
    }

    /// The request as STS receives it from a broker with id `broker_id`.
    fn received(proof: &CallerProof, broker_id: &str) -> (String, String, HeaderMap) {
        let u = url::Url::parse(&proof.url).unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", u.host_str().unwrap().to_owned().try_into().unwrap());
        h.insert(BROKER_ID_HEADER, broker_id.try_into().unwrap());
        for (k, v) in &proof.headers {
            h.insert(
                http::HeaderName::try_from(k.as_str()).unwrap(),
                v.expose_secret().try_into().unwrap(),
            );
        }
        (u.path().to_owned(), u.query().unwrap_or("").to_owned(), h)
    }

    #[test]
    fn a_proof_from_the_aws_signer_verifies_and_a_wrong_secret_or_broker_does_not() {
        let proof = proof_at("https://sts.us-east-1.amazonaws.com", SystemTime::now());
        let round_trip = CallerProof::from_json(&proof.to_json()).unwrap();
        let checked = check_proof(&round_trip, &policy(), now_epoch()).unwrap();
        assert_eq!(checked.access_key_id, "ASIATESTKEY0000001");
        let (path, query, headers) = received(&proof, "broker-a");
        let req = ReceivedRequest {
            method: "GET",
            path: &path,
            query: &query,
            headers: &headers,
            body: b"",
        };
        let params = sigv4_params(&req).unwrap();
        assert!(!params.presigned);
        assert_eq!(params.service, "sts");
        verify_sigv4(&req, &params, &creds().secret_access_key).unwrap();
        let wrong = SecretString::from("another-secret".to_owned());
        assert_eq!(
            verify_sigv4(&req, &params, &wrong),
            Err(IamError::SignatureMismatch)
        );
        // Sent by another broker (its own id in the header): the signature breaks.
        let (_, _, other) = received(&proof, "broker-b");
        let req_b = ReceivedRequest {
            headers: &other,
            ..req
        };
        assert_eq!(
            verify_sigv4(&req_b, &params, &creds().secret_access_key),
            Err(IamError::SignatureMismatch)
        );
        // Debug never shows the signature or the session token.
        let dbg = format!("{proof:?}");
        assert!(!dbg.contains("Signature=") && !dbg.contains("session-token-value"));
    }

    #[test]
    fn the_broker_refuses_other_hosts_actions_stale_and_unbound_proofs() {
        let now = SystemTime::now();
        let evil = proof_at("https://sts.evil.example", now);
        assert!(matches!(
            check_proof(&evil, &policy(), now_epoch()),
            Err(IamError::WrongEndpoint { .. })
        ));
        let downgrade = proof_at("http://sts.us-east-1.amazonaws.com", now);
        assert!(matches!(
            check_proof(&downgrade, &policy(), now_epoch()),
            Err(IamError::WrongEndpoint { .. })
        ));
        let old = proof_at(
            "https://sts.us-east-1.amazonaws.com",
            now - Duration::from_secs(300),
        );
        assert!(matches!(
            check_proof(&old, &policy(), now_epoch()),
            Err(IamError::Stale { .. })
        ));
        let future = proof_at(
            "https://sts.us-east-1.amazonaws.com",
            now + Duration::from_secs(300),
        );
        assert!(matches!(
            check_proof(&future, &policy(), now_epoch()),
            Err(IamError::FutureDated { .. })
        ));
        let mut other_action = proof_at("https://sts.us-east-1.amazonaws.com", now);
        other_action.url = other_action.url.replace("GetCallerIdentity", "AssumeRole");
        assert!(matches!(
            check_proof(&other_action, &policy(), now_epoch()),
            Err(IamError::WrongAction(_))
        ));
        let mut extra = proof_at("https://sts.us-east-1.amazonaws.com", now);
        extra.url.push_str("&RoleArn=x");
        assert!(check_proof(&extra, &policy(), now_epoch()).is_err());
        let mut unbound = proof_at("https://sts.us-east-1.amazonaws.com", now);
        for (k, v) in unbound.headers.iter_mut() {
            if k == "authorization" {
                *v = SecretString::from(v.expose_secret().replace(";x-tokentrail-broker-id", ""));
            }
        }
        assert_eq!(
            check_proof(&unbound, &policy(), now_epoch()),
            Err(IamError::NotBound)
        );
        let mut smuggled = proof_at("https://sts.us-east-1.amazonaws.com", now);
        smuggled.headers.push((
            "host".into(),
            SecretString::from("sts.evil.example".to_owned()),
        ));
        assert!(check_proof(&smuggled, &policy(), now_epoch()).is_err());
        // Errors never echo the proof's secrets.
        let e = check_proof(&evil, &policy(), now_epoch()).unwrap_err();
        assert!(!e.to_string().contains("session-token-value"));
        assert!(!e.to_string().contains("Signature="));
    }

    #[test]
    fn dates_round_trip() {
        for t in [0, 951_782_400, 1_795_877_638, 4_102_444_800] {
            assert_eq!(amz_date_to_epoch(&epoch_to_amz_date(t)), Some(t));
        }
        assert_eq!(epoch_to_rfc3339(1_795_877_638), "2026-11-28T14:53:58Z");
        assert_eq!(amz_date_to_epoch("2026-11-28"), None);
        assert_eq!(amz_date_to_epoch("20261328T000000Z"), None);
    }

    #[test]
    fn caller_roles_drop_the_session_name() {
        assert_eq!(
            caller_role("arn:aws:sts::111122223333:assumed-role/interceptor/req-1"),
            "arn:aws:iam::111122223333:role/interceptor"
        );
        assert_eq!(
            caller_role("arn:aws:iam::111122223333:role/team/interceptor"),
            "arn:aws:iam::111122223333:role/interceptor"
        );
        assert_eq!(
            caller_role("arn:aws:iam::111122223333:user/alice"),
            "arn:aws:iam::111122223333:user/alice"
        );
    }
}
