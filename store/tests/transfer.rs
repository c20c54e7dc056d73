//! The blob routes and the transfer clients against each other, in process, over real HTTP on
//! 127.0.0.1, with faults injected by a layer in front of the routes: a failing or corrupted
//! answer, a server that stops answering mid-transfer. (Cuts between real replicas, in their
//! own processes, are tested in `cli/tests/t91_transfers.rs`.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use atoll_api::ApiError;
use atoll_store::Blobs;
use atoll_store::CHUNK;
use atoll_store::Digest;
use atoll_store::StorageConfig;
use atoll_store::transfer::Access;
use atoll_store::transfer::BlobService;
use atoll_store::transfer::Fetch;
use atoll_store::transfer::Guard;
use atoll_store::transfer::Pace;
use atoll_store::transfer::Remote;
use atoll_store::transfer::TransferError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use futures::future::BoxFuture;

/// Lets everything through (tickets are tested where they are checked).
struct Open;

impl Guard for Open {
    fn check<'a>(&'a self, _: Access<'a>) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Refuses everything, as a wrong ticket would be.
struct Closed;

impl Guard for Closed {
    fn check<'a>(&'a self, access: Access<'a>) -> BoxFuture<'a, Result<(), ApiError>> {
        let ticket = access.ticket.map(str::to_string);
        Box::pin(async move { Err(ApiError::forbidden(format!("refused ticket {ticket:?}"))) })
    }
}

/// Faults the layer injects.
#[derive(Default)]
struct Faults {
    /// Path suffix -> answers to fail with 503 before passing requests through.
    fail: Mutex<HashMap<String, u32>>,
    /// Path suffix -> answers whose body gets one byte flipped.
    corrupt: Mutex<HashMap<String, u32>>,
    /// Every request fails (the server is cut off).
    down: AtomicBool,
    /// Requests seen, by path.
    seen: Mutex<Vec<String>>,
}

fn take(map: &Mutex<HashMap<String, u32>>, path: &str) -> bool {
    let mut map = map.lock().unwrap();
    for (suffix, left) in map.iter_mut() {
        if path.ends_with(suffix.as_str()) && *left > 0 {
            *left -= 1;
            return true;
        }
    }
    false
}

async fn inject(faults: Arc<Faults>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    faults.seen.lock().unwrap().push(format!("{} {path}", request.method()));
    if faults.down.load(Ordering::SeqCst) || take(&faults.fail, &path) {
        return (StatusCode::SERVICE_UNAVAILABLE, "injected failure").into_response();
    }
    let response = next.run(request).await;
    if !take(&faults.corrupt, &path) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
    bytes[0] ^= 0xff;
    Response::from_parts(parts, Body::from(bytes))
}

/// A blob service on 127.0.0.1 with the fault layer; its base URL.
async fn serve(blobs: Blobs, guard: impl Guard, faults: Arc<Faults>) -> String {
    let service = BlobService::new(blobs, guard);
    let router = atoll_store::transfer::routes(service)
        .layer(axum::middleware::from_fn(move |r, n| inject(faults.clone(), r, n)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn store(dir: &Path, name: &str) -> Blobs {
    Blobs::open(&StorageConfig::local(dir.join(name))).unwrap()
}

/// A blob of `chunks` full chunks and a short tail, stored in `blobs`.
async fn blob(dir: &Path, blobs: &Blobs, chunks: usize) -> (Digest, Vec<u8>) {
    stored(dir, blobs, chunks * CHUNK + 1000, 251).await
}

/// A blob of `len` bytes (a pattern repeating every `period`), stored in `blobs`.
async fn stored(dir: &Path, blobs: &Blobs, len: usize, period: usize) -> (Digest, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % period) as u8).collect();
    let path = dir.join(format!("blob-{len}-{period}.bin"));
    std::fs::write(&path, &bytes).unwrap();
    let digest = Digest::of(&bytes);
    blobs.put_file(&path, &digest).await.unwrap();
    (digest, bytes)
}

/// Begin an upload of `digest` at `base` and send its first `n` chunks by hand, as a sender cut
/// off after them would have.
async fn upload_first(base: &str, source: &Blobs, digest: &Digest, n: usize) {
    let manifest = source.manifest(digest).await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/blobs/{digest}");
    http.put(&url).json(&manifest).send().await.unwrap().error_for_status().unwrap();
    for index in 0..n {
        let chunk = source.chunk(&manifest, index).await.unwrap();
        http.put(format!("{url}/chunks/{index}")).body(chunk).send().await.unwrap().error_for_status().unwrap();
    }
}

/// What `PUT /v1/blobs/{digest}` at `base` answers: where the upload goes on.
async fn begin_at(base: &str, source: &Blobs, digest: &Digest) -> serde_json::Value {
    let manifest = source.manifest(digest).await.unwrap().unwrap();
    let answer = reqwest::Client::new().put(format!("{base}/v1/blobs/{digest}")).json(&manifest).send().await.unwrap();
    answer.json().await.unwrap()
}

async fn read_all(blobs: &Blobs, digest: &Digest) -> Vec<u8> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut stream = blobs.read(digest, 0..u64::MAX).await.unwrap();
    while let Some(piece) = stream.next().await {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

fn remote(base: &str) -> Remote {
    Remote { http: reqwest::Client::new(), base: base.to_string(), ticket: "t".into() }
}

#[tokio::test]
async fn a_fetch_survives_failed_and_corrupted_answers_and_stores_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &source, 2).await;
    let faults = Arc::new(Faults::default());
    faults.fail.lock().unwrap().insert("/chunks/1".into(), 2);
    faults.corrupt.lock().unwrap().insert("/chunks/2".into(), 1);
    let base = serve(source, Open, faults.clone()).await;

    let mut fetch = Fetch::new(digest.clone());
    fetch.run(&remote(&base), &target, &Pace::default()).await.unwrap();
    assert_eq!(read_all(&target, &digest).await, bytes);
    // The corrupted chunk (the 1000-byte tail) was caught and fetched again; the failed one was
    // simply asked again. Nothing else was fetched twice.
    assert_eq!(fetch.refetched, 1000);
    assert_eq!(fetch.moved, bytes.len() as u64);
    let seen = faults.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|p| p.ends_with("/chunks/1")).count(), 3, "{seen:?}");
    assert_eq!(seen.iter().filter(|p| p.ends_with("/chunks/0")).count(), 1, "{seen:?}");
}

