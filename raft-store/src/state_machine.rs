//! The state machine on redb, and its snapshots.
//!
//! Applying is one redb transaction per batch. To keep fsync off the write path, most apply
//! commits are not fsync'd (`Durability::None`); one in every [`SYNC_EVERY_ENTRIES`] entries or
//! [`SYNC_EVERY`], and every snapshot install, is. After a crash the state machine therefore
//! restarts at its last durable point, and openraft re-applies the committed entries after it
//! from the (always durable) log; it installs the durable snapshot first if that is newer. Logs
//! are purged only below a durable snapshot, so the entries to re-apply are always there.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use redb::Database;
use redb::Durability;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;
use tokio::time::Instant;

use crate::codec;
use crate::error::OpenError;
use crate::error::io_error;
use crate::jobs::JobRecord;
use crate::log_store::open_database;
use crate::snapshot;
use crate::snapshot::CURRENT_SNAPSHOT;
use crate::snapshot::Record;
use crate::snapshot::SnapshotFile;
use crate::snapshot::SnapshotWriter;
use crate::state::ANNOTATIONS;
use crate::state::JOBS;
use crate::state::MESH_KEY;
use crate::state::REPLICAS;
use crate::state::SINGLETONS;
use crate::state::Tables;
use crate::types::Annotation;
use crate::types::CommandResponse;
use crate::types::LogId;
use crate::types::MeshView;
use crate::types::ReplicaRecord;
use crate::types::Snapshot;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SCHEMA: &[u8] = b"atoll-raft-state/1";
const APPLIED_KEY: &str = "last_applied";
const MEMBERSHIP_KEY: &str = "membership";

/// An apply commit is fsync'd at least once per this many entries ...
pub const SYNC_EVERY_ENTRIES: u64 = 1024;
/// ... and at least this often while entries are being applied.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

struct Inner {
    db: Database,
    snapshot_dir: PathBuf,
    /// Meta of `current.snap`; guards replacing it so an older snapshot never wins over a newer.
    current: Mutex<Option<SnapshotMeta>>,
    flush: Mutex<FlushState>,
}

struct FlushState {
    unsynced_entries: u64,
    last_sync: Instant,
}

