//! The replicated state machine in RocksDB (openraft `RaftStateMachine`).
//! Snapshots are built, stored and installed by [`crate::snapshot`]; this
//! is the openraft glue that calls it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use raftmesh_proto::{ApplyResult, NodeId, NodeInfo, TypeConfig};
use rocksdb::{WriteBatch, DB};
use serde::Deserialize;

use crate::apply::{self, journal, Txn};
use crate::feed::{AppliedEntry, Feed};
use crate::snapshot::{self, blocking, Captured, Snapshots, StateGate};
use crate::{cf, StoreError, StoreOptions, CF_SM, CF_SM_META};

pub(crate) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";

type Membership = StoredMembership<NodeId, NodeInfo>;

/// Counters a node exposes about its state machine.
#[derive(Default, Debug)]
pub struct StateMachineMetrics {
    pub applied_entries: AtomicU64,
    /// Snapshot builds started.
    pub snapshots_built: AtomicU64,
    /// Snapshot builds finished and saved (COMPACT waits for one).
    pub snapshots_saved: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// State machine; owned by openraft after `Raft::new`.
pub struct StateMachine {
    db: Arc<DB>,
    metrics: Arc<StateMachineMetrics>,
    snapshots: Arc<Snapshots>,
    feed: Arc<Feed>,
}

impl StateMachine {
    /// `dir` is the RocksDB directory; snapshot files live in its
    /// `snapshots/` subdirectory, which this also recovers (an interrupted
    /// install, a release 0.1 snapshot, leftover files).
    pub(crate) fn new(
        db: Arc<DB>,
        dir: &std::path::Path,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let snapshots = Arc::new(Snapshots::open(db.clone(), dir)?);
        let applied: Option<LogId<NodeId>> = snapshot::read_meta(&db, KEY_LAST_APPLIED)?;
        let applied = applied.map_or(0, |l| l.index);
        start_journals(&db, applied)?;
        Ok(Self {
            feed: Feed::new(db.clone(), snapshots.gate(), options.feed_capacity, applied),
            db,
            metrics: Arc::default(),
            snapshots,
        })
    }

    /// See [`Snapshots::check_purge_point`].
    pub(crate) fn check_purge_point(
        &self,
        last_purged: Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        self.snapshots.check_purge_point(last_purged)
    }

    pub(crate) fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// Readers of the state share this with snapshot installs.
    pub(crate) fn gate(&self) -> StateGate {
        self.snapshots.gate()
    }

    /// Shared counters, readable while openraft owns the state machine.
    pub fn metrics(&self) -> Arc<StateMachineMetrics> {
        self.metrics.clone()
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        snapshot::read_meta(&self.db, key)
    }
}

/// Marks a state written by a release with journals; absent in 0.1's.
const FORMAT_KEY: &[u8] = b"m/format";
const FORMAT: u64 = 2;

/// A state applied by release 0.1 (no `m/format`) has KV history nobody
/// journaled: its KV journal starts after what it applied, so a watch from
/// earlier is told the history is gone rather than shown nothing. A fresh
/// state is marked at once, before anything applies; snapshots carry the
/// mark, so only an upgraded 0.1 state takes this path. (Domains newer than
/// 0.1 had no events before, so their journals are whole from the start.)
fn start_journals(db: &DB, applied: u64) -> Result<(), StoreError> {
    let sm = cf(db, CF_SM);
    if db.get_cf(sm, FORMAT_KEY)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    batch.put_cf(sm, FORMAT_KEY, FORMAT.to_be_bytes());
    if applied > 0 {
        let key = journal::meta_key(raftmesh_proto::Domain::Kv);
        if db.get_cf(sm, &key)?.is_none() {
            let m = journal::JournalMeta {
                complete_from: applied + 1,
                ..Default::default()
            };
            batch.put_cf(sm, key, m.encode());
        }
    }
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    db.write_opt(batch, &w)?;
    Ok(())
}

fn open_snapshot(meta: SnapshotMeta<NodeId, NodeInfo>, f: std::fs::File) -> Snapshot<TypeConfig> {
    Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(f)),
    }
}

/// Builds a snapshot file from a RocksDB point-in-time snapshot, so applies
/// may continue while it is written out.
pub struct SnapshotBuilder {
    metrics: Arc<StateMachineMetrics>,
    snapshots: Arc<Snapshots>,
}

