//! The `atoll` binary's commands, as a library so tests and benchmarks run the same code.
//!
//! - [`args`]: the command line.
//! - [`agent`]: `atoll agent`.
//! - [`dev`]: `atoll dev`, a whole local mesh (launched by the `atoll-mesh` crate, which the
//!   multi-process tests, the benchmarks and the chaos suite use too).
//! - [`ca`]: `atoll ca init|issue`.
//! - [`operator`]: `status`, `annotate`, `annotations`, `raft ...`.
//! - [`mesh_commands`]: `token create`, `clusters`, `cluster ...`, `matrix` (through the gateway).
//! - [`gateways`]: `atoll gateways`, the gateway replicas and the lease.
//! - [`cli_config`]: the CLI config file.
//! - [`job_commands`]: `validate`, `submit`, `jobs`, `job`, `logs`, `cancel`.
//! - [`verify`]: `atoll verify`, checks of a live deployment.
//! - [`push`]: `atoll push DIR`, sources uploaded once to the gateway.
//! - [`completion`]: `atoll completion bash|zsh|fish`, shell completion scripts.
//! - [`pod`]: `atoll pod inputs|output`, the helpers in a Kubernetes Job's pod.
//! - [`malloc`]: the daemons' malloc setting (they start themselves again with it).

pub mod agent;
pub mod args;
pub mod ca;
pub mod cli_config;
pub mod completion;
pub mod dev;
pub mod gateways;
pub mod job_commands;
pub mod logging;
pub mod malloc;
pub mod mesh_commands;
pub mod operator;
pub mod pod;
pub mod push;
pub mod verify;

use args::Args;
use args::Command;
use cli_config::CliConfig;

/// An error and its causes on one line, as `{:#}` prints them, but without a cause that its
/// error's own message already ends with (many errors say `path: cause` and also keep the cause
/// as their source, which printed the cause twice: `ca: Read-only file system (os error 30):
/// Read-only file system (os error 30)`).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// Run the parsed command.
pub async fn dispatch(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Agent(daemon) if daemon.new_admin_token.is_some() => {
            anyhow::bail!("--new-admin-token is for atoll gateway: admin tokens live in the gateway's database")
        }
        Command::Gateway(daemon) if daemon.new_admin_token.is_some() => {
            agent::new_admin_token(args.config.as_deref(), daemon.new_admin_token.as_deref().unwrap_or_default()).await
        }
        Command::Agent(daemon) if daemon.check_config => agent::check_agent(args.config.as_deref()),
        Command::Gateway(daemon) if daemon.check_config => agent::check_gateway(args.config.as_deref()),
        Command::Agent(_) => agent::run(args.config.as_deref()).await,
        Command::Gateway(_) => agent::run_gateway(args.config.as_deref()).await,
        Command::Token { command } => mesh_commands::token(&CliConfig::find(args.config.as_deref())?, command).await,
        Command::Verify { json, disruptive, cluster, nodes } => {
            let path =
                args.config.clone().or_else(|| Some(std::path::PathBuf::from("atoll.yaml")).filter(|p| p.exists()));
            let config = CliConfig::find(path.as_deref())?;
            verify::run(&config, path.as_deref(), verify::Options { json, disruptive, cluster, nodes }).await
        }
        Command::Clusters(json) => mesh_commands::clusters(&CliConfig::find(args.config.as_deref())?, json.json).await,
        Command::Secret { command } => mesh_commands::secret(&CliConfig::find(args.config.as_deref())?, command).await,
        Command::Cluster { command } => {
            mesh_commands::cluster(&CliConfig::find(args.config.as_deref())?, command).await
        }
        Command::Matrix(json) => mesh_commands::matrix(&CliConfig::find(args.config.as_deref())?, json.json).await,
        Command::Gateways(json) => gateways::gateways(&CliConfig::find(args.config.as_deref())?, json.json).await,
        Command::Submit { file, wait, json, push } => {
            job_commands::submit(&CliConfig::find(args.config.as_deref())?, &file, wait, json, push).await
        }
        Command::Push { dir, json } => push::push(&CliConfig::find(args.config.as_deref())?, &dir, json).await,
        Command::Jobs { pipeline, limit, json } => {
            job_commands::jobs(&CliConfig::find(args.config.as_deref())?, pipeline.as_deref(), limit, json).await
        }
        Command::Job { id, json } => job_commands::job(&CliConfig::find(args.config.as_deref())?, &id, json).await,
        Command::Logs { id, follow } => {
            job_commands::logs(&CliConfig::find(args.config.as_deref())?, &id, follow).await
        }
        Command::Cancel { id, json } => {
            job_commands::cancel(&CliConfig::find(args.config.as_deref())?, &id, json).await
        }
        Command::Validate { file, offline, json } => {
            job_commands::validate(&CliConfig::find(args.config.as_deref())?, &file, offline, json).await
        }
        Command::Dev(dev_args) => dev::run(dev_args).await,
        Command::Completion { shell } => completion::print(shell),
        Command::Pod { command: args::PodCommand::Inputs } => pod::inputs().await,
        Command::Pod { command: args::PodCommand::Output } => pod::output().await,
        Command::Pod { command: args::PodCommand::Started } => pod::started(),
        Command::Ca { command } => ca::run(command),
        Command::Status(node) => operator::status(&CliConfig::find(args.config.as_deref())?, node).await,
        Command::Annotate { node, pairs } => {
            operator::annotate(&CliConfig::find(args.config.as_deref())?, node, pairs).await
        }
        Command::Annotations(node) => operator::annotations(&CliConfig::find(args.config.as_deref())?, node).await,
        Command::Raft { command } => operator::raft(&CliConfig::find(args.config.as_deref())?, command).await,
    }
}

#[cfg(test)]
mod error_text_tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ReadOnlyFilesystem, "Read-only file system (os error 30)");
        #[derive(Debug)]
        struct WithPath {
            path: String,
            source: std::io::Error,
        }
        impl std::fmt::Display for WithPath {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}: {}", self.path, self.source)
            }
        }
        impl std::error::Error for WithPath {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let error = anyhow::Error::new(WithPath { path: "/etc/atoll/ca".into(), source: io });
        assert_eq!(super::error_text(&error), "/etc/atoll/ca: Read-only file system (os error 30)");
        let error = error.context("initializing the CA");
        assert_eq!(
            super::error_text(&error),
            "initializing the CA: /etc/atoll/ca: Read-only file system (os error 30)"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::error_text(&plain), "outer: inner", "causes not in the message are kept");
    }
}
