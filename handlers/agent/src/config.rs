//! Agent configuration from the environment. Header names come from here, never from code.

use std::time::Duration;

use secrecy::SecretString;

/// Errors in configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable is missing.
    #[error("missing environment variable {0}")]
    Missing(&'static str),
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
    /// From `TOKENTRAIL_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            inbound_user_header: std::env::var("TOKENTRAIL_RUNTIME_USER_HEADER")
                .unwrap_or_else(|_| "X-Amzn-Bedrock-AgentCore-Runtime-Custom-UserToken".into()),
            gateway_user_header: std::env::var("TOKENTRAIL_USER_TOKEN_HEADER")
                .unwrap_or_else(|_| "X-Custom-UserToken".into()),
            gateway_url: var("TOKENTRAIL_GATEWAY_URL")?,
            token_endpoint: var("TOKENTRAIL_TOKEN_ENDPOINT")?,
            client_id: var("TOKENTRAIL_AGENT_CLIENT_ID")?,
            client_secret: SecretString::from(var("TOKENTRAIL_AGENT_CLIENT_SECRET")?),
            scope: std::env::var("TOKENTRAIL_AGENT_SCOPE")
                .unwrap_or_else(|_| "gateway:invoke".into()),
            timeout: Duration::from_secs(10),
        })
    }
}
