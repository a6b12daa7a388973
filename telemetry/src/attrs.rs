//! The span contract: every attribute name tokentrail writes, and the closed sets of values.
//!
//! Handlers never spell an attribute name themselves; they use these constants and enums.

use std::fmt;
use std::str::FromStr;

/// The prefix of every attribute of tokentrail's own (the rest are OpenTelemetry semantic
/// conventions).
pub const NAMESPACE: &str = "tokentrail.";
/// `tokentrail.pattern`: which propagation pattern served the request.
pub const PATTERN: &str = "tokentrail.pattern";
/// `tokentrail.hop.name`: the hop, from [`Hop`].
pub const HOP_NAME: &str = "tokentrail.hop.name";
/// `tokentrail.hop.index`: position of the hop in the trust chain.
pub const HOP_INDEX: &str = "tokentrail.hop.index";
/// `tokentrail.hop.carrier`: where the credential travelled (`header:x-custom-usertoken`).
pub const HOP_CARRIER: &str = "tokentrail.hop.carrier";
/// `tokentrail.hop.outcome`: `ok`, `rejected` or `error`.
pub const HOP_OUTCOME: &str = "tokentrail.hop.outcome";
/// `tokentrail.failure.reason`: a [`FailureReason`].
pub const FAILURE_REASON: &str = "tokentrail.failure.reason";
/// `tokentrail.credential.kind`: a [`CredentialKind`].
pub const CREDENTIAL_KIND: &str = "tokentrail.credential.kind";
/// `tokentrail.credential.fingerprint`: keyed hash of the whole token.
pub const CREDENTIAL_FINGERPRINT: &str = "tokentrail.credential.fingerprint";
/// `tokentrail.credential.verified`: `verified`, `unverified_decoded` or `opaque`.
pub const CREDENTIAL_VERIFICATION: &str = "tokentrail.credential.verification";
/// Verified claim: issuer.
pub const CREDENTIAL_ISSUER: &str = "tokentrail.credential.issuer";
/// Verified claim: subject (pseudonymised when configured).
pub const CREDENTIAL_SUBJECT: &str = "tokentrail.credential.subject";
/// Verified claim: audience.
pub const CREDENTIAL_AUDIENCE: &str = "tokentrail.credential.audience";
/// Verified claim: client id.
pub const CREDENTIAL_CLIENT_ID: &str = "tokentrail.credential.client_id";
/// Verified claim: scopes.
pub const CREDENTIAL_SCOPES: &str = "tokentrail.credential.scopes";
/// Seconds until the credential expires, at the time the hop saw it.
pub const CREDENTIAL_EXPIRES_IN_S: &str = "tokentrail.credential.expires_in_s";
/// Key id from the token header.
pub const CREDENTIAL_KID: &str = "tokentrail.credential.kid";
/// Algorithm from the token header.
pub const CREDENTIAL_ALG: &str = "tokentrail.credential.alg";
/// The identity that reached the target (target hop only).
pub const ENDUSER_ID: &str = "enduser.id";
/// Broker: the caller's ARN as STS reported it (`arn:aws:sts::…:assumed-role/ROLE/SESSION`).
pub const BROKER_CALLER_ARN: &str = "tokentrail.broker.caller_arn";
/// Broker: the caller's role ARN (session name dropped), what the policy is matched against.
pub const BROKER_CALLER_ROLE: &str = "tokentrail.broker.caller_role";
/// Broker: the service credential asked for (a policy name, never a value).
pub const BROKER_CREDENTIAL: &str = "tokentrail.broker.credential";
/// Broker: the Secrets Manager secret's name (never its value).
pub const BROKER_SECRET_NAME: &str = "tokentrail.broker.secret_name";
/// Broker: whether the service token came from the cache (`hit`) or a fresh exchange (`miss`).
pub const BROKER_CACHE: &str = "tokentrail.broker.cache";
/// Fingerprint of the service token the broker issued (same key as credential fingerprints).
pub const BROKER_ISSUED_FINGERPRINT: &str = "tokentrail.broker.issued_fingerprint";

/// X-Ray trace id (`1-…-…`) of the Lambda function segment this hop ran under (Lambda only).
pub const XRAY_LAMBDA_TRACE_ID: &str = "tokentrail.xray.lambda_trace_id";
/// Id of the Lambda function segment (`Parent` of `lambda-runtime-trace-id`): in X-Ray the hop
/// hangs under it as a subsegment when the trace ids agree.
pub const XRAY_LAMBDA_PARENT_ID: &str = "tokentrail.xray.lambda_parent_id";