#[tokio::test]
async fn a_fetch_cut_off_mid_transfer_resumes_from_another_source_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (direct, relay, target) = (store(dir.path(), "a"), store(dir.path(), "relay"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &direct, 3).await;
    blob(dir.path(), &relay, 3).await;
    // The direct source goes down for good after its first two chunks.
    let faults = Arc::new(Faults::default());
    faults.fail.lock().unwrap().insert("/chunks/2".into(), u32::MAX);
    let direct_base = serve(direct, Open, faults.clone()).await;
    let relay_faults = Arc::new(Faults::default());
    let relay_base = serve(relay, Open, relay_faults.clone()).await;

    let mut fetch = Fetch::new(digest.clone());
    let err = fetch.run(&remote(&direct_base), &target, &Pace::default()).await.unwrap_err();
    assert!(matches!(err, TransferError::Unreachable { .. }) && err.is_path_failure(), "{err}");
    assert_eq!(fetch.next_chunk(), 2);
    assert!(target.manifest(&digest).await.unwrap().is_none(), "nothing exists before it is whole");

    fetch.run(&remote(&relay_base), &target, &Pace::default()).await.unwrap();
    assert_eq!(read_all(&target, &digest).await, bytes);
    // Only what was missing came from the relay: no byte was sent twice.
    assert_eq!(fetch.moved, bytes.len() as u64);
    let relayed: Vec<String> =
        relay_faults.seen.lock().unwrap().iter().filter(|p| p.contains("/chunks/")).cloned().collect();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert!(relayed.iter().all(|p| p.ends_with("/chunks/2") || p.ends_with("/chunks/3")), "{relayed:?}");
}

