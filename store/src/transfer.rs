//! Moving blobs between stores over HTTPS: the routes a replica or the gateway serves, and the
//! two clients (fetch, send).
//!
//! The unit of transfer is the chunk of the blob's [`Manifest`]; nothing else is needed to resume
//! and to verify:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v1/blobs/{digest}` | the manifest (404 when the blob is not complete here) |
//! | `GET /v1/blobs/{digest}/chunks/{n}` | chunk `n`, read back verified from the store |
//! | `PUT /v1/blobs/{digest}` | begin (or resume) an upload: body the manifest, answer `{next, complete}` |
//! | `PUT /v1/blobs/{digest}/chunks/{n}` | chunk `n`: refused unless it hashes to the manifest's digest for `n`; chunks arrive in order |
//! | `POST /v1/blobs/{digest}/complete` | every chunk arrived and the whole hashes to the digest: the manifest is written, the blob exists |
//! | `GET /v1/blobs/{digest}/upload` | an upload still arriving: its manifest and how many chunks are here; those chunks can be read already (the relay streams) |
//!
//! Every request is checked by the server's [`Guard`] (an edge ticket for that one blob, the
//! caller's certificate). The receiving side verifies every chunk against the manifest before it
//! is stored and the whole digest before the manifest is written, so nothing unverified ever
//! exists under a digest; a chunk that arrives corrupted is fetched (or sent) again. A transfer
//! that breaks resumes at the first chunk the receiver lacks: [`Fetch`] keeps its place across
//! tries and across sources (a direct pull that falls back to the relay goes on where it
//! stopped), and an upload's place is kept by the server: in memory while it runs, and found
//! again from the chunks it stored (each read back and verified) after it restarted. Memory: one
//! chunk per request on either side, and at most [`UPLOAD_SLOTS`] chunk uploads buffered by a
//! server at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use atoll_api::ApiError;
use atoll_api::ErrorCode;
use atoll_api::Identity;
use atoll_api::serve::Peer;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use serde::Deserialize;
use serde::Serialize;

use crate::Blobs;
use crate::CHUNK;
use crate::Digest;
use crate::Hasher;
use crate::Manifest;
use crate::StoreError;

/// Chunk uploads a server buffers at once (each up to [`CHUNK`] bytes).
pub const UPLOAD_SLOTS: usize = 4;
/// Tries of one request before a transfer counts its peer unreachable.
pub const TRIES: u32 = 5;
/// A fetch from a blob still arriving gives up when no new chunk arrived for this long.
pub const STREAM_STALL: Duration = Duration::from_secs(30);
/// The header carrying the edge ticket.
pub const TICKET_HEADER: &str = atoll_api::ticket::HEADER;
/// Uploads untouched this long are forgotten in memory (their chunks stay stored; a later begin
/// goes on after them).
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);

/// One request to a blob route, as a [`Guard`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    /// An upload; else a read.
    pub write: bool,
    pub digest: &'a Digest,
    /// The identity in the caller's certificate (none: a bearer-token or anonymous caller).
    pub caller: Option<&'a Identity>,
    /// The `x-atoll-ticket` header, when sent.
    pub ticket: Option<&'a str>,
    /// The request's extensions (what the server's own middleware attached, e.g. its caller).
    pub extensions: &'a axum::http::Extensions,
}

/// Who may read or write which blob on a server.
pub trait Guard: Send + Sync + 'static {
    fn check<'a>(&'a self, access: Access<'a>) -> futures::future::BoxFuture<'a, Result<(), ApiError>>;
}

/// Where an upload stands (`PUT /v1/blobs/{digest}` and each chunk's answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The first chunk the server lacks.
    pub next: usize,
    /// The blob exists on the server (nothing more to send).
    pub complete: bool,
}

struct Upload {
    manifest: Manifest,
    next: usize,
    hasher: Hasher,
    touched: Instant,
}

