//! Data written by release 0.1 opens with today's store: the KV state, the
//! purged log and the snapshot of each node of `fixtures/v0.1-3node.tar.gz`
//! (see `fixtures/README.md`) read back as 0.1 left them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use openraft::storage::{RaftLogStorage, RaftStateMachine, StorageHelper};
use openraft::{EntryPayload, RaftLogReader};
use raftmesh_proto::{Cmd, KvCmd, KvEntry, NodeId};
use raftmesh_raft_store::{open, StoreReader, SNAPSHOT_DIR, SNAPSHOT_MAGIC};
use serde::Deserialize;
use tempfile::TempDir;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/v0.1-3node.tar.gz"
);

#[derive(Deserialize)]
struct Expected {
    nodes: BTreeMap<NodeId, ExpectedNode>,
    keys: Vec<String>,
    kv: BTreeMap<String, ExpectedKv>,
    deleted: Vec<String>,
}

#[derive(Deserialize)]
struct ExpectedNode {
    data_dir: String,
    grpc_addr: String,
    http_addr: String,
    cluster: ClusterView,
}

/// The part of 0.1's `/cluster` these tests compare.
#[derive(Deserialize)]
struct ClusterView {
    term: u64,
    leader: NodeId,
    last_log_index: u64,
    last_applied_index: u64,
    last_snapshot_index: u64,
    last_purged_index: u64,
}

#[derive(Deserialize)]
struct ExpectedKv {
    revision: u64,
    /// The stored compact JSON text.
    value: String,
}

/// The unpacked fixture; removed on drop.
struct Fixture {
    dir: TempDir,
    expected: Expected,
}

