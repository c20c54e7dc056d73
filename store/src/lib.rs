//! Content-addressed blob storage for job outputs and pushed sources.
//!
//! A blob is stored under its SHA-256 ([`Digest`]) in one object store: the local filesystem
//! (the default, every write fsync'd), S3, Google Cloud Storage or Azure Blob Storage
//! ([`StorageConfig`]). Clusters and the gateway may each use a different backend; they only
//! exchange digests and bytes.
//!
//! A blob is stored as numbered chunks of at most [`CHUNK`] bytes (`sha256/<hex>/<n>`), each
//! written with one plain PUT, and then its [`Manifest`] (`sha256/<hex>/manifest`: digest, size,
//! the digest of every chunk), written last: a blob exists once its manifest does. Chunks are
//! what transfers resume by and what a reader verifies one by one (a corrupted chunk is found
//! before the whole blob is read); the whole digest is verified at the end. Plain PUT and ranged
//! GET are all a store must offer, so every backend and every compatible server works the same.
//!
//! Memory stays bounded whatever the size: at most [`CHUNKS_IN_FLIGHT`] chunks are buffered while
//! uploading, one while reading. An upload whose bytes do not hash to the digest it is meant to
//! be stored under is refused before its manifest is written (nothing is stored under the
//! digest); a download to a file is verified before it is renamed into place.

pub mod archive;
mod backend;
pub mod config;
mod digest;
pub mod transfer;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

pub use config::StorageConfig;
pub use config::StorageFile;
pub use digest::Digest;
pub use digest::Hasher;
pub use digest::InvalidDigest;

/// Most bytes in one chunk.
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Most chunks of one upload buffered or in flight at once.
pub const CHUNKS_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {digest} is not in {store}")]
    NotFound { digest: Digest, store: String },
    #[error("the bytes of {what} hash to {actual}, not {expected}; nothing was stored")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("{store}: {action}: {source}")]
    Backend {
        store: String,
        action: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{store}: the manifest of {digest} is unreadable: {message}")]
    BadManifest { store: String, digest: Digest, message: String },
    #[error("storage is misconfigured: {0}")]
    Config(String),
}

impl StoreError {
    fn io(path: &FsPath, source: std::io::Error) -> Self {
        StoreError::Io { path: path.display().to_string(), source }
    }
}

/// What a blob is made of: recorded in Raft for outputs, sent ahead of every transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub digest: Digest,
    pub size: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u64,
    /// The digest of each chunk, in order.
    pub chunks: Vec<Digest>,
}

impl Manifest {
    /// The byte range of chunk `index`.
    pub fn chunk_range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.size)
    }

    /// Whether the layout is consistent (sizes and count agree).
    pub fn is_consistent(&self) -> bool {
        self.chunk_size > 0
            && self.chunks.len() as u64 == self.size.div_ceil(self.chunk_size)
            && self.chunk_size <= CHUNK as u64
    }
}

/// What [`Blobs::put_file`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub manifest: Manifest,
    /// The blob was there already: nothing was uploaded.
    pub existed: bool,
}

/// A blob (or the chunks of an unfinished one) found in a store by [`Blobs::inventory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub digest: Digest,
    /// Its manifest is there.
    pub complete: bool,
    /// When its newest object was written.
    pub newest: SystemTime,
}

/// One object store holding blobs by digest.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<backend::Backend>,
    prefix: Path,
    name: Arc<str>,
    /// Writes hold it shared, a removal exclusively: a blob is never removed in the middle of
    /// a write that relies on it (see [`Blobs::remove_if_older`]).
    writes: Arc<tokio::sync::RwLock<()>>,
    /// The directory of a local store (where a killed writer may leave temporary files).
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs").field("store", &self.name).field("prefix", &self.prefix.as_ref()).finish()
    }
}