/// The blob routes of one store.
pub struct BlobService {
    blobs: Blobs,
    guard: Box<dyn Guard>,
    uploads: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<Upload>>>>,
    slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for BlobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobService").field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

impl BlobService {
    pub fn new(blobs: Blobs, guard: impl Guard) -> Arc<Self> {
        Arc::new(Self {
            blobs,
            guard: Box::new(guard),
            uploads: Mutex::new(HashMap::new()),
            slots: tokio::sync::Semaphore::new(UPLOAD_SLOTS),
        })
    }

    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// Chunks received so far of an upload in progress here (`None`: none in progress).
    pub async fn upload_progress(&self, digest: &Digest) -> Option<usize> {
        let upload = self.upload(digest)?;
        Some(upload.lock().await.next)
    }

    fn upload(&self, digest: &Digest) -> Option<Arc<tokio::sync::Mutex<Upload>>> {
        self.uploads.lock().expect("uploads").get(digest).cloned()
    }

    /// The upload of `digest` in progress, or a not-found answer saying how to begin one.
    fn upload_in_progress(&self, digest: &Digest) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
        self.upload(digest)
            .ok_or_else(|| ApiError::not_found(format!("no upload of {digest} in progress; send its manifest first")))
    }
}

/// `/v1/blobs/...` for `service`.
pub fn routes(service: Arc<BlobService>) -> Router {
    Router::new()
        .route("/v1/blobs/{digest}", get(manifest).put(begin))
        .route("/v1/blobs/{digest}/chunks/{index}", get(chunk).put(put_chunk))
        .route("/v1/blobs/{digest}/complete", post(complete))
        .route("/v1/blobs/{digest}/upload", get(upload_progress))
        .layer(DefaultBodyLimit::max(CHUNK + 64 * 1024))
        .with_state(service)
}

type Shared = State<Arc<BlobService>>;

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
        StoreError::DigestMismatch { .. } => ApiError::bad_request(e.to_string()),
        other => ApiError::unavailable(other.to_string()),
    }
}

/// Parse the digest and ask the guard.
async fn admit(
    service: &BlobService,
    write: bool,
    digest: &str,
    extensions: &axum::http::Extensions,
    headers: &HeaderMap,
) -> Result<Digest, ApiError> {
    let digest: Digest = digest.parse().map_err(|e: crate::InvalidDigest| ApiError::bad_request(e.to_string()))?;
    let ticket = headers.get(TICKET_HEADER).and_then(|v| v.to_str().ok());
    let caller = extensions.get::<Peer>().map(|Peer(identity)| identity);
    service.guard.check(Access { write, digest: &digest, caller, ticket, extensions }).await?;
    Ok(digest)
}

async fn manifest(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    let digest = admit(&service, false, &digest, &extensions, &headers).await?;
    match service.blobs.manifest(&digest).await.map_err(store_error)? {
        Some(manifest) => Ok(Json(manifest).into_response()),
        None => Err(ApiError::not_found(format!("blob {digest} is not in {}", service.blobs.name()))),
    }
}

async fn chunk(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path((digest, index)): Path<(String, usize)>,
) -> Result<Response, ApiError> {
    let digest = admit(&service, false, &digest, &extensions, &headers).await?;
    let manifest = match service.blobs.manifest(&digest).await.map_err(store_error)? {
        Some(manifest) => manifest,
        // Still arriving: the chunks received so far are stored (and were verified) already.
        None => match service.upload(&digest) {
            Some(upload) => {
                let upload = upload.lock().await;
                if index >= upload.next {
                    return Err(ApiError::not_found(format!(
                        "chunk {index} of {digest} has not arrived yet ({} of {} have)",
                        upload.next,
                        upload.manifest.chunks.len()
                    )));
                }
                upload.manifest.clone()
            }
            None => return Err(ApiError::not_found(format!("blob {digest} is not in {}", service.blobs.name()))),
        },
    };
    if index >= manifest.chunks.len() {
        return Err(ApiError::not_found(format!(
            "blob {digest} has {} chunks; there is no chunk {index}",
            manifest.chunks.len()
        )));
    }
    // Verified by the caller, before it uses or stores it (a chunk damaged here is refused
    // there and fetched again, then from elsewhere).
    let bytes = service.blobs.stored_chunk(&manifest, index).await.map_err(store_error)?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// An upload still arriving: its manifest and how many chunks are here (readers may fetch
/// those already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    pub manifest: Manifest,
    pub next: usize,
}

