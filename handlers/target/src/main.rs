//! Lambda entry of the target API (`lambda_http` over the same axum router).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda_front::exit("tokentrail-target", run().await)
}

async fn run() -> Result<(), lambda_http::Error> {
    let telemetry = lambda_front::start_telemetry(telemetry::Service::Target).await?;
    let deps = target::TargetConfig::from_env()?.deps()?;
    target::front::run_lambda(deps, telemetry).await
}