#[tokio::test]
async fn a_send_resumes_after_failures_and_the_receiver_verifies_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &source, 2).await;
    let faults = Arc::new(Faults::default());
    faults.fail.lock().unwrap().insert("/chunks/1".into(), 3);
    let base = serve(target.clone(), Open, faults.clone()).await;

    let sent = atoll_store::transfer::send(&source, &digest, &remote(&base), &Pace::default()).await.unwrap();
    assert_eq!(sent, bytes.len() as u64);
    assert_eq!(read_all(&target, &digest).await, bytes);
    // Sending again finds it complete and sends nothing.
    assert_eq!(atoll_store::transfer::send(&source, &digest, &remote(&base), &Pace::default()).await.unwrap(), 0);

    // A sender whose connection broke asks where the upload stands and goes on from there.
    let (other, other_bytes) = stored(dir.path(), &source, CHUNK + 10, 13).await;
    let manifest = source.manifest(&other).await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/blobs/{other}");
    let state: serde_json::Value = http.put(&url).json(&manifest).send().await.unwrap().json().await.unwrap();
    assert_eq!(state["next"], 0);
    let first = source.chunk(&manifest, 0).await.unwrap();
    assert!(http.put(format!("{url}/chunks/0")).body(first).send().await.unwrap().status().is_success());
    // Out of order: refused with where to go on from.
    let status = http.put(format!("{url}/chunks/0")).body(vec![0u8; 10]).send().await.unwrap().status();
    assert!(status.is_success(), "an already received chunk is acknowledged");
    let early = http.post(format!("{url}/complete")).send().await.unwrap();
    assert_eq!(early.status(), StatusCode::CONFLICT);
    // A corrupted chunk is refused and nothing is stored under the digest.
    let corrupted = http.put(format!("{url}/chunks/1")).body(vec![0u8; 10]).send().await.unwrap();
    assert_eq!(corrupted.status(), StatusCode::BAD_REQUEST);
    assert!(target.manifest(&other).await.unwrap().is_none());
    let resumed = atoll_store::transfer::send(&source, &other, &remote(&base), &Pace::default()).await.unwrap();
    assert_eq!(resumed, 10, "only the missing chunk is sent");
    assert_eq!(read_all(&target, &other).await, other_bytes);
}

#[tokio::test]
async fn an_upload_goes_on_after_the_receiver_restarts_from_the_chunks_it_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &source, 3).await;
    let size = bytes.len() as u64;
    let before = serve(target.clone(), Open, Arc::new(Faults::default())).await;
    upload_first(&before, &source, &digest, 2).await;

    // A new server on the same store (the receiver restarted): it goes on after chunk 1.
    let after = serve(target.clone(), Open, Arc::new(Faults::default())).await;
    let state = begin_at(&after, &source, &digest).await;
    assert_eq!((state["next"].as_u64(), state["complete"].as_bool()), (Some(2), Some(false)));
    let sent = atoll_store::transfer::send(&source, &digest, &remote(&after), &Pace::default()).await.unwrap();
    assert_eq!(sent, size - 2 * CHUNK as u64, "only the chunks it lacked are sent");
    assert_eq!(read_all(&target, &digest).await, bytes);

    // A stored chunk that no longer verifies is where the next upload starts again.
    let (other, other_bytes) = stored(dir.path(), &source, 2 * CHUNK + 5, 17).await;
    upload_first(&before, &source, &other, 2).await;
    let damaged = dir.path().join("b/sha256").join(other.hex()).join("00000001");
    assert!(damaged.exists(), "chunks are stored at {}", damaged.display());
    std::fs::write(&damaged, b"damaged on disk").unwrap();
    let restarted = serve(target.clone(), Open, Arc::new(Faults::default())).await;
    assert_eq!(
        begin_at(&restarted, &source, &other).await["next"].as_u64(),
        Some(1),
        "the damaged chunk is sent again"
    );
    let sent = atoll_store::transfer::send(&source, &other, &remote(&restarted), &Pace::default()).await.unwrap();
    assert_eq!(sent, other_bytes.len() as u64 - CHUNK as u64);
    assert_eq!(read_all(&target, &other).await, other_bytes);
}

#[tokio::test]
async fn a_refused_ticket_is_a_clear_refusal_not_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, _) = blob(dir.path(), &source, 0).await;
    let faults = Arc::new(Faults::default());
    let base = serve(source.clone(), Closed, faults.clone()).await;
    let err = Fetch::new(digest.clone()).run(&remote(&base), &target, &Pace::default()).await.unwrap_err();
    assert!(matches!(&err, TransferError::Refused { message, .. } if message.contains("refused ticket")), "{err}");
    let err = atoll_store::transfer::send(&source, &digest, &remote(&base), &Pace::default()).await.unwrap_err();
    assert!(matches!(err, TransferError::Refused { .. }), "{err}");
    assert_eq!(faults.seen.lock().unwrap().len(), 2, "asked once each, not retried");
}