/// The state machine handed to openraft; cheap to clone (shared with snapshot builders and the
/// node's read paths).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    pub fn open(path: &Path, snapshot_dir: &Path) -> Result<Self, OpenError> {
        let db = open_database(path, SCHEMA)?;
        remove_temp_files(snapshot_dir).map_err(|e| OpenError::io(snapshot_dir, e))?;
        let current_path = snapshot_dir.join(CURRENT_SNAPSHOT);
        let current = match fs::File::open(&current_path) {
            Ok(file) => Some(
                snapshot::read_meta(&current_path, file)
                    .map_err(|e| OpenError::Corrupt { path: current_path.clone(), detail: e.to_string() })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(OpenError::io(&current_path, e)),
        };
        let store = Self {
            inner: Arc::new(Inner {
                db,
                snapshot_dir: snapshot_dir.to_path_buf(),
                current: Mutex::new(current),
                flush: Mutex::new(FlushState { unsynced_entries: 0, last_sync: Instant::now() }),
            }),
        };
        // Decode everything once so corruption is reported at start.
        store.read_applied().map_err(|e| OpenError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        store.annotations().map_err(|e| OpenError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        store.replicas().map_err(|e| OpenError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        store.mesh_view().map_err(|e| OpenError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok(store)
    }

    fn read_applied(&self) -> std::io::Result<(Option<LogId>, StoredMembership)> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        read_applied_in(&txn)
    }

    /// Every annotation, as this replica has applied them.
    pub fn annotations(&self) -> std::io::Result<BTreeMap<String, Annotation>> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        Ok(read_table(&txn, ANNOTATIONS, "annotation", |k: &str| k.to_string())?.into_iter().collect())
    }

    /// Recorded replica incarnations.
    pub fn replicas(&self) -> std::io::Result<BTreeMap<u64, ReplicaRecord>> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        Ok(read_table(&txn, REPLICAS, "replica", |k: u64| k)?.into_iter().collect())
    }

    /// Every job attempt the cluster holds, as applied here.
    pub fn jobs(&self) -> std::io::Result<Vec<JobRecord>> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        Ok(read_table(&txn, JOBS, "job", |k: &str| k.to_string())?
            .into_iter()
            .map(|(_, v): (String, JobRecord)| v)
            .collect())
    }

    /// The mesh view last replicated (empty before the first).
    pub fn mesh_view(&self) -> std::io::Result<MeshView> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        read_mesh_view(&txn)
    }

    /// One annotation's value.
    pub fn annotation(&self, key: &str) -> std::io::Result<Option<Annotation>> {
        let txn = self.inner.db.begin_read().map_err(io_error)?;
        let table = match txn.open_table(ANNOTATIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match table.get(key).map_err(io_error)? {
            Some(v) => Ok(Some(codec::decode(v.value(), &format!("annotation {key:?}"))?)),
            None => Ok(None),
        }
    }

    /// The last applied log id, as stored.
    pub fn last_applied(&self) -> std::io::Result<Option<LogId>> {
        Ok(self.read_applied()?.0)
    }

    /// Make every applied entry durable (called at shutdown).
    pub async fn sync(&self) -> std::io::Result<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = inner.db.begin_write().map_err(io_error)?;
            txn.set_durability(Durability::Immediate).map_err(io_error)?;
            txn.commit().map_err(io_error)
        })
        .await
        .map_err(io_error)??;
        let mut flush = self.inner.flush.lock().expect("flush state lock");
        flush.unsynced_entries = 0;
        flush.last_sync = Instant::now();
        Ok(())
    }

    /// Whether the commit of a batch of `n` entries must be fsync'd.
    fn durability_for(&self, n: u64) -> Durability {
        let mut flush = self.inner.flush.lock().expect("flush state lock");
        flush.unsynced_entries += n;
        let now = Instant::now();
        if flush.unsynced_entries >= SYNC_EVERY_ENTRIES || now.duration_since(flush.last_sync) >= SYNC_EVERY {
            flush.unsynced_entries = 0;
            flush.last_sync = now;
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    fn current_path(&self) -> PathBuf {
        self.inner.snapshot_dir.join(CURRENT_SNAPSHOT)
    }

    /// Make `path` (a complete, fsync'd snapshot with `meta`) the current snapshot, unless the
    /// current one is newer. Returns whether it was installed.
    fn promote_snapshot(inner: &Inner, path: &Path, meta: &SnapshotMeta) -> std::io::Result<bool> {
        let mut current = inner.current.lock().expect("snapshot lock");
        if let Some(existing) = current.as_ref()
            && existing.last_log_id > meta.last_log_id
        {
            return Ok(false);
        }
        let target = inner.snapshot_dir.join(CURRENT_SNAPSHOT);
        fs::rename(path, &target)?;
        crate::data_dir::sync_parent(&target)?;
        *current = Some(meta.clone());
        Ok(true)
    }
}

/// Decode every row of `table` (none when it was never created); `owned` copies a key out of
/// the table, `what` names rows in errors.
fn read_table<K, O, V>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, &'static [u8]>,
    what: &str,
    owned: impl for<'a> Fn(K::SelfType<'a>) -> O,
) -> std::io::Result<Vec<(O, V)>>
where
    K: redb::Key + 'static,
    O: std::fmt::Debug,
    V: serde::de::DeserializeOwned,
{
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(io_error)? {
        let (k, v) = row.map_err(io_error)?;
        let key = owned(k.value());
        let value = codec::decode(v.value(), &format!("{what} {key:?}"))?;
        out.push((key, value));
    }
    Ok(out)
}

