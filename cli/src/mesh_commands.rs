//! Commands that talk to the gateway: tokens, clusters, the matrix.

use anyhow::Context;
use std::collections::BTreeMap;

use atoll_api::gateway::ClusterInfo;
use atoll_api::gateway::JoinTokenRequest;
use atoll_api::gateway::LinkState;
use atoll_api::gateway::Matrix;
use atoll_api::gateway::Scope;
use atoll_api::gateway::TransferMode;
use atoll_api::gateway::UserTokenRequest;

use crate::args::ClusterCommand;
use crate::args::SecretCommand;
use crate::args::TokenCommand;
use crate::cli_config::CliConfig;
use crate::cli_config::parse_duration;

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn token(config: &CliConfig, command: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { cluster, replicas, labels, user, scopes, ttl, json } = command;
    let ttl_s = ttl.as_deref().map(parse_duration).transpose()?.map(|d| d.as_secs());
    let client = config.gateway_client()?;
    let created = match (cluster, user) {
        (Some(cluster), None) => client.join_token(&JoinTokenRequest { cluster, labels, ttl_s, replicas }).await?,
        (None, Some(name)) => {
            let scopes =
                scopes.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!scopes.is_empty(), "give --scopes (read, submit, admin)");
            client.user_token(&UserTokenRequest { name, scopes, ttl_s }).await?
        }
        _ => anyhow::bail!(
            "say what the token is for: --cluster NAME (a join token) or --user NAME --scopes ... (a user token)"
        ),
    };
    if json {
        return print_json(&created);
    }
    println!("{}", created.token);
    Ok(())
}

pub async fn clusters(config: &CliConfig, json: bool) -> anyhow::Result<()> {
    let clusters = config.gateway_client()?.clusters().await?;
    if json {
        return print_json(&clusters);
    }
    println!(
        "{:<12} {:<8} {:<8} {:<7} {:<5} {:<22} {:<10} {:<34} labels",
        "name", "state", "enabled", "leader", "term", "endpoint", "last seen", "runs"
    );
    for c in clusters {
        print_cluster(&c);
    }
    Ok(())
}

fn print_cluster(c: &ClusterInfo) {
    let state = if c.revoked { "revoked".to_string() } else { c.state.to_string() };
    println!(
        "{:<12} {:<8} {:<8} {:<7} {:<5} {:<22} {:<10} {:<34} {}",
        c.name,
        state,
        c.enabled,
        c.leader.map_or("-".to_string(), |l| l.to_string()),
        c.term,
        c.endpoint.as_deref().unwrap_or("-"),
        c.last_seen_ms.map_or("never".to_string(), |ms| format!("{:.1}s ago", ms as f64 / 1000.0)),
        runs(c.capabilities.as_ref()),
        c.labels.join(",")
    );
}

/// The `runs` column: the job types beyond command jobs its executor runs; `command` for one
/// that runs command jobs only, `-` for a leader that never said (`--json` has the whole of it:
/// secrets, registries, what is missing).
fn runs(capabilities: Option<&atoll_api::spec::Capabilities>) -> String {
    let Some(c) = capabilities else { return "-".to_string() };
    let words: Vec<&str> =
        c.runs.iter().filter(|k| **k != atoll_api::spec::JobKind::Command).map(|k| k.as_str()).collect();
    if words.is_empty() { "command".to_string() } else { words.join(",") }
}

/// `atoll secret set|list|delete`.
pub async fn secret(config: &CliConfig, command: SecretCommand) -> anyhow::Result<()> {
    let gateway = config.gateway_client()?;
    match command {
        SecretCommand::Set { name, from_file } => {
            atoll_api::spec::secret_name(&name).map_err(|why| anyhow::anyhow!("{name:?}: {why}"))?;
            let value = match &from_file {
                Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
                None => {
                    use std::io::Read;
                    let mut value = String::new();
                    std::io::stdin().read_to_string(&mut value).context("reading the value from standard input")?;
                    // `echo VALUE | atoll secret set NAME`: the newline is not the value's.
                    if value.ends_with('\n') {
                        value.pop();
                        if value.ends_with('\r') {
                            value.pop();
                        }
                    }
                    value
                }
            };
            gateway.set_secret(&name, &value).await?;
            println!("secret {name}: set");
        }
        SecretCommand::List(json) => {
            let secrets = gateway.secrets().await?;
            if json.json {
                return print_json(&secrets);
            }
            println!("{:<32} {:<26} set by", "name", "set at (UTC)");
            for s in secrets {
                let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(s.updated_ms) * 1_000_000)
                    .map(|t| format!("{} {:02}:{:02}:{:02}", t.date(), t.hour(), t.minute(), t.second()))
                    .unwrap_or_else(|_| s.updated_ms.to_string());
                println!("{:<32} {:<26} {}", s.name, at, s.updated_by);
            }
        }
        SecretCommand::Delete { name } => {
            gateway.delete_secret(&name).await?;
            println!("secret {name}: deleted");
        }
    }
    Ok(())
}

