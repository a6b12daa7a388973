//! Front doors: axum locally (`POST /token`), the same router through `lambda_http` on Lambda
//! (function URL or API Gateway).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use telemetry::propagation;

use crate::core::Broker;

/// Router: `POST /token`.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/token", post(token))
        .with_state(broker)
}

async fn token(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parent = propagation::extract_headers(&headers);
    let reply = parent.scope(broker.handle(&body, &parent)).await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(reply.body)).into_response();
    // Tokens must not be cached by anything in between.
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Run as a Lambda function.
pub async fn run_lambda(
    broker: Arc<Broker>,
    telemetry: telemetry::Telemetry,
) -> Result<(), lambda_http::Error> {
    lambda_front::run_router(router(broker), telemetry).await
}
