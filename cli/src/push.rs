//! `atoll push DIR`: a source directory archived once and uploaded to the gateway's store.
//!
//! The directory is walked honouring its `.gitignore` files (and `.git/info/exclude`), `.git`
//! itself left out, and packed into one deterministic tar (the same files give the same digest,
//! so pushing an unchanged tree uploads nothing). The archive is chunked and uploaded through
//! the gateway's blob routes with the CLI's bearer token (submit scope), resuming where the
//! gateway's copy stands (at the next gateway replica when one cannot be reached), then
//! registered; pipelines name it as `source: sha256:...` and every
//! cluster fetches it from the gateway by digest when a job needs it.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use atoll_api::gateway_addrs::GatewayAddrs;
use atoll_store::transfer::TransferError;

use crate::cli_config::CliConfig;

/// One request (at most a chunk) may take this long.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(120);

/// The paths under `root` to archive, relative to it: what git would not ignore. Files an
/// archive cannot hold (FIFOs, sockets, devices) are refused, every one named by its path
/// relative to `root` and what it is; ignored ones are no concern.
pub fn source_paths(root: &Path) -> anyhow::Result<HashSet<PathBuf>> {
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_global(false)
        .git_ignore(true)
        .git_exclude(true)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut paths = HashSet::new();
    let mut refused = Vec::new();
    for entry in walker {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        let rel = entry.path().strip_prefix(root).context("a path outside the directory")?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        if let Some(what) = entry.file_type().and_then(special_kind) {
            refused.push(format!("{rel:?} is {what}"));
        }
        paths.insert(rel.to_path_buf());
    }
    if !refused.is_empty() {
        refused.sort();
        anyhow::bail!(
            "{} holds {} file(s) a source archive cannot hold (only files, directories and symbolic links; \
             list them in .gitignore to leave them out):\n  {}",
            root.display(),
            refused.len(),
            refused.join("\n  ")
        );
    }
    Ok(paths)
}

/// What a file an archive cannot hold is (`None` for files, directories and links).
fn special_kind(kind: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else {
        None
    }
}

/// A directory pushed: the source as the gateway registered it, how many entries it holds, and
/// how many bytes went up (0: the gateway had them all).
pub struct Pushed {
    pub info: atoll_api::jobs::SourceInfo,
    pub entries: u64,
    pub sent: u64,
}

pub async fn push(config: &CliConfig, dir: &Path, json: bool) -> anyhow::Result<()> {
    let Pushed { info, entries, sent } = push_dir(config, dir, !json).await?;
    if json {
        let out = serde_json::json!({
            "digest": info.digest,
            "size": info.size,
            "entries": entries,
            "uploaded": sent,
        });
        println!("{out}");
    } else {
        println!(
            "pushed {} ({} entries, {}; {} uploaded)",
            info.digest,
            entries,
            human(info.size),
            if sent == 0 { "nothing new".to_string() } else { human(sent) }
        );
        println!("name it in a pipeline: `source: {}` (unpacked under $ATOLL_SOURCE)", info.digest);
    }
    Ok(())
}

/// Archive `dir` (honouring its .gitignore files), upload what the gateway lacks, and register
/// it as a source; a progress line on a terminal when `show_progress`.
pub async fn push_dir(config: &CliConfig, dir: &Path, show_progress: bool) -> anyhow::Result<Pushed> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let root = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let paths = source_paths(&root)?;
    let temp = tempfile::tempdir().context("a temporary directory")?;
    let archive = temp.path().join("source.tar");
    let (src, dest, keep) = (root.clone(), archive.clone(), paths.clone());
    let packed = tokio::task::spawn_blocking(move || {
        atoll_store::archive::pack_dir_filtered(&src, &dest, &|p| keep.contains(p))
    })
    .await?
    .with_context(|| format!("archiving {}", root.display()))?;
    let blobs =
        atoll_store::Blobs::open(&atoll_store::StorageConfig::Local { path: temp.path().join("blobs"), fsync: false })?;
    blobs.put_file(&archive, &packed.digest).await?;
    let (http, gateways) = config.gateway_http(CHUNK_TIMEOUT)?;
    let progress = Arc::new(AtomicU64::new(0));
    let pace = atoll_store::transfer::Pace { limit: None, progress: Some(progress.clone()) };
    let show = (show_progress && std::io::stderr().is_terminal()).then(|| {
        let (progress, total) = (progress.clone(), packed.size);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let done = progress.load(Ordering::Relaxed);
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                eprint!("\ruploading {} / {} ({pct}%)   ", human(done), human(total));
            }
        })
    });
    let sent = upload(&blobs, &packed.digest, &http, &gateways, &pace).await;
    if let Some(task) = show {
        task.abort();
        eprint!("\r");
    }
    let sent = sent.with_context(|| format!("uploading {} to the gateway", packed.digest))?;
    // Registered at the replica that took the upload (any replica would do: they share the store).
    let gateway = config.gateway_client_over(gateways)?;
    let info = gateway.register_source(&packed.digest.to_string()).await.context("registering the source")?;
    Ok(Pushed { info, entries: packed.entries, sent })
}