pub async fn cluster(config: &CliConfig, command: ClusterCommand) -> anyhow::Result<()> {
    let (name, action) = match &command {
        ClusterCommand::Enable { name } => (name, "enable"),
        ClusterCommand::Disable { name } => (name, "disable"),
        ClusterCommand::Revoke { name } => (name, "revoke"),
    };
    config.gateway_client()?.cluster_action(name, action).await?;
    println!("cluster {name}: {action}d");
    Ok(())
}

/// The matrix as a table: rows probe columns.
pub fn render(matrix: &Matrix) -> String {
    let cells: BTreeMap<(&str, &str), &atoll_api::gateway::MatrixCell> =
        matrix.cells.iter().map(|c| ((c.from.as_str(), c.to.as_str()), c)).collect();
    let text = |from: &str, to: &str| -> String {
        if from == to {
            return "-".to_string();
        }
        match cells.get(&(from, to)) {
            None => "?".to_string(),
            Some(c) => {
                let mut s = c.state.to_string();
                if c.state == LinkState::Reachable
                    && let Some(rtt) = c.rtt_ms
                {
                    s.push_str(&format!(" {rtt:.1}ms"));
                }
                if c.mode == TransferMode::Relay {
                    s.push_str(" [relay]");
                }
                s
            }
        }
    };
    let width = matrix
        .clusters
        .iter()
        .flat_map(|f| matrix.clusters.iter().map(move |t| (f, t)))
        .map(|(f, t)| text(f, t).len())
        .max()
        .unwrap_or(1)
        .max(10)
        + 2;
    let first = matrix.clusters.iter().map(|c| c.len()).max().unwrap_or(4).max("from \\ to".len()) + 2;
    let mut out = format!("{:<first$}", "from \\ to");
    for to in &matrix.clusters {
        out.push_str(&format!("{to:<width$}"));
    }
    out.push('\n');
    for from in &matrix.clusters {
        out.push_str(&format!("{from:<first$}"));
        for to in &matrix.clusters {
            out.push_str(&format!("{:<width$}", text(from, to)));
        }
        out.push('\n');
    }
    out.push_str("rows probe columns; [relay]: neither direction works, outputs go through the gateway\n");
    out
}

pub async fn matrix(config: &CliConfig, json: bool) -> anyhow::Result<()> {
    let matrix = config.gateway_client()?.matrix().await?;
    if json {
        return print_json(&matrix);
    }
    print!("{}", render(&matrix));
    Ok(())
}

#[cfg(test)]
mod tests {
    use atoll_api::gateway::MatrixCell;

    use super::*;

    #[test]
    fn the_runs_column_names_what_beyond_command_jobs_a_cluster_runs() {
        use atoll_api::spec::Capabilities;
        use atoll_api::spec::JobKind;
        let engine = Capabilities {
            executor: "process".into(),
            runs: vec![JobKind::Command, JobKind::DockerImage, JobKind::Docker, JobKind::DockerCompose],
            secrets: true,
            registries: true,
            missing: Vec::new(),
        };
        assert_eq!(runs(Some(&engine)), "docker-image,docker,docker-compose");
        let plain = Capabilities { runs: vec![JobKind::Command], registries: false, ..engine };
        assert_eq!(runs(Some(&plain)), "command");
        assert_eq!(runs(None), "-");
    }

    #[test]
    fn the_matrix_table_keeps_its_columns_aligned() {
        let aws: atoll_api::ClusterName = "aws".parse().unwrap();
        let onprem: atoll_api::ClusterName = "onprem".parse().unwrap();
        let cell = |from: &atoll_api::ClusterName, to: &atoll_api::ClusterName, state, mode| MatrixCell {
            from: from.clone(),
            to: to.clone(),
            state,
            rtt_ms: Some(0.5),
            loss: Some(0.0),
            age_ms: Some(1),
            mode,
        };
        let matrix = Matrix {
            clusters: vec![aws.clone(), onprem.clone()],
            cells: vec![
                cell(&aws, &onprem, LinkState::Reachable, TransferMode::Direct),
                cell(&onprem, &aws, LinkState::Unreachable, TransferMode::Relay),
            ],
        };
        let table = render(&matrix);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], r"from \ to  aws                  onprem               ");
        assert_eq!(lines[1], "aws        -                    reachable 0.5ms      ");
        assert_eq!(lines[2], "onprem     unreachable [relay]  -                    ");
    }
}
