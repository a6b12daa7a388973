//! Broker mode: get a service token from the token broker in the central account.
//!
//! 1. `sts:AssumeRole` of the central-account role with the `ExternalId` (real `aws-sdk-sts`),
//!    credentials cached until 5 minutes before they expire; the session is at most 1 hour
//!    because a Lambda assuming a role with its execution-role session is role chaining.
//! 2. Sign (without sending) `sts:GetCallerIdentity` with those credentials, bound to the
//!    broker's id: the caller proof.
//! 3. `POST {broker}/token` with the proof, within a bounded timeout; SigV4-signed with the same
//!    credentials when the broker sits behind an IAM-authenticated endpoint (a Lambda function
//!    URL with `AuthType: AWS_IAM` is service `lambda`, API Gateway is `execute-api`).
//!
//! Every failure carries the reason the interceptor denies with (fail closed).

use std::time::{Duration, SystemTime};

use auth::Rejection;
use auth::iam::{self, AwsCredentials};
use secrecy::SecretString;
use serde::Deserialize;
use telemetry::attrs::semconv;
use telemetry::{FailureReason, Hop, Role, Span, TraceContext};
use tokio::sync::Mutex;
use tracing::instrument;

/// Refresh assumed-role credentials this long before they expire.
pub const CREDENTIAL_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest session a chained `AssumeRole` may ask for.
pub const ROLE_CHAINING_MAX: Duration = Duration::from_secs(3600);

/// Broker-mode settings.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Broker base URL (`POST {url}/token`).
    pub broker_url: String,
    /// The broker's id, bound into the caller proof.
    pub broker_id: String,
    /// Which service credential to ask for (`None`: the caller's only one).
    pub credential: Option<String>,
    /// Central-account role to assume.
    pub role_arn: String,
    /// `ExternalId` for the role's trust policy.
    pub external_id: Option<String>,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `DurationSeconds` (900–3600: role chaining).
    pub session_duration: Duration,
    /// STS endpoint (for the SDK and the caller proof).
    pub sts_endpoint: String,
    /// Region.
    pub region: String,
    /// Bound on each of STS and the broker call.
    pub timeout: Duration,
    /// SigV4 service name to sign the broker call for (`None`: unsigned).
    pub sign_service: Option<String>,
}

/// Why no service token was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFailure {
    /// The hop that decided (`broker.token` when the broker refused, else the interceptor).
    pub hop: Hop,
    /// Reason.
    pub reason: FailureReason,
    /// Explanation (no secrets).
    pub message: String,
}

/// The region a Lambda function URL (`https://<id>.lambda-url.<region>.on.aws/...`) lives in:
/// the broker may run in another region than the interceptor, and its URL's signature must name
/// the broker's.
fn signing_region(url: &str) -> Option<&str> {
    let host = url.split_once("://")?.1.split(['/', ':']).next()?;
    let rest = host.strip_suffix(".on.aws")?;
    let (_, region) = rest.split_once(".lambda-url.")?;
    (!region.is_empty() && !region.contains('.')).then_some(region)
}

