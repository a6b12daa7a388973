//! AWS STS, locally: the Query API (`Action=…&Version=2011-06-15`, GET or form POST, XML answers)
//! for `AssumeRole` and `GetCallerIdentity`, so the real `aws-sdk-sts` client and the broker's
//! presigned-URL call work against it unchanged (`endpoint_url`).
//!
//! What it enforces, as STS does:
//! - every request is SigV4-signed (header or presigned query) with keys it knows: the configured
//!   base identities or sessions it issued; a wrong signature is `SignatureDoesNotMatch`, an
//!   unknown key `InvalidClientTokenId`, a session key without its token or with an expired
//!   session `InvalidClientTokenId`/`ExpiredToken`, a presigned URL past `X-Amz-Expires`
//!   `AccessDenied` ("Request has expired"), a header signature older than 15 min
//!   `SignatureDoesNotMatch` ("Signature expired");
//! - `AssumeRole`: the role must exist and trust the caller's role; a role with an `ExternalId`
//!   condition needs that id; `DurationSeconds` 900–43200 and at most the role's maximum; role
//!   chaining (an assumed-role session assuming a role) caps it at 3600 s.
//!
//! (moto, used by the tests that need the AWS emulator, checks none of this.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use auth::iam::{self, ReceivedRequest};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A caller with its own keys (e.g. a Lambda execution role's session).
#[derive(Debug, Clone, Deserialize)]
pub struct BaseIdentity {
    /// Its ARN (`arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION` or an IAM user/role ARN).
    pub arn: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// Session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<SecretString>,
}

/// A role that can be assumed.
#[derive(Debug, Clone, Deserialize)]
pub struct RoleDef {
    /// `arn:aws:iam::ACCOUNT:role/NAME`.
    pub arn: String,
    /// Role ARNs (session names ignored) its trust policy allows.
    pub trusted: Vec<String>,
    /// `sts:ExternalId` condition, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    /// `MaxSessionDuration` (default 3600).
    #[serde(default = "default_max_session")]
    pub max_session_s: u64,
}

fn default_max_session() -> u64 {
    3600
}

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct StsConfig {
    /// Base identities.
    pub identities: Vec<BaseIdentity>,
    /// Roles.
    pub roles: Vec<RoleDef>,
}

struct Session {
    arn: String,
    role_id: String,
    secret: SecretString,
    token: Option<SecretString>,
    expires_at: i64,
}

/// The stand-in's state.
pub struct Sts {
    config: StsConfig,
    sessions: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sts").finish_non_exhaustive()
    }
}

