//! Submission: the spec checked whole and stored with its jobs in one transaction, and a
//! user's cancel.

use std::sync::Arc;
use std::time::Duration;

use atoll_api::ApiError;
use atoll_api::ids::ClusterName;
use atoll_api::ids::JobId;
use atoll_api::ids::Label;
use atoll_api::jobs::JobInfo;
use atoll_api::jobs::JobState;
use atoll_api::jobs::Submitted;
use atoll_api::spec::ClusterFacts;
use atoll_api::spec::include;

use super::Pipeline;
use super::db_error;
use super::effective_source;
use super::info;
use super::job_id;
use crate::Gateway;
use crate::db::jobs::Cancelled;
use crate::db::jobs::NewJob;
use crate::lifecycle;
use crate::now_ms;

/// How long a submission waits for the scheduling pass that places it before answering.
const SUBMIT_PLACEMENT_WAIT: Duration = Duration::from_secs(1);

/// A new random id: 12 lowercase hex digits.
/// How long one git command of a `git` include may take (a clone, a checkout).
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The name a submitted spec has among its files (an include of it is a cycle).
const ROOT_SPEC: &str = "(the submitted spec)";

fn new_pipeline_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

impl Gateway {
    /// Every job's selector against the clusters this replica knows now.
    fn check_selectors(&self, spec: &atoll_api::spec::PipelineSpec) -> Result<(), ApiError> {
        let clusters = self.registry.list(now_ms());
        let parsed: Vec<(ClusterName, Vec<Label>, bool, Option<&atoll_api::spec::Capabilities>)> = clusters
            .iter()
            .filter_map(|c| {
                let name = c.name.parse().ok()?;
                let labels = c.labels.iter().filter_map(|l| l.parse().ok()).collect();
                Some((name, labels, c.enabled && !c.revoked, c.capabilities.as_ref()))
            })
            .collect();
        let facts: Vec<ClusterFacts<'_>> = parsed
            .iter()
            .map(|(name, labels, enabled, capabilities)| ClusterFacts {
                name,
                labels,
                enabled: *enabled,
                capabilities: *capabilities,
            })
            .collect();
        atoll_api::spec::check_clusters(spec, &facts).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    /// Check and store a pipeline; everything is recorded before this returns.
    pub async fn submit(
        &self,
        document: &atoll_api::spec::Document,
        files: std::collections::BTreeMap<String, String>,
        by: &str,
    ) -> Result<Submitted, ApiError> {
        let spec = atoll_api::spec::from_document(document).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let (mut spec, git_sources) = if include::has_includes(&spec) {
            self.expand_includes(spec, files).await?
        } else {
            (spec, GitSources::none())
        };
        if let Err(e) = self.check_selectors(&spec) {
            // Another replica may have registered a cluster this one has not reloaded yet:
            // judge again on the database's record before refusing.
            self.registry.refresh().await.map_err(db_error)?;
            self.check_selectors(&spec).map_err(|_| e)?;
        }
        // Every secret named must exist.
        let missing = self.check_secrets(&spec).await?;
        if !missing.is_empty() {
            return Err(ApiError::bad_request(atoll_api::spec::SpecErrors(missing).to_string()));
        }
        // Every source named must have been pushed.
        if let Some(source) = &spec.source {
            self.known_source(source, "source").await?;
        }
        for (i, job) in spec.jobs.iter().enumerate() {
            if let Some(source) = &job.source {
                self.known_source(source, &format!("{}.source", spec.job_path(i))).await?;
            }
        }
        // Checked: the repositories of git includes are stored as their jobs' sources.
        self.store_git_sources(&mut spec, git_sources, by).await?;

        let pipeline = Pipeline::new(spec);
        let mut states = vec![JobState::Waiting; pipeline.spec.jobs.len()];
        let settled = lifecycle::settle(&pipeline.spec, &pipeline.order, &mut states);
        let mut reasons: Vec<String> = vec!["waiting for its parents".to_string(); states.len()];
        for change in settled {
            reasons[change.job] = change.reason;
        }
        let id = new_pipeline_id();
        let ids: Vec<JobId> = pipeline.spec.jobs.iter().map(|j| job_id(&id, &j.name)).collect();
        let jobs: Vec<NewJob<'_>> = pipeline
            .spec
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| NewJob {
                id: &ids[i],
                idx: i,
                name: &j.name,
                state: states[i],
                reason: &reasons[i],
                source: effective_source(j, &pipeline.spec),
            })
            .collect();
        let text = serde_json::to_string(&pipeline.spec).map_err(|e| ApiError::internal(e.to_string()))?;
        self.db.insert_pipeline(&id, by, &text, &jobs, now_ms()).await.map_err(db_error)?;
        self.metrics.pipelines.inc();
        self.metrics.jobs_submitted.inc_by(jobs.len() as u64);
        tracing::info!(pipeline = %id, jobs = jobs.len(), by, "pipeline submitted");
        self.remember_pipeline(&id, Arc::new(pipeline));
        // Stored: the submission stands. Let the scheduler place it, and answer with the
        // clusters if that is quick; a busy gateway answers sooner, with jobs still queued.
        self.next_pass(SUBMIT_PLACEMENT_WAIT).await;
        self.pipeline_info(&id).await
    }

