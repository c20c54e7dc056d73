//! Snapshot files: a versioned, streamable image of the state machine.
//!
//! A snapshot is JSON lines, so it is written and read in bounded memory whatever its size:
//!
//! ```text
//! {"header":{"magic":"atoll-snapshot","format":3,"meta":{...openraft SnapshotMeta...}}}
//! {"annotation":{"key":"k","value":"v","version":1,"revision":7}}
//! {"replica":{"node_id":2,"incarnation":"...","revision":3}}
//! {"mesh":{"view":{"peers":[...],"revoked":[...]}}}
//! {"job":{"record":{"job":"...","attempt":1,"run":{"run":"accepted"},...}}}
//! {"end":{"records":2}}
//! ```
//!
//! The end line carries the record count, so a truncated file is detected; an unknown magic or
//! format is refused with a clear error. Format 2 added job records; format 3 carries standard
//! Raft leader ids in its log ids (formats 1 and 2 had openraft's advanced ones and are refused,
//! as data directories of that time are). Files are written to a temp name, fsync'd and renamed.

use std::fs::File;
use std::io::BufRead;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Seek;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::jobs::JobRecord;
use crate::types::Annotation;
use crate::types::MeshView;
use crate::types::ReplicaRecord;
use crate::types::SnapshotMeta;

pub const SNAPSHOT_MAGIC: &str = "atoll-snapshot";
pub const SNAPSHOT_FORMAT: u32 = 3;
/// Formats this build reads.
pub const SNAPSHOT_FORMATS_READ: [u32; 1] = [3];

/// Name of the snapshot a replica serves and restores from.
pub const CURRENT_SNAPSHOT: &str = "current.snap";

/// An open snapshot file: what openraft hands between the state machine and the network.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: File,
}

impl SnapshotFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self { path: path.to_path_buf(), file: File::open(path)? })
    }

    /// Wrap a file just written at `path` (rewound to its start).
    pub fn from_file(path: PathBuf, mut file: File) -> std::io::Result<Self> {
        file.rewind()?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A fresh handle on the same file, positioned at its start.
    pub fn reopen(&self) -> std::io::Result<File> {
        let mut file = self.file.try_clone()?;
        file.rewind()?;
        Ok(file)
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

/// One line of a snapshot file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Line {
    Header { magic: String, format: u32, meta: SnapshotMeta },
    Annotation { key: String, value: String, version: u64, revision: u64 },
    Replica { node_id: u64, incarnation: String, revision: u64 },
    Mesh { view: MeshView },
    Job { record: JobRecord },
    End { records: u64 },
}

/// A record of the state machine, as read from or written to a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Annotation(String, Annotation),
    Replica(u64, ReplicaRecord),
    Mesh(MeshView),
    Job(JobRecord),
}

/// Writes a snapshot file line by line.
pub(crate) struct SnapshotWriter {
    out: BufWriter<File>,
    records: u64,
}

impl SnapshotWriter {
    pub(crate) fn create(path: &Path, meta: &SnapshotMeta) -> std::io::Result<Self> {
        let file = File::options().read(true).write(true).create_new(true).open(path)?;
        let mut writer = Self { out: BufWriter::with_capacity(256 * 1024, file), records: 0 };
        writer.line(&Line::Header {
            magic: SNAPSHOT_MAGIC.to_string(),
            format: SNAPSHOT_FORMAT,
            meta: meta.clone(),
        })?;
        Ok(writer)
    }

    fn line(&mut self, line: &Line) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, line).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")
    }

    pub(crate) fn record(&mut self, record: Record) -> std::io::Result<()> {
        self.records += 1;
        let line = match record {
            Record::Annotation(key, a) => {
                Line::Annotation { key, value: a.value, version: a.version, revision: a.revision }
            }
            Record::Replica(node_id, r) => Line::Replica { node_id, incarnation: r.incarnation, revision: r.revision },
            Record::Mesh(view) => Line::Mesh { view },
            Record::Job(record) => Line::Job { record },
        };
        self.line(&line)
    }

    /// Write the end line, fsync, and return the file.
    pub(crate) fn finish(mut self) -> std::io::Result<File> {
        let records = self.records;
        self.line(&Line::End { records })?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot {}: {what}", path.display()))
}

/// Read only the header of a snapshot file.
pub(crate) fn read_meta(path: &Path, file: File) -> std::io::Result<SnapshotMeta> {
    let mut reader = BufReader::new(file);
    read_header(path, &mut reader)
}

fn read_header(path: &Path, reader: &mut impl BufRead) -> std::io::Result<SnapshotMeta> {
    let mut first = String::new();
    reader.read_line(&mut first)?;
    if first.is_empty() {
        return Err(invalid(path, "empty file"));
    }
    // Check magic and format before the rest, so a future format is reported as such.
    let value: serde_json::Value =
        serde_json::from_str(&first).map_err(|e| invalid(path, format!("unreadable header: {e}")))?;
    let Some(header) = value.get("header") else {
        return Err(invalid(path, "first line is not a header"));
    };
    let magic = header.get("magic").and_then(|m| m.as_str()).unwrap_or_default();
    if magic != SNAPSHOT_MAGIC {
        return Err(invalid(path, format!("not an atoll snapshot (magic {magic:?})")));
    }
    let format = header.get("format").and_then(|f| f.as_u64()).unwrap_or_default();
    if !SNAPSHOT_FORMATS_READ.iter().any(|&f| u64::from(f) == format) {
        return Err(invalid(
            path,
            format!("snapshot format {format} is not known to this build (reads {SNAPSHOT_FORMATS_READ:?})"),
        ));
    }
    let meta = header.get("meta").cloned().unwrap_or_default();
    serde_json::from_value(meta).map_err(|e| invalid(path, format!("unreadable header: {e}")))
}

/// Read a whole snapshot, calling `each` per record, and check the end line.
pub(crate) fn read_records(
    path: &Path,
    file: File,
    mut each: impl FnMut(Record) -> std::io::Result<()>,
) -> std::io::Result<SnapshotMeta> {
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let meta = read_header(path, &mut reader)?;
    let mut count = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid(path, format!("truncated after {count} records (no end line)")));
        }
        match serde_json::from_str::<Line>(&line).map_err(|e| invalid(path, format!("record {}: {e}", count + 1)))? {
            Line::Annotation { key, value, version, revision } => {
                each(Record::Annotation(key, Annotation { value, version, revision }))?
            }
            Line::Replica { node_id, incarnation, revision } => {
                each(Record::Replica(node_id, ReplicaRecord { incarnation, revision }))?
            }
            Line::Mesh { view } => each(Record::Mesh(view))?,
            Line::Job { record } => each(Record::Job(record))?,
            Line::End { records } => {
                if records != count {
                    return Err(invalid(path, format!("end line says {records} records, read {count}")));
                }
                return Ok(meta);
            }
            Line::Header { .. } => return Err(invalid(path, "second header")),
        }
        count += 1;
    }
}
