//! The pod listener: where a Kubernetes Job's pod fetches its inputs and stores its output.
//!
//! A pod has no certificate of the mesh, so this is a listener of its own (TLS with the replica's
//! certificate, no client certificate asked), serving only these routes. A request names an
//! attempt and shows its secret (`Authorization: Bearer ...`), the one recorded in Raft with the
//! attempt's start and given to its pod; any replica of the cluster checks it against its
//! replicated records, so a pod reaches whichever replica answers.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v1/pods/{job}/{attempt}/blobs/{digest}` | one of the attempt's inputs or its source, whole (copied from another replica first when this one lacks it); the pod checks the digest |
//! | `PUT /v1/pods/{job}/{attempt}/output` | the attempt's output archive: stored under its SHA-256, copied to a majority of the replicas, recorded in Raft, then answered |
//!
//! Answers: `403` a wrong secret; `404` no attempt of the job held (gone, or on a replica far
//! behind); `409` the attempt ended, was replaced, or has another output recorded; `503` not
//! started on this replica yet, or the cluster cannot record now. A helper tries the other
//! replicas after a refusal and gives up only when all refuse; it tries again after a `503`.

use std::sync::Arc;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::jobs::AssignedInput;
use atoll_api::spec::JobSpec;
use atoll_raft_store::Command;
use atoll_raft_store::CommandResponse;
use atoll_raft_store::jobs::JobOp;
use atoll_raft_store::jobs::JobRecord;
use atoll_raft_store::jobs::OutputRecord;
use atoll_raft_store::jobs::RunState;
use atoll_store::Digest;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::put;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::raft::Replica;
use crate::transfers::Transfers;

/// What the pod routes work with.
pub struct Pods {
    pub replica: Arc<Replica>,
    pub transfers: Arc<Transfers>,
    /// Where an upload is written before it is stored (emptied when the listener starts).
    pub uploads: std::path::PathBuf,
}

type Shared = State<Arc<Pods>>;

/// Bind `config.pod_listen` and serve the pod routes until the returned guard is dropped.
pub(crate) async fn serve(
    config: &crate::config::KubernetesConfig,
    tls: &atoll_api::tls::TlsIdentity,
    replica: Arc<Replica>,
    transfers: Arc<Transfers>,
    uploads: std::path::PathBuf,
) -> Result<crate::jobs::AbortOnDrop, String> {
    let listener = tokio::net::TcpListener::bind(config.pod_listen)
        .await
        .map_err(|e| format!("binding jobs.kubernetes.pod_listen {}: {e}", config.pod_listen))?;
    let server_config = tls
        .server_config_with(atoll_api::tls::ClientCerts::Optional)
        .map_err(|e| format!("the pod listener's TLS: {e}"))?;
    // What an upload cut short by a crash left: nothing is in flight before we serve.
    if let Err(e) = std::fs::remove_dir_all(&uploads)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(format!("clearing {}: {e}", uploads.display()));
    }
    let router = router(Arc::new(Pods { replica, transfers, uploads }));
    tracing::info!(pod_listen = %config.pod_listen, pod_urls = ?config.pod_urls, "serving job pods (inputs in, outputs out)");
    let hooks = atoll_api::serve::Hooks { allow_anonymous: true, ..Default::default() };
    Ok(crate::jobs::AbortOnDrop(tokio::spawn(async move {
        let served = atoll_api::serve::serve_mtls(
            listener,
            server_config,
            router,
            hooks,
            std::future::pending(),
            std::time::Duration::from_secs(1),
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the pod listener ended");
        }
    })))
}

pub fn router(pods: Arc<Pods>) -> Router {
    Router::new()
        .route("/v1/pods/{job}/{attempt}/blobs/{digest}", get(blob))
        .route("/v1/pods/{job}/{attempt}/output", put(output).layer(DefaultBodyLimit::disable()))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::middleware::map_response(atoll_api::error::envelope))
        .with_state(pods)
}

/// The held record of the attempt, when the request shows its secret.
fn authorize(pods: &Pods, job: &str, attempt: u32, headers: &HeaderMap) -> Result<JobRecord, ApiError> {
    let shown = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "no attempt secret (Authorization: Bearer ...)"))?;
    let records = pods.replica.jobs().map_err(|e| ApiError::internal(format!("reading the held jobs: {e}")))?;
    let not_yet = || ApiError::unavailable(format!("attempt {attempt} of {job} is not known on this replica yet"));
    let record = records
        .into_iter()
        .find(|r| r.job == job)
        .ok_or_else(|| ApiError::not_found(format!("this cluster holds no attempt of {job}")))?;
    if record.attempt < attempt {
        return Err(not_yet());
    }
    if record.attempt > attempt {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("attempt {attempt} of {job} was replaced by attempt {}", record.attempt),
        ));
    }
    match &record.run {
        RunState::Accepted => Err(not_yet()),
        RunState::Ended { .. } => Err(ApiError::new(ErrorCode::Conflict, format!("attempt {attempt} of {job} ended"))),
        RunState::Started { secret: Some(secret), .. } if same(secret.as_bytes(), shown.as_bytes()) => Ok(record),
        RunState::Started { .. } => {
            Err(ApiError::forbidden(format!("that is not the secret of attempt {attempt} of {job}")))
        }
    }
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// The blobs the attempt may read: its inputs and its source.
fn readable(record: &JobRecord) -> Vec<String> {
    let mut digests: Vec<String> = serde_json::from_str::<Vec<AssignedInput>>(&record.inputs)
        .map(|inputs| inputs.into_iter().map(|i| i.digest).collect())
        .unwrap_or_default();
    if let Ok(spec) = serde_json::from_str::<JobSpec>(&record.spec)
        && let Some(source) = spec.source
    {
        digests.push(source);
    }
    digests
}

