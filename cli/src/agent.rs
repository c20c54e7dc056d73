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

/// `atoll agent --check-config`: the effective config on stdout, a summary on stderr.
pub fn check_agent(config_path: Option<&Path>) -> anyhow::Result<()> {
    let path = config_path.context("atoll agent --check-config needs --config FILE")?;
    let (config, effective) = AgentConfig::load_effective(path)?;
    print!("{effective}");
    eprintln!(
        "{}: valid: node {} of cluster {}, {} initial voters, {} gateway replicas listed",
        path.display(),
        config.node_id,
        config.cluster,
        config.peers.len(),
        config.gateway.as_ref().map_or(0, |g| g.addrs.len()),
    );
    Ok(())
}

/// `atoll gateway --check-config`: the effective config on stdout, a summary on stderr.
pub fn check_gateway(config_path: Option<&Path>) -> anyhow::Result<()> {
    let path = config_path.context("atoll gateway --check-config needs --config FILE")?;
    let (config, effective) = atoll_gateway::GatewayConfig::load_effective(path)?;
    print!("{effective}");
    eprintln!(
        "{}: valid: gateway {} on {}, {}",
        path.display(),
        config.id,
        match config.database {
            atoll_gateway::config::Database::Sqlite { .. } => "SQLite",
            atoll_gateway::config::Database::Postgres { .. } => "PostgreSQL",
        },
        if config.ha.enabled { "one of several replicas (ha)" } else { "the only gateway" },
    );
    Ok(())
}

/// `atoll gateway --new-admin-token NAME`: an admin token made in the database, printed.
pub async fn new_admin_token(config_path: Option<&Path>, name: &str) -> anyhow::Result<()> {
    let path = config_path.context("atoll gateway --new-admin-token needs --config FILE")?;
    anyhow::ensure!(
        atoll_api::token::valid_user_name(name),
        "--new-admin-token: {name:?} must be 1 to 63 of letters, digits, '.', '_', '-', '@'"
    );
    let config = atoll_gateway::GatewayConfig::load(path)?;
    let db = atoll_gateway::db::Db::connect(&config.database).await?;
    let (token, secret) = atoll_api::token::new_user_token();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    db.insert_user_token(&atoll_api::token::hash_secret(&secret), name, &[atoll_api::gateway::Scope::Admin], now, None)
        .await?;
    db.close().await;
    eprintln!("an admin token named {name} was added to the gateway's database; it does not expire");
    println!("{token}");
    Ok(())
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