/// Standard semantic-convention names used by the hops.
pub mod semconv {
    /// HTTP request method.
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    /// HTTP response status code.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Matched route.
    pub const HTTP_ROUTE: &str = "http.route";
    /// Full URL of a client request.
    pub const URL_FULL: &str = "url.full";
    /// Path of a server request.
    pub const URL_PATH: &str = "url.path";
    /// Server address of a client call.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// RPC system (`jsonrpc`).
    pub const RPC_SYSTEM: &str = "rpc.system";
    /// RPC method (`tools/call`).
    pub const RPC_METHOD: &str = "rpc.method";
    /// JSON-RPC error code.
    pub const RPC_JSONRPC_ERROR_CODE: &str = "rpc.jsonrpc.error_code";
    /// AWS API calls: `aws-api`.
    pub const RPC_SERVICE: &str = "rpc.service";
    /// AWS request id of an SDK call.
    pub const AWS_REQUEST_ID: &str = "aws.request_id";
    /// MCP tool name.
    pub const MCP_TOOL_NAME: &str = "gen_ai.tool.name";
    /// Lambda trigger.
    pub const FAAS_TRIGGER: &str = "faas.trigger";
    /// Lambda invocation id.
    pub const FAAS_INVOCATION_ID: &str = "faas.invocation_id";
    /// Lambda cold start.
    pub const FAAS_COLDSTART: &str = "faas.coldstart";
    /// Error type.
    pub const ERROR_TYPE: &str = "error.type";
}

macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value of the set.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire / attribute spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue { set: stringify!($name), value: other.to_owned() }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A value outside a closed set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {set} value `{value}`")]
pub struct UnknownValue {
    set: &'static str,
    value: String,
}

closed_set!(
    /// Which authentication-propagation pattern served the request.
    Pattern {
        /// The user's JWT travels to the target.
        Passthrough => "passthrough",
        /// A brokered service token reaches the target.
        Broker => "broker",
    }
);

/// The variable that names the pattern a deployment serves (`passthrough` or `broker`).
pub const PATTERN_ENV: &str = "TOKENTRAIL_PATTERN";

impl Pattern {
    /// The pattern this process serves, from `TOKENTRAIL_PATTERN` (default `passthrough`).
    pub fn from_env() -> Result<Self, UnknownValue> {
        match std::env::var(PATTERN_ENV) {
            Ok(v) if !v.trim().is_empty() => v.trim().parse(),
            _ => Ok(Pattern::Passthrough),
        }
    }

    /// The pattern this process serves: [`Pattern::from_env`] read once (passthrough when the
    /// variable is invalid; front doors refuse to start with an invalid value).
    pub fn of_process() -> Self {
        static PATTERN: std::sync::OnceLock<Pattern> = std::sync::OnceLock::new();
        *PATTERN.get_or_init(|| Pattern::from_env().unwrap_or(Pattern::Passthrough))
    }
}

closed_set!(
    /// What kind of credential a hop saw.
    CredentialKind {
        /// The end user's OIDC JWT.
        UserJwt => "user_jwt",
        /// The agent's own M2M token for the gateway.
        AgentJwt => "agent_jwt",
        /// A brokered service-account token.
        ServiceToken => "service_token",
        /// An IAM session (SigV4).
        IamSession => "iam_session",
        /// No credential was presented.
        None => "none",
    }
);

closed_set!(
    /// How a hop ended.
    Outcome {
        /// The hop let the request through.
        Ok => "ok",
        /// The hop refused the request on purpose (fail closed).
        Rejected => "rejected",
        /// The hop could not do its work.
        Error => "error",
    }
);

