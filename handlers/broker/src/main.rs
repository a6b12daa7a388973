//! Lambda entry of the token broker.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda_front::exit("tokentrail-broker", run().await)
}

async fn run() -> Result<(), lambda_http::Error> {
    let telemetry = lambda_front::start_telemetry(telemetry::Service::Broker).await?;
    let (settings, secrets) = broker::config::from_env().await?;
    let broker = std::sync::Arc::new(broker::Broker::new(settings, secrets)?);
    broker::front::run_lambda(broker, telemetry).await
}