impl Blobs {
    /// Open the configured store (no request is made; see [`Blobs::check`]).
    pub fn open(config: &StorageConfig) -> Result<Self, StoreError> {
        let (store, prefix, name) = config.build()?;
        let local_root = match config {
            StorageConfig::Local { path, .. } => Some(path.clone()),
            _ => None,
        };
        Ok(Self { store: Arc::new(store), prefix, name: name.into(), writes: Arc::default(), local_root })
    }

    /// How this store is named in messages (`local /var/lib/atoll/blobs`, `s3 bucket "b"`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One cheap request that fails clearly when the store is unreachable or refuses the
    /// credentials.
    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = self.prefix.clone().join("atoll-check");
        match self.store.get(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.backend("reaching the store", source)),
        }
    }

    fn dir(&self, digest: &Digest) -> Path {
        self.prefix.clone().join("sha256").join(digest.hex())
    }

    fn manifest_key(&self, digest: &Digest) -> Path {
        self.dir(digest).join("manifest")
    }

    fn chunk_key(&self, digest: &Digest, index: usize) -> Path {
        self.dir(digest).join(format!("{index:08}"))
    }

    fn backend(&self, action: impl Into<String>, source: object_store::Error) -> StoreError {
        StoreError::Backend { store: self.name.to_string(), action: action.into(), source }
    }

    /// The blob's manifest, or `None` when it is not (completely) stored.
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let bytes = match self.store.get(&self.manifest_key(digest)).await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(self.backend(format!("looking up {digest}"), source)),
        };
        let bad =
            |message: String| StoreError::BadManifest { store: self.name.to_string(), digest: digest.clone(), message };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if &manifest.digest != digest || !manifest.is_consistent() {
            return Err(bad("its digest or chunk layout does not match".into()));
        }
        Ok(Some(manifest))
    }

    /// Store chunk `index` of `blob`, its bytes already verified by the caller.
    pub(crate) async fn store_chunk(&self, blob: &Digest, index: usize, bytes: Bytes) -> Result<(), StoreError> {
        let _writing = self.writes.read().await;
        self.store_chunk_unguarded(blob, index, bytes).await
    }

    async fn store_chunk_unguarded(&self, blob: &Digest, index: usize, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&self.chunk_key(blob, index), bytes)
            .await
            .map_err(|e| self.backend(format!("storing chunk {index} of {blob}"), e))?;
        Ok(())
    }

    /// Complete a blob whose chunks are all stored: its manifest is written last.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let _writing = self.writes.read().await;
        self.put_manifest_unguarded(manifest).await
    }

    async fn put_manifest_unguarded(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let body = serde_json::to_vec(manifest).map_err(|e| StoreError::Config(e.to_string()))?;
        self.store
            .put(&self.manifest_key(&manifest.digest), Bytes::from(body))
            .await
            .map_err(|e| self.backend(format!("storing the manifest of {}", manifest.digest), e))?;
        Ok(())
    }

    /// Chunk `index` of the blob described by `manifest`, verified against its digest.
    pub async fn chunk(&self, manifest: &Manifest, index: usize) -> Result<Bytes, StoreError> {
        let digest = &manifest.digest;
        let expected = manifest.chunks.get(index).ok_or_else(|| StoreError::BadManifest {
            store: self.name.to_string(),
            digest: digest.clone(),
            message: format!("it has no chunk {index}"),
        })?;
        let bytes = self.stored_chunk(manifest, index).await?;
        let actual = Digest::of(&bytes);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                what: format!("chunk {index} of {digest} in {}", self.name),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Chunk `index` as stored, **not verified**: only for handing to a peer that verifies every
    /// chunk against the manifest before it uses or stores it (every transfer's receiver does),
    /// so each byte is hashed once per hop, where it lands, not at both ends.
    pub async fn stored_chunk(&self, manifest: &Manifest, index: usize) -> Result<Bytes, StoreError> {
        let digest = &manifest.digest;
        match self.store.get(&self.chunk_key(digest, index)).await {
            Ok(bytes) => Ok(bytes),
            Err(object_store::Error::NotFound { .. }) => {
                Err(StoreError::NotFound { digest: digest.clone(), store: self.name.to_string() })
            }
            Err(source) => Err(self.backend(format!("reading chunk {index} of {digest}"), source)),
        }
    }

    /// Store the file at `file` under `digest`, chunk by chunk, hashing it on the way; refused
    /// (no manifest written) when its bytes do not hash to `digest`. A blob already stored is
    /// not uploaded again.
    pub async fn put_file(&self, file: &FsPath, digest: &Digest) -> Result<Stored, StoreError> {
        let _writing = self.writes.read().await;
        if let Some(manifest) = self.claim_unguarded(digest).await? {
            return Ok(Stored { manifest, existed: true });
        }
        let mut f = tokio::fs::File::open(file).await.map_err(|e| StoreError::io(file, e))?;
        let mut whole = Hasher::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut in_flight = futures::stream::FuturesOrdered::new();
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut f).take(CHUNK as u64).read_to_end(&mut buf).await.map_err(|e| StoreError::io(file, e))?;
            if n == 0 {
                break;
            }
            whole.update(&buf);
            size += n as u64;
            let index = chunks.len();
            chunks.push(Digest::of(&buf));
            let this = self.clone();
            let blob = digest.clone();
            in_flight.push_back(async move { this.store_chunk_unguarded(&blob, index, Bytes::from(buf)).await });
            while in_flight.len() >= CHUNKS_IN_FLIGHT {
                in_flight.next().await.expect("not empty")?;
            }
        }
        while let Some(done) = in_flight.next().await {
            done?;
        }
        let actual = whole.finish();
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                what: file.display().to_string(),
                expected: digest.clone(),
                actual,
            });
        }
        let manifest = Manifest { digest: digest.clone(), size, chunk_size: CHUNK as u64, chunks };
        self.put_manifest_unguarded(&manifest).await?;
        Ok(Stored { manifest, existed: false })
    }

    fn missing(&self, digest: &Digest) -> StoreError {
        StoreError::NotFound { digest: digest.clone(), store: self.name.to_string() }
    }

    /// The bytes of `range` of the blob (clamped to its size), chunk by chunk, each verified.
    pub async fn read(
        &self,
        digest: &Digest,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let manifest = self.manifest(digest).await?.ok_or_else(|| self.missing(digest))?;
        let end = range.end.min(manifest.size);
        let start = range.start.min(end);
        let first = (start / manifest.chunk_size) as usize;
        let this = self.clone();
        let chunks = if start == end { 0..0 } else { first..end.div_ceil(manifest.chunk_size) as usize };
        Ok(futures::stream::iter(chunks)
            .then(move |index| {
                let (this, manifest) = (this.clone(), manifest.clone());
                async move {
                    let bytes = this.chunk(&manifest, index).await?;
                    let at = manifest.chunk_range(index).start;
                    let from = start.max(at) - at;
                    let to = end.min(at + bytes.len() as u64) - at;
                    Ok(bytes.slice(from as usize..to as usize))
                }
            })
            .boxed())
    }

    /// Copy the blob into `dest`: written to a temp file beside it, verified chunk by chunk and
    /// whole, fsync'd, renamed. A corrupted blob is an error and leaves nothing at `dest`.
    pub async fn fetch_to_file(&self, digest: &Digest, dest: &FsPath) -> Result<u64, StoreError> {
        let temp = temp_beside(dest);
        let result = async {
            let mut stream = self.read(digest, 0..u64::MAX).await?;
            let mut out = tokio::fs::File::create(&temp).await.map_err(|e| StoreError::io(&temp, e))?;
            let mut hasher = Hasher::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                out.write_all(&chunk).await.map_err(|e| StoreError::io(&temp, e))?;
            }
            let actual = hasher.finish();
            if &actual != digest {
                return Err(StoreError::DigestMismatch {
                    what: format!("blob {digest} in {}", self.name),
                    expected: digest.clone(),
                    actual,
                });
            }
            out.sync_all().await.map_err(|e| StoreError::io(&temp, e))?;
            tokio::fs::rename(&temp, dest).await.map_err(|e| StoreError::io(dest, e))?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    /// The blob's manifest when it is stored, written again so that its retention counts from
    /// now: whoever finds a blob already there and relies on it (a second output with the same
    /// bytes, an upload or fetch of a blob already held) claims it, so a removal deciding on
    /// an older listing leaves it alone.
    pub async fn claim(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let _writing = self.writes.read().await;
        self.claim_unguarded(digest).await
    }

    async fn claim_unguarded(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let manifest = self.manifest(digest).await?;
        if let Some(manifest) = &manifest {
            self.put_manifest_unguarded(manifest).await?;
        }
        Ok(manifest)
    }

    /// Every blob in the store, finished or not, with when its newest object was written.
    /// Objects that are not a blob's are left out.
    pub async fn inventory(&self) -> Result<Vec<Held>, StoreError> {
        let root = self.prefix.clone().join("sha256");
        let objects = self.store.list(&root).await.map_err(|e| self.backend("listing the blobs", e))?;
        let mut blobs: BTreeMap<String, (bool, SystemTime)> = BTreeMap::new();
        for (key, written) in objects {
            let mut parts = key.prefix_match(&root).into_iter().flatten();
            let (Some(dir), Some(name), None) = (parts.next(), parts.next(), parts.next()) else { continue };
            let entry = blobs.entry(dir.as_ref().to_string()).or_insert((false, SystemTime::UNIX_EPOCH));
            entry.0 |= name.as_ref() == "manifest";
            entry.1 = entry.1.max(written);
        }
        Ok(blobs
            .into_iter()
            .filter_map(|(hex, (complete, newest))| {
                let digest: Digest = format!("sha256:{hex}").parse().ok()?;
                Some(Held { digest, complete, newest })
            })
            .collect())
    }

    /// Remove the blob (finished or not) when none of its objects was written after `cutoff`
    /// (less a second: some stores keep times to the second):
    /// its manifest first (it stops existing), then its chunks. Writes wait meanwhile, and a
    /// blob claimed or written since it was listed stays. Whether anybody still needs it is
    /// the caller's decision. Returns whether it was removed.
    pub async fn remove_if_older(&self, digest: &Digest, cutoff: SystemTime) -> Result<bool, StoreError> {
        let _removing = self.writes.write().await;
        let dir = self.dir(digest);
        let mut objects =
            self.store.list(&dir).await.map_err(|e| self.backend(format!("listing the objects of {digest}"), e))?;
        // A second of slack: some stores keep times to the second.
        if objects.is_empty() || objects.iter().any(|(_, written)| *written + Duration::from_secs(1) > cutoff) {
            return Ok(false);
        }
        let manifest = self.manifest_key(digest);
        objects.sort_by_key(|(key, _)| *key != manifest);
        for (key, _) in objects {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.backend(format!("removing {key}"), e)),
            }
        }
        Ok(true)
    }
}

