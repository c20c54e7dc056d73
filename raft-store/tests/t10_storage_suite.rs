//! openraft's own storage test suite, run against the redb-backed stores.

use atoll_raft_store::LogStore;
use atoll_raft_store::StateMachineStore;
use atoll_raft_store::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_, log, state) = atoll_raft_store::open(dir.path(), "suite", 0).expect("open stores");
        Ok((dir, log, state))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(RedbBuilder).await.expect("openraft storage suite");
}
