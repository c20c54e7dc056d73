//! Commands about pipelines and jobs: `validate`, `submit`, `jobs`, `job`, `logs`, `cancel`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use atoll_api::ids::Label;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::JobState;
use atoll_api::jobs::LogStream;
use atoll_api::jobs::SubmitRequest;
use atoll_api::spec;
use atoll_api::spec::ClusterFacts;
use atoll_api::spec::SpecProblem;
use atoll_api::spec::include;

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
    let (_, parsed, _) = load(file, !offline)?;
    let (jobs, problems, checked) = match parsed {
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
                .map(|(i, c)| ClusterFacts {
                    name: &names[i],
                    labels: &labels[i],
                    enabled: c.enabled && !c.revoked,
                    capabilities: c.capabilities.as_ref(),
                })
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

/// A spec file as written, checked and expanded (or every problem), and the included files read.
type Loaded = (serde_json::Value, Result<spec::PipelineSpec, spec::SpecErrors>, BTreeMap<String, String>);

/// How long one git command of a `git` include may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Read a spec file (JSON or YAML) and check it, its includes expanded: `workflow` files read
/// relative to the directory of the file that names them (never outside the spec's directory),
/// `git` repositories cloned (unless `clone` is false: `--offline` leaves git includes as they
/// are). Gives the document as written, the expanded spec or every
/// problem, and the included files read (what `submit` sends along).
fn load(file: &Path, clone: bool) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = match spec::parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => return Ok((serde_json::Value::Null, Err(e), BTreeMap::new())),
    };
    let document = spec::parse_document(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if !include::has_includes(&parsed) {
        return Ok((document, Ok(parsed), BTreeMap::new()));
    }
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = file.file_name().map_or_else(|| "infrabox.json".to_string(), |n| n.to_string_lossy().to_string());
    let git = clone.then(|| include::GitTrees::with_local(GIT_TIMEOUT));
    let mut loader = include::Files::new(include::RootFiles::Dir(dir), git);
    let expanded = include::expand(parsed, &name, &mut loader);
    Ok((document, expanded, loader.read))
}

/// A spec file as a document to send, with the included files it read, checked locally first
/// so every problem is listed before anything is sent.
fn read_spec(file: &Path) -> anyhow::Result<(serde_json::Value, BTreeMap<String, String>)> {
    let (document, parsed, files) = load(file, true)?;
    parsed.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok((document, files))
}

fn print_jobs(jobs: &[JobInfo]) {
    println!("{:<32} {:<10} {:<10} {:>3}  REASON", "JOB", "STATE", "CLUSTER", "ATT");
    for j in jobs {
        println!(
            "{:<32} {:<10} {:<10} {:>3}  {}",
            j.id,
            j.state.as_str(),
            j.cluster.as_deref().unwrap_or("-"),
            j.attempts,
            j.reason.as_deref().unwrap_or("")
        );
    }
}

/// `atoll submit FILE [--wait] [--json] [--push]`.
pub async fn submit(config: &CliConfig, file: &Path, wait: bool, json: bool, push: bool) -> anyhow::Result<()> {
    let (mut document, files) = read_spec(file)?;
    if push {
        if document.get("source").is_some_and(|s| !s.is_null()) {
            anyhow::bail!("{}: the spec names a source; leave out --push, or the spec's source", file.display());
        }
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let pushed = crate::push::push_dir(config, dir, !json).await?;
        if !json {
            println!("pushed {} as {} ({} entries)", dir.display(), pushed.info.digest, pushed.entries);
        }
        if let Some(map) = document.as_object_mut() {
            map.insert("source".into(), serde_json::Value::String(pushed.info.digest));
        }
    }
    let gateway = config.gateway_client()?;
    let mut submitted =
        gateway.submit(&SubmitRequest { spec: document, files }).await.context("submitting the pipeline")?;
    if !json {
        println!("pipeline {} submitted: {} job(s)", submitted.pipeline, submitted.jobs.len());
        print_jobs(&submitted.jobs);
    }
    if wait {
        let tty = std::io::stderr().is_terminal() && !json;
        let mut last = String::new();
        loop {
            if submitted.jobs.iter().all(|j| j.state.is_final()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            submitted = match gateway.pipeline(&submitted.pipeline).await {
                Ok(now) => now,
                Err(e) if e.code().is_none() => {
                    // The gateway is away for a moment: the pipeline is recorded; keep waiting.
                    tracing::warn!(error = %e, "asking for the pipeline failed; still waiting");
                    continue;
                }
                Err(e) => return Err(e).context("following the pipeline"),
            };
            let line = progress(&submitted.jobs);
            if tty && line != last {
                eprint!("\r\x1b[2K{line}");
                last = line;
            }
        }
        if tty {
            eprintln!();
        }
        if !json {
            print_jobs(&submitted.jobs);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&submitted)?);
    }
    if wait && submitted.jobs.iter().any(|j| !matches!(j.state, JobState::Finished | JobState::Skipped)) {
        std::process::exit(1);
    }
    Ok(())
}