async fn upload_progress(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Json<UploadProgress>, ApiError> {
    let digest = admit(&service, false, &digest, &extensions, &headers).await?;
    if let Some(manifest) = service.blobs.manifest(&digest).await.map_err(store_error)? {
        let next = manifest.chunks.len();
        return Ok(Json(UploadProgress { manifest, next }));
    }
    let upload = service.upload_in_progress(&digest)?;
    let upload = upload.lock().await;
    Ok(Json(UploadProgress { manifest: upload.manifest.clone(), next: upload.next }))
}

async fn begin(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path(digest): Path<String>,
    body: Bytes,
) -> Result<Json<UploadState>, ApiError> {
    let digest = admit(&service, true, &digest, &extensions, &headers).await?;
    atoll_api::error::check_json_content_type(headers.get(axum::http::header::CONTENT_TYPE))?;
    let manifest: Manifest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the manifest: {e}")))?;
    if manifest.digest != digest || !manifest.is_consistent() {
        return Err(ApiError::bad_request(format!(
            "the manifest is for {} with {} chunks of {} bytes over {} bytes: inconsistent with {digest}",
            manifest.digest,
            manifest.chunks.len(),
            manifest.chunk_size,
            manifest.size
        )));
    }
    if service.blobs.claim(&digest).await.map_err(store_error)?.is_some() {
        return Ok(Json(UploadState { next: manifest.chunks.len(), complete: true }));
    }
    let upload = match service.upload(&digest) {
        Some(upload) => upload,
        None => {
            // None in memory: this server may have taken part of it before a restart (or
            // forgotten it while idle); its chunks are stored, so it goes on after them.
            let (next, hasher) = recover(&service.blobs, &manifest).await;
            let mut uploads = service.uploads.lock().expect("uploads");
            uploads.retain(|_, u| u.try_lock().map_or(true, |u| u.touched.elapsed() < UPLOAD_IDLE));
            uploads
                .entry(digest.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Upload {
                        manifest: manifest.clone(),
                        next,
                        hasher,
                        touched: Instant::now(),
                    }))
                })
                .clone()
        }
    };
    let mut upload = upload.lock().await;
    if upload.manifest != manifest {
        // Another layout of the same bytes: go on with this one from what of it is stored.
        let (next, hasher) = recover(&service.blobs, &manifest).await;
        *upload = Upload { manifest, next, hasher, touched: Instant::now() };
    }
    upload.touched = Instant::now();
    Ok(Json(UploadState { next: upload.next, complete: false }))
}

/// The chunks of `manifest` already stored here, from the first on, each read back and verified:
/// how many, and the whole digest's hasher fed with them. The first missing or unverifiable chunk
/// ends the run (it and the rest are sent again).
async fn recover(blobs: &Blobs, manifest: &Manifest) -> (usize, Hasher) {
    let mut hasher = Hasher::new();
    for index in 0..manifest.chunks.len() {
        let Ok(bytes) = blobs.chunk(manifest, index).await else {
            if index > 0 {
                tracing::info!(blob = %manifest.digest, chunks = index, "an upload goes on after the chunks stored before");
            }
            return (index, hasher);
        };
        hasher = match tokio::task::spawn_blocking(move || {
            hasher.update(&bytes);
            hasher
        })
        .await
        {
            Ok(hasher) => hasher,
            Err(_) => return (0, Hasher::new()),
        };
    }
    (manifest.chunks.len(), hasher)
}

