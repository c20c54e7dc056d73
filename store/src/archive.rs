//! A directory as one tar archive, hashed while it is written; and back.
//!
//! Entries are written in name order with fixed owners and times (`HeaderMode::Deterministic`),
//! so the same files give the same digest and a repeated output is stored once. Symbolic links
//! are archived as links, never followed. Unpacking refuses entries that would land outside the
//! target directory (absolute paths, `..`).

use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Write;
use std::path::Path;

use crate::Digest;
use crate::Hasher;

/// What [`pack_dir`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packed {
    pub digest: Digest,
    /// Bytes of the archive.
    pub size: u64,
    /// Regular files, links and directories archived.
    pub entries: u64,
}

/// Counts and hashes what passes through to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Archive everything under `src` into a new file `dest` (fsync'd). Blocking: run it off the
/// async threads.
pub fn pack_dir(src: &Path, dest: &Path) -> io::Result<Packed> {
    pack_dir_filtered(src, dest, &|_| true)
}

/// [`pack_dir`] of the entries `keep` accepts (paths relative to `src`); a directory it refuses
/// is left out with everything in it.
pub fn pack_dir_filtered(src: &Path, dest: &Path, keep: &dyn Fn(&Path) -> bool) -> io::Result<Packed> {
    let file = File::create(dest)?;
    let writer = HashingWriter { inner: BufWriter::with_capacity(256 * 1024, file), hasher: Hasher::new(), written: 0 };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut entries = 0u64;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = src.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        // Depth first, in name order: push in reverse so the smallest name is next.
        let mut subdirs = Vec::new();
        for entry in names {
            let name = rel.join(entry.file_name());
            if !keep(&name) {
                continue;
            }
            let kind = entry.file_type()?;
            builder.append_path_with_name(entry.path(), &name)?;
            entries += 1;
            if kind.is_dir() {
                subdirs.push(name);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    let HashingWriter { inner, hasher, written } = writer;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Packed { digest: hasher.finish(), size: written, entries })
}

/// Unpack the archive at `archive` into `dest` (created when missing). An entry that would land
/// outside `dest` (absolute, or through `..`) fails the whole unpack. Blocking.
pub fn unpack(archive: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut a = tar::Archive::new(io::BufReader::new(File::open(archive)?));
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    for entry in a.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        if path.components().any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("archive entry {} would land outside {}", path.display(), dest.display()),
            ));
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/c.txt"), b"hello").unwrap();
        std::fs::write(root.join("top.bin"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("top.bin", root.join("link")).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
    }

    #[test]
    fn round_trip_keeps_files_links_and_empty_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        tree(&src);
        let packed = pack_dir(&src, &dir.path().join("out.tar")).unwrap();
        assert_eq!(packed.entries, 6);
        assert_eq!(packed.size, std::fs::metadata(dir.path().join("out.tar")).unwrap().len());
        assert_eq!(packed.digest, Digest::of(&std::fs::read(dir.path().join("out.tar")).unwrap()));
        let dest = dir.path().join("dest");
        unpack(&dir.path().join("out.tar"), &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("a/b/c.txt")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dest.join("top.bin")).unwrap().len(), 100_000);
        assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("top.bin"));
        assert!(dest.join("empty").is_dir());
    }

    #[test]
    fn the_same_files_give_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        tree(&one);
        tree(&two);
        // Another modification time on the copy does not change the digest.
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options().write(true).open(two.join("top.bin")).unwrap().set_modified(old).unwrap();
        let a = pack_dir(&one, &dir.path().join("1.tar")).unwrap();
        let b = pack_dir(&two, &dir.path().join("2.tar")).unwrap();
        assert_eq!(a.digest, b.digest);
        std::fs::write(two.join("a/b/c.txt"), b"hellO").unwrap();
        assert_ne!(pack_dir(&two, &dir.path().join("3.tar")).unwrap().digest, a.digest);
    }

    #[test]
    fn an_empty_directory_packs_to_an_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        let packed = pack_dir(&dir.path().join("src"), &dir.path().join("e.tar")).unwrap();
        assert_eq!(packed.entries, 0);
        unpack(&dir.path().join("e.tar"), &dir.path().join("dest")).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("dest")).unwrap().count(), 0);
    }

    #[test]
    fn entries_escaping_the_target_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(File::create(&path).unwrap());
            let data = b"owned";
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Written raw: the builder itself refuses such names.
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escaped.tx");
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
            b.finish().unwrap();
        }
        let dest = dir.path().join("dest");
        let err = unpack(&path, &dest).unwrap_err();
        assert!(err.to_string().contains("would land outside"), "{err}");
        assert!(!dir.path().join("escaped.tx").exists());
    }
}
