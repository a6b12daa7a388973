//! Lambda entry of the REQUEST interceptor (`cargo lambda build -p tokentrail-interceptor`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda_front::exit("tokentrail-interceptor", run().await)
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let telemetry = lambda_front::start_telemetry(telemetry::Service::Interceptor).await?;
    let config = interceptor::InterceptorConfig::from_env()?;
    let deps = Box::pin(interceptor::Deps::from_config(config)).await?;
    interceptor::front::run_lambda(deps, telemetry).await
}
