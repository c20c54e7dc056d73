//! Writing a replica's certificate and key as a pair, so a crash never leaves a certificate
//! next to a key it does not belong to.
//!
//! The new files are written as `<file>.pending` and fsync'd; then the key is renamed into
//! place, then the certificate. A leftover `cert.pending` at start therefore means the key was
//! already replaced (finish the job); a leftover `key.pending` means neither was (drop both).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

use atoll_api::tls::TlsFiles;

fn pending(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pending");
    PathBuf::from(name)
}

fn write_synced(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?.sync_all()
}

/// Replace the key and certificate (and write the CA when given).
pub fn write_pair(files: &TlsFiles, key_pem: &str, cert_pem: &str, ca_pem: Option<&str>) -> std::io::Result<()> {
    for dir in [&files.key, &files.cert, &files.ca].iter().filter_map(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let (key_pending, cert_pending) = (pending(&files.key), pending(&files.cert));
    write_synced(&key_pending, key_pem, 0o600)?;
    write_synced(&cert_pending, cert_pem, 0o644)?;
    fs::rename(&key_pending, &files.key)?;
    sync_dir(&files.key)?;
    fs::rename(&cert_pending, &files.cert)?;
    sync_dir(&files.cert)?;
    if let Some(ca) = ca_pem {
        let ca_pending = pending(&files.ca);
        write_synced(&ca_pending, ca, 0o644)?;
        fs::rename(&ca_pending, &files.ca)?;
        sync_dir(&files.ca)?;
    }
    Ok(())
}

/// Finish or undo a replacement a crash interrupted.
pub fn recover(files: &TlsFiles) -> std::io::Result<()> {
    let (key_pending, cert_pending) = (pending(&files.key), pending(&files.cert));
    if key_pending.exists() {
        // Neither file was replaced yet: the old pair is intact.
        fs::remove_file(&key_pending)?;
        if cert_pending.exists() {
            fs::remove_file(&cert_pending)?;
        }
    } else if cert_pending.exists() {
        tracing::warn!(cert = %files.cert.display(), "finishing a certificate replacement a crash interrupted");
        fs::rename(&cert_pending, &files.cert)?;
        sync_dir(&files.cert)?;
    }
    let ca_pending = pending(&files.ca);
    if ca_pending.exists() {
        fs::rename(&ca_pending, &files.ca)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("tls/node.pem"), key: dir.join("tls/node-key.pem") }
    }

    #[test]
    fn a_pair_is_replaced_and_interrupted_replacements_are_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        write_pair(&f, "key1", "cert1", Some("ca")).unwrap();
        assert_eq!(fs::read_to_string(&f.key).unwrap(), "key1");
        assert_eq!(fs::read_to_string(&f.cert).unwrap(), "cert1");
        assert_eq!(fs::read_to_string(&f.ca).unwrap(), "ca");

        // Crash after the key was renamed: the new certificate is put in place.
        fs::write(&f.key, "key2").unwrap();
        fs::write(pending(&f.cert), "cert2").unwrap();
        recover(&f).unwrap();
        assert_eq!(fs::read_to_string(&f.cert).unwrap(), "cert2");

        // Crash before any rename: the old pair stays, the pending files go.
        fs::write(pending(&f.key), "key3").unwrap();
        fs::write(pending(&f.cert), "cert3").unwrap();
        recover(&f).unwrap();
        assert_eq!(
            (fs::read_to_string(&f.key).unwrap(), fs::read_to_string(&f.cert).unwrap()),
            ("key2".into(), "cert2".into())
        );
        assert!(!pending(&f.key).exists() && !pending(&f.cert).exists());
    }
}