closed_set!(
    /// Why a request was stopped. One closed set, shared by auth, handlers and telemetry.
    FailureReason {
        /// No credential where one was required.
        MissingToken => "missing_token",
        /// Not a well-formed JWT (or unparseable request).
        Malformed => "malformed",
        /// Signature does not verify against the issuer's key.
        BadSignature => "bad_signature",
        /// `exp` is in the past (beyond leeway).
        Expired => "expired",
        /// `nbf` is in the future (beyond leeway).
        NotYetValid => "not_yet_valid",
        /// `iss` is not the configured issuer.
        WrongIssuer => "wrong_issuer",
        /// `aud` does not contain the configured audience.
        WrongAudience => "wrong_audience",
        /// `client_id` is not an allowed client.
        WrongClient => "wrong_client",
        /// A required claim is absent.
        MissingClaim => "missing_claim",
        /// `kid` unknown to the issuer's JWKS (after one refetch).
        UnknownKid => "unknown_kid",
        /// The header names an algorithm this issuer is not pinned to.
        DisallowedAlg => "disallowed_alg",
        /// The credential lacks a required scope.
        InsufficientScope => "insufficient_scope",
        /// Authenticated, but not allowed to this resource.
        Forbidden => "forbidden",
        /// A header broke the runtime's allowlist rules.
        HeaderRejected => "header_rejected",
        /// A dependency (IdP, broker, interceptor, target) could not be reached.
        UpstreamUnavailable => "upstream_unavailable",
        /// A dependency did not answer in time.
        UpstreamTimeout => "upstream_timeout",
        /// The broker's policy does not allow this caller.
        CallerNotAllowed => "caller_not_allowed",
        /// The broker could not read the service credential.
        SecretUnavailable => "secret_unavailable",
        /// The request itself is invalid (not an auth problem).
        InvalidRequest => "invalid_request",
        /// The resource does not exist.
        NotFound => "not_found",
        /// A bug or an unexpected state.
        Internal => "internal",
    }
);

impl FailureReason {
    /// The HTTP status a hop answers with for this reason.
    pub const fn http_status(self) -> u16 {
        use FailureReason::*;
        match self {
            MissingToken | Malformed | BadSignature | Expired | NotYetValid | WrongIssuer
            | WrongAudience | WrongClient | MissingClaim | UnknownKid | DisallowedAlg => 401,
            InsufficientScope | Forbidden | CallerNotAllowed => 403,
            HeaderRejected | InvalidRequest => 400,
            NotFound => 404,
            UpstreamUnavailable | SecretUnavailable => 503,
            UpstreamTimeout => 504,
            Internal => 500,
        }
    }

    /// A one-line explanation for callers and humans.
    pub const fn describe(self) -> &'static str {
        use FailureReason::*;
        match self {
            MissingToken => "no credential was presented",
            Malformed => "the credential is not a well-formed JWT",
            BadSignature => "the credential's signature does not verify",
            Expired => "the credential has expired",
            NotYetValid => "the credential is not valid yet (nbf)",
            WrongIssuer => "the credential was issued by an untrusted issuer",
            WrongAudience => "the credential is not meant for this audience",
            WrongClient => "the credential's client is not allowed",
            MissingClaim => "the credential lacks a required claim",
            UnknownKid => "the credential's signing key is unknown to the issuer",
            DisallowedAlg => "the credential uses an algorithm this issuer is not pinned to",
            InsufficientScope => "the credential lacks a required scope",
            Forbidden => "the identity may not access this resource",
            HeaderRejected => "a request header violates the allowlist rules",
            UpstreamUnavailable => "a dependency could not be reached",
            UpstreamTimeout => "a dependency did not answer in time",
            CallerNotAllowed => "the caller is not allowed by the broker policy",
            SecretUnavailable => "the service credential could not be read",
            InvalidRequest => "the request is invalid",
            NotFound => "the resource does not exist",
            Internal => "an internal error occurred",
        }
    }

    /// Whether the request was refused on purpose (rejected) rather than failed (error).
    pub const fn outcome(self) -> Outcome {
        use FailureReason::*;
        match self {
            UpstreamUnavailable | UpstreamTimeout | SecretUnavailable | Internal => Outcome::Error,
            _ => Outcome::Rejected,
        }
    }
}

closed_set!(
    /// The hops of the trust chain. The index is the hop's position in the chain.
    Hop {
        /// The app: gets the user's token and calls the Runtime (root of every trace).
        App => "app.request",
        /// The AgentCore Runtime front door (header allowlist).
        Runtime => "runtime.inbound",
        /// The Runtime agent.
        Agent => "agent.invocation",
        /// The Gateway's inbound JWT authorizer and MCP endpoint.
        Gateway => "gateway.inbound",
        /// The Gateway's REQUEST interceptor Lambda.
        Interceptor => "gateway.interceptor",
        /// The token broker in the central account (broker pattern only).
        Broker => "broker.token",
        /// The target API.
        Target => "target.api",
        /// The IdP's token endpoint (issuance, off the chain).
        Idp => "idp.token",
    }
);

