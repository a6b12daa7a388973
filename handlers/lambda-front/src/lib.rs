//! The Lambda front door shared by the HTTP hops (agent, broker, target): the hop's axum router
//! served through `lambda_http`, each invocation's spans flushed (bounded) before it returns.

/// Serve `app` as a Lambda function behind a function URL, API Gateway or an ALB.
pub async fn run_router(
    app: axum::Router,
    telemetry: telemetry::Telemetry,
) -> Result<(), lambda_http::Error> {
    use tower::ServiceExt;
    env::lambda_environment()?;
    lambda_http::run(lambda_http::service_fn(move |req: lambda_http::Request| {
        let app = app.clone();
        let telemetry = telemetry.clone();
        async move {
            use lambda_http::RequestExt;
            // The function segment Lambda opened for this invocation, for the hop span (X-Ray
            // hangs the hop under it). A header of that name from the caller is never trusted.
            let trace = req
                .lambda_context_ref()
                .and_then(|c| c.xray_trace_id.clone())
                .and_then(|t| lambda_http::http::HeaderValue::from_str(&t).ok());
            let mut req = req;
            let headers = req.headers_mut();
            headers.remove(telemetry::propagation::LAMBDA_RUNTIME_TRACE_ID);
            if let Some(t) = trace {
                headers.insert(telemetry::propagation::LAMBDA_RUNTIME_TRACE_ID, t);
            }
            telemetry
                .flushed(
                    app.oneshot(req.map(axum::body::Body::new)),
                    telemetry::LAMBDA_FLUSH_BOUND,
                )
                .await
        }
    }))
    .await
}

/// Start the hop's telemetry as its bootstrap does: the fingerprint key first (from Secrets
/// Manager when `TOKENTRAIL_FINGERPRINT_KEY_ARN` names it, so every hop of a deployment
/// fingerprints a token alike without the key sitting in any function's configuration), then
/// the exporters from the standard variables.
pub async fn start_telemetry(
    service: telemetry::Service,
) -> Result<telemetry::Telemetry, lambda_http::Error> {
    if let Some(arn) = env::opt(FINGERPRINT_KEY_ARN_ENV) {
        if env::opt(telemetry::fingerprint::KEY_ENV).is_some() {
            return Err(format!(
                "set either {} or {FINGERPRINT_KEY_ARN_ENV}, not both",
                telemetry::fingerprint::KEY_ENV
            )
            .into());
        }
        let key = secrets::secret_string(&arn)
            .await
            .map_err(|e| format!("the fingerprint key ({FINGERPRINT_KEY_ARN_ENV}): {e}"))?;
        telemetry::fingerprint::install_key(&key);
    }
    Ok(telemetry::init(telemetry::TelemetryConfig::from_env(
        service,
    ))?)
}

/// The Secrets Manager secret holding the fingerprint key shared by a deployment's hops.
pub const FINGERPRINT_KEY_ARN_ENV: &str = "TOKENTRAIL_FINGERPRINT_KEY_ARN";

/// Secrets a hop reads once at start.
pub mod secrets {
    use secrecy::SecretString;

    /// Why a secret could not be read.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read the secret {id} from Secrets Manager: {reason}")]
    pub struct SecretError {
        /// The secret's id.
        pub id: String,
        /// Why (never the value).
        pub reason: String,
    }

    /// The string of secret `id` (name or ARN), read with the standard AWS configuration
    /// (`AWS_ENDPOINT_URL_SECRETS_MANAGER` for emulators). An empty secret is an error: it was
    /// created and never given its value.
    pub async fn secret_string(id: &str) -> Result<SecretString, SecretError> {
        let fail = |reason: String| SecretError {
            id: id.to_owned(),
            reason,
        };
        let config = telemetry::aws_http::config_loader().load().await;
        let out = aws_sdk_secretsmanager::Client::new(&config)
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| {
                fail(
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e.into_service_error())
                        .to_string(),
                )
            })?;
        out.secret_string
            .filter(|s| !s.trim().is_empty())
            .map(SecretString::from)
            .ok_or_else(|| {
                fail(
                    "the secret holds no string (give it its value with `aws secretsmanager \
                     put-secret-value`)"
                        .into(),
                )
            })
    }
}

/// How a bootstrap ends: an error (at start, or from the runtime) is printed to stderr as
/// `program: reason: cause…` (what Lambda shows in the function's log), and the process exits
/// with 1. Returning the error from `main` instead would print its debug form.
pub fn exit(program: &str, result: Result<(), lambda_http::Error>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {}", describe(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line (a cause its error already quotes is left out),
/// scrubbed of anything secret-shaped.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut reason = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        cause = c.source();
    }
    telemetry::redact::scrub(&reason).into_owned()
}