async fn put_chunk(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path((digest, index)): Path<(String, usize)>,
    body: Bytes,
) -> Result<Json<UploadState>, ApiError> {
    let digest = admit(&service, true, &digest, &extensions, &headers).await?;
    let _slot = service.slots.acquire().await.map_err(|_| ApiError::unavailable("shutting down"))?;
    let upload = service.upload_in_progress(&digest)?;
    let mut upload = upload.lock().await;
    upload.touched = Instant::now();
    if index < upload.next {
        return Ok(Json(UploadState { next: upload.next, complete: false }));
    }
    if index > upload.next {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("chunk {index} of {digest} arrived before chunk {}; send from {}", upload.next, upload.next),
        ));
    }
    let expected = upload
        .manifest
        .chunks
        .get(index)
        .cloned()
        .ok_or_else(|| ApiError::bad_request(format!("{digest} has no chunk {index}")))?;
    let expected_len = upload.manifest.chunk_range(index);
    if body.len() as u64 != expected_len.end - expected_len.start {
        return Err(ApiError::bad_request(format!(
            "chunk {index} of {digest} is {} bytes; its manifest says {}",
            body.len(),
            expected_len.end - expected_len.start
        )));
    }
    // The chunk's digest and the running whole digest, on two threads at once.
    let (chunk, whole, mut hasher) = (body.clone(), body.clone(), upload.hasher.clone());
    let (actual, hashed) = tokio::join!(
        tokio::task::spawn_blocking(move || Digest::of(&chunk)),
        tokio::task::spawn_blocking(move || {
            hasher.update(&whole);
            hasher
        })
    );
    let internal = |e: tokio::task::JoinError| ApiError::internal(format!("hashing chunk {index}: {e}"));
    let actual = actual.map_err(internal)?;
    if actual != expected {
        // Refused before it touches the upload: the sender sends this chunk again.
        return Err(ApiError::bad_request(format!(
            "chunk {index} of {digest} hashes to {actual}, not {expected}; send it again"
        )));
    }
    upload.hasher = hashed.map_err(internal)?;
    if let Err(e) = service.blobs.store_chunk(&digest, index, body).await {
        // The hasher saw bytes that were not stored: this upload must start over.
        let manifest = upload.manifest.clone();
        *upload = Upload { manifest, next: 0, hasher: Hasher::new(), touched: Instant::now() };
        return Err(store_error(e));
    }
    upload.next += 1;
    Ok(Json(UploadState { next: upload.next, complete: false }))
}

async fn complete(
    State(service): Shared,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Path(digest): Path<String>,
) -> Result<Json<UploadState>, ApiError> {
    let digest = admit(&service, true, &digest, &extensions, &headers).await?;
    if let Some(manifest) = service.blobs.manifest(&digest).await.map_err(store_error)? {
        return Ok(Json(UploadState { next: manifest.chunks.len(), complete: true }));
    }
    let upload = service.upload_in_progress(&digest)?;
    let mut upload = upload.lock().await;
    let chunks = upload.manifest.chunks.len();
    if upload.next < chunks {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{digest} is missing chunks {} to {}", upload.next, chunks - 1),
        ));
    }
    let actual = std::mem::take(&mut upload.hasher).finish();
    if actual != digest {
        let manifest = upload.manifest.clone();
        *upload = Upload { manifest, next: 0, hasher: Hasher::new(), touched: Instant::now() };
        return Err(ApiError::bad_request(format!(
            "the chunks of {digest} hash to {actual} together; the upload starts over"
        )));
    }
    service.blobs.put_manifest(&upload.manifest).await.map_err(store_error)?;
    drop(upload);
    service.uploads.lock().expect("uploads").remove(&digest);
    Ok(Json(UploadState { next: chunks, complete: true }))
}

