//! Front doors: Lambda (`lambda_runtime`) and axum (Lambda Invoke API shape).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::Value;
use telemetry::{Telemetry, propagation};

use crate::core::{Deps, handle};

/// axum router: `POST /2015-03-31/functions/{name}/invocations`, body = event JSON.
pub fn router(deps: Deps) -> Router {
    Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .with_state(Arc::new(deps))
}

async fn invoke(
    State(deps): State<Arc<Deps>>,
    Path(_name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let parent = propagation::extract_headers(&headers);
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => Value::Null, // the core denies a non-event with invalid_request
    };
    let out = parent.scope(handle(&event, &parent, &deps)).await;
    axum::Json(out).into_response()
}

/// Run as a Lambda function: one event per invocation, spans flushed before the response is
/// returned (bounded, so a stuck exporter never holds the invocation).
pub async fn run_lambda(deps: Deps, telemetry: Telemetry) -> Result<(), lambda_runtime::Error> {
    lambda_front::env::lambda_environment()?;
    let deps = Arc::new(deps);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |ev: lambda_runtime::LambdaEvent<Value>| {
            let deps = deps.clone();
            let telemetry = telemetry.clone();
            async move {
                let parent = propagation::extract_lambda(
                    &HeaderMap::new(),
                    Some(ev.context.xray_trace_id.as_deref().unwrap_or_default())
                        .filter(|s| !s.is_empty()),
                );
                let out = telemetry
                    .flushed(
                        parent.scope(handle(&ev.payload, &parent, &deps)),
                        telemetry::LAMBDA_FLUSH_BOUND,
                    )
                    .await;
                Ok::<Value, lambda_runtime::Error>(out)
            }
        },
    ))
    .await
}
