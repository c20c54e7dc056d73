//! Commands that talk to replicas: status, annotate, annotations, raft membership.

use atoll_api::node::MemberInfo;
use atoll_api::node::NodeStatus;

use crate::args::NodeArgs;
use crate::args::RaftCommand;
use crate::cli_config::CliConfig;

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn members_line(members: &[MemberInfo]) -> String {
    members
        .iter()
        .map(|m| format!("{}@{}{}", m.id, m.addr, if m.voter { "" } else { " (learner)" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_status(s: &NodeStatus) {
    let leader = match &s.leader {
        Some(l) => format!("node {} at {}", l.id, l.addr),
        None => "unknown".to_string(),
    };
    println!("cluster {} node {} ({}): {}, term {}", s.cluster, s.node_id, s.addr, s.role, s.term);
    println!("  leader:       {leader}");
    println!("  last applied: {}", s.last_applied.map_or("-".to_string(), |i| i.to_string()));
    println!("  members:      {}", members_line(&s.members));
}

pub async fn status(config: &CliConfig, args: NodeArgs) -> anyhow::Result<()> {
    let client = config.node_client()?;
    let status = client.status(&config.node_addr(args.node.as_deref())?).await?;
    if args.json {
        print_json(&status)
    } else {
        print_status(&status);
        Ok(())
    }
}

pub async fn annotate(config: &CliConfig, args: NodeArgs, pairs: Vec<String>) -> anyhow::Result<()> {
    let client = config.node_client()?;
    let addr = config.node_addr(args.node.as_deref())?;
    // Check every pair before writing any.
    let mut writes = Vec::new();
    for pair in &pairs {
        if let Some((key, value)) = pair.split_once('=') {
            atoll_api::node::check_annotation_key(key).map_err(anyhow::Error::msg)?;
            writes.push((key.to_string(), Some(value.to_string())));
        } else if let Some(key) = pair.strip_suffix('-') {
            atoll_api::node::check_annotation_key(key).map_err(anyhow::Error::msg)?;
            writes.push((key.to_string(), None));
        } else {
            anyhow::bail!("{pair:?}: expected KEY=VALUE to set or KEY- to remove");
        }
    }
    let mut results = Vec::new();
    for (key, value) in writes {
        match value {
            Some(value) => {
                let ack = client.annotate(&addr, &key, &value).await?;
                if !args.json {
                    println!(
                        "{key}={value} (version {}, revision {}, leader node {})",
                        ack.version, ack.revision, ack.leader.id
                    );
                }
                results.push(serde_json::to_value(ack)?);
            }
            None => {
                let removed = client.delete_annotation(&addr, &key).await?;
                if !args.json {
                    println!("{key} removed{}", if removed { "" } else { " (was not set)" });
                }
                results.push(serde_json::json!({"key": key, "existed": removed}));
            }
        }
    }
    if args.json { print_json(&results) } else { Ok(()) }
}

pub async fn annotations(config: &CliConfig, args: NodeArgs) -> anyhow::Result<()> {
    let client = config.node_client()?;
    let annotations = client.annotations(&config.node_addr(args.node.as_deref())?).await?;
    if args.json {
        return print_json(&annotations);
    }
    for (key, value) in annotations {
        println!("{key}={value}");
    }
    Ok(())
}

pub async fn raft(config: &CliConfig, command: RaftCommand) -> anyhow::Result<()> {
    let client = config.node_client()?;
    match command {
        RaftCommand::Members(args) => {
            let members = client.members(&config.node_addr(args.node.as_deref())?).await?;
            if args.json {
                return print_json(&members);
            }
            for m in members {
                println!("{}\t{}\t{}", m.id, m.addr, if m.voter { "voter" } else { "learner" });
            }
            Ok(())
        }
        RaftCommand::Add { node, id, addr, learner } => {
            let target = config.node_addr(node.node.as_deref())?;
            let mut ack = client.add_learner(&target, id, &addr).await?;
            if !node.json {
                println!("node {id} added as a learner and caught up (revision {})", ack.revision);
            }
            if !learner {
                ack = client.promote(&target, id).await?;
                if !node.json {
                    println!("node {id} promoted to voter (revision {})", ack.revision);
                }
            }
            if node.json { print_json(&ack) } else { Ok(()) }
        }
        RaftCommand::Promote { node, id } => {
            let ack = client.promote(&config.node_addr(node.node.as_deref())?, id).await?;
            if node.json {
                print_json(&ack)
            } else {
                println!("node {id} promoted to voter (revision {})", ack.revision);
                Ok(())
            }
        }
        RaftCommand::Remove { node, id } => {
            let ack = client.remove(&config.node_addr(node.node.as_deref())?, id).await?;
            if node.json {
                print_json(&ack)
            } else {
                println!("node {id} removed (revision {})", ack.revision);
                Ok(())
            }
        }
        RaftCommand::TransferLeader { node, to } => {
            let status = client.transfer_leader(&config.node_addr(node.node.as_deref())?, to).await?;
            if node.json {
                print_json(&status)
            } else {
                print_status(&status);
                Ok(())
            }
        }
    }
}
