//! openraft's storage conformance suite run against the real RocksDB store
//! on a real temporary directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raftmesh_proto::{NodeId, TypeConfig};
use raftmesh_raft_store::{open, LogStore, StateMachine};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("tempdir");
        let (log, sm, _reader) = open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(RocksBuilder) {
        panic!("storage suite failed: {e}");
    }
}
