//! Command-line arguments.

use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;

#[derive(Debug, Parser)]
#[command(
    name = "atoll",
    version,
    about = "Run jobs across many clusters, through crashed leaders, dead clusters and cut networks"
)]
pub struct Args {
    /// Config file: for `agent` and `gateway` the daemon's config; for other commands the CLI
    /// config (gateway and replica addresses, bearer token, operator certificate; `atoll dev`
    /// writes one to DIR/atoll.yaml).
    #[arg(long, global = true, env = "ATOLL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `info,atoll_node=debug` (default: RUST_LOG, else `info` for
    /// daemons and `warn` for commands).
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one agent replica (`atoll agent --config agent.yaml`).
    Agent(DaemonArgs),
    /// Run the gateway (`atoll gateway --config gateway.yaml`).
    Gateway(DaemonArgs),
    /// Run a whole local mesh: clusters of replicas as child processes, until Ctrl-C.
    Dev(DevArgs),
    /// Manage the mesh certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// One replica's view: role, term, leader, membership.
    Status(NodeArgs),
    /// Set (KEY=VALUE) or remove (KEY-) cluster annotations, through any replica.
    Annotate {
        #[command(flatten)]
        node: NodeArgs,
        /// KEY=VALUE to set, KEY- to remove.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Annotations as one replica has applied them.
    Annotations(NodeArgs),
    /// Raft membership of a cluster.
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
    /// Make join tokens (for replicas) and user tokens (bearer tokens with scopes).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Clusters as the gateway sees them: state, leader, term, endpoint.
    Clusters(JsonArg),
    /// Gateway replicas: which one holds the duties lease, its generation, when each was last
    /// seen.
    Gateways(JsonArg),
    /// Secrets jobs name in their environment (`{"$secret": NAME}`); admin scope.
    ///
    /// Values are sealed at rest at the gateway and go only into the environment of the jobs
    /// that name them; no answer, log or job detail shows one.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Change a cluster's standing at the gateway.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The directed reachability matrix between clusters.
    Matrix(JsonArg),
    /// Check a live deployment without changing it; exits non-zero when a check fails.
    ///
    /// Checks the gateway and its CA, every cluster's leader (as the gateway and its replicas
    /// see it), every replica's certificate, every directed pair of the matrix and its
    /// freshness.
    Verify {
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Also kill one cluster's leader (SIGKILL; its pid from --nodes, or from the
        /// nodes.json `atoll dev` writes beside the config) and report how long the cluster was
        /// without one; without a pid, ask the leader to hand over instead and say so.
        #[arg(long)]
        disruptive: bool,
        /// The cluster `--disruptive` acts on (the first alive one with several replicas when
        /// absent).
        #[arg(long)]
        cluster: Option<String>,
        /// A nodes.json listing the replicas' pids.
        #[arg(long)]
        nodes: Option<PathBuf>,
    },
    /// Submit a pipeline (JSON or YAML spec); prints its jobs with their clusters.
    ///
    /// The document is checked here first (as by `atoll validate --offline`), so every problem
    /// is listed before anything is sent; the gateway checks selectors against its clusters.
    Submit {
        /// The spec file.
        file: PathBuf,
        /// Wait until every job is final; exit 1 unless all finished (or were skipped).
        #[arg(long)]
        wait: bool,
        /// Print one JSON document (with --wait: the final state).
        #[arg(long)]
        json: bool,
        /// Push the spec file's directory first (as `atoll push` does) and make it the
        /// pipeline's source, as InfraBox clones the repository its infrabox.json is in;
        /// refused when the spec names a source.
        #[arg(long)]
        push: bool,
    },
    /// Upload a directory once to the gateway as a source for pipelines (`source: sha256:...`).
    ///
    /// The directory is archived honouring its .gitignore files (`.git` left out); the same
    /// files give the same digest, so pushing an unchanged tree uploads nothing. FIFOs, sockets
    /// and devices are refused by name.
    Push {
        /// The directory.
        dir: PathBuf,
        /// Print one JSON document: {digest, size, entries, uploaded}.
        #[arg(long)]
        json: bool,
    },
    /// The newest jobs, or one pipeline's.
    Jobs {
        /// Only this pipeline's jobs.
        #[arg(long)]
        pipeline: Option<String>,
        /// At most this many (newest first).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// One job with its attempts.
    Job {
        /// The job's id (the JOB column of `atoll jobs`).
        id: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// A job's log: stdout and stderr of every attempt.
    Logs {
        /// The job's id (the JOB column of `atoll jobs`).
        id: String,
        /// Keep printing as the job writes, until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a job: killed at once if it has not started, else by its cluster.
    Cancel {
        /// The job's id (the JOB column of `atoll jobs`).
        id: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// The helpers in a Kubernetes Job's pod (run by the helper image, not by hand).
    #[command(hide = true)]
    Pod {
        #[command(subcommand)]
        command: PodCommand,
    },
    /// Check a job spec (JSON or YAML) and list every problem with its path; exits 1 if any.
    ///
    /// Selectors and `prefer` are also checked against the gateway's clusters when a gateway is
    /// configured (`--config`, or ./atoll.yaml) and `--offline` is not given.
    Validate {
        /// The spec file.
        file: PathBuf,
        /// Only the document checks, without asking the gateway for its clusters.
        #[arg(long)]
        offline: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh or fish).
    ///
    /// For example `atoll completion bash > ~/.local/share/bash-completion/completions/atoll`,
    /// `atoll completion zsh > "${fpath[1]}/_atoll"`, or
    /// `atoll completion fish > ~/.config/fish/completions/atoll.fish`.
    Completion {
        /// The shell.
        shell: Shell,
    },
}

/// The shells `atoll completion` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, clap::Args)]
pub struct JsonArg {
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Fetch the attempt's inputs and source from the cluster's replicas, check and unpack them.
    Inputs,
    /// Once stopped, archive `$ATOLL_OUTPUT` and store it with the cluster's replicas.
    Output,
    /// Whether the output helper is ready to be stopped (its startup probe).
    Started,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token (--cluster) or a user token (--user with --scopes).
    ///
    /// A join token enrolls one replica of CLUSTER (or --replicas of them), each once; a user
    /// token is a bearer token for a person or tool.
    Create {
        /// Cluster the join token enrolls replicas of.
        #[arg(long, conflicts_with_all = ["user", "scopes"])]
        cluster: Option<String>,
        /// How many replicas the join token enrolls, each once (1 to 64): one token for every
        /// replica a StatefulSet starts.
        #[arg(long, requires = "cluster")]
        replicas: Option<u32>,
        /// Labels recorded for the cluster until it registers its own (comma-separated).
        #[arg(long, value_delimiter = ',', requires = "cluster")]
        labels: Vec<String>,
        /// User name of a bearer token.
        #[arg(long, requires = "scopes")]
        user: Option<String>,
        /// Scopes of the user token: read, submit, admin (comma-separated).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 1h, 30d (join tokens: the gateway's default when absent).
        #[arg(long)]
        ttl: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret's value, read from standard input (one trailing newline dropped) or a file.
    Set {
        /// The secret's name: letters, digits, '_', '-', '.'.
        name: String,
        /// Read the value from this file (as it is) instead of standard input.
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Every secret's name and when and by whom it was set (never a value).
    List(JsonArg),
    /// Remove a secret.
    Delete {
        /// The secret's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Let the cluster receive work again.
    Enable {
        /// The cluster's name.
        name: String,
    },
    /// Keep the cluster registered but give it no new work.
    Disable {
        /// The cluster's name.
        name: String,
    },
    /// Refuse the cluster for good: its peers refuse its replicas too.
    ///
    /// No enrollment, renewal or registration is accepted from it again.
    Revoke {
        /// The cluster's name.
        name: String,
    },
}

impl Command {
    /// Whether this command is a long-running daemon (logs at info by default).
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Agent(_) | Command::Gateway(_) | Command::Dev(_))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// Check the config (the file with `ATOLL__...` overrides from the environment), print the
    /// effective one (defaults filled in, secrets redacted) and exit: 0 when it is valid, else 1
    /// with the key named. Starts nothing and binds nothing; reads the secrets its `*_file` keys
    /// name, as a start does.
    #[arg(long)]
    pub check_config: bool,
    /// (gateway) Make a new admin token named NAME in the database the config names, print it,
    /// and exit: for a gateway whose first admin token is lost or was never written to a file
    /// (on Kubernetes: `kubectl exec deploy/atoll-gateway -- atoll gateway --config ... --new-admin-token ops`).
    #[arg(long, value_name = "NAME", conflicts_with = "check_config")]
    pub new_admin_token: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Replica address (host:port); default: the first replica in the CLI config.
    #[arg(long)]
    pub node: Option<String>,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory for certificates, configs, data and logs (reused when it holds the same layout).
    #[arg(long, default_value = ".atoll/dev")]
    pub dir: PathBuf,
    /// Number of clusters (aws, gcp, onprem, then c4, c5, ...).
    #[arg(long, default_value_t = 3)]
    pub clusters: usize,
    /// Replicas per cluster (odd).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// First port to use (each replica takes two); 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Delete DIR's previous contents first.
    #[arg(long)]
    pub fresh: bool,
    /// Do not restart a replica that exits (tests kill replicas on purpose).
    #[arg(long)]
    pub no_restart: bool,
    /// Clusters only: no gateway, no enrollment, no cuts (certificates issued from the local CA).
    #[arg(long)]
    pub standalone: bool,
    /// Run N gateway replicas (g1, g2, ...) over a PostgreSQL server of the mesh's own in
    /// DIR/postgres (installed when missing, as root), and write DIR/gateways.json. Without
    /// it: one gateway on SQLite.
    #[arg(long, value_name = "N", conflicts_with = "standalone", value_parser = clap::value_parser!(u16).range(1..))]
    pub gateways: Option<u16>,
    /// Run InfraBox's docker, docker-image and docker-compose jobs on every cluster through the
    /// container engine FILE describes: the agents' `jobs.containers` (engine, engine_args,
    /// build_args, run_args, registry_args, compose), as YAML. Without it, clusters run command jobs only.
    #[arg(long, value_name = "FILE")]
    pub containers: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new mesh CA in DIR (ca.pem, ca-key.pem).
    Init {
        /// Directory to write the CA to.
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "atoll mesh CA")]
        name: String,
        /// Validity, e.g. 10y, 365d, 24h.
        #[arg(long, default_value = "10y")]
        validity: String,
    },
    /// Issue a certificate signed by the CA in DIR.
    Issue {
        /// Directory holding the CA (ca.pem, ca-key.pem).
        #[arg(long)]
        dir: PathBuf,
        /// Cluster of the replica (with --node).
        #[arg(long, requires = "node")]
        cluster: Option<String>,
        /// Node id of the replica (with --cluster).
        #[arg(long, requires = "cluster")]
        node: Option<u64>,
        /// Issue an operator certificate with this name instead.
        #[arg(long, conflicts_with_all = ["cluster", "node", "gateway"])]
        operator: Option<String>,
        /// Issue a gateway certificate with this id instead.
        #[arg(long, conflicts_with_all = ["cluster", "node"])]
        gateway: Option<String>,
        /// Where to write NAME.pem and NAME-key.pem (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        /// File name stem (default: derived from the identity).
        #[arg(long)]
        name: Option<String>,
        /// A DNS name or IP address the certificate also names, for standard HTTPS clients
        /// (repeat for several; a server's: the host it is reached at).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        /// Validity, e.g. 24h, 30d.
        #[arg(long, default_value = "24h")]
        validity: String,
        /// Key algorithm: ecdsa-p256 or ed25519.
        #[arg(long, default_value = "ecdsa-p256")]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// List members.
    Members(NodeArgs),
    /// Add a replica as a learner, wait until it caught up, then promote it (unless --learner).
    Add {
        #[command(flatten)]
        node: NodeArgs,
        /// Node id of the new replica (never used before in this cluster).
        id: u64,
        /// Its advertised host:port.
        addr: String,
        /// Keep it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote {
        #[command(flatten)]
        node: NodeArgs,
        /// Node id of the learner.
        id: u64,
    },
    /// Remove a replica from the group.
    Remove {
        #[command(flatten)]
        node: NodeArgs,
        /// Node id of the replica.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        #[command(flatten)]
        node: NodeArgs,
        /// Target node id (default: the most up-to-date voter).
        #[arg(long)]
        to: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    /// Calls `check` with every command under `command` (hidden ones too) and its full name.
    fn each_command(command: &clap::Command, name: &str, check: &mut dyn FnMut(&str, &clap::Command)) {
        check(name, command);
        for sub in command.get_subcommands() {
            each_command(sub, &format!("{name} {}", sub.get_name()), check);
        }
    }

    #[test]
    fn every_command_and_argument_says_what_it_is() {
        let mut wrong = Vec::new();
        each_command(&Args::command(), "atoll", &mut |name, command| {
            let about = command.get_about().map(ToString::to_string).unwrap_or_default();
            if about.trim().is_empty() {
                wrong.push(format!("{name}: no about text"));
            }
            // the about is the command's line in its parent's list: one sentence (details go
            // into the long help, after a blank line of the doc comment)
            if about.contains(". ") {
                wrong.push(format!("{name}: the about text runs on past one sentence: {about:?}"));
            }
            for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    wrong.push(format!("{name} {}: no help text", arg.get_id()));
                }
            }
        });
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let about = |name: &str| {
            let command = Args::command();
            command.find_subcommand(name).and_then(|c| c.get_about()).map(ToString::to_string).unwrap_or_default()
        };
        assert!(about("submit").starts_with("Submit a pipeline"), "{}", about("submit"));
        assert!(about("validate").starts_with("Check a job spec"), "{}", about("validate"));
    }
}