/// Upload `digest` to the gateway replicas of `gateways` in turn: the next one when a replica
/// cannot be reached (the upload resumes there from the chunks the gateway's store already
/// holds); any other failure is the answer. The error names every replica tried.
async fn upload(
    blobs: &atoll_store::Blobs,
    digest: &atoll_store::Digest,
    http: &reqwest::Client,
    gateways: &GatewayAddrs,
    pace: &atoll_store::transfer::Pace,
) -> anyhow::Result<u64> {
    let mut unreachable: Vec<String> = Vec::new();
    for addr in gateways.plan() {
        let remote = atoll_store::transfer::Remote::https(http.clone(), &addr, String::new());
        match atoll_store::transfer::send(blobs, digest, &remote, pace).await {
            Ok(sent) => {
                gateways.answered(&addr);
                return Ok(sent);
            }
            Err(e @ TransferError::Unreachable { .. }) => {
                gateways.failed(&addr);
                unreachable.push(e.to_string());
            }
            Err(e) if unreachable.is_empty() => return Err(e.into()),
            Err(e) => anyhow::bail!("{e} (tried before: {})", unreachable.join("; ")),
        }
    }
    anyhow::bail!("no gateway replica could be reached: {}", unreachable.join("; "))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignored_files_and_the_git_directory_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(root.join("src/target")).unwrap();
        std::fs::write(root.join(".gitignore"), "secret.txt\ntarget/\n").unwrap();
        std::fs::write(root.join("src/.gitignore"), "*.log\n").unwrap();
        std::fs::write(root.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(root.join("src/run.log"), "noise").unwrap();
        std::fs::write(root.join("src/target/out"), "built").unwrap();
        std::fs::write(root.join("secret.txt"), "hush").unwrap();
        std::fs::write(root.join(".env.example"), "A=1").unwrap();
        let mut paths: Vec<String> = source_paths(root).unwrap().into_iter().map(|p| p.display().to_string()).collect();
        paths.sort();
        assert_eq!(paths, [".env.example", ".gitignore", "src", "src/.gitignore", "src/main.rs"]);
    }

    #[test]
    fn fifos_and_sockets_are_refused_by_name_unless_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::write(root.join("main.rs"), "fn main() {}").unwrap();
        let mkfifo = |path: &Path| {
            let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
            assert!(status.success(), "mkfifo {}", path.display());
        };
        mkfifo(&root.join("run/pipe"));
        mkfifo(&root.join("ignored.fifo"));
        std::fs::write(root.join(".gitignore"), "*.fifo\n").unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("run/agent.sock")).unwrap();
        let err = format!("{:#}", source_paths(root).unwrap_err());
        assert!(err.contains("2 file(s) a source archive cannot hold"), "{err}");
        assert!(err.contains("\"run/pipe\" is a FIFO"), "{err}");
        assert!(err.contains("\"run/agent.sock\" is a socket"), "{err}");
        assert!(!err.contains("ignored.fifo"), "{err}");

        std::fs::remove_file(root.join("run/pipe")).unwrap();
        std::fs::remove_file(root.join("run/agent.sock")).unwrap();
        assert!(source_paths(root).is_ok());
    }
}