    /// Expand a spec's `workflow` and `git` includes: workflow files from those the submission
    /// carried, else from the pipeline's pushed source (its root is the spec's directory); git
    /// repositories cloned here.
    async fn expand_includes(
        &self,
        spec: atoll_api::spec::PipelineSpec,
        files: std::collections::BTreeMap<String, String>,
    ) -> Result<(atoll_api::spec::PipelineSpec, GitSources), ApiError> {
        let workflows = spec.jobs.iter().any(|j| matches!(j.include, Some(atoll_api::spec::Include::Workflow { .. })));
        let (root, unpacked) = match &spec.source {
            Some(source) if files.is_empty() && workflows => {
                self.known_source(source, "source").await?;
                let dir = self.unpack_source(source).await?;
                (include::RootFiles::Dir(dir.path().join("tree")), Some(dir))
            }
            _ => (include::RootFiles::Given(files), None),
        };
        // Blocking work (git, reading files, packing trees, removing the unpacked source), off
        // the runtime.
        tokio::task::spawn_blocking(move || {
            let mut loader = include::Files::new(root, Some(include::GitTrees::new(GIT_TIMEOUT)));
            let expanded = include::expand(spec, ROOT_SPEC, &mut loader);
            drop(unpacked);
            let expanded = expanded.map_err(|e| ApiError::bad_request(e.to_string()))?;
            let trees = pack_git_trees(&expanded, &loader)?;
            Ok::<_, ApiError>((expanded, trees))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// Each repository a job of a git include came from is that job's source, as InfraBox
    /// clones it for the job: stored and registered as a pushed source is.
    async fn store_git_sources(
        &self,
        spec: &mut atoll_api::spec::PipelineSpec,
        trees: GitSources,
        by: &str,
    ) -> Result<(), ApiError> {
        let mut sources = std::collections::BTreeMap::new();
        for ((clone_url, commit), packed) in &trees.packed {
            self.relay
                .blobs()
                .put_file(&packed.path, &packed.digest)
                .await
                .map_err(|e| ApiError::unavailable(format!("storing {clone_url} at {commit} as a source: {e}")))?;
            let digest = packed.digest.to_string();
            self.register_source(&digest, by).await?;
            sources.insert((clone_url.clone(), commit.clone()), digest);
        }
        for job in &mut spec.jobs {
            let Some(git) = job.defined_in.as_ref().and_then(|d| d.git.as_ref()) else { continue };
            if job.container.repository.clone {
                job.source = sources.get(&(git.clone_url.clone(), git.commit.clone())).cloned();
            }
        }
        Ok(())
    }

    /// A pushed source unpacked into `tree/` of a temporary directory (removed when dropped).
    async fn unpack_source(&self, source: &str) -> Result<tempfile::TempDir, ApiError> {
        let digest: atoll_store::Digest =
            source.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::bad_request(format!("source: {e}")))?;
        let dir = tempfile::tempdir().map_err(|e| ApiError::internal(format!("a directory for the source: {e}")))?;
        let archive = dir.path().join(".source.tar");
        self.relay
            .blobs()
            .fetch_to_file(&digest, &archive)
            .await
            .map_err(|e| ApiError::unavailable(format!("reading the pipeline's source {source}: {e}")))?;
        let (from, to) = (archive.clone(), dir.path().join("tree"));
        tokio::task::spawn_blocking(move || atoll_store::archive::unpack(&from, &to))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("unpacking the pipeline's source {source}: {e}")))?;
        let _ = tokio::fs::remove_file(&archive).await;
        Ok(dir)
    }

