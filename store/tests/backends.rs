//! Every storage backend against a real server: local files, S3 (moto server), GCS
//! (gcp-storage-emulator), Azure (azurite). `scripts/test` starts the servers and sets
//! `ATOLL_TEST_S3_URL`, `ATOLL_TEST_GCS_URL`, `ATOLL_TEST_AZURE_URL`; without them these tests
//! fail, naming the variable (they never pass quietly).

use std::path::Path;
use std::time::Duration;
use std::time::SystemTime;

use atoll_store::Blobs;
use atoll_store::CHUNK;
use atoll_store::Digest;
use atoll_store::StorageConfig;
use atoll_store::StoreError;
use futures::StreamExt;

/// The well-known development key every azurite accepts.
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn server(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run these tests through scripts/test, which starts the object-store servers")
    })
}

/// A fresh key prefix per run, so runs never see each other's blobs.
fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("run-{}-{nanos}", std::process::id())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> (std::path::PathBuf, Digest) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    (path, Digest::of(bytes))
}

/// Bytes that differ everywhere (a repeated pattern would hide misplaced parts).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn read_all(blobs: &Blobs, digest: &Digest, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut stream = blobs.read(digest, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn size(blobs: &Blobs, digest: &Digest) -> Option<u64> {
    blobs.manifest(digest).await.unwrap().map(|m| m.size)
}

/// What every backend must do.
async fn exercise(blobs: Blobs) {
    let began = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    blobs.check().await.unwrap();

    // Small: one request.
    let small_bytes = b"the output of a job".to_vec();
    let (small, small_digest) = write(dir.path(), "small", &small_bytes);
    assert_eq!(size(&blobs, &small_digest).await, None);
    let stored = blobs.put_file(&small, &small_digest).await.unwrap();
    assert_eq!(
        (stored.manifest.size, stored.manifest.chunks.len(), stored.existed),
        (small_bytes.len() as u64, 1, false)
    );
    assert_eq!(size(&blobs, &small_digest).await, Some(small_bytes.len() as u64));
    assert!(blobs.put_file(&small, &small_digest).await.unwrap().existed, "stored once by digest");
    assert_eq!(read_all(&blobs, &small_digest, 4..10).await, &small_bytes[4..10]);

    // Large: several parts, read back whole and in a range across a part boundary.
    let big_bytes = pseudo_random(2 * CHUNK + 12_345, 7);
    let (big, big_digest) = write(dir.path(), "big", &big_bytes);
    let stored = blobs.put_file(&big, &big_digest).await.unwrap();
    assert_eq!((stored.manifest.size, stored.manifest.chunks.len()), (big_bytes.len() as u64, 3));
    assert_eq!(blobs.manifest(&big_digest).await.unwrap().unwrap(), stored.manifest);
    let across = (CHUNK as u64 - 100)..(CHUNK as u64 + 100);
    assert_eq!(
        read_all(&blobs, &big_digest, across.clone()).await,
        &big_bytes[across.start as usize..across.end as usize]
    );
    let fetched = dir.path().join("fetched");
    assert_eq!(blobs.fetch_to_file(&big_digest, &fetched).await.unwrap(), big_bytes.len() as u64);
    assert!(std::fs::read(&fetched).unwrap() == big_bytes, "the fetched copy differs");

    // Bytes that do not match the digest are refused, small or large, and nothing is stored.
    let (other, _) = write(dir.path(), "other", b"something else");
    let claimed = Digest::of(b"not these bytes");
    match blobs.put_file(&other, &claimed).await {
        Err(StoreError::DigestMismatch { expected, .. }) => assert_eq!(expected, claimed),
        other => panic!("a mismatched upload was not refused: {other:?}"),
    }
    assert_eq!(size(&blobs, &claimed).await, None);
    let big_claimed = Digest::of(b"not the big bytes");
    assert!(matches!(blobs.put_file(&big, &big_claimed).await, Err(StoreError::DigestMismatch { .. })));
    assert_eq!(size(&blobs, &big_claimed).await, None);

    // Missing blobs are a clear error; deleting is idempotent.
    let missing = Digest::of(b"never stored");
    match blobs.read(&missing, 0..10).await {
        Err(StoreError::NotFound { digest, .. }) => assert_eq!(digest, missing),
        Err(e) => panic!("reading a missing blob: {e}"),
        Ok(_) => panic!("reading a missing blob succeeded"),
    }
    assert!(matches!(blobs.fetch_to_file(&missing, &dir.path().join("m")).await, Err(StoreError::NotFound { .. })));
    assert!(!dir.path().join("m").exists() && !dir.path().join(".m.partial").exists());

    // Retention: both blobs are listed; a removal keeps what was written or claimed after its
    // cutoff, and takes the rest whole (a second time finds nothing).
    let held = blobs.inventory().await.unwrap();
    for digest in [&small_digest, &big_digest] {
        assert!(held.iter().any(|h| &h.digest == digest && h.complete), "{digest} not in the inventory: {held:?}");
    }
    assert!(!blobs.remove_if_older(&small_digest, began).await.unwrap(), "written after the cutoff: kept");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let cutoff = SystemTime::now();
    assert!(blobs.claim(&big_digest).await.unwrap().is_some());
    assert!(!blobs.remove_if_older(&big_digest, cutoff).await.unwrap(), "claimed after the cutoff: kept");
    assert!(blobs.remove_if_older(&small_digest, cutoff).await.unwrap());
    assert!(!blobs.remove_if_older(&small_digest, cutoff).await.unwrap());
    assert_eq!(size(&blobs, &small_digest).await, None);
    assert!(blobs.remove_if_older(&big_digest, SystemTime::now() + Duration::from_secs(5)).await.unwrap());
    assert_eq!(size(&blobs, &big_digest).await, None);
    let held = blobs.inventory().await.unwrap();
    assert!(held.iter().all(|h| h.digest != small_digest && h.digest != big_digest), "left behind: {held:?}");
    // An empty file is a blob with no chunks.
    let (empty, empty_digest) = write(dir.path(), "empty", b"");
    assert_eq!(blobs.put_file(&empty, &empty_digest).await.unwrap().manifest.chunks.len(), 0);
    assert_eq!(blobs.fetch_to_file(&empty_digest, &dir.path().join("e")).await.unwrap(), 0);
    assert!(read_all(&blobs, &empty_digest, 0..10).await.is_empty());
}

