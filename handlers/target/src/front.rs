//! The axum router (served directly locally, through `lambda_http` on Lambda).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use telemetry::propagation;

use crate::core::{Deps, Operation, Reply, handle};

/// The OpenAPI document of this API (the gateway derives its tool names from it).
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Router: `GET /orders`, `GET /orders/{orderId}`, `GET /openapi.json`.
pub fn router(deps: Deps) -> Router {
    Router::new()
        .route("/orders", get(list))
        .route("/orders/{order_id}", get(get_one))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .with_state(Arc::new(deps))
}

fn to_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(reply.body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"target-api\", error=\"invalid_token\""),
        );
    }
    resp
}

async fn run(op: Operation, headers: HeaderMap, deps: &Deps) -> Response {
    let parent = propagation::extract_headers(&headers);
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    to_response(parent.scope(handle(op, authz, &parent, deps)).await)
}

async fn list(State(deps): State<Arc<Deps>>, headers: HeaderMap) -> Response {
    run(Operation::ListOrders, headers, &deps).await
}

async fn get_one(
    State(deps): State<Arc<Deps>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    run(Operation::GetOrder(order_id), headers, &deps).await
}

/// Run under `lambda_http`: each invocation's spans are flushed (bounded) before it returns.
pub async fn run_lambda(
    deps: Deps,
    telemetry: telemetry::Telemetry,
) -> Result<(), lambda_http::Error> {
    lambda_front::run_router(router(deps), telemetry).await
}