fn failure(reason: FailureReason, message: impl Into<String>) -> BrokerFailure {
    BrokerFailure {
        hop: Hop::Interceptor,
        reason,
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: SecretString,
}

/// A service token from the broker.
pub struct ServiceToken {
    /// The token.
    pub token: SecretString,
}

/// The broker client (one per process; credentials cached across invocations).
pub struct BrokerClient {
    settings: BrokerSettings,
    sts: aws_sdk_sts::Client,
    http: reqwest::Client,
    creds: Mutex<Option<AwsCredentials>>,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl BrokerClient {
    /// A client using the standard AWS configuration for its own (base) credentials.
    pub async fn new(settings: BrokerSettings) -> Result<Self, String> {
        Self::with_base_credentials(settings, None).await
    }

    /// A client whose base credentials are `base` (the standard AWS configuration when `None`).
    pub async fn with_base_credentials(
        settings: BrokerSettings,
        base: Option<AwsCredentials>,
    ) -> Result<Self, String> {
        if settings.session_duration > ROLE_CHAINING_MAX
            || settings.session_duration < Duration::from_secs(900)
        {
            return Err(format!(
                "the session duration must be 900–3600 s (role chaining caps it at 1 hour), not {} s",
                settings.session_duration.as_secs()
            ));
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(settings.timeout)
            .build();
        let mut loader = telemetry::aws_http::config_loader()
            .region(aws_config::Region::new(settings.region.clone()))
            .endpoint_url(settings.sts_endpoint.clone())
            .timeout_config(timeouts);
        if let Some(b) = base {
            loader = loader.credentials_provider(b.to_sdk());
        }
        let config = loader.load().await;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            sts: aws_sdk_sts::Client::new(&config),
            settings,
            http,
            creds: Mutex::new(None),
        })
    }

    /// The assumed-role credentials: cached, or fresh from `sts:AssumeRole`.
    #[instrument(skip_all, level = "debug", name = "interceptor.assume_role")]
    pub async fn credentials(
        &self,
        parent: &TraceContext,
    ) -> Result<AwsCredentials, BrokerFailure> {
        let mut guard = self.creds.lock().await;
        if let Some(c) = guard.as_ref()
            && c.expires_at
                .is_some_and(|at| SystemTime::now() + CREDENTIAL_REFRESH_MARGIN < at)
        {
            return Ok(c.clone());
        }
        let span = Span::child("sts.AssumeRole", Role::Client, parent);
        span.attr(semconv::RPC_SYSTEM, "aws-api");
        span.attr(semconv::RPC_SERVICE, "STS");
        span.attr(semconv::RPC_METHOD, "AssumeRole");
        span.attr(semconv::SERVER_ADDRESS, self.settings.sts_endpoint.clone());
        let mut req = self
            .sts
            .assume_role()
            .role_arn(&self.settings.role_arn)
            .role_session_name(&self.settings.session_name)
            .duration_seconds(self.settings.session_duration.as_secs() as i32);
        if let Some(ext) = &self.settings.external_id {
            req = req.external_id(ext);
        }
        let out = req.send().await.map_err(|e| {
            use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
            let f = match &e {
                SdkError::TimeoutError(_) => failure(
                    FailureReason::UpstreamTimeout,
                    "sts:AssumeRole did not answer in time",
                ),
                SdkError::ServiceError(s) => {
                    let code = s.err().code().unwrap_or("unknown").to_owned();
                    let reason = if code == "AccessDenied" {
                        FailureReason::CallerNotAllowed
                    } else {
                        FailureReason::UpstreamUnavailable
                    };
                    failure(
                        reason,
                        format!(
                            "sts:AssumeRole of {} failed: {code}: {}",
                            self.settings.role_arn,
                            s.err().message().unwrap_or("")
                        ),
                    )
                }
                other => failure(
                    FailureReason::UpstreamUnavailable,
                    format!(
                        "sts:AssumeRole failed: {}",
                        aws_sdk_sts::error::DisplayErrorContext(other)
                    ),
                ),
            };
            span.fail(f.reason.as_str());
            f
        })?;
        let c = out.credentials().ok_or_else(|| {
            span.fail("bad_response");
            failure(
                FailureReason::UpstreamUnavailable,
                "sts:AssumeRole returned no credentials",
            )
        })?;
        let expires_at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(c.expiration().secs()).unwrap_or(0));
        let creds = AwsCredentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: SecretString::from(c.secret_access_key().to_owned()),
            session_token: Some(SecretString::from(c.session_token().to_owned())),
            expires_at: Some(expires_at),
        };
        *guard = Some(creds.clone());
        Ok(creds)
    }

    /// The `POST {broker}/token` request, SigV4-signed with `creds` when the settings ask.
    fn broker_request(
        &self,
        url: &str,
        body: &serde_json::Value,
        mut headers: http::HeaderMap,
        creds: &AwsCredentials,
    ) -> Result<reqwest::Request, BrokerFailure> {
        let internal = |e: String| failure(FailureReason::Internal, e);
        let bytes = serde_json::to_vec(body).map_err(|e| internal(e.to_string()))?;
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let mut req = http::Request::builder()
            .method("POST")
            .uri(url)
            .body(bytes::Bytes::from(bytes))
            .map_err(|e| internal(format!("the broker URL `{url}` is not usable: {e}")))?;
        *req.headers_mut() = headers;
        if let Some(service) = &self.settings.sign_service {
            telemetry::xray::sigv4_sign(
                &mut req,
                &creds.to_sdk(),
                signing_region(url).unwrap_or(&self.settings.region),
                service,
                SystemTime::now(),
            )
            .map_err(|e| internal(format!("cannot sign the broker call: {e}")))?;
        }
        let req: http::Request<reqwest::Body> = req.map(reqwest::Body::from);
        reqwest::Request::try_from(req).map_err(|e| internal(e.without_url().to_string()))
    }

    /// A service token for this request.
    #[instrument(skip_all, level = "debug", name = "interceptor.service_token")]
    pub async fn service_token(
        &self,
        parent: &TraceContext,
    ) -> Result<ServiceToken, BrokerFailure> {
        // Boxed: the SDK's futures are deep, and the Lambda runtime nests this one further.
        let creds = Box::pin(self.credentials(parent)).await?;
        let proof = iam::sign_get_caller_identity(
            &creds,
            &self.settings.sts_endpoint,
            &self.settings.region,
            &self.settings.broker_id,
            SystemTime::now(),
        )
        .map_err(|e| failure(FailureReason::Internal, e.to_string()))?;
        let url = format!("{}/token", self.settings.broker_url.trim_end_matches('/'));
        let span = Span::child("broker.request", Role::Client, parent);
        span.attr(semconv::URL_FULL, url.clone());
        span.attr(semconv::HTTP_REQUEST_METHOD, "POST");
        let mut body = serde_json::json!({ "caller_proof": proof.to_json() });
        if let Some(c) = &self.settings.credential {
            body["credential"] = serde_json::Value::String(c.clone());
        }
        let request = self.broker_request(&url, &body, span.context().http_headers(), &creds)?;
        let resp = self.http.execute(request).await.map_err(|e| {
            let reason = auth::wire::transport_failure(&e);
            span.fail(reason.as_str());
            failure(
                reason,
                if reason == FailureReason::UpstreamTimeout {
                    format!(
                        "the token broker did not answer within {} ms",
                        self.settings.timeout.as_millis()
                    )
                } else {
                    format!("the token broker could not be reached: {}", e.without_url())
                },
            )
        })?;
        let status = resp.status().as_u16();
        span.attr(semconv::HTTP_RESPONSE_STATUS_CODE, status);
        let bytes = resp.bytes().await.map_err(|e| {
            let reason = auth::wire::transport_failure(&e);
            span.fail(reason.as_str());
            failure(reason, "the token broker's answer was cut short")
        })?;
        if status == 200 {
            let reply: TokenReply = serde_json::from_slice(&bytes).map_err(|_| {
                span.fail("bad_response");
                failure(
                    FailureReason::UpstreamUnavailable,
                    "the token broker answered 200 without an access_token",
                )
            })?;
            return Ok(ServiceToken {
                token: reply.access_token,
            });
        }
        let rejection = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| Rejection::from_json(&v));
        span.fail(
            rejection
                .as_ref()
                .map(|r| r.reason.as_str())
                .unwrap_or("bad_response"),
        );
        Err(match rejection {
            Some(r) => BrokerFailure {
                hop: r.hop,
                reason: r.reason,
                message: r.message,
            },
            None => failure(
                FailureReason::UpstreamUnavailable,
                format!("the token broker answered {status} without a reason"),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(sign_service: Option<&str>) -> BrokerSettings {
        BrokerSettings {
            broker_url: "https://abc.lambda-url.eu-west-1.on.aws".into(),
            broker_id: "tokentrail-broker".into(),
            credential: None,
            role_arn: "arn:aws:iam::111122223333:role/caller".into(),
            external_id: None,
            session_name: "t".into(),
            session_duration: Duration::from_secs(3600),
            sts_endpoint: "https://sts.eu-west-1.amazonaws.com".into(),
            region: "eu-west-1".into(),
            timeout: Duration::from_secs(1),
            sign_service: sign_service.map(str::to_owned),
        }
    }

    fn creds() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "ASIATESTKEY".into(),
            secret_access_key: SecretString::from("test-secret-key".to_owned()),
            session_token: Some(SecretString::from("test-session".to_owned())),
            expires_at: None,
        }
    }

    async fn request(sign_service: Option<&str>) -> reqwest::Request {
        let client = BrokerClient::with_base_credentials(settings(sign_service), Some(creds()))
            .await
            .expect("client");
        client
            .broker_request(
                "https://abc.lambda-url.eu-west-1.on.aws/token",
                &serde_json::json!({"caller_proof": {}}),
                http::HeaderMap::new(),
                &creds(),
            )
            .expect("request")
    }

    #[tokio::test]
    async fn the_broker_call_is_signed_for_the_named_service_and_verifies() {
        let req = request(Some("lambda")).await;
        let mut headers = req.headers().clone();
        // As on the wire: the HTTP client adds `host` from the URL when it sends.
        headers.insert(
            "host",
            http::HeaderValue::from_str(req.url().host_str().expect("host")).expect("host"),
        );
        let body = req
            .body()
            .and_then(|b| b.as_bytes())
            .expect("body")
            .to_vec();
        let received = iam::ReceivedRequest {
            method: "POST",
            path: req.url().path(),
            query: req.url().query().unwrap_or(""),
            headers: &headers,
            body: &body,
        };
        let params = iam::sigv4_params(&received).expect("a SigV4 Authorization header");
        assert_eq!(params.service, "lambda");
        assert_eq!(params.region, "eu-west-1");
        assert_eq!(params.access_key_id, "ASIATESTKEY");
        assert!(params.signed_headers.iter().any(|h| h == "host"));
        iam::verify_sigv4(
            &received,
            &params,
            &SecretString::from("test-secret-key".to_owned()),
        )
        .expect("the signature verifies with the assumed role's secret");
        assert_eq!(
            headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok()),
            Some("test-session")
        );
    }

    #[test]
    fn a_function_urls_region_is_the_one_signed_for() {
        assert_eq!(
            signing_region("https://abc123.lambda-url.eu-central-1.on.aws/token"),
            Some("eu-central-1")
        );
        assert_eq!(
            signing_region("https://abc123.lambda-url.us-east-1.on.aws"),
            Some("us-east-1")
        );
        assert_eq!(signing_region("https://broker.example.com/token"), None);
        assert_eq!(signing_region("http://127.0.0.1:9000/lambda-url/_"), None);
    }

    #[tokio::test]
    async fn an_unsigned_broker_call_carries_no_authorization() {
        let req = request(None).await;
        assert!(req.headers().get("authorization").is_none());
        assert_eq!(
            req.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
}
