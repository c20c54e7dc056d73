//! What each replicated command does to the state tables.
//!
//! Applied in log order inside one redb write transaction per batch; deterministic, so every
//! replica that applies the same log reaches the same state.

use redb::ReadableTable;
use redb::TableDefinition;

use crate::codec;
use crate::jobs::JobRecord;
use crate::types::Annotation;
use crate::types::Command;
use crate::types::CommandResponse;
use crate::types::MeshView;
use crate::types::ReplicaRecord;

pub(crate) const ANNOTATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("annotations");
pub(crate) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
pub(crate) const REPLICAS: TableDefinition<u64, &[u8]> = TableDefinition::new("replicas");
/// Single-row tables: the mesh view under [`MESH_KEY`].
pub(crate) const SINGLETONS: TableDefinition<&str, &[u8]> = TableDefinition::new("singletons");
pub(crate) const MESH_KEY: &str = "mesh_view";

/// The state tables, open in one write transaction.
pub(crate) struct Tables<'txn> {
    pub(crate) annotations: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(crate) replicas: redb::Table<'txn, u64, &'static [u8]>,
    pub(crate) singletons: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(crate) jobs: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    pub(crate) fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            annotations: txn.open_table(ANNOTATIONS)?,
            replicas: txn.open_table(REPLICAS)?,
            singletons: txn.open_table(SINGLETONS)?,
            jobs: txn.open_table(JOBS)?,
        })
    }

    /// Remove every record (before installing a snapshot).
    pub(crate) fn clear(&mut self) -> Result<(), redb::Error> {
        self.annotations.retain(|_, _| false)?;
        self.replicas.retain(|_, _| false)?;
        self.singletons.retain(|_, _| false)?;
        self.jobs.retain(|_, _| false)?;
        Ok(())
    }

    pub(crate) fn put_annotation(&mut self, key: &str, annotation: &Annotation) -> Result<(), redb::Error> {
        let bytes = codec::encode(annotation)?;
        self.annotations.insert(key, bytes.as_slice())?;
        Ok(())
    }

    pub(crate) fn put_replica(&mut self, node_id: u64, record: &ReplicaRecord) -> Result<(), redb::Error> {
        let bytes = codec::encode(record)?;
        self.replicas.insert(node_id, bytes.as_slice())?;
        Ok(())
    }

    pub(crate) fn put_mesh_view(&mut self, view: &MeshView) -> Result<(), redb::Error> {
        let bytes = codec::encode(view)?;
        self.singletons.insert(MESH_KEY, bytes.as_slice())?;
        Ok(())
    }

    pub(crate) fn put_job(&mut self, record: &JobRecord) -> Result<(), redb::Error> {
        let bytes = codec::encode(record)?;
        self.jobs.insert(record.job.as_str(), bytes.as_slice())?;
        Ok(())
    }

    fn job(&self, id: &str) -> Result<Option<JobRecord>, redb::Error> {
        match self.jobs.get(id)? {
            Some(v) => Ok(Some(codec::decode(v.value(), &format!("job {id:?}"))?)),
            None => Ok(None),
        }
    }

    fn annotation(&self, key: &str) -> Result<Option<Annotation>, redb::Error> {
        match self.annotations.get(key)? {
            Some(v) => Ok(Some(codec::decode(v.value(), &format!("annotation {key:?}"))?)),
            None => Ok(None),
        }
    }

    fn replica(&self, node_id: u64) -> Result<Option<ReplicaRecord>, redb::Error> {
        match self.replicas.get(node_id)? {
            Some(v) => Ok(Some(codec::decode(v.value(), &format!("replica {node_id}"))?)),
            None => Ok(None),
        }
    }

    /// Apply `command`, written at log index `index`.
    pub(crate) fn apply(&mut self, index: u64, command: &Command) -> Result<CommandResponse, redb::Error> {
        match command {
            Command::SetAnnotation { key, value } => {
                let version = self.annotation(key)?.map_or(1, |a| a.version + 1);
                self.put_annotation(key, &Annotation { value: value.clone(), version, revision: index })?;
                Ok(CommandResponse::AnnotationSet { key: key.clone(), version, revision: index })
            }
            Command::DeleteAnnotation { key } => {
                let existed = self.annotations.remove(key.as_str())?.is_some();
                Ok(CommandResponse::AnnotationDeleted { key: key.clone(), existed })
            }
            Command::SetMeshView { view } => {
                self.put_mesh_view(view)?;
                Ok(CommandResponse::MeshViewSet)
            }
            Command::Jobs { ops } => {
                let mut changed = Vec::with_capacity(ops.len());
                for op in ops {
                    let held = self.job(op.job())?;
                    let (next, did) = op.apply(held.as_ref(), index);
                    if did {
                        match next {
                            Some(record) => self.put_job(&record)?,
                            None => {
                                self.jobs.remove(op.job())?;
                            }
                        }
                    }
                    changed.push(did);
                }
                Ok(CommandResponse::JobsApplied { changed })
            }
            Command::RegisterReplica { node_id, incarnation } => match self.replica(*node_id)? {
                Some(existing) if &existing.incarnation != incarnation => Ok(CommandResponse::Refused {
                    reason: format!(
                        "node id {node_id} already belongs to incarnation {} (registered at revision {}); a wiped replica must rejoin under a new id",
                        existing.incarnation, existing.revision
                    ),
                }),
                Some(_) => Ok(CommandResponse::ReplicaRegistered { node_id: *node_id }),
                None => {
                    self.put_replica(*node_id, &ReplicaRecord { incarnation: incarnation.clone(), revision: index })?;
                    Ok(CommandResponse::ReplicaRegistered { node_id: *node_id })
                }
            },
        }
    }
}