impl Fixture {
    /// Unpacks with the system `tar`: it made the archive, every machine that
    /// builds this has it, and reading one archive is not worth two new
    /// dependencies.
    fn unpack() -> Self {
        let dir = TempDir::new().unwrap();
        let out = Command::new("tar")
            .arg("-xzf")
            .arg(FIXTURE)
            .arg("-C")
            .arg(dir.path())
            .output()
            .expect("running tar");
        assert!(
            out.status.success(),
            "tar -xzf {FIXTURE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read(dir.path().join("expected.json")).unwrap();
        let expected: Expected = serde_json::from_slice(&text).expect("expected.json parses");
        assert_eq!(expected.nodes.len(), 3, "the fixture has three nodes");
        Fixture { dir, expected }
    }

    fn db(&self, node: &ExpectedNode) -> PathBuf {
        self.dir.path().join(&node.data_dir).join("db")
    }
}

/// The store's whole live KV state.
fn kv_state(reader: &StoreReader) -> BTreeMap<String, KvEntry> {
    let (keys, more) = reader.kv_scan("", None, usize::MAX).unwrap();
    assert!(!more);
    keys.into_iter()
        .map(|k| {
            let e = reader.kv_get(&k).unwrap().expect("a listed key is live");
            (k, e)
        })
        .collect()
}

fn assert_kv_matches(reader: &StoreReader, want: &Expected, what: &str) {
    for (key, e) in &want.kv {
        let got = reader
            .kv_get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: {key} is missing"));
        assert_eq!(
            (got.revision, got.value.as_str()),
            (e.revision, e.value.as_str()),
            "{what}: {key}"
        );
    }
    for key in &want.deleted {
        assert_eq!(reader.kv_get(key).unwrap(), None, "{what}: deleted {key}");
    }
    let (keys, more) = reader.kv_scan("", None, usize::MAX).unwrap();
    assert_eq!(keys, want.keys, "{what}: every live key, in order");
    assert!(!more);
    // A bounded scan pages through the same keys.
    let (page, more) = reader.kv_scan("fx/", Some(&want.keys[9]), 10).unwrap();
    assert_eq!(page, want.keys[10..20], "{what}: a page after a key");
    assert!(more);
}

#[tokio::test]
async fn each_v0_1_node_reads_back_the_kv_state_and_membership_it_wrote() {
    let fx = Fixture::unpack();
    let addrs: BTreeMap<NodeId, (String, String)> = fx
        .expected
        .nodes
        .iter()
        .map(|(id, n)| (*id, (n.grpc_addr.clone(), n.http_addr.clone())))
        .collect();
    for (id, node) in &fx.expected.nodes {
        let (_log, mut sm, reader) = open(&fx.db(node)).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        let applied = applied.unwrap_or_else(|| panic!("node {id} applied nothing"));
        assert_eq!(applied.index, node.cluster.last_applied_index, "node {id}");
        assert_eq!(applied.leader_id.term, node.cluster.term, "node {id}");
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        assert_eq!(voters, addrs.keys().copied().collect(), "node {id} voters");
        let stored: BTreeMap<NodeId, (String, String)> = membership
            .nodes()
            .map(|(i, n)| (*i, (n.grpc_addr.clone(), n.http_addr.clone())))
            .collect();
        assert_eq!(stored, addrs, "node {id}: member addresses");
        assert_kv_matches(&reader, &fx.expected, &format!("node {id}"));
    }
}

#[tokio::test]
async fn each_v0_1_log_keeps_its_purge_point_vote_and_decodable_entries() {
    let fx = Fixture::unpack();
    for (id, node) in &fx.expected.nodes {
        let c = &node.cluster;
        let (mut log, _sm, _reader) = open(&fx.db(node)).unwrap();
        let state = log.get_log_state().await.unwrap();
        let purged = state.last_purged_log_id.expect("a purged prefix");
        assert_eq!(purged.index, c.last_purged_index, "node {id}");
        assert!(purged.index > 0);
        assert_eq!(
            state.last_log_id.unwrap().index,
            c.last_log_index,
            "node {id}"
        );

        let vote = log.read_vote().await.unwrap().expect("a stored vote");
        assert_eq!(vote.leader_id().term, c.term, "node {id}");
        assert_eq!(vote.leader_id().voted_for(), Some(c.leader), "node {id}");
        assert!(
            vote.is_committed(),
            "node {id}: the vote of an elected leader"
        );
        let committed = log.read_committed().await.unwrap();
        assert!(
            committed.is_some_and(|l| l.index > purged.index),
            "node {id}: committed {committed:?}"
        );

        let mut reader = log.get_log_reader().await;
        let gone = reader.try_get_log_entries(0..=purged.index).await.unwrap();
        assert!(
            gone.is_empty(),
            "node {id}: entries up to the purge point are gone"
        );
        // Everything after the purge point decodes, in order, without holes.
        let kept = reader
            .try_get_log_entries(purged.index + 1..)
            .await
            .unwrap();
        let indexes: Vec<u64> = kept.iter().map(|e| e.log_id.index).collect();
        let want: Vec<u64> = (purged.index + 1..=c.last_log_index).collect();
        assert_eq!(indexes, want, "node {id}");
        let writes = kept
            .iter()
            .filter(
                |e| matches!(&e.payload, EntryPayload::Normal(n) if matches!(n.cmd, Cmd::Kv(_))),
            )
            .count();
        assert_eq!(
            writes,
            kept.len(),
            "node {id}: the kept tail is all pm3 writes"
        );
        assert!(
            kept.iter().any(|e| matches!(
                &e.payload,
                EntryPayload::Normal(n) if matches!(n.cmd, Cmd::Kv(KvCmd::Cas { .. }))
            )),
            "node {id}: the tail holds the CAS entries"
        );
    }
}

#[tokio::test]
async fn each_v0_1_snapshot_plus_its_log_tail_rebuilds_the_state() {
    let fx = Fixture::unpack();
    for (id, node) in &fx.expected.nodes {
        let c = &node.cluster;
        let (mut log, mut sm, _reader) = open(&fx.db(node)).unwrap();
        let snap = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a stored snapshot");
        let at = snap.meta.last_log_id.expect("a non-empty snapshot");
        assert_eq!(at.index, c.last_snapshot_index, "node {id}");
        assert!(
            c.last_purged_index <= at.index,
            "node {id}: purged up to the snapshot at most"
        );
        let (_, membership) = sm.applied_state().await.unwrap();
        assert_eq!(snap.meta.last_membership, membership, "node {id}");
        // Opening converted 0.1's in-RocksDB body to today's snapshot file.
        let files: Vec<_> = std::fs::read_dir(fx.db(node).join(SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "node {id}: {files:?}");
        let body = std::fs::read(&files[0]).unwrap();
        assert!(body.starts_with(&SNAPSHOT_MAGIC), "node {id}");

        // Install it where a lagging follower would: today's code decodes the
        // body, and the entries after it replay to the state 0.1 served.
        let fresh = TempDir::new().unwrap();
        let (_flog, mut fsm, freader) = open(fresh.path()).unwrap();
        fsm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let installed = kv_state(&freader);
        assert!(!installed.is_empty(), "node {id}: the snapshot holds data");
        assert!(
            installed.values().all(|e| e.revision <= at.index),
            "node {id}: the snapshot is the state as of its index"
        );
        let tail = log
            .get_log_reader()
            .await
            .try_get_log_entries(at.index + 1..=c.last_applied_index)
            .await
            .unwrap();
        fsm.apply(tail).await.unwrap();
        let (applied, _) = fsm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, c.last_applied_index, "node {id}");
        assert_kv_matches(&freader, &fx.expected, &format!("node {id}, rebuilt"));
    }
}

#[tokio::test]
async fn openraft_starts_from_each_v0_1_store_as_it_was() {
    let fx = Fixture::unpack();
    for (id, node) in &fx.expected.nodes {
        let c = &node.cluster;
        let (mut log, mut sm, reader) = open(&fx.db(node)).unwrap();
        // What `Raft::new` reads at start; nothing needs re-applying or
        // rebuilding, since 0.1 stopped with everything applied and stored.
        let state = StorageHelper::new(&mut log, &mut sm)
            .get_initial_state()
            .await
            .unwrap();
        assert_eq!(
            state.committed.map(|l| l.index),
            Some(c.last_applied_index),
            "node {id}"
        );
        assert_eq!(
            state.snapshot_meta.last_log_id.map(|l| l.index),
            Some(c.last_snapshot_index),
            "node {id}"
        );
        assert_eq!(state.vote_ref().leader_id().term, c.term, "node {id}");
        assert_eq!(
            state
                .membership_state
                .committed()
                .membership()
                .voter_ids()
                .count(),
            3,
            "node {id}"
        );
        assert_kv_matches(&reader, &fx.expected, &format!("node {id}, after start"));
    }
}
