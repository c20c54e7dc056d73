//! Commands about pipelines and jobs: `validate`.

use std::path::Path;

use anyhow::Context;
use atoll_api::ids::Label;
use atoll_api::spec;
use atoll_api::spec::ClusterFacts;
use atoll_api::spec::SpecProblem;

use crate::cli_config::CliConfig;

/// What `atoll validate --json` prints.
#[derive(Debug, serde::Serialize)]
struct Validation {
    file: String,
    ok: bool,
    /// Whether the selectors were checked against the gateway's clusters.
    clusters_checked: bool,
    jobs: usize,
    problems: Vec<SpecProblem>,
}

/// `atoll validate FILE`: every problem of a spec, with its path. The document checks run
/// locally; the selector checks need the gateway's clusters, so they run when a gateway is
/// configured and `--offline` is not given. Fails (exit 1) when there is any problem.
pub async fn validate(config: &CliConfig, file: &Path, offline: bool, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (jobs, problems, checked) = match spec::parse(&text) {
        Err(errors) => (0, errors.0, false),
        Ok(pipeline) if offline || config.gateway.is_empty() => (pipeline.jobs.len(), Vec::new(), false),
        Ok(pipeline) => {
            let clusters = config
                .gateway_client()?
                .clusters()
                .await
                .context("fetching the clusters to check selectors against (--offline skips this)")?;
            let names: Vec<_> = clusters.iter().map(|c| c.name.parse()).collect::<Result<_, _>>()?;
            let labels: Vec<Vec<Label>> =
                clusters.iter().map(|c| c.labels.iter().filter_map(|l| l.parse().ok()).collect()).collect();
            let facts: Vec<ClusterFacts<'_>> = clusters
                .iter()
                .enumerate()
                .map(|(i, c)| ClusterFacts { name: &names[i], labels: &labels[i], enabled: c.enabled && !c.revoked })
                .collect();
            let problems = spec::check_clusters(&pipeline, &facts).err().map(|e| e.0).unwrap_or_default();
            (pipeline.jobs.len(), problems, true)
        }
    };
    let report = Validation {
        file: file.display().to_string(),
        ok: problems.is_empty(),
        clusters_checked: checked,
        jobs,
        problems,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        let scope = if checked {
            "; selectors checked against the gateway's clusters"
        } else {
            "; selectors not checked (no gateway)"
        };
        println!("{}: {} job(s), no problems{scope}", report.file, report.jobs);
    } else {
        println!("{}: {} problem(s)", report.file, report.problems.len());
        for p in &report.problems {
            println!("  {p}");
        }
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