impl Blobs {
    /// Remove the temporary files a local store's writer leaves beside an object when it is
    /// killed mid-write (`name#N`; listings never show them) that were not written since
    /// `cutoff`, and the blob directories that leaves empty. Other stores keep no such files.
    /// Returns how many files went.
    /// Writes wait meanwhile: a writer makes a blob's directory before its first file, and an
    /// empty directory removed between the two would fail the write (as the chaos suite saw:
    /// `Unable to sync data to disk for .../sha256/<hex>`).
    pub async fn remove_stale_temp_files(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        let Some(root) = self.local_root.clone() else { return Ok(0) };
        let _removing = self.writes.write().await;
        let root = root.join("sha256");
        let walked = root.clone();
        tokio::task::spawn_blocking(move || remove_stale_temp_files(&walked, cutoff))
            .await
            .map_err(|e| StoreError::io(&root, std::io::Error::other(e)))?
    }
}

/// `root/<hex>/<name>#<digits>` older than `cutoff`, removed (blocking).
fn remove_stale_temp_files(root: &FsPath, cutoff: SystemTime) -> Result<u64, StoreError> {
    let read = |dir: &FsPath| match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(Result::ok).collect::<Vec<_>>()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::io(dir, e)),
    };
    let mut removed = 0;
    for blob in read(root)? {
        let dir = blob.path();
        if !blob.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mut left = 0;
        for entry in read(&dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temp = name.rsplit_once('#').is_some_and(|(object, n)| {
                !object.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            });
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|at| at < cutoff);
            if temp && old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(&entry.path(), e)),
                }
            } else {
                left += 1;
            }
        }
        if left == 0 {
            // Only when empty; a writer that just made it may have put something in since.
            let _ = std::fs::remove_dir(&dir);
        }
    }
    Ok(removed)
}