/// One line of counts by state, for a terminal.
fn progress(jobs: &[JobInfo]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for j in jobs {
        *counts.entry(j.state.as_str()).or_default() += 1;
    }
    let done = jobs.iter().filter(|j| j.state.is_final()).count();
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("{done}/{} final: {}", jobs.len(), parts.join(", "))
}

/// `atoll jobs [--pipeline ID] [--limit N] [--json]`.
pub async fn jobs(config: &CliConfig, pipeline: Option<&str>, limit: u32, json: bool) -> anyhow::Result<()> {
    let gateway = config.gateway_client()?;
    let jobs = match pipeline {
        Some(id) => gateway.pipeline(id).await?.jobs,
        None => gateway.jobs(limit).await?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        print_jobs(&jobs);
    }
    Ok(())
}

/// `atoll job ID [--json]`.
pub async fn job(config: &CliConfig, id: &str, json: bool) -> anyhow::Result<()> {
    let detail = config.gateway_client()?.job(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    print_jobs(std::slice::from_ref(&detail.job));
    for input in &detail.job.inputs {
        let route = input.route.map_or("-", |r| r.as_str());
        println!("  input from {} ({route})", input.from_job);
    }
    if detail.log_truncated {
        println!("  log truncated: over its limit, the middle was dropped (atoll logs shows where and how much)");
    }
    for a in &detail.attempts {
        println!(
            "  attempt {} on {}: {}{}{}",
            a.attempt,
            a.cluster,
            a.state,
            a.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default(),
            a.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        );
        for taken in &a.routes {
            println!(
                "    input from {} on {}: {} at {}{}",
                taken.from_job,
                taken.from_cluster,
                taken.route.as_str(),
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(taken.at_ms) * 1_000_000)
                    .map_or_else(|_| format!("{} ms", taken.at_ms), crate::verify::when),
                taken.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `atoll logs ID [-f]`: every piece in order; with `-f`, until the job ends.
pub async fn logs(config: &CliConfig, id: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let gateway = config.gateway_client()?;
    let mut after = (0, 0);
    let mut attempt = 0;
    loop {
        let page = gateway.logs(id, after, if follow { 10_000 } else { 0 }).await?;
        let mut out = std::io::stdout().lock();
        for piece in &page.pieces {
            if piece.attempt != attempt {
                if attempt != 0 {
                    writeln!(out, "--- attempt {} ---", piece.attempt)?;
                }
                attempt = piece.attempt;
            }
            match piece.stream {
                LogStream::Stdout => out.write_all(piece.data.as_bytes())?,
                // The marker of a cut log goes where a person sees it, not into piped output.
                LogStream::Stderr | LogStream::Marker => {
                    out.flush()?;
                    std::io::stderr().write_all(piece.data.as_bytes())?;
                }
            }
        }
        out.flush()?;
        after = (page.next_attempt, page.next_seq);
        if page.done || (!follow && page.pieces.is_empty()) {
            return Ok(());
        }
    }
}

/// `atoll cancel ID [--json]`.
pub async fn cancel(config: &CliConfig, id: &str, json: bool) -> anyhow::Result<()> {
    let job = config.gateway_client()?.cancel(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else if job.state == JobState::Killed {
        println!("{}: killed", job.id);
    } else if job.cancel_requested {
        println!("{}: cancel asked of cluster {}", job.id, job.cluster.as_deref().unwrap_or("-"));
    } else {
        println!("{}: already {}, nothing to cancel", job.id, job.state);
    }
    Ok(())
}