    /// Cancel a job: at once when it has not started, else through its cluster.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<JobInfo, ApiError> {
        let row = self.job_row(id).await?;
        match self.db.cancel(id, now_ms()).await.map_err(db_error)? {
            Cancelled::Killed => {
                self.metrics.job_ended(JobState::Killed, row.created_ms);
                tracing::info!(job = id, by, "job cancelled before it started");
                self.logs_changed();
                self.mark_dirty(&row.pipeline_id);
            }
            Cancelled::Requested => {
                tracing::info!(job = id, by, cluster = ?row.cluster, "cancel asked of the job's cluster");
                if let Some(cluster) = &row.cluster {
                    self.wake_cluster(cluster);
                }
            }
            Cancelled::Nothing => {}
        }
        let row = self.job_row(id).await?;
        let pipeline = self.pipeline(&row.pipeline_id).await?;
        let siblings = self.db.pipeline_jobs(&row.pipeline_id).await.map_err(db_error)?;
        Ok(info(&row, &pipeline, &siblings, &self.flow()))
    }
}

/// The repositories the jobs of an expanded pipeline came from, each packed as a source archive
/// (without its `.git`), in a temporary directory removed when this is dropped.
struct GitSources {
    packed: std::collections::BTreeMap<(String, String), PackedTree>,
    _dir: Option<tempfile::TempDir>,
}

impl GitSources {
    fn none() -> Self {
        GitSources { packed: Default::default(), _dir: None }
    }
}

/// Most bytes a git include's repository may pack to as its jobs' source.
const MAX_GIT_SOURCE: u64 = 1 << 30;

struct PackedTree {
    path: std::path::PathBuf,
    digest: atoll_store::Digest,
}

/// Pack each repository that a job of `expanded` came from and gets as its source (blocking).
fn pack_git_trees(expanded: &atoll_api::spec::PipelineSpec, loader: &include::Files) -> Result<GitSources, ApiError> {
    let mut out = GitSources { packed: Default::default(), _dir: None };
    for job in &expanded.jobs {
        let Some(git) = job.defined_in.as_ref().and_then(|d| d.git.as_ref()) else { continue };
        let key = (git.clone_url.clone(), git.commit.clone());
        if !job.container.repository.clone || out.packed.contains_key(&key) {
            continue;
        }
        let tree = loader
            .git_tree(&git.clone_url, &git.commit)
            .ok_or_else(|| ApiError::internal(format!("{} at {} was not checked out", git.clone_url, git.commit)))?;
        if out._dir.is_none() {
            out._dir =
                Some(tempfile::tempdir().map_err(|e| ApiError::internal(format!("a directory for sources: {e}")))?);
        }
        let dir = out._dir.as_ref().expect("made above").path();
        let path = dir.join(format!("tree-{}.tar", out.packed.len()));
        let packed =
            atoll_store::archive::pack_dir_filtered(&tree, &path, &|p: &std::path::Path| !p.starts_with(".git"))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "packing {} at {} as the jobs' source: {e}",
                        git.clone_url, git.commit
                    ))
                })?;
        if packed.size > MAX_GIT_SOURCE {
            return Err(ApiError::bad_request(format!(
                "{} at {}: its files pack to {} bytes, more than a git include's {MAX_GIT_SOURCE}",
                git.clone_url, git.commit, packed.size
            )));
        }
        out.packed.insert(key, PackedTree { path, digest: packed.digest });
    }
    Ok(out)
}
