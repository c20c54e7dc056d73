//! The Raft log, vote and commit pointer, on redb.
//!
//! Durability rules:
//! - `save_vote` returns only once the vote is on disk (an fsync'd commit);
//! - `append` commits the entries without fsync, so they are readable (replication can start)
//!   as soon as it returns, and hands the flush callback to the [`Syncer`] thread, which fires
//!   it only after an fsync'd commit has made the entries durable. One fsync covers every append
//!   queued meanwhile (group commit). redb's durable state is always a prefix of its commits, so
//!   a crash loses only a suffix of unacknowledged entries and never leaves a hole;
//! - `truncate_after` and `purge` are durable when they return, and never leave a hole (purge
//!   records the purge point and deletes in the same transaction).
//!
//! `save_committed` is written without fsync: a commit pointer that lags after a crash only
//! means more entries are re-applied at start, which is allowed; it becomes durable with the next
//! durable write.
//!
//! Every error is returned to openraft, which treats it as fatal and stops the replica.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use redb::Database;
use redb::Durability;
use redb::ReadableDatabase;
use redb::ReadableTable;
use redb::TableDefinition;

use crate::codec;
use crate::error::OpenError;
use crate::error::io_error;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const SCHEMA_KEY: &str = "schema";
const SCHEMA: &[u8] = b"atoll-raft-log/1";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";

/// Open a redb file that must carry `schema`, creating it (and stamping the schema) when absent.
pub(crate) fn open_database(path: &Path, schema: &'static [u8]) -> Result<Database, OpenError> {
    let existed = path.exists();
    let db = Database::builder().create(path).map_err(|e| OpenError::redb(path, e))?;
    let stored: Option<Vec<u8>> = {
        let txn = db.begin_read().map_err(|e| OpenError::redb(path, e))?;
        match txn.open_table(META) {
            Ok(table) => table.get(SCHEMA_KEY).map_err(|e| OpenError::redb(path, e))?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(OpenError::redb(path, e)),
        }
    };
    match stored {
        Some(found) if found == schema => Ok(db),
        Some(found) => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "holds {:?}, expected {:?}",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(schema)
            ),
        }),
        None if existed && !is_blank(&db, path)? => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("a database without the {:?} stamp", String::from_utf8_lossy(schema)),
        }),
        None => {
            let mut txn = db.begin_write().map_err(|e| OpenError::redb(path, e))?;
            txn.set_durability(Durability::Immediate).map_err(|e| OpenError::redb(path, e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| OpenError::redb(path, e))?;
                meta.insert(SCHEMA_KEY, schema).map_err(|e| OpenError::redb(path, e))?;
            }
            txn.commit().map_err(|e| OpenError::redb(path, e))?;
            Ok(db)
        }
    }
}

/// Whether a database holds no tables at all (created, then crashed before the schema stamp).
fn is_blank(db: &Database, path: &Path) -> Result<bool, OpenError> {
    let txn = db.begin_read().map_err(|e| OpenError::redb(path, e))?;
    let tables = txn.list_tables().map_err(|e| OpenError::redb(path, e))?;
    Ok(tables.count() == 0)
}

/// The log storage handed to openraft.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    path: PathBuf,
    syncer: Syncer,
}