async fn blob(
    State(pods): Shared,
    Path((job, attempt, digest)): Path<(String, u32, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = authorize(&pods, &job, attempt, &headers)?;
    if !readable(&record).contains(&digest) {
        return Err(ApiError::forbidden(format!(
            "{digest} is neither an input nor the source of attempt {attempt} of {job}"
        )));
    }
    let parsed: Digest =
        digest.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::bad_request(e.to_string()))?;
    pods.transfers.ensure_local(&parsed).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    let blobs = pods.transfers.blobs();
    let manifest = blobs
        .manifest(&parsed)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .ok_or_else(|| ApiError::unavailable(format!("{digest} is not in this replica's store")))?;
    let stream = blobs.read(&parsed, 0..manifest.size).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-tar".to_string()), (header::CONTENT_LENGTH, manifest.size.to_string())],
        Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other))),
    )
        .into_response())
}

async fn output(
    State(pods): Shared,
    Path((job, attempt)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let record = authorize(&pods, &job, attempt, &headers)?;
    let stored = store(&pods, &job, attempt, body).await?;
    if let Some(held) = &record.output {
        // Sent again (the first answer was lost): the same bytes are the same output.
        return if held.digest == stored.digest {
            Ok(axum::Json(stored).into_response())
        } else {
            Err(ApiError::new(
                ErrorCode::Conflict,
                format!("attempt {attempt} of {job} has output {} recorded", held.digest),
            ))
        };
    }
    let digest: Digest =
        stored.digest.parse().map_err(|e: atoll_store::InvalidDigest| ApiError::internal(e.to_string()))?;
    pods.transfers
        .replicate(&digest)
        .await
        .map_err(|e| ApiError::unavailable(format!("copying the output to the cluster's replicas: {e}")))?;
    let op = JobOp::Output { job: job.clone(), attempt, output: stored.clone() };
    match pods.replica.propose(Command::Jobs { ops: vec![op] }).await? {
        CommandResponse::JobsApplied { changed } if changed.first() == Some(&true) => {
            tracing::info!(job = %job, attempt, output = %stored.digest, bytes = stored.size, "a pod stored its output");
            Ok(axum::Json(stored).into_response())
        }
        // Not applied: the attempt ended or another output was recorded meanwhile.
        CommandResponse::JobsApplied { .. } => {
            match pods.replica.jobs().ok().and_then(|r| r.into_iter().find(|r| r.job == job)) {
                Some(r) if r.attempt == attempt && r.output.as_ref().is_some_and(|o| o.digest == stored.digest) => {
                    Ok(axum::Json(stored).into_response())
                }
                _ => Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("attempt {attempt} of {job} ended before its output was recorded"),
                )),
            }
        }
        other => Err(ApiError::unavailable(format!("recording the output: {other:?}"))),
    }
}

/// Write the body to a file while hashing it, then store it under its digest.
async fn store(pods: &Pods, job: &str, attempt: u32, body: Body) -> Result<OutputRecord, ApiError> {
    let io = |what: &str, e: std::io::Error| ApiError::internal(format!("{what}: {e}"));
    tokio::fs::create_dir_all(&pods.uploads).await.map_err(|e| io("creating the upload directory", e))?;
    static UPLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = pods.uploads.join(format!("{}-{attempt}-{n}.tar", job.replace('/', "_")));
    let result = async {
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| io("creating the upload file", e))?;
        let mut hasher = atoll_store::Hasher::new();
        let mut stream = body.into_data_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
            hasher.update(&piece);
            file.write_all(&piece).await.map_err(|e| io("writing the upload", e))?;
        }
        file.sync_all().await.map_err(|e| io("syncing the upload", e))?;
        drop(file);
        let digest = hasher.finish();
        let stored =
            pods.transfers.blobs().put_file(&path, &digest).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        let m = stored.manifest;
        Ok(OutputRecord {
            digest: m.digest.to_string(),
            size: m.size,
            chunk_size: m.chunk_size,
            chunks: m.chunks.iter().map(ToString::to_string).collect(),
        })
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn an_attempt_reads_its_inputs_and_its_source_only() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let spec = |extra: String| {
            let doc = format!("version: 1\njobs:\n  - {{name: test, type: command, command: 'true'{extra}}}\n");
            serde_json::to_string(&atoll_api::spec::parse(&doc).expect("spec").jobs.remove(0)).expect("json")
        };
        let inputs = serde_json::json!([
            {"from_job": "build", "job": "p.build", "cluster": "aws", "mode": "local", "digest": digest('a'), "size": 1},
        ]);
        let mut record = JobRecord {
            job: "p.test".into(),
            pipeline: "p".into(),
            attempt: 1,
            spec: spec(format!(", source: '{}'", digest('b'))),
            inputs: inputs.to_string(),
            run: RunState::Accepted,
            cancel: false,
            running_acked: false,
            revision: 1,
            output: None,
        };
        assert_eq!(readable(&record), [digest('a'), digest('b')]);
        record.inputs = String::new();
        record.spec = spec(String::new());
        assert!(readable(&record).is_empty());
    }
}
