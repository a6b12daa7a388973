//! Agent configuration from the environment. Header names come from here, never from code.

use std::time::Duration;

use secrecy::SecretString;

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is missing.
    #[error("missing environment variable {0}")]
    Missing(&'static str),
    /// The client secret could not be read from Secrets Manager.
    #[error("the agent's client secret: {0}")]
    Secret(String),
    /// Both ways of giving the client secret are set.
    #[error(
        "set either TOKENTRAIL_AGENT_CLIENT_SECRET or TOKENTRAIL_AGENT_CLIENT_SECRET_ARN, not both"
    )]
    TwoSecrets,
}

/// Agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Header the Runtime forwards the user token in.
    pub inbound_user_header: String,
    /// Header the agent sends the user token to the gateway in.
    pub gateway_user_header: String,
    /// Gateway MCP URL (`.../mcp`).
    pub gateway_url: String,
    /// IdP token endpoint.
    pub token_endpoint: String,
    /// The agent's M2M client id.
    pub client_id: String,
    /// The agent's M2M client secret.
    pub client_secret: SecretString,
    /// Scope to request.
    pub scope: String,
    /// Bound on each outgoing call.
    pub timeout: Duration,
}

fn var(name: &'static str) -> Result<String, ConfigError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(ConfigError::Missing(name))
}

impl AgentConfig {
    /// From `TOKENTRAIL_*` variables; the client secret is `TOKENTRAIL_AGENT_CLIENT_SECRET`, or
    /// read once from Secrets Manager when `TOKENTRAIL_AGENT_CLIENT_SECRET_ARN` names it (the
    /// secret string itself; standard AWS configuration, `AWS_ENDPOINT_URL_SECRETS_MANAGER` for
    /// emulators), so that no template or function configuration holds it.
    pub async fn from_env_and_secrets() -> Result<Self, ConfigError> {
        let arn = std::env::var("TOKENTRAIL_AGENT_CLIENT_SECRET_ARN")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let Some(arn) = arn else {
            return Self::from_env();
        };
        if std::env::var("TOKENTRAIL_AGENT_CLIENT_SECRET").is_ok_and(|v| !v.is_empty()) {
            return Err(ConfigError::TwoSecrets);
        }
        let secret = lambda_front::secrets::secret_string(&arn)
            .await
            .map_err(|e| ConfigError::Secret(e.to_string()))?;
        Self::with_secret(secret)
    }

    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::with_secret(SecretString::from(var("TOKENTRAIL_AGENT_CLIENT_SECRET")?))
    }

    fn with_secret(client_secret: SecretString) -> Result<Self, ConfigError> {
        Ok(Self {
            inbound_user_header: std::env::var("TOKENTRAIL_RUNTIME_USER_HEADER")
                .unwrap_or_else(|_| "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken".into()),
            gateway_user_header: std::env::var("TOKENTRAIL_USER_TOKEN_HEADER")
                .unwrap_or_else(|_| "X-Custom-UserToken".into()),
            gateway_url: var("TOKENTRAIL_GATEWAY_URL")?,
            token_endpoint: var("TOKENTRAIL_TOKEN_ENDPOINT")?,
            client_id: var("TOKENTRAIL_AGENT_CLIENT_ID")?,
            client_secret,
            scope: std::env::var("TOKENTRAIL_AGENT_SCOPE")
                .unwrap_or_else(|_| "gateway:invoke".into()),
            timeout: Duration::from_secs(10),
        })
    }
}
