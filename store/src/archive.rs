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
use std::path::PathBuf;

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

/// What an archive may hold, and why anything else is refused (named by its path).
fn refused(name: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: {what} cannot be archived (only regular files, directories and symbolic links)",
            name.display().to_string().escape_debug()
        ),
    )
}

fn kind_name(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else {
        "a file of unknown kind"
    }
}

/// The permission bits an entry keeps: the file's own (read, write, execute for owner, group and
/// others), never widened; set-id and sticky bits are dropped.
fn kept_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o777
}

/// A header for `meta` with fixed owners and time, and the entry's own permission bits.
fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
    header.set_entry_type(kind);
    header.set_mode(kept_mode(meta));
    header.set_size(0);
    header
}

/// How many names each multiply linked file (device, inode) has in the tree.
type NamesPerInode = std::collections::HashMap<(u64, u64), u64>;

/// Every entry below `src` (relative paths), depth first in name order, directories before
/// what they hold; with each regular file's (device, inode) counted, to tell hard links inside
/// the tree from links to files elsewhere.
fn walk(src: &Path, keep: &dyn Fn(&Path) -> bool) -> io::Result<(Vec<PathBuf>, NamesPerInode)> {
    use std::os::unix::fs::MetadataExt;
    let mut order = Vec::new();
    let mut inodes = std::collections::HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(src.join(&rel))?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        // Depth first, in name order: push in reverse so the smallest name is next.
        let mut subdirs = Vec::new();
        for entry in names {
            let name = rel.join(entry.file_name());
            if !keep(&name) {
                continue;
            }
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                subdirs.push(name.clone());
            } else if meta.is_file() && meta.nlink() > 1 {
                *inodes.entry((meta.dev(), meta.ino())).or_insert(0) += 1;
            }
            order.push(name);
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((order, inodes))
}

/// [`pack_dir`] of the entries `keep` accepts (paths relative to `src`); a directory it refuses
/// is left out with everything in it.
///
/// Only what is inside `src` is archived: symbolic links as links (never followed), a hard link
/// as a link to the first name of its file in the tree, and only when every name of that file is
/// in the tree (a link to a file elsewhere would carry that file's content out); FIFOs, sockets
/// and devices are refused, named. Each entry keeps its permission bits (never widened). A
/// regular file is opened without following links and checked to be the file that was walked,
/// so swapping it for a link meanwhile is refused, not followed.
pub fn pack_dir_filtered(src: &Path, dest: &Path, keep: &dyn Fn(&Path) -> bool) -> io::Result<Packed> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::OpenOptionsExt;
    let (order, inodes) = walk(src, keep)?;
    let file = File::create(dest)?;
    let writer = HashingWriter { inner: BufWriter::with_capacity(256 * 1024, file), hasher: Hasher::new(), written: 0 };
    let mut builder = tar::Builder::new(writer);
    let mut first_names: std::collections::HashMap<(u64, u64), PathBuf> = std::collections::HashMap::new();
    let mut entries = 0u64;
    for name in order {
        let path = src.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            builder.append_data(&mut header_for(&meta, tar::EntryType::Directory), &name, io::empty())?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path)?;
            builder.append_link(&mut header_for(&meta, tar::EntryType::Symlink), &name, &target)?;
        } else if kind.is_file() {
            let inode = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                let inside = inodes.get(&inode).copied().unwrap_or(0);
                if inside < meta.nlink() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: a hard link to a file outside the directory ({} links, {inside} inside) cannot be \
                             archived; copy the file instead",
                            name.display().to_string().escape_debug(),
                            meta.nlink()
                        ),
                    ));
                }
                if let Some(first) = first_names.get(&inode) {
                    builder.append_link(&mut header_for(&meta, tar::EntryType::Link), &name, first)?;
                    entries += 1;
                    continue;
                }
                first_names.insert(inode, name.clone());
            }
            let opened =
                File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path).map_err(
                    |e| io::Error::new(e.kind(), format!("{}: {e}", name.display().to_string().escape_debug())),
                )?;
            let now = opened.metadata()?;
            if !now.is_file() || (now.dev(), now.ino()) != inode {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: changed while it was archived", name.display().to_string().escape_debug()),
                ));
            }
            let mut header = header_for(&now, tar::EntryType::Regular);
            header.set_size(now.len());
            builder.append_data(&mut header, &name, io::Read::take(&opened, now.len()))?;
        } else {
            return Err(refused(&name, kind_name(&kind)));
        }
        entries += 1;
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
    fn modes_are_kept_never_widened_and_links_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("secret"), b"mine").unwrap();
        std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(src.join("tool"), b"#!/bin/sh").unwrap();
        std::fs::set_permissions(src.join("tool"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("passwd")).unwrap();
        let archive = dir.path().join("out.tar");
        pack_dir(&src, &archive).unwrap();
        let dest = dir.path().join("dest");
        unpack(&archive, &dest).unwrap();
        let mode = |p: &str| std::fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("secret"), 0o640);
        assert_eq!(mode("tool"), 0o750);
        // The link is stored as a link: the archive holds no byte of the file it names.
        assert_eq!(std::fs::read_link(dest.join("passwd")).unwrap(), Path::new("/etc/passwd"));
        let passwd = std::fs::read("/etc/passwd").unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        assert!(!bytes.windows(passwd.len().min(32)).any(|w| w == &passwd[..passwd.len().min(32)]));
    }

    #[test]
    fn a_hard_link_inside_the_tree_is_a_link_and_one_to_a_file_elsewhere_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a"), b"shared content").unwrap();
        std::fs::hard_link(src.join("a"), src.join("sub/b")).unwrap();
        let archive = dir.path().join("in.tar");
        let packed = pack_dir(&src, &archive).unwrap();
        assert_eq!(packed.entries, 3);
        let dest = dir.path().join("dest");
        unpack(&archive, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("sub/b")).unwrap(), b"shared content");
        let (a, b) = (std::fs::metadata(dest.join("a")).unwrap(), std::fs::metadata(dest.join("sub/b")).unwrap());
        assert_eq!(a.ino(), b.ino(), "unpacked as one file with two names");

        // A link to a file outside the directory would carry that file out: refused, named.
        let outside = dir.path().join("outside-secret");
        std::fs::write(&outside, b"not yours").unwrap();
        std::fs::hard_link(&outside, src.join("sub/x")).unwrap();
        let err = pack_dir(&src, &dir.path().join("out.tar")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("sub/x") && message.contains("hard link to a file outside"), "{message}");
    }

    #[test]
    fn fifos_sockets_and_devices_are_refused_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("deep")).unwrap();
        let made = std::process::Command::new("mkfifo").arg(src.join("deep/pipe")).status().expect("mkfifo runs");
        assert!(made.success());
        let err = pack_dir(&src, &dir.path().join("f.tar")).unwrap_err();
        assert!(err.to_string().contains("deep/pipe: a FIFO cannot be archived"), "{err}");
        std::fs::remove_file(src.join("deep/pipe")).unwrap();

        let _socket = std::os::unix::net::UnixListener::bind(src.join("deep/sock")).unwrap();
        let err = pack_dir(&src, &dir.path().join("s.tar")).unwrap_err();
        assert!(err.to_string().contains("deep/sock: a socket cannot be archived"), "{err}");
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
