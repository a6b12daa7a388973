//! AgentCore Runtime container contract: `POST /invocations`, `GET /ping`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use telemetry::propagation;

use crate::core::{Deps, handle};

/// The router.
pub fn router(deps: Deps) -> Router {
    Router::new()
        .route("/invocations", post(invocations))
        .route(
            "/ping",
            get(|| async {
                axum::Json(serde_json::json!({"status": "Healthy", "time_of_last_update": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()}))
            }),
        )
        .with_state(Arc::new(deps))
}

async fn invocations(
    State(deps): State<Arc<Deps>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parent = propagation::extract_headers(&headers);
    let user = headers
        .get(deps.config.inbound_user_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| SecretString::from(v.to_owned()));
    let reply = parent.scope(handle(&body, user, &parent, &deps)).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(reply.body)).into_response()
}

/// Serve the container contract on `TOKENTRAIL_AGENT_LISTEN` (an AgentCore Runtime container
/// listens on `0.0.0.0:8080`) when it is set, else run under `lambda_http`.
pub async fn run(deps: Deps, telemetry: telemetry::Telemetry) -> Result<(), lambda_http::Error> {
    let Some(listen) = std::env::var("TOKENTRAIL_AGENT_LISTEN")
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        return run_lambda(deps, telemetry).await;
    };
    let addr: std::net::SocketAddr = listen.trim().parse().map_err(|e| {
        format!("TOKENTRAIL_AGENT_LISTEN=`{listen}` is not an address such as 0.0.0.0:8080: {e}")
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let served = axum::serve(listener, router(deps)).await;
    telemetry.shutdown();
    served.map_err(|e| format!("the agent's server stopped: {e}").into())
}

/// Run under `lambda_http`: each invocation's spans are flushed (bounded) before it returns.
pub async fn run_lambda(
    deps: Deps,
    telemetry: telemetry::Telemetry,
) -> Result<(), lambda_http::Error> {
    lambda_front::run_router(router(deps), telemetry).await
}