impl Hop {
    /// Position in the trust chain (the IdP, off the chain, is 0 like the app). Indices are
    /// positions in the broker chain, the longer one: a passthrough trace has no hop 5.
    pub const fn index(self) -> i64 {
        match self {
            Hop::App | Hop::Idp => 0,
            Hop::Runtime => 1,
            Hop::Agent => 2,
            Hop::Gateway => 3,
            Hop::Interceptor => 4,
            Hop::Broker => 5,
            Hop::Target => 6,
        }
    }

    /// The `service.name` of the process that records this hop.
    pub const fn service(self) -> Service {
        match self {
            Hop::App => Service::App,
            Hop::Runtime => Service::Runtime,
            Hop::Agent => Service::Agent,
            Hop::Gateway => Service::Gateway,
            Hop::Interceptor => Service::Interceptor,
            Hop::Broker => Service::Broker,
            Hop::Target => Service::Target,
            Hop::Idp => Service::Idp,
        }
    }
}

/// The hop metrics: names, units and attribute keys (OTLP) and their CloudWatch EMF spelling.
pub mod metric {
    /// Histogram of a hop's duration, milliseconds.
    pub const HOP_DURATION: &str = "tokentrail.hop.duration";
    /// Counter of hop outcomes (one per hop span ended).
    pub const HOP_OUTCOMES: &str = "tokentrail.hop.outcomes";
    /// Counter of cold starts (the first hop span of a Lambda execution environment); also the
    /// EMF `ColdStart` metric.
    pub const HOP_COLD_STARTS: &str = "tokentrail.hop.cold_starts";
    /// Every metric a hop emits.
    pub const ALL: &[&str] = &[HOP_DURATION, HOP_OUTCOMES, HOP_COLD_STARTS];
    /// Unit of [`HOP_DURATION`] (UCUM), and its EMF spelling.
    pub const DURATION_UNIT: &str = "ms";
    /// Metric attribute: the pattern.
    pub const PATTERN: &str = "pattern";
    /// Metric attribute: the hop (span name, e.g. `interceptor.request`).
    pub const HOP: &str = "hop";
    /// Metric attribute: `ok`, `rejected`, `error` or `unset`.
    pub const OUTCOME: &str = "outcome";
    /// Metric attribute: the failure reason (`none` when the hop let the request through).
    pub const REASON: &str = "reason";
    /// CloudWatch namespace of the EMF metrics.
    pub const EMF_NAMESPACE: &str = "TokenTrail";
    /// EMF dimension names, in the order of [`PATTERN`], [`HOP`], [`OUTCOME`].
    pub const EMF_DIMENSIONS: [&str; 3] = ["Pattern", "Hop", "Outcome"];
    /// EMF property holding the failure reason (searchable in Logs Insights, not a dimension).
    pub const EMF_REASON: &str = "Reason";
    /// EMF name of the cold-start metric.
    pub const EMF_COLD_START: &str = "ColdStart";
}

closed_set!(
    /// `service.name` of each tokentrail process.
    Service {
        /// The calling application (`tokentrail call`/`demo`).
        App => "app",
        /// Runtime front door.
        Runtime => "runtime",
        /// Runtime agent.
        Agent => "agent",
        /// Gateway.
        Gateway => "gateway",
        /// REQUEST interceptor.
        Interceptor => "interceptor",
        /// Token broker.
        Broker => "broker",
        /// Target API.
        Target => "target",
        /// OIDC IdP.
        Idp => "idp",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sets_round_trip() {
        for r in FailureReason::ALL {
            assert_eq!(r.as_str().parse::<FailureReason>(), Ok(*r));
        }
        for h in Hop::ALL {
            assert_eq!(h.as_str().parse::<Hop>(), Ok(*h));
        }
        assert!("nonsense".parse::<FailureReason>().is_err());
    }

    #[test]
    fn auth_failures_are_401_and_rejections() {
        assert_eq!(FailureReason::Expired.http_status(), 401);
        assert_eq!(FailureReason::InsufficientScope.http_status(), 403);
        assert_eq!(FailureReason::Expired.outcome(), Outcome::Rejected);
        assert_eq!(FailureReason::UpstreamTimeout.outcome(), Outcome::Error);
    }
}
