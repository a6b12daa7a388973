//! Lambda entry of the agent (`lambda_http` over the container-contract router).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda_front::exit("tokentrail-agent", run().await)
}

async fn run() -> Result<(), lambda_http::Error> {
    let telemetry = telemetry::init(telemetry::TelemetryConfig::from_env(
        telemetry::Service::Agent,
    ))?;
    let deps = agent::Deps::new(agent::AgentConfig::from_env()?)?;
    agent::front::run_lambda(deps, telemetry).await
}