impl SnapshotBuilder {
    /// Build = capture, then save; two steps so the save can be checked
    /// against whatever happened to the live state while capturing.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let captured = self.capture()?;
        self.save(captured)
    }

    /// See [`Snapshots::capture`].
    pub(crate) fn capture(&self) -> Result<Captured, StoreError> {
        let n = self.metrics.snapshots_built.fetch_add(1, Ordering::Relaxed);
        self.snapshots.capture(n)
    }

    /// See [`Snapshots::save`].
    pub(crate) fn save(&self, captured: Captured) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (meta, f) = self.snapshots.save(captured)?;
        self.metrics.snapshots_saved.fetch_add(1, Ordering::Relaxed);
        Ok(open_snapshot(meta, f))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = SnapshotBuilder {
            metrics: self.metrics.clone(),
            snapshots: self.snapshots.clone(),
        };
        blocking(move || this.build())
            .await
            .map_err(StoreError::write)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let last = self.meta(KEY_LAST_APPLIED).map_err(StoreError::read)?;
        let membership = self
            .meta(KEY_MEMBERSHIP)
            .map_err(StoreError::read)?
            .unwrap_or_default();
        Ok((last, membership))
    }

    /// Applies a run of committed entries as one RocksDB batch together with
    /// the new `last_applied` (and membership), so a crash never leaves data
    /// and `last_applied` disagreeing.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut txn = Txn::new(&self.db);
        let mut results = Vec::new();
        let mut applied = Vec::new();
        let mut last: Option<LogId<NodeId>> = None;
        let mut membership: Option<Membership> = None;
        for entry in entries {
            let index = entry.log_id.index;
            let r = match &entry.payload {
                EntryPayload::Blank => ApplyResult::None,
                EntryPayload::Normal(e) => {
                    // Time never goes backwards across leaders whose clocks
                    // differ; it is state, so snapshots carry it.
                    let time = apply::time_of(&txn, e.time_ms).map_err(|err| err.write())?;
                    apply::set_time(&mut txn, time);
                    let r =
                        apply::apply(&mut txn, index, time, &e.cmd).map_err(|err| err.write())?;
                    let events = txn.take_events();
                    if !events.is_empty() {
                        journal::append(&mut txn, index, time, &events)
                            .map_err(|err| err.write())?;
                        applied.push(AppliedEntry {
                            index,
                            time_ms: time,
                            events,
                        });
                    }
                    r
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    ApplyResult::None
                }
            };
            results.push(r);
            last = Some(entry.log_id);
        }
        let Some(last) = last else {
            return Ok(results);
        };
        let mut batch = WriteBatch::default();
        txn.write_into(&mut batch);
        let m = cf(&self.db, CF_SM_META);
        let enc = |e: serde_json::Error| StoreError::from(e).write();
        batch.put_cf(m, KEY_LAST_APPLIED, serde_json::to_vec(&last).map_err(enc)?);
        if let Some(mem) = &membership {
            batch.put_cf(m, KEY_MEMBERSHIP, serde_json::to_vec(mem).map_err(enc)?);
        }
        self.db
            .write(batch)
            .map_err(|e| StoreError::from(e).write())?;
        self.feed.publish(applied, last.index);
        self.metrics
            .applied_entries
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            metrics: self.metrics.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    /// A fresh unnamed file in the snapshot directory; see
    /// [`Snapshots::receiving_file`].
    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let snapshots = self.snapshots.clone();
        let f = blocking(move || snapshots.receiving_file())
            .await
            .map_err(StoreError::write)?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    /// Replaces the whole state with the snapshot, crash-safely; refuses
    /// one older than the stored snapshot. See [`Snapshots::install`].
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let body = snapshot.into_std().await;
        let (snapshots, meta) = (self.snapshots.clone(), meta.clone());
        let index = meta.last_log_id.map_or(0, |l| l.index);
        blocking(move || snapshots.install(&meta, body))
            .await
            .map_err(|e| e.write())?;
        // Subscribers replay from the installed state's journal.
        self.feed.reset(index);
        self.metrics
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snapshots = self.snapshots.clone();
        let current = blocking(move || snapshots.current())
            .await
            .map_err(StoreError::read)?;
        Ok(current.map(|(meta, f)| open_snapshot(meta, f)))
    }
}

#[cfg(test)]
mod tests {
    //! The build/install race, made deterministic by running the builder's
    //! two steps by hand with an install in between.

    use openraft::storage::RaftLogStorage;
    use openraft::CommittedLeaderId;
    use raftmesh_proto::LogEntry;
    use tempfile::TempDir;

    use super::*;
    use crate::open;
    use raftmesh_proto::{Cmd, KvCmd};

    fn puts(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
        range
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(LogEntry {
                    time_ms: 0,
                    cmd: Cmd::Kv(KvCmd::Put {
                        key: format!("k{i:03}"),
                        value: i.to_string(),
                        if_revision: None,
                    }),
                }),
            })
            .collect()
    }

    fn index(s: &Snapshot<TypeConfig>) -> u64 {
        s.meta.last_log_id.expect("non-empty snapshot").index
    }

    async fn body(s: Snapshot<TypeConfig>) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut f = s.snapshot;
        f.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_build_finishing_after_a_newer_install_keeps_the_installed_snapshot() {
        // The leader's snapshot at 10, to be installed on the follower.
        let leader_dir = TempDir::new().unwrap();
        let (_l, mut leader, _r) = open(leader_dir.path()).unwrap();
        leader.apply(puts(1..=10)).await.unwrap();
        let newer = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let newer_data = body(leader.get_current_snapshot().await.unwrap().unwrap()).await;

        let dir = TempDir::new().unwrap();
        {
            let (mut log, mut sm, reader) = open(dir.path()).unwrap();
            sm.apply(puts(1..=4)).await.unwrap();
            let builder = sm.get_snapshot_builder().await;
            let captured = builder.capture().unwrap();

            sm.install_snapshot(&newer.meta, newer.snapshot)
                .await
                .unwrap();
            // openraft purges the log up to an installed snapshot.
            log.purge(newer.meta.last_log_id.unwrap()).await.unwrap();

            let built = builder.save(captured).unwrap();
            assert_eq!(index(&built), 4, "the build still reports what it built");

            let cur = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(index(&cur), 10);
            assert_eq!(cur.meta, newer.meta);
            assert_eq!(body(cur).await, newer_data);
            // The live state is the installed one; the build did not touch it.
            assert_eq!(reader.kv_scan("", None, usize::MAX).unwrap().0.len(), 10);
        }

        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, newer.meta);
        assert_eq!(body(cur).await, newer_data);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 10);
    }
}
