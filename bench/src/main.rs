//! `atoll-bench`: parse arguments, run one benchmark, map the outcome to an exit code.

use atoll_bench::args::Args;
use atoll_bench::args::BenchCommand;
use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    atoll::logging::init(args.log_level.as_deref(), false);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match args.command {
            BenchCommand::Failover(args) => atoll_bench::failover::run(args).await,
            BenchCommand::GatewayFailover(args) => atoll_bench::gateway_failover::run(args).await,
            BenchCommand::Convergence(args) => atoll_bench::convergence::run(args).await,
            BenchCommand::Scale(args) => atoll_bench::scale::run(args).await,
            BenchCommand::Dispatch(args) => atoll_bench::jobs::dispatch(args).await,
            BenchCommand::Reroute(args) => atoll_bench::jobs::reroute(args).await,
            BenchCommand::Transfer(args) => atoll_bench::transfer::run(args).await,
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
