//! `atoll pod inputs|output`: the helpers in a Kubernetes Job's pod (the helper image runs them).
//! What they read from their environment, and in which format, is the contract in
//! [`atoll_api::pod`], which the replica that sets up the pod uses too.
//!
//! - `inputs` (an init container, before the job's container starts): fetches each of the
//!   attempt's blobs (`ATOLL_POD_BLOBS`, `[{digest, dir}]`: parents' outputs and the source) from
//!   the cluster's replicas, checks its SHA-256 against the digest, and unpacks it into `dir`.
//! - `output` (a sidecar): waits until Kubernetes stops it, which it does once the job's container
//!   ended, then archives `ATOLL_OUTPUT` and stores it with the replicas, which record it in Raft
//!   before they answer. Nothing written: nothing stored. `started` is its startup probe: the
//!   job's container starts only once the helper is ready to be stopped.
//!
//! Both reach the replicas at `ATOLL_POD_URLS` (tried in turn; unless every one refuses, they are
//! tried again for up to [`PATIENCE`]), accept only a
//! certificate of a replica of `ATOLL_CLUSTER` signed by `ATOLL_POD_CA`, and show the attempt's
//! secret `ATOLL_POD_SECRET`. A failure is printed on stderr and exits 1: Kubernetes keeps that
//! line as the container's termination message, and the replica reports it as the attempt's
//! error.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::anyhow;
use anyhow::bail;
use atoll_api::ids::ClusterName;
use atoll_api::pod;
use atoll_api::tls::ServerPolicy;
use atoll_api::tls::TrustRoots;
use atoll_store::Digest;
use futures::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// How long a helper keeps trying replicas that do not answer, or answer "not yet".
pub const PATIENCE: Duration = Duration::from_secs(300);
const PAUSE: Duration = Duration::from_millis(500);

/// What both helpers are told through their environment.
struct Attempt {
    urls: Vec<String>,
    secret: String,
    job: String,
    attempt: u32,
    http: reqwest::Client,
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow!("{name} is not set (this command runs in a job's pod, set up by its replica)"))
}

impl Attempt {
    fn from_env() -> anyhow::Result<Self> {
        let cluster: ClusterName = var(pod::CLUSTER)?.parse().map_err(|e| anyhow!("{}: {e}", pod::CLUSTER))?;
        let ca = var(pod::CA)?;
        let trust = TrustRoots::from_pem(Path::new(pod::CA), ca.as_bytes())?;
        let config = trust.anonymous_client_config(ServerPolicy::NodeOf(cluster))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("the HTTP client")?;
        let urls = pod::decode_urls(&var(pod::URLS)?);
        if urls.is_empty() {
            bail!("{} names no replica", pod::URLS);
        }
        let attempt = var(pod::ATTEMPT)?.parse().map_err(|e| anyhow!("{}: {e}", pod::ATTEMPT))?;
        Ok(Self { urls, secret: var(pod::SECRET)?, job: var(pod::JOB_ID)?, attempt, http })
    }

    /// Send the request `make` builds for each replica URL in turn until one answers with
    /// success; a round in which every replica refused (4xx) ends it, anything else (not
    /// reachable, not ready) is tried again until [`PATIENCE`].
    async fn call<F>(&self, what: &str, mut make: F) -> anyhow::Result<reqwest::Response>
    where
        F: FnMut(&reqwest::Client, &str) -> anyhow::Result<reqwest::RequestBuilder>,
    {
        let started = Instant::now();
        let mut last = String::new();
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            let mut refused = 0;
            for url in &self.urls {
                let request = make(&self.http, url)?.bearer_auth(&self.secret);
                match request.send().await {
                    Ok(response) if response.status().is_success() => return Ok(response),
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        let message = serde_json::from_str::<atoll_api::error::ErrorBody>(&body)
                            .map(|b| b.error.message)
                            .unwrap_or(body);
                        if status.is_client_error() {
                            refused += 1;
                        }
                        last = format!("{url} refused ({status}): {message}");
                    }
                    Err(e) => last = format!("{url}: {}", atoll_api::client::error_chain(&e)),
                }
            }
            if refused == self.urls.len() {
                bail!("{what}: every replica refused; {last}");
            }
            if started.elapsed() >= PATIENCE {
                bail!("{what}: no replica took it in {} s ({rounds} rounds); last: {last}", PATIENCE.as_secs());
            }
            eprintln!("{what}: trying again ({last})");
            tokio::time::sleep(PAUSE).await;
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/pods/{}/{}/{rest}", self.job, self.attempt)
    }
}