#[tokio::test]
async fn local_files() {
    let dir = tempfile::tempdir().unwrap();
    exercise(Blobs::open(&StorageConfig::local(dir.path().join("blobs"))).unwrap()).await;
}

#[tokio::test]
async fn a_corrupted_local_blob_is_caught_when_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(&StorageConfig::local(dir.path().join("blobs"))).unwrap();
    let (file, digest) = write(dir.path(), "out", &pseudo_random(CHUNK + 100_000, 3));
    let manifest = blobs.put_file(&file, &digest).await.unwrap().manifest;
    let stored = dir.path().join("blobs/sha256").join(digest.hex()).join("00000001");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[50_000] ^= 1;
    std::fs::write(&stored, bytes).unwrap();
    assert!(blobs.chunk(&manifest, 0).await.is_ok(), "the intact chunk reads");
    match blobs.chunk(&manifest, 1).await {
        Err(StoreError::DigestMismatch { expected, .. }) => assert_eq!(expected, manifest.chunks[1]),
        other => panic!("a corrupted chunk went unnoticed: {other:?}"),
    }
    let dest = dir.path().join("copy");
    match blobs.fetch_to_file(&digest, &dest).await {
        Err(StoreError::DigestMismatch { expected, .. }) => assert_eq!(expected, manifest.chunks[1]),
        other => panic!("corruption went unnoticed: {other:?}"),
    }
    assert!(!dest.exists(), "nothing is left where the copy would go");
}

#[tokio::test]
async fn s3_on_moto() {
    let config = StorageConfig::S3 {
        bucket: "atoll-test".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(server("ATOLL_TEST_S3_URL")),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
        prefix: run_prefix(),
    };
    exercise(Blobs::open(&config).unwrap()).await;
}

#[tokio::test]
async fn gcs_on_its_emulator() {
    let config = StorageConfig::Gcs {
        // The emulator routes only unescaped bucket names; a dash would be sent as %2D.
        bucket: "atolltest".into(),
        endpoint: Some(server("ATOLL_TEST_GCS_URL")),
        service_account_file: None,
        anonymous: true,
        prefix: run_prefix(),
    };
    exercise(Blobs::open(&config).unwrap()).await;
}

#[tokio::test]
async fn azure_on_azurite() {
    let config = StorageConfig::Azure {
        account: "devstoreaccount1".into(),
        container: "atoll-test".into(),
        access_key: Some(AZURITE_KEY.into()),
        endpoint: Some(server("ATOLL_TEST_AZURE_URL")),
        allow_http: true,
        prefix: run_prefix(),
    };
    exercise(Blobs::open(&config).unwrap()).await;
}

#[tokio::test]
async fn an_unreachable_store_is_a_clear_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = StorageConfig::S3 {
        bucket: "atoll-test".into(),
        region: None,
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        allow_http: true,
        prefix: String::new(),
    };
    let blobs = Blobs::open(&config).unwrap();
    let err = tokio::time::timeout(std::time::Duration::from_secs(120), blobs.check())
        .await
        .expect("the check gives up in bounded time")
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("s3 bucket \"atoll-test\"") && text.contains("reaching the store"), "{text}");
}