/// A thread that makes appended entries durable and then fires their flush callbacks, in order.
#[derive(Clone)]
struct Syncer {
    tx: std::sync::mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl Syncer {
    /// The thread holds the database weakly, so dropping the last [`LogStore`] closes the file
    /// at once (a reopen in the same process finds it free).
    fn start(db: &Arc<Database>, path: &Path) -> std::io::Result<Self> {
        let db = Arc::downgrade(db);
        let (tx, rx) = std::sync::mpsc::channel::<IOFlushed<TypeConfig>>();
        let name = format!("log-sync:{}", path.display());
        std::thread::Builder::new().name("atoll-log-sync".into()).spawn(move || {
            // Ends when every LogStore handle (and so every sender) is gone.
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let result = (|| -> Result<(), redb::Error> {
                    let db = db.upgrade().ok_or_else(|| std::io::Error::other("the log store was closed"))?;
                    let mut txn = db.begin_write()?;
                    txn.set_durability(Durability::Immediate)?;
                    txn.commit()?;
                    Ok(())
                })();
                match result {
                    Ok(()) => batch.into_iter().for_each(|cb| cb.io_completed(Ok(()))),
                    Err(e) => {
                        tracing::error!(log = %name, error = %e, "making appended entries durable failed");
                        let message = e.to_string();
                        batch.into_iter().for_each(|cb| cb.io_completed(Err(std::io::Error::other(message.clone()))));
                    }
                }
            }
        })?;
        Ok(Self { tx })
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let db = Arc::new(open_database(path, SCHEMA)?);
        let syncer = Syncer::start(&db, path).map_err(|e| OpenError::io(path, e))?;
        let store = Self { db, path: path.to_path_buf(), syncer };
        // Read every record once, so a corrupt or newer-format log fails at start, not later.
        store.check_records().map_err(|e| OpenError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok(store)
    }

    fn check_records(&self) -> std::io::Result<()> {
        let reader = self.reader();
        let _: Option<Vote> = reader.read_meta(VOTE_KEY)?;
        let _: Option<LogId> = reader.read_meta(COMMITTED_KEY)?;
        let purged: Option<LogId> = reader.read_meta(PURGED_KEY)?;
        let txn = self.db.begin_read().map_err(io_error)?;
        let table = txn.open_table(LOG).map_err(io_error);
        let Ok(table) = table else { return Ok(()) };
        let mut expected: Option<u64> = purged.map(|p| p.index + 1);
        for row in table.iter().map_err(io_error)? {
            let (index, bytes) = row.map_err(io_error)?;
            let index = index.value();
            let entry: Entry = codec::decode(bytes.value(), &format!("log entry {index}"))?;
            if entry.log_id.index != index {
                return Err(io_error(format!("log entry stored at {index} has index {}", entry.log_id.index)));
            }
            if let Some(want) = expected
                && index != want
            {
                return Err(io_error(format!("hole in the log: expected index {want}, found {index}")));
            }
            expected = Some(index + 1);
        }
        Ok(())
    }

    fn reader(&self) -> LogReader {
        LogReader { db: self.db.clone() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether nothing was ever stored: no vote, no entry, nothing purged.
    pub fn is_pristine(&self) -> std::io::Result<bool> {
        let reader = self.reader();
        let vote: Option<Vote> = reader.read_meta(VOTE_KEY)?;
        let purged: Option<LogId> = reader.read_meta(PURGED_KEY)?;
        Ok(vote.is_none() && purged.is_none() && reader.last_entry()?.is_none())
    }

    /// Run a durable write transaction on the blocking pool.
    async fn write<F>(&self, durability: Durability, f: F) -> std::io::Result<()>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut txn = db.begin_write().map_err(io_error)?;
            txn.set_durability(durability).map_err(io_error)?;
            f(&txn).map_err(io_error)?;
            txn.commit().map_err(io_error)
        })
        .await
        .map_err(io_error)?
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> std::io::Result<()> {
        let bytes = codec::encode(value)?;
        self.write(durability, move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }
}

/// Reads the log; cloned into every replication task.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
}

impl LogReader {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> std::io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io_error)?;
        let table = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match table.get(key).map_err(io_error)? {
            Some(v) => codec::decode(v.value(), key).map(Some),
            None => Ok(None),
        }
    }

    fn last_entry(&self) -> std::io::Result<Option<Entry>> {
        let txn = self.db.begin_read().map_err(io_error)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match table.last().map_err(io_error)? {
            Some((k, v)) => codec::decode(v.value(), &format!("log entry {}", k.value())).map(Some),
            None => Ok(None),
        }
    }

    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> std::io::Result<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(io_error)?;
        let table = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io_error(e)),
        };
        let mut out = Vec::new();
        for row in table.range::<u64>((start, end)).map_err(io_error)? {
            let (k, v) = row.map_err(io_error)?;
            out.push(codec::decode(v.value(), &format!("log entry {}", k.value()))?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        self.entries(range.start_bound().cloned(), range.end_bound().cloned())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.read_meta(VOTE_KEY)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        self.reader().entries(range.start_bound().cloned(), range.end_bound().cloned())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        self.reader().read_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let reader = self.reader();
        let last_purged_log_id: Option<LogId> = reader.read_meta(PURGED_KEY)?;
        let last_log_id = match reader.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        self.put_meta(VOTE_KEY, vote, Durability::Immediate).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        self.put_meta(COMMITTED_KEY, &committed, Durability::None).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        let stored: Option<Option<LogId>> = self.reader().read_meta(COMMITTED_KEY)?;
        Ok(stored.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((entry.index(), codec::encode(&entry)?));
        }
        self.write(Durability::None, move |txn| {
            let mut table = txn.open_table(LOG)?;
            for (index, bytes) in &rows {
                table.insert(*index, bytes.as_slice())?;
            }
            Ok(())
        })
        .await?;
        self.syncer.tx.send(callback).map_err(|_| io_error("the log sync thread has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last_log_id.map(|id| id.index + 1).unwrap_or(0);
        self.write(Durability::Immediate, move |txn| {
            let mut table = txn.open_table(LOG)?;
            table.retain_in::<u64, _>(from.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let upto = log_id.index;
        let bytes = codec::encode(&log_id)?;
        self.write(Durability::Immediate, move |txn| {
            txn.open_table(META)?.insert(PURGED_KEY, bytes.as_slice())?;
            txn.open_table(LOG)?.retain_in::<u64, _>(..=upto, |_, _| false)?;
            Ok(())
        })
        .await
    }
}