#[tokio::test]
async fn a_paced_fetch_keeps_to_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &source, 1).await;
    let base = serve(source, Open, Arc::new(Faults::default())).await;
    let limit = 40 * 1024 * 1024;
    let started = std::time::Instant::now();
    Fetch::new(digest.clone()).run(&remote(&base), &target, &Pace::limited(Some(limit))).await.unwrap();
    // A lower bound only (pacing never speeds anything up).
    assert!(started.elapsed().as_secs_f64() >= bytes.len() as f64 / limit as f64 * 0.95);
}

#[tokio::test]
async fn a_fetch_streams_from_an_upload_still_arriving() {
    let dir = tempfile::tempdir().unwrap();
    let (source, relay, target) = (store(dir.path(), "a"), store(dir.path(), "relay"), store(dir.path(), "b"));
    let (digest, bytes) = blob(dir.path(), &source, 2).await;
    let base = serve(relay.clone(), Open, Arc::new(Faults::default())).await;

    // Nothing uploaded yet: a clear not-found, for the caller to wait on.
    let err =
        Fetch::new(digest.clone()).run_while_uploading(&remote(&base), &target, &Pace::default()).await.unwrap_err();
    assert!(matches!(err, TransferError::Refused { code: Some(atoll_api::ErrorCode::NotFound), .. }), "{err}");

    // The upload begins with one chunk; the fetch starts; the rest arrives while it waits.
    let manifest = source.manifest(&digest).await.unwrap().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/blobs/{digest}");
    http.put(&url).json(&manifest).send().await.unwrap().error_for_status().unwrap();
    let first = source.chunk(&manifest, 0).await.unwrap();
    http.put(format!("{url}/chunks/0")).body(first).send().await.unwrap().error_for_status().unwrap();
    let fetching = {
        let (target, digest, base) = (target.clone(), digest.clone(), base.clone());
        tokio::spawn(async move {
            let mut fetch = Fetch::new(digest);
            fetch.run_while_uploading(&remote(&base), &target, &Pace::default()).await.map(|_| fetch.moved)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!fetching.is_finished(), "it waits for the chunks still missing");
    for index in 1..manifest.chunks.len() {
        let chunk = source.chunk(&manifest, index).await.unwrap();
        http.put(format!("{url}/chunks/{index}")).body(chunk).send().await.unwrap().error_for_status().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let moved = fetching.await.unwrap().unwrap();
    assert_eq!(moved, bytes.len() as u64);
    assert_eq!(read_all(&target, &digest).await, bytes, "whole and verified before the relay completed");
    assert!(relay.manifest(&digest).await.unwrap().is_none(), "the relay's own copy is not complete yet");
}

#[tokio::test]
async fn a_chunk_damaged_in_the_serving_store_is_caught_by_the_receiver_and_nothing_is_stored() {
    // Served and sent chunks are hashed once, where they land: the receiver's check is the one
    // that catches a chunk damaged on the sender's disk, on a fetch and on a send alike.
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (store(dir.path(), "a"), store(dir.path(), "b"));
    let (digest, _) = blob(dir.path(), &source, 1).await;
    let on_disk = dir.path().join("a/sha256").join(digest.hex()).join("00000001");
    let mut damaged = std::fs::read(&on_disk).unwrap();
    damaged[7] ^= 0xff;
    std::fs::write(&on_disk, &damaged).unwrap();

    let base = serve(source.clone(), Open, Arc::new(Faults::default())).await;
    let mut fetch = Fetch::new(digest.clone());
    let err = fetch.run(&remote(&base), &target, &Pace::default()).await.unwrap_err();
    assert!(matches!(err, TransferError::Corrupt { index: 1, .. }), "{err}");
    assert_eq!(fetch.next_chunk(), 1, "the good chunk before it is kept");
    assert!(target.manifest(&digest).await.unwrap().is_none());

    let receiver = serve(target.clone(), Open, Arc::new(Faults::default())).await;
    let err = atoll_store::transfer::send(&source, &digest, &remote(&receiver), &Pace::default()).await.unwrap_err();
    assert!(err.to_string().contains("chunk 1"), "{err}");
    assert!(target.manifest(&digest).await.unwrap().is_none());
}
