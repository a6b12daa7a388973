//! The Lambda front door shared by the HTTP hops (agent, broker, target): the hop's axum router
//! served through `lambda_http`, each invocation's spans flushed (bounded) before it returns.

/// Serve `app` as a Lambda function behind a function URL, API Gateway or an ALB.
pub async fn run_router(
    app: axum::Router,
    telemetry: telemetry::Telemetry,
) -> Result<(), lambda_http::Error> {
    use tower::ServiceExt;
    lambda_http::run(lambda_http::service_fn(move |req: lambda_http::Request| {
        let app = app.clone();
        let telemetry = telemetry.clone();
        async move {
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
