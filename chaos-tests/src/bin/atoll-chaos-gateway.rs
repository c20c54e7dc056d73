//! `atoll-chaos-gateway gateway --config FILE`: the gateway the chaos suite breaks on purpose,
//! to show its checkers catch what they claim to. The one place that reads the switches
//! ([`broken::DISABLE_FENCING_ENV`], [`broken::IGNORE_MATRIX_ENV`],
//! [`broken::LEASE_UNFENCED_ENV`], each on with `1`): the
//! product `atoll` binary holds no code that reads them. Otherwise it runs as `atoll gateway`
//! does (its log lines, SIGTERM and Ctrl-C, exiting with its parent under the mesh).

use std::path::PathBuf;

use anyhow::Context;
use atoll_chaos_tests::broken;
use atoll_gateway::breakage::Breakage;

fn main() -> std::process::ExitCode {
    // What a daemon writes is its own, as for `atoll gateway`.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.as_slice() {
        [gateway, flag, path] if gateway == "gateway" && flag == "--config" => PathBuf::from(path),
        _ => anyhow::bail!("usage: atoll-chaos-gateway gateway --config FILE"),
    };
    let switched_on = |env: &str| std::env::var(env).is_ok_and(|v| v == "1");
    let breakage = Breakage::new(switched_on(broken::DISABLE_FENCING_ENV), switched_on(broken::IGNORE_MATRIX_ENV))
        .with_lease_unfenced(switched_on(broken::LEASE_UNFENCED_ENV));
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let config = atoll_gateway::GatewayConfig::load(&config)?;
    let exit_with_parent = std::env::var(atoll_mesh::EXIT_WITH_PARENT_ENV).is_ok_and(|v| v == "1");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("signal received"),
            _ = interrupt.recv() => tracing::info!("signal received"),
            () = atoll_mesh::parent_gone(), if exit_with_parent => tracing::warn!("the parent process exited; stopping"),
        }
    };
    atoll_gateway::run_broken(config, breakage, shutdown).await
}