/// `atoll pod inputs`.
pub async fn inputs() -> anyhow::Result<()> {
    let attempt = Attempt::from_env()?;
    let blobs = pod::decode_blobs(&var(pod::BLOBS)?).map_err(|e| anyhow!("{}: {e}", pod::BLOBS))?;
    for blob in blobs {
        let digest: Digest = blob.digest.parse().map_err(|e| anyhow!("{}: {e}", pod::BLOBS))?;
        let dir = PathBuf::from(&blob.dir);
        let started = Instant::now();
        let parent = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let archive = parent.join(format!(".atoll-{}.tar", digest.hex()));
        // A corrupted copy (the digest does not match) is fetched again, at most three times.
        let mut tries = 0;
        let size = loop {
            tries += 1;
            let path = attempt.path(&format!("blobs/{}", blob.digest));
            let response =
                attempt.call(&format!("fetching {digest}"), |http, url| Ok(http.get(format!("{url}{path}")))).await?;
            match save(response, &archive, &digest).await {
                Ok(size) => break size,
                Err(e) if tries < 3 => eprintln!("fetching {digest}: {e:#}; fetching it again"),
                Err(e) => return Err(e.context(format!("fetching {digest} ({tries} tries)"))),
            }
        };
        let (from, to) = (archive.clone(), dir.clone());
        let unpacked = tokio::task::spawn_blocking(move || atoll_store::archive::unpack(&from, &to)).await?;
        let _ = tokio::fs::remove_file(&archive).await;
        unpacked.with_context(|| format!("unpacking {digest} into {}", dir.display()))?;
        println!("{digest}: {size} bytes in {} ({} ms)", dir.display(), started.elapsed().as_millis());
    }
    Ok(())
}

/// Write the body to `dest`, hashing it; an error unless it is the blob `digest`.
async fn save(response: reqwest::Response, dest: &Path, digest: &Digest) -> anyhow::Result<u64> {
    let mut file = tokio::fs::File::create(dest).await.with_context(|| format!("creating {}", dest.display()))?;
    let mut hasher = atoll_store::Hasher::new();
    let mut size = 0u64;
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| anyhow!("reading the blob: {}", atoll_api::client::error_chain(&e)))?;
        hasher.update(&piece);
        size += piece.len() as u64;
        file.write_all(&piece).await.with_context(|| format!("writing {}", dest.display()))?;
    }
    file.flush().await?;
    let got = hasher.finish();
    if &got != digest {
        bail!("the bytes received are {got}, not {digest}");
    }
    Ok(size)
}

/// `atoll pod output`.
pub async fn output() -> anyhow::Result<()> {
    let attempt = Attempt::from_env()?;
    let dir = PathBuf::from(var(pod::OUTPUT)?);
    let stop = stop_signals()?;
    // Ready to be stopped: the startup probe (`atoll pod started`) lets the job's container start.
    let started = PathBuf::from(var(pod::STARTED)?);
    std::fs::write(&started, b"").with_context(|| format!("marking {}", started.display()))?;
    stop.await;
    let empty = match std::fs::read_dir(&dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => bail!("reading {}: {e}", dir.display()),
    };
    if empty {
        println!("nothing in {}: no output", dir.display());
        return Ok(());
    }
    let archive = std::env::temp_dir().join(format!("atoll-output-{}.tar", std::process::id()));
    let (src, dest) = (dir.clone(), archive.clone());
    let packed = match tokio::task::spawn_blocking(move || atoll_store::archive::pack_dir(&src, &dest)).await? {
        Ok(packed) => packed,
        Err(e) => {
            // What it wrote before it failed is no archive.
            let _ = std::fs::remove_file(&archive);
            return Err(anyhow!(e).context(format!("archiving {}", dir.display())));
        }
    };
    let path = attempt.path("output");
    let sent = attempt
        .call("storing the output", |http, url| {
            let file = std::fs::File::open(&archive).with_context(|| format!("opening {}", archive.display()))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                256 * 1024,
            ));
            Ok(http
                .put(format!("{url}{path}"))
                .header(reqwest::header::CONTENT_LENGTH, packed.size)
                .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                .body(body))
        })
        .await;
    let _ = std::fs::remove_file(&archive);
    #[derive(Deserialize)]
    struct Stored {
        digest: String,
    }
    let answer: Stored = sent?.json().await.context("reading the replica's answer")?;
    if answer.digest != packed.digest.to_string() {
        bail!("the replica stored {}, but the archive is {}", answer.digest, packed.digest);
    }
    println!("output stored: {} ({} bytes, {} entries)", packed.digest, packed.size, packed.entries);
    Ok(())
}

/// Resolves once Kubernetes stops the container (SIGTERM; SIGINT when run by hand); the
/// handlers are in place when this returns.
fn stop_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// `atoll pod started`: the output helper's startup probe.
pub fn started() -> anyhow::Result<()> {
    let marker = PathBuf::from(var(pod::STARTED)?);
    if marker.exists() { Ok(()) } else { bail!("the output helper has not started yet ({} missing)", marker.display()) }
}