/// `dir/.name.partial` for `dir/name`.
fn temp_beside(dest: &FsPath) -> std::path::PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn removing_stale_temporary_files_waits_for_the_writes_going_on() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&StorageConfig::local(dir.path().join("blobs"))).unwrap();
        // A writer in the middle of a put (it holds the writes' lock shared for the whole put).
        let writing = blobs.writes.clone().read_owned().await;
        let removal = tokio::spawn({
            let blobs = blobs.clone();
            async move { blobs.remove_stale_temp_files(SystemTime::now()).await }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        // Queued for the lock exclusively: new writes wait behind it, the going one is not cut.
        assert!(blobs.writes.try_read().is_err(), "the removal waits for the write");
        assert!(!removal.is_finished());
        drop(writing);
        removal.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_unfinished_upload_is_listed_and_removed_whole_and_its_directory_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&StorageConfig::local(dir.path().join("blobs"))).unwrap();
        let digest = Digest::of(b"never finished");
        blobs.store_chunk(&digest, 0, Bytes::from_static(b"part")).await.unwrap();
        blobs.store_chunk(&digest, 1, Bytes::from_static(b"more")).await.unwrap();
        let held = blobs.inventory().await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((&held[0].digest, held[0].complete), (&digest, false));
        assert!(held[0].newest <= SystemTime::now());
        let later = SystemTime::now() + Duration::from_secs(5);
        assert!(blobs.remove_if_older(&digest, later).await.unwrap());
        assert!(blobs.inventory().await.unwrap().is_empty());
        assert!(!dir.path().join("blobs/sha256").join(digest.hex()).exists(), "its directory is left");
    }

    #[tokio::test]
    async fn temporary_files_a_killed_writer_left_go_once_old_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(&StorageConfig::local(dir.path().join("blobs"))).unwrap();
        let kept = Digest::of(b"kept");
        blobs.store_chunk(&kept, 0, Bytes::from_static(b"kept")).await.unwrap();
        let root = dir.path().join("blobs/sha256");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let write = |path: std::path::PathBuf, at: SystemTime| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(at).unwrap();
            path
        };
        // Beside a stored blob, and alone in a blob directory of its own.
        let stale = write(root.join(kept.hex()).join("chunk-00000001#3"), hour_ago);
        let alone = write(root.join(Digest::of(b"killed").hex()).join("manifest#17"), hour_ago);
        let fresh = write(root.join(kept.hex()).join("chunk-00000002#4"), SystemTime::now());
        let not_temp = write(root.join(kept.hex()).join("notes#x"), hour_ago);
        let cutoff = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(blobs.remove_stale_temp_files(cutoff).await.unwrap(), 2);
        assert!(!stale.exists() && !alone.exists());
        assert!(!alone.parent().unwrap().exists(), "the directory it left empty goes");
        assert!(fresh.exists(), "a write may still be going on");
        assert!(not_temp.exists(), "not a writer's temporary file");
        assert_eq!(blobs.inventory().await.unwrap().len(), 1, "the stored blob is untouched");
        let held = blobs.inventory().await.unwrap();
        assert_eq!(held[0].digest, kept);
    }
}
