//! The command line of `atoll-bench`.

use clap::Parser;
use clap::Subcommand;

/// atoll's benchmarks, each printing its figures next to the peer baseline's from the same run
/// (release build recommended; `scripts/bench` builds it and runs them).
#[derive(Debug, Parser)]
#[command(name = "atoll-bench", version)]
pub struct Args {
    /// Log filter, e.g. `info` (default: RUST_LOG, else `warn`).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write-unavailability after killing (or pausing) the leader, side by side with etcd.
    Failover(crate::failover::FailoverArgs),
    /// SIGKILL gateway replicas (the one the leaders use, the lease holder) under a stream of
    /// submissions: clusters heard again, scheduling again, jobs lost or doubled.
    GatewayFailover(crate::gateway_failover::GatewayFailoverArgs),
    /// Time for a cut (and a heal) between clusters to show in the gateway's matrix.
    Convergence(crate::convergence::ConvergenceArgs),
    /// One gateway under a thousand simulated clusters, on SQLite and PostgreSQL.
    Scale(crate::scale::ScaleArgs),
    /// Jobs per second through a real mesh, submit to recorded result, on SQLite and PostgreSQL.
    Dispatch(crate::jobs::DispatchArgs),
    /// Time from killing every replica of a cluster to its jobs running elsewhere.
    Reroute(crate::jobs::RerouteArgs),
    /// A large output moved by each route (local, pull, push, relay): throughput and memory.
    Transfer(crate::transfer::TransferArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }
}