fn read_mesh_view(txn: &redb::ReadTransaction) -> std::io::Result<MeshView> {
    let table = match txn.open_table(SINGLETONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(MeshView::default()),
        Err(e) => return Err(io_error(e)),
    };
    match table.get(MESH_KEY).map_err(io_error)? {
        Some(v) => codec::decode(v.value(), MESH_KEY),
        None => Ok(MeshView::default()),
    }
}

fn read_applied_in(txn: &redb::ReadTransaction) -> std::io::Result<(Option<LogId>, StoredMembership)> {
    let table = match txn.open_table(SM_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, StoredMembership::default())),
        Err(e) => return Err(io_error(e)),
    };
    let applied = match table.get(APPLIED_KEY).map_err(io_error)? {
        Some(v) => codec::decode(v.value(), APPLIED_KEY)?,
        None => None,
    };
    let membership = match table.get(MEMBERSHIP_KEY).map_err(io_error)? {
        Some(v) => codec::decode(v.value(), MEMBERSHIP_KEY)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

fn write_applied(
    txn: &redb::WriteTransaction,
    applied: &Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(SM_META)?;
    meta.insert(APPLIED_KEY, codec::encode(applied)?.as_slice())?;
    meta.insert(MEMBERSHIP_KEY, codec::encode(membership)?.as_slice())?;
    Ok(())
}

fn remove_temp_files(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".tmp") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn temp_name(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{kind}-{:016x}.tmp", rand::random::<u64>()))
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), std::io::Error> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let durability = self.durability_for(batch.len() as u64);
        let inner = self.inner.clone();
        let responses = tokio::task::spawn_blocking(move || -> Result<Vec<CommandResponse>, redb::Error> {
            let mut txn = inner.db.begin_write()?;
            txn.set_durability(durability)?;
            let (_, mut membership) = read_applied_in_write(&txn)?;
            let mut responses = Vec::with_capacity(batch.len());
            let mut last = None;
            {
                let mut tables = Tables::open(&txn)?;
                for entry in &batch {
                    let response = match &entry.payload {
                        EntryPayload::Blank => CommandResponse::Noop,
                        EntryPayload::Normal(command) => tables.apply(entry.log_id.index, command)?,
                        EntryPayload::Membership(m) => {
                            membership = StoredMembership::new(Some(entry.log_id), m.clone());
                            CommandResponse::Noop
                        }
                    };
                    responses.push(response);
                    last = Some(entry.log_id);
                }
            }
            write_applied(&txn, &last, &membership)?;
            txn.commit()?;
            Ok(responses)
        })
        .await
        .map_err(io_error)?
        .map_err(io_error)?;
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { store: self.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), std::io::Error> {
        let inner = self.inner.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Keep the received file as the current snapshot first: if we crash before the
            // state machine commit below, the restart installs it again.
            let source = snapshot.path().to_path_buf();
            let file = snapshot.reopen()?;
            let header = snapshot::read_meta(&source, file)?;
            if header != meta {
                return Err(io_error(format!(
                    "snapshot {} holds {:?}, expected {:?}",
                    source.display(),
                    header.last_log_id,
                    meta.last_log_id
                )));
            }
            let current = inner.snapshot_dir.join(CURRENT_SNAPSHOT);
            let path = if source == current {
                current
            } else {
                // Copy when installing a file we do not own (openraft may hand back our own
                // current snapshot at start).
                let temp = temp_name(&inner.snapshot_dir, "install");
                if source.parent() == Some(inner.snapshot_dir.as_path()) {
                    fs::rename(&source, &temp)?;
                } else {
                    fs::copy(&source, &temp)?;
                    fs::File::open(&temp)?.sync_all()?;
                }
                if Self::promote_snapshot(&inner, &temp, &meta)? { current } else { temp }
            };
            let mut txn = inner.db.begin_write().map_err(io_error)?;
            txn.set_durability(Durability::Immediate).map_err(io_error)?;
            {
                let mut tables = Tables::open(&txn).map_err(io_error)?;
                tables.clear().map_err(io_error)?;
                snapshot::read_records(&path, fs::File::open(&path)?, |record| {
                    match record {
                        Record::Annotation(key, a) => tables.put_annotation(&key, &a),
                        Record::Replica(id, r) => tables.put_replica(id, &r),
                        Record::Mesh(view) => tables.put_mesh_view(&view),
                        Record::Job(record) => tables.put_job(&record),
                    }
                    .map_err(io_error)
                })?;
            }
            write_applied(&txn, &meta.last_log_id, &meta.last_membership).map_err(io_error)?;
            txn.commit().map_err(io_error)?;
            if path != inner.snapshot_dir.join(CURRENT_SNAPSHOT) {
                // A newer snapshot was already current; this older one only reset the state.
                let _ = fs::remove_file(&path);
            }
            Ok(())
        })
        .await
        .map_err(io_error)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let meta = self.inner.current.lock().expect("snapshot lock").clone();
        match meta {
            Some(meta) => {
                let file = SnapshotFile::open(&self.current_path())?;
                Ok(Some(Snapshot { meta, snapshot: file }))
            }
            None => Ok(None),
        }
    }
}

