//! What AWS and the IdP do in the cloud, run on this machine:
//!
//! - [`idp`]: an OIDC IdP (discovery, JWKS, token endpoint, key rotation);
//! - [`runtime`]: the AgentCore Runtime front door (header allowlist rules);
//! - [`gateway`]: the AgentCore Gateway (inbound JWT authorizer, MCP JSON-RPC, REQUEST
//!   interceptor, header propagation, target call);
//! - [`sts`]: AWS STS (`AssumeRole`, `GetCallerIdentity`, SigV4 verified) for the broker;
//! - [`collector`]: the embedded OTLP/HTTP collector writing `traces.jsonl`.

pub mod collector;
pub mod gateway;
pub mod idp;
pub mod runtime;
pub mod sts;

/// Serve `router` on `addr` (use port 0 for a free port). Returns the bound address.
pub async fn serve(
    router: axum::Router,
    addr: std::net::SocketAddr,
) -> std::io::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((bound, handle))
}