#[cfg(test)]
mod exit_tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Outer(String, #[source] std::io::Error);

    #[test]
    fn an_error_is_described_with_its_causes_once_and_scrubbed() {
        let inner = std::io::Error::other("connection refused");
        let e = Outer("cannot reach the IdP".into(), inner);
        assert_eq!(describe(&e), "cannot reach the IdP: connection refused");
        let inner = std::io::Error::other("connection refused");
        let e = Outer("cannot reach the IdP: connection refused".into(), inner);
        assert_eq!(describe(&e), "cannot reach the IdP: connection refused");
        let e = std::io::Error::other("header was Bearer abc.def");
        assert_eq!(describe(&e), "header was Bearer [REDACTED]");
    }
}

/// Configuration from the environment, Lambda style, shared by the hops.
pub mod env {
    /// Errors in configuration.
    #[derive(Debug, thiserror::Error)]
    pub enum ConfigError {
        /// A variable is missing.
        #[error("missing environment variable {0}")]
        Missing(&'static str),
        /// A variable Lambda sets is missing or malformed: not running in Lambda.
        #[error(
            "{0} is missing or malformed: this runs as an AWS Lambda function, where Lambda sets \
             it; locally, run it under `cargo lambda watch`"
        )]
        NotInLambda(&'static str),
        /// A variable is invalid.
        #[error("invalid {name}: {reason}")]
        Invalid {
            /// Variable.
            name: &'static str,
            /// Why.
            reason: String,
        },
    }

    /// A variable's value, `None` when unset or blank.
    pub fn opt(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// A required variable.
    pub fn required(name: &'static str) -> Result<String, ConfigError> {
        opt(name).ok_or(ConfigError::Missing(name))
    }

    /// A whole number, `default` when unset.
    pub fn number(name: &'static str, default: u64) -> Result<u64, ConfigError> {
        match opt(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name,
                reason: format!("`{v}` is not a whole number"),
            }),
        }
    }

    /// The variables the Lambda runtime client reads at start, and panics without: checked
    /// first, so a function started outside Lambda says what is missing instead.
    pub fn lambda_environment() -> Result<(), ConfigError> {
        let var = |name| std::env::var(name).map_err(|_| ConfigError::NotInLambda(name));
        var("AWS_LAMBDA_FUNCTION_NAME")?;
        var("AWS_LAMBDA_FUNCTION_VERSION")?;
        const MEMORY: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";
        var(MEMORY)?
            .parse::<i32>()
            .map_err(|_| ConfigError::NotInLambda(MEMORY))?;
        const API: &str = "AWS_LAMBDA_RUNTIME_API";
        lambda_http::http::Uri::try_from(var(API)?).map_err(|_| ConfigError::NotInLambda(API))?;
        Ok(())
    }

    /// A whole number above zero, `default` when unset; `zero` says what 0 would do (a timeout
    /// of 0 is often meant as "none", and would instead fail every call).
    pub fn positive(name: &'static str, default: u64, zero: &str) -> Result<u64, ConfigError> {
        above_zero(name, number(name, default)?, zero)
    }

    fn above_zero(name: &'static str, n: u64, zero: &str) -> Result<u64, ConfigError> {
        match n {
            0 => Err(ConfigError::Invalid {
                name,
                reason: format!("0 would {zero}; use a value above zero"),
            }),
            n => Ok(n),
        }
    }

    /// The pattern this deployment serves, from `TOKENTRAIL_PATTERN` (passthrough when unset).
    pub fn pattern() -> Result<telemetry::Pattern, ConfigError> {
        telemetry::Pattern::from_env().map_err(|e| ConfigError::Invalid {
            name: telemetry::attrs::PATTERN_ENV,
            reason: e.to_string(),
        })
    }

    /// A comma-separated list (empty when unset).
    pub fn list(name: &str) -> Vec<String> {
        opt(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The region from `AWS_REGION` / `AWS_DEFAULT_REGION` (default `us-east-1`).
    pub fn region() -> String {
        opt("AWS_REGION")
            .or_else(|| opt("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// The STS endpoint from `TOKENTRAIL_STS_ENDPOINT`, else the regional one.
    pub fn sts_endpoint() -> String {
        opt("TOKENTRAIL_STS_ENDPOINT")
            .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", region()))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn zero_is_refused_with_what_it_would_do() {
            assert_eq!(super::above_zero("T_MS", 1, "x").expect("above zero"), 1);
            let e = super::above_zero("T_MS", 0, "time out every call")
                .expect_err("zero")
                .to_string();
            assert_eq!(
                e,
                "invalid T_MS: 0 would time out every call; use a value above zero"
            );
        }
    }
}