/// Why a transfer stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer could not be reached or kept failing ([`TRIES`] times in a row): worth another
    /// path.
    #[error("{addr} is unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The peer answered no (a refused ticket, a blob it does not have).
    #[error("{addr} refused: {message}")]
    Refused { addr: String, code: Option<ErrorCode>, message: String },
    /// A chunk kept arriving corrupted.
    #[error("chunk {index} of {digest} from {addr} arrived corrupted {times} times")]
    Corrupt { addr: String, digest: Digest, index: usize, times: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TransferError {
    /// Whether another path (the relay) may succeed where this one failed.
    pub fn is_path_failure(&self) -> bool {
        match self {
            TransferError::Unreachable { .. } | TransferError::Corrupt { .. } => true,
            // Refused by a firewall-like admission or a peer that lost the blob (a failover).
            TransferError::Refused { code, .. } => {
                !matches!(code, Some(ErrorCode::BadRequest) | Some(ErrorCode::Unauthenticated))
            }
            TransferError::Store(_) => false,
        }
    }
}

/// The other side of a transfer.
#[derive(Clone, Debug)]
pub struct Remote {
    pub http: reqwest::Client,
    /// `https://host:port`.
    pub base: String,
    pub ticket: String,
}

impl Remote {
    /// The server at `addr` (`host:port`) over HTTPS.
    pub fn https(http: reqwest::Client, addr: &str, ticket: String) -> Self {
        Self { http, base: format!("https://{addr}"), ticket }
    }
}

/// Throttle and counters shared by the transfers of one replica.
#[derive(Debug, Default)]
pub struct Pace {
    /// Most bytes per second per transfer (`None`: as fast as the path allows).
    pub limit: Option<u64>,
    /// Bytes moved so far, for a progress display.
    pub progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Pace {
    pub fn limited(limit: Option<u64>) -> Self {
        Self { limit, progress: None }
    }

    async fn moved(&self, started: Instant, total: u64, chunk: u64) {
        if let Some(progress) = &self.progress {
            progress.fetch_add(chunk, std::sync::atomic::Ordering::Relaxed);
        }
        self.wait(started, total).await;
    }

    async fn wait(&self, started: Instant, bytes: u64) {
        if let Some(limit) = self.limit.filter(|l| *l > 0) {
            let due = started + Duration::from_secs_f64(bytes as f64 / limit as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// One answer, or why not.
enum Answer {
    Ok(Bytes),
    /// Transport failure or a 5xx: try again.
    Retry(String),
    Refused(Option<ErrorCode>, String),
}

async fn call(peer: &Remote, request: reqwest::RequestBuilder) -> Answer {
    let request = if peer.ticket.is_empty() { request } else { request.header(TICKET_HEADER, &peer.ticket) };
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Answer::Retry(atoll_api::client::error_chain(&e)),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) => return Answer::Retry(atoll_api::client::error_chain(&e)),
    };
    if status.is_success() {
        return Answer::Ok(body);
    }
    let (code, message) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => (
            serde_json::from_value::<ErrorCode>(v["error"]["code"].clone()).ok(),
            v["error"]["message"].as_str().unwrap_or_default().to_string(),
        ),
        Err(_) => (None, String::from_utf8_lossy(&body).chars().take(200).collect()),
    };
    let message = format!("HTTP {status}: {message}");
    if status.is_server_error() && code != Some(ErrorCode::Internal) {
        Answer::Retry(message)
    } else {
        Answer::Refused(code, message)
    }
}

/// Backoff before try `n` (from 1): 200 ms doubling, at most 2 s.
fn backoff(n: u32) -> Duration {
    Duration::from_millis((200u64 << n.min(4)).min(2000))
}

/// Send `make()` until it is answered, at most [`TRIES`] times.
async fn with_tries(
    peer: &Remote,
    what: &str,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Bytes, TransferError> {
    let mut last = String::new();
    for n in 1..=TRIES {
        match call(peer, make()).await {
            Answer::Ok(bytes) => return Ok(bytes),
            Answer::Refused(code, message) => {
                return Err(TransferError::Refused {
                    addr: peer.base.clone(),
                    code,
                    message: format!("{what}: {message}"),
                });
            }
            Answer::Retry(message) => {
                tracing::debug!(peer = %peer.base, try_ = n, error = %message, "{what} failed; trying again");
                last = message;
                if n < TRIES {
                    tokio::time::sleep(backoff(n)).await;
                }
            }
        }
    }
    Err(TransferError::Unreachable { addr: peer.base.clone(), message: format!("{what}: {last}") })
}

fn json<T: serde::de::DeserializeOwned>(peer: &Remote, what: &str, bytes: &[u8]) -> Result<T, TransferError> {
    serde_json::from_slice(bytes).map_err(|e| TransferError::Refused {
        addr: peer.base.clone(),
        code: None,
        message: format!("{what}: an unreadable answer: {e}"),
    })
}

/// A chunk being written: its index, length, the whole digest through it, and the write.
type Storing = (usize, u64, Hasher, Ahead<Result<(), StoreError>>);

/// A task working ahead, aborted when it is no longer wanted (the transfer failed or ended).
struct Ahead<T>(tokio::task::JoinHandle<T>);

impl<T> Ahead<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A blob being fetched into a store: where it stands, kept across tries and sources.
#[derive(Debug)]
pub struct Fetch {
    digest: Digest,
    manifest: Option<Manifest>,
    next: usize,
    hasher: Hasher,
    /// Bytes of chunks received and stored.
    pub moved: u64,
    /// Bytes of chunks received whole but refused (corrupted) and fetched again.
    pub refetched: u64,
}

impl Fetch {
    pub fn new(digest: Digest) -> Self {
        Self { digest, manifest: None, next: 0, hasher: Hasher::new(), moved: 0, refetched: 0 }
    }

    /// Chunks stored so far.
    pub fn next_chunk(&self) -> usize {
        self.next
    }

    /// Fetch what is still missing from `peer` into `into`; the blob exists in `into` when this
    /// returns `Ok`. On an error the place is kept: call again (same or another peer) to resume.
    pub async fn run(&mut self, peer: &Remote, into: &Blobs, pace: &Pace) -> Result<Manifest, TransferError> {
        self.run_from(peer, into, pace, false).await
    }

    /// [`Fetch::run`] from a server that may still be receiving the blob (the relay while the
    /// parent's cluster uploads it): chunks are fetched as they arrive there. Fails with
    /// `Refused(NotFound)` when no upload is in progress, and as unreachable when no new chunk
    /// arrives for [`STREAM_STALL`].
    pub async fn run_while_uploading(
        &mut self,
        peer: &Remote,
        into: &Blobs,
        pace: &Pace,
    ) -> Result<Manifest, TransferError> {
        self.run_from(peer, into, pace, true).await
    }

    async fn run_from(
        &mut self,
        peer: &Remote,
        into: &Blobs,
        pace: &Pace,
        streaming: bool,
    ) -> Result<Manifest, TransferError> {
        if let Some(manifest) = into.claim(&self.digest).await? {
            return Ok(manifest);
        }
        let base = format!("{}/v1/blobs/{}", peer.base, self.digest);
        let manifest: Manifest = if streaming {
            let bytes = with_tries(peer, "reading the upload", || peer.http.get(format!("{base}/upload"))).await?;
            json::<UploadProgress>(peer, "the upload", &bytes)?.manifest
        } else {
            let bytes = with_tries(peer, "reading the manifest", || peer.http.get(&base)).await?;
            json(peer, "the manifest", &bytes)?
        };
        if manifest.digest != self.digest || !manifest.is_consistent() {
            return Err(TransferError::Refused {
                addr: peer.base.clone(),
                code: None,
                message: format!("sent a manifest that does not describe {}", self.digest),
            });
        }
        if self.manifest.as_ref() != Some(&manifest) {
            // A first try, or a source that chunks the same bytes differently: from the start.
            self.manifest = Some(manifest.clone());
            self.next = 0;
            self.hasher = Hasher::new();
        }
        let started = Instant::now();
        let mut paced = 0u64;
        let get = |index: usize| {
            let (peer, url) = (peer.clone(), format!("{base}/chunks/{index}"));
            Ahead(tokio::spawn(async move {
                let what = format!("reading chunk {index}");
                let waiting = Instant::now();
                loop {
                    match with_tries(&peer, &what, || peer.http.get(&url)).await {
                        // Not arrived at the server yet: wait for it, as long as the upload moves.
                        Err(TransferError::Refused { code: Some(ErrorCode::NotFound), .. })
                            if streaming && waiting.elapsed() < STREAM_STALL =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(TransferError::Refused { code: Some(ErrorCode::NotFound), message, .. }) if streaming => {
                            return Err(TransferError::Unreachable {
                                addr: peer.base.clone(),
                                message: format!("{what}: no new chunk for {} s: {message}", STREAM_STALL.as_secs()),
                            });
                        }
                        other => return other,
                    }
                }
            }))
        };
        // One chunk is fetched ahead while the one before is verified and stored: the network,
        // the hashing and the disk overlap (two chunks in memory at most).
        let n = manifest.chunks.len();
        let mut ahead = (self.next < n).then(|| get(self.next));
        // The whole digest through the last chunk verified (ahead of `self.hasher`, which
        // covers only the chunks stored).
        let mut running = self.hasher.clone();
        // The chunk being written, in the background while the next one is verified: its
        // index, length, the whole digest through it, and the write.
        let mut storing: Option<Storing> = None;
        let mut index = self.next;
        while index < n {
            let expected = manifest.chunks[index].clone();
            let task = ahead.take().unwrap_or_else(|| get(index));
            let fetched = task.join().await.map_err(|e| TransferError::Unreachable {
                addr: peer.base.clone(),
                message: format!("reading chunk {index}: {e}"),
            });
            let mut bytes = match fetched.and_then(|r| r) {
                Ok(bytes) => bytes,
                Err(e) => {
                    // The chunk before is good: keep it, so a resumed fetch starts here.
                    if let Some((stored, len, hasher, write)) = storing.take() {
                        self.stored(write, stored, len, hasher).await?;
                    }
                    return Err(e);
                }
            };
            if index + 1 < n {
                ahead = Some(get(index + 1));
            }
            let mut corrupt = 0;
            running = loop {
                // The chunk's digest and the running whole digest, on two threads at once.
                let (chunk, whole) = (bytes.clone(), bytes.clone());
                let mut hasher = running.clone();
                let (verified, hashed) = tokio::join!(
                    tokio::task::spawn_blocking(move || Digest::of(&chunk)),
                    tokio::task::spawn_blocking(move || {
                        hasher.update(&whole);
                        hasher
                    })
                );
                let internal = |e: tokio::task::JoinError| TransferError::Unreachable {
                    addr: peer.base.clone(),
                    message: format!("hashing chunk {index}: {e}"),
                };
                if verified.map_err(internal)? == expected {
                    break hashed.map_err(internal)?;
                }
                corrupt += 1;
                self.refetched += bytes.len() as u64;
                tracing::warn!(peer = %peer.base, blob = %self.digest, chunk = index, "a chunk arrived corrupted; fetching it again");
                if corrupt >= TRIES {
                    // The chunk before is good: keep it, so a fetch from elsewhere starts here.
                    if let Some((stored, len, hasher, write)) = storing.take() {
                        self.stored(write, stored, len, hasher).await?;
                    }
                    return Err(TransferError::Corrupt {
                        addr: peer.base.clone(),
                        digest: self.digest.clone(),
                        index,
                        times: corrupt,
                    });
                }
                let url = format!("{base}/chunks/{index}");
                bytes = with_tries(peer, &format!("reading chunk {index}"), || peer.http.get(&url)).await?;
            };
            if let Some((stored, len, hasher, write)) = storing.take() {
                self.stored(write, stored, len, hasher).await?;
                paced += len;
                pace.moved(started, paced, len).await;
            }
            let len = bytes.len() as u64;
            let (blobs, digest) = (into.clone(), self.digest.clone());
            let write = Ahead(tokio::spawn(async move { blobs.store_chunk(&digest, index, bytes).await }));
            storing = Some((index, len, running.clone(), write));
            index += 1;
        }
        if let Some((stored, len, hasher, write)) = storing.take() {
            self.stored(write, stored, len, hasher).await?;
            paced += len;
            pace.moved(started, paced, len).await;
        }
        let whole = self.hasher.clone().finish();
        if whole != self.digest {
            let (addr, digest) = (peer.base.clone(), self.digest.clone());
            *self = Fetch { moved: self.moved, refetched: self.refetched, ..Fetch::new(digest.clone()) };
            return Err(TransferError::Refused {
                addr,
                code: None,
                message: format!("its chunks of {digest} hash to {whole} together"),
            });
        }
        into.put_manifest(&manifest).await?;
        Ok(manifest)
    }
}

impl Fetch {
    /// Chunk `index` was written (or the write failed): only now does the place move on.
    async fn stored(
        &mut self,
        write: Ahead<Result<(), StoreError>>,
        index: usize,
        len: u64,
        hasher: Hasher,
    ) -> Result<(), TransferError> {
        write.join().await.map_err(|e| StoreError::Config(format!("writing chunk {index}: {e}")))??;
        self.hasher = hasher;
        self.next = index + 1;
        self.moved += len;
        Ok(())
    }
}

/// Send the blob `digest` from `from` to `peer`, resuming where the peer's upload stands.
/// Returns the bytes sent.
pub async fn send(from: &Blobs, digest: &Digest, peer: &Remote, pace: &Pace) -> Result<u64, TransferError> {
    let manifest = from
        .manifest(digest)
        .await?
        .ok_or_else(|| StoreError::NotFound { digest: digest.clone(), store: from.name().to_string() })?;
    let base = format!("{}/v1/blobs/{digest}", peer.base);
    let body = serde_json::to_vec(&manifest).expect("plain data serializes");
    let mut sent = 0u64;
    let started = Instant::now();
    // A conflict (the server lost its place, or another sender got ahead) restarts from what
    // the server says; bounded so two senders cannot loop forever.
    for _round in 0..TRIES {
        let bytes = with_tries(peer, "beginning the upload", || {
            peer.http.put(&base).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone())
        })
        .await?;
        let mut state: UploadState = json(peer, "the upload state", &bytes)?;
        if state.complete {
            return Ok(sent);
        }
        let mut conflict = false;
        let read = |index: usize| {
            let (from, manifest) = (from.clone(), manifest.clone());
            Ahead(tokio::spawn(async move { (index, from.stored_chunk(&manifest, index).await) }))
        };
        // The next chunk is read from the store while this one is sent.
        let mut ahead = (state.next < manifest.chunks.len()).then(|| read(state.next));
        while state.next < manifest.chunks.len() {
            let index = state.next;
            let task = match ahead.take() {
                Some(task) => task,
                None => read(index),
            };
            let chunk = match task.join().await {
                Ok((read_index, chunk)) if read_index == index => chunk?,
                // The server asked for another chunk than the one read ahead.
                Ok(_) => from.stored_chunk(&manifest, index).await?,
                Err(e) => return Err(StoreError::Config(format!("reading chunk {index}: {e}")).into()),
            };
            if index + 1 < manifest.chunks.len() {
                ahead = Some(read(index + 1));
            }
            let url = format!("{base}/chunks/{index}");
            let mut corrupt = 0;
            let answer = loop {
                match with_tries(peer, &format!("sending chunk {index}"), || peer.http.put(&url).body(chunk.clone()))
                    .await
                {
                    // The receiver found it corrupted on the way: send it again.
                    Err(TransferError::Refused { code: Some(ErrorCode::BadRequest), .. }) if corrupt + 1 < TRIES => {
                        corrupt += 1;
                        tracing::warn!(peer = %peer.base, blob = %digest, chunk = index, "the receiver refused a chunk as corrupted; sending it again");
                    }
                    other => break other,
                }
            };
            match answer {
                Ok(bytes) => state = json(peer, "the upload state", &bytes)?,
                Err(TransferError::Refused { code: Some(ErrorCode::Conflict | ErrorCode::NotFound), .. }) => {
                    conflict = true;
                    break;
                }
                Err(e) => return Err(e),
            }
            sent += chunk.len() as u64;
            pace.moved(started, sent, chunk.len() as u64).await;
        }
        if conflict {
            continue;
        }
        match with_tries(peer, "completing the upload", || peer.http.post(format!("{base}/complete"))).await {
            Ok(_) => return Ok(sent),
            Err(TransferError::Refused { code: Some(ErrorCode::Conflict | ErrorCode::NotFound), .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(TransferError::Unreachable {
        addr: peer.base.clone(),
        message: format!("the upload of {digest} kept losing its place"),
    })
}
