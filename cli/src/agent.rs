//! `atoll agent --config FILE` and `atoll gateway --config FILE`: the daemons, until SIGTERM or Ctrl-C.

use std::path::Path;

use anyhow::Context;
use atoll_node::AgentConfig;

use atoll_mesh::EXIT_WITH_PARENT_ENV;

/// Listen for Ctrl-C (SIGINT) and SIGTERM from now on; the returned future resolves on either.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives while the process is still starting is not lost (nor fatal).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

pub async fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let signalled = shutdown_signal()?;
    let path = config_path.context("atoll agent needs --config FILE")?;
    // Check the whole config before binding anything.
    let config = AgentConfig::load(path)?;
    let exit_with_parent = std::env::var(EXIT_WITH_PARENT_ENV).is_ok_and(|v| v == "1");
    let shutdown = async move {
        tokio::select! {
            () = signalled => tracing::info!("signal received"),
            () = atoll_mesh::parent_gone(), if exit_with_parent => tracing::warn!("the parent process exited; stopping"),
        }
    };
    atoll_node::run(config, shutdown).await
}

/// `atoll gateway --config FILE`: the gateway, until SIGTERM or Ctrl-C.
pub async fn run_gateway(config_path: Option<&Path>) -> anyhow::Result<()> {
    let signalled = shutdown_signal()?;
    let path = config_path.context("atoll gateway needs --config FILE")?;
    let config = atoll_gateway::GatewayConfig::load(path)?;
    let exit_with_parent = std::env::var(EXIT_WITH_PARENT_ENV).is_ok_and(|v| v == "1");
    let shutdown = async move {
        tokio::select! {
            () = signalled => tracing::info!("signal received"),
            () = atoll_mesh::parent_gone(), if exit_with_parent => tracing::warn!("the parent process exited; stopping"),
        }
    };
    atoll_gateway::run(config, shutdown).await
}
