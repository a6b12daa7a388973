//! Lambda entry of the agent (`lambda_http` over the container-contract router), or the
//! AgentCore Runtime container (`TOKENTRAIL_AGENT_LISTEN`, e.g. `0.0.0.0:8080`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda_front::exit("tokentrail-agent", run().await)
}

async fn run() -> Result<(), lambda_http::Error> {
    let telemetry = lambda_front::start_telemetry(telemetry::Service::Agent).await?;
    let deps = agent::Deps::new(agent::AgentConfig::from_env_and_secrets().await?)?;
    agent::front::run(deps, telemetry).await
}