struct Fault {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn fault(status: StatusCode, code: &'static str, message: impl Into<String>) -> Fault {
    Fault {
        status,
        code,
        message: message.into(),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn xml_response(status: StatusCode, body: String, rid: &str) -> Response {
    let mut r = (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response();
    if let Ok(v) = rid.parse() {
        r.headers_mut().insert("x-amzn-requestid", v);
    }
    r
}

fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let body: String = (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{body}")
}

fn random_secret(bytes: usize) -> SecretString {
    use base64::Engine;
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    SecretString::from(base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
}

impl Sts {
    /// A new STS with `config`.
    pub fn new(config: StsConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// From TOML (`[[identities]]`, `[[roles]]`).
    pub fn from_toml(text: &str) -> Result<Arc<Self>, String> {
        let config: StsConfig =
            toml::from_str(text).map_err(|e| format!("STS stand-in config is invalid: {e}"))?;
        Ok(Self::new(config))
    }

    /// Authenticate a request: who signed it.
    fn authenticate(&self, req: &ReceivedRequest<'_>, now: i64) -> Result<(String, bool), Fault> {
        let params = iam::sigv4_params(req)
            .map_err(|e| fault(StatusCode::FORBIDDEN, "IncompleteSignature", e.to_string()))?;
        if params.service != "sts" {
            return Err(fault(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "Credential should be scoped to correct service: 'sts'.",
            ));
        }
        let presented_token = if params.presigned {
            url::form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "X-Amz-Security-Token")
                .map(|(_, v)| v.into_owned())
        } else {
            req.headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (arn, secret, token, expires_at, is_session_of_role) = {
            let sessions = self
                .sessions
                .lock()
                .map_err(|_| fault(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "lock"))?;
            if let Some(s) = sessions.get(&params.access_key_id) {
                (
                    s.arn.clone(),
                    s.secret.clone(),
                    s.token.clone(),
                    Some(s.expires_at),
                    true,
                )
            } else if let Some(b) = self
                .config
                .identities
                .iter()
                .find(|b| b.access_key_id == params.access_key_id)
            {
                (
                    b.arn.clone(),
                    b.secret_access_key.clone(),
                    b.session_token.clone(),
                    None,
                    b.arn.contains(":assumed-role/"),
                )
            } else {
                return Err(fault(
                    StatusCode::FORBIDDEN,
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                ));
            }
        };
        match (&token, presented_token.as_deref()) {
            (Some(t), Some(p)) if t.expose_secret().as_bytes() == p.as_bytes() => {}
            (None, None) => {}
            _ => {
                return Err(fault(
                    StatusCode::FORBIDDEN,
                    "InvalidClientTokenId",
                    "The security token included in the request is invalid.",
                ));
            }
        }
        iam::verify_sigv4(req, &params, &secret).map_err(|_| {
            fault(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        })?;
        if let Some(exp) = expires_at
            && now >= exp
        {
            return Err(fault(
                StatusCode::FORBIDDEN,
                "ExpiredToken",
                "The security token included in the request is expired",
            ));
        }
        match params.expires_s {
            Some(e) if now > params.signed_at + e => {
                return Err(fault(
                    StatusCode::FORBIDDEN,
                    "AccessDenied",
                    "Request has expired",
                ));
            }
            None if (now - params.signed_at).abs() > 900 => {
                return Err(fault(
                    StatusCode::FORBIDDEN,
                    "SignatureDoesNotMatch",
                    "Signature expired: the request time is more than 15 minutes from now",
                ));
            }
            _ => {}
        }
        Ok((arn, is_session_of_role))
    }

    fn assume_role(
        &self,
        caller: &str,
        caller_is_role_session: bool,
        params: &HashMap<String, String>,
        now: i64,
    ) -> Result<String, Fault> {
        let get = |k: &str| params.get(k).map(String::as_str);
        let role_arn = get("RoleArn").ok_or_else(|| {
            fault(
                StatusCode::BAD_REQUEST,
                "MissingParameter",
                "The request must contain the parameter RoleArn",
            )
        })?;
        let session_name = get("RoleSessionName").ok_or_else(|| {
            fault(
                StatusCode::BAD_REQUEST,
                "MissingParameter",
                "The request must contain the parameter RoleSessionName",
            )
        })?;
        let valid_name = (2..=64).contains(&session_name.len())
            && session_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
        if !valid_name {
            return Err(fault(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "1 validation error detected: Value at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*",
            ));
        }
        let duration: u64 = match get("DurationSeconds") {
            None => 3600,
            Some(d) => d.parse().map_err(|_| {
                fault(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    "DurationSeconds must be a number",
                )
            })?,
        };
        if !(900..=43_200).contains(&duration) {
            return Err(fault(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200",
            ));
        }
        let denied = || {
            fault(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                format!(
                    "User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
                ),
            )
        };
        let Some(role) = self.config.roles.iter().find(|r| r.arn == role_arn) else {
            return Err(denied());
        };
        let caller_role = iam::caller_role(caller);
        if !role
            .trusted
            .iter()
            .any(|t| iam::caller_role(t) == caller_role)
        {
            return Err(denied());
        }
        if let Some(ext) = &role.external_id
            && get("ExternalId") != Some(ext.as_str())
        {
            return Err(denied());
        }
        if caller_is_role_session && duration > 3600 {
            return Err(fault(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
            ));
        }
        if duration > role.max_session_s {
            return Err(fault(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ));
        }
        let parts: Vec<&str> = role.arn.splitn(6, ':').collect();
        let (account, name) = match parts.as_slice() {
            [_, _, _, _, account, resource] => (
                *account,
                resource
                    .strip_prefix("role/")
                    .map(|r| r.rsplit('/').next().unwrap_or(r))
                    .unwrap_or(resource),
            ),
            _ => return Err(denied()),
        };
        let key = random_id("ASIA", 16);
        let secret = random_secret(30);
        let token = random_secret(96);
        let role_id = format!("{}:{session_name}", random_id("AROA", 17));
        let arn = format!("arn:aws:sts::{account}:assumed-role/{name}/{session_name}");
        let expires_at = now + duration as i64;
        let body = format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
<AssumeRoleResult><AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>{}</Arn></AssumedRoleUser>\
<Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
<SessionToken>{}</SessionToken><Expiration>{}</Expiration></Credentials>\
<PackedPolicySize>0</PackedPolicySize></AssumeRoleResult>",
            xml_escape(&role_id),
            xml_escape(&arn),
            secret.expose_secret(),
            token.expose_secret(),
            iam::epoch_to_rfc3339(expires_at),
        );
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| fault(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "lock"))?;
        let now_live = |s: &Session| s.expires_at > now;
        sessions.retain(|_, s| now_live(s));
        sessions.insert(
            key,
            Session {
                arn,
                role_id,
                secret,
                token: Some(token),
                expires_at,
            },
        );
        Ok(body)
    }

    fn caller_identity(&self, arn: &str) -> String {
        let account = arn.split(':').nth(4).unwrap_or("");
        let user_id = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.values().find(|x| x.arn == arn).map(|x| x.role_id.clone()))
            .unwrap_or_else(|| random_id("AIDA", 17));
        format!(
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
<GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account></GetCallerIdentityResult>",
            xml_escape(arn),
            xml_escape(&user_id),
            xml_escape(account)
        )
    }
}

fn error_body(f: &Fault, rid: &str) -> String {
    let kind = if f.status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>{kind}</Type>\
<Code>{}</Code><Message>{}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>",
        f.code,
        xml_escape(&f.message)
    )
}

async fn handle(
    State(sts): State<Arc<Sts>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rid = request_id();
    let now = iam::now_epoch();
    let req = ReceivedRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    let mut params: HashMap<String, String> = url::form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    if method == Method::POST {
        params.extend(url::form_urlencoded::parse(&body).into_owned());
    }
    let result = (|| {
        if params.get("Version").map(String::as_str) != Some("2011-06-15") {
            return Err(fault(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                "Could not find operation for this version (expected 2011-06-15)",
            ));
        }
        let action = params.get("Action").cloned().unwrap_or_default();
        let (caller, is_role_session) = sts.authenticate(&req, now)?;
        match action.as_str() {
            "GetCallerIdentity" => Ok(sts.caller_identity(&caller)),
            "AssumeRole" => sts.assume_role(&caller, is_role_session, &params, now),
            other => Err(fault(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                format!("Could not find operation {other} for version 2011-06-15"),
            )),
        }
    })();
    match result {
        Ok(body) => xml_response(
            StatusCode::OK,
            format!(
                "{body}<ResponseMetadata><RequestId>{rid}</RequestId></ResponseMetadata>{}",
                closing_tag(&body)
            ),
            &rid,
        ),
        Err(f) => xml_response(f.status, error_body(&f, &rid), &rid),
    }
}

/// The closing tag matching the response element `body` opens (`<XResponse …>` → `</XResponse>`).
fn closing_tag(body: &str) -> String {
    let name: String = body
        .trim_start_matches('<')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("</{name}>")
}

/// Router: every method on `/`.
pub fn router(sts: Arc<Sts>) -> Router {
    Router::new()
        .route("/", axum::routing::any(handle))
        .with_state(sts)
}