fn read_applied_in_write(txn: &redb::WriteTransaction) -> Result<(Option<LogId>, StoredMembership), redb::Error> {
    let table = txn.open_table(SM_META)?;
    let applied = match table.get(APPLIED_KEY)? {
        Some(v) => codec::decode(v.value(), APPLIED_KEY)?,
        None => None,
    };
    let membership = match table.get(MEMBERSHIP_KEY)? {
        Some(v) => codec::decode(v.value(), MEMBERSHIP_KEY)?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Builds a snapshot from a consistent read of the state machine.
pub struct SnapshotBuilder {
    store: StateMachineStore,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        let inner = self.store.inner.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<Snapshot> {
            // One read transaction: the records, the applied id and the membership agree.
            let txn = inner.db.begin_read().map_err(io_error)?;
            let (last_log_id, last_membership) = read_applied_in(&txn)?;
            let meta = SnapshotMeta { last_log_id, last_membership };
            let temp = temp_name(&inner.snapshot_dir, "build");
            let mut writer = SnapshotWriter::create(&temp, &meta)?;
            for (key, annotation) in read_table(&txn, ANNOTATIONS, "annotation", |k: &str| k.to_string())? {
                writer.record(Record::Annotation(key, annotation))?;
            }
            for (node_id, record) in read_table(&txn, REPLICAS, "replica", |k: u64| k)? {
                writer.record(Record::Replica(node_id, record))?;
            }
            let view = read_mesh_view(&txn)?;
            if view != MeshView::default() {
                writer.record(Record::Mesh(view))?;
            }
            for (_, record) in read_table::<_, String, JobRecord>(&txn, JOBS, "job", |k: &str| k.to_string())? {
                writer.record(Record::Job(record))?;
            }
            drop(txn);
            let file = writer.finish()?;
            let promoted = StateMachineStore::promote_snapshot(&inner, &temp, &meta)?;
            let path = if promoted { inner.snapshot_dir.join(CURRENT_SNAPSHOT) } else { temp.clone() };
            let snapshot = SnapshotFile::from_file(path, file)?;
            if !promoted {
                // A newer snapshot is current already; hand this one out (the open handle keeps
                // it readable) but do not keep it on disk.
                let _ = fs::remove_file(&temp);
            }
            Ok(Snapshot { meta, snapshot })
        })
        .await
        .map_err(io_error)?
    }
}

impl StateMachineStore {
    /// A fresh path in the snapshot directory to receive a snapshot into (removed at start if a
    /// transfer is cut off).
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        temp_name(&self.inner.snapshot_dir, "incoming")
    }
}
