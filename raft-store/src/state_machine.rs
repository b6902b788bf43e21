//! The replicated state machine in RocksDB (openraft `RaftStateMachine`),
//! and snapshots of it.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use raftmesh_proto::{ApplyResult, NodeId, NodeInfo, TypeConfig};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::Deserialize;

use crate::apply::{self, journal, Txn};
use crate::feed::{AppliedEntry, Feed};
use crate::{cf, StoreError, StoreOptions, CF_SM, CF_SM_META};

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";

/// Upper bound for delete_range over the whole `sm` family: every data key
/// starts with an ASCII namespace prefix, so it sorts below 0xff.
const SM_KEY_END: &[u8] = &[0xff; 8];

type Membership = StoredMembership<NodeId, NodeInfo>;

/// Counters a node exposes about its state machine.
#[derive(Default, Debug)]
pub struct StateMachineMetrics {
    pub applied_entries: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

/// Held around every read-compare-write of the stored snapshot. openraft
/// runs a build on its own task while the state machine task may install a
/// snapshot; RocksDB has no compare-and-set, so without this a build could
/// read "nothing newer stored", lose the CPU to an install, and then
/// overwrite the installed snapshot with an older one.
#[derive(Clone, Default)]
struct SaveLock(Arc<Mutex<()>>);

impl SaveLock {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic while holding it leaves
        // nothing inconsistent behind.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a snapshot at `last_log_id` may replace the stored one: only if
/// it is strictly newer by `LogId` order, the order openraft's engine uses
/// to pick its current snapshot (it ignores one `<=` its own), so the stored
/// snapshot and the engine's view never disagree. An equal log id means the
/// same committed state, so keeping the stored copy loses nothing.
fn supersedes(
    last_log_id: &Option<LogId<NodeId>>,
    stored: Option<&SnapshotMeta<NodeId, NodeInfo>>,
) -> bool {
    stored.is_none_or(|s| *last_log_id > s.last_log_id)
}

fn show(id: &Option<LogId<NodeId>>) -> String {
    id.map_or_else(|| "none".into(), |l| format!("index {} ({l})", l.index))
}

/// State machine; owned by openraft after `Raft::new`.
pub struct StateMachine {
    db: Arc<DB>,
    metrics: Arc<StateMachineMetrics>,
    save_lock: SaveLock,
    feed: Arc<Feed>,
}

impl StateMachine {
    pub(crate) fn new(db: Arc<DB>, options: &StoreOptions) -> Result<Self, StoreError> {
        let applied: Option<LogId<NodeId>> = read_meta(&db, KEY_LAST_APPLIED)?;
        let applied = applied.map_or(0, |l| l.index);
        start_journals(&db, applied)?;
        Ok(Self {
            feed: Feed::new(db.clone(), options.feed_capacity, applied),
            db,
            metrics: Arc::default(),
            save_lock: SaveLock::default(),
        })
    }

    pub(crate) fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }

    /// Run at open, before openraft reads the store. The log is only purged
    /// up to a stored snapshot, so a snapshot behind the purge point was
    /// left by a build that overwrote a newer install (before saves were
    /// monotonic). It cannot serve a lagging follower, whose missing entries
    /// after it are gone, and openraft expects `purged <= snapshot`. The
    /// state itself is sound if it is at or past the purge point, so the
    /// stale snapshot is dropped and openraft rebuilds one from the current
    /// state as it starts (it builds when the log is purged but there is no
    /// snapshot, `StorageHelper::get_initial_state`). A state behind the
    /// purge point needs entries that are gone: nothing local can repair it.
    pub(crate) fn check_purge_point(
        &self,
        last_purged: Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        if last_purged.is_none() {
            return Ok(());
        }
        let applied: Option<LogId<NodeId>> = self.meta(KEY_LAST_APPLIED)?;
        if applied < last_purged {
            return Err(StoreError::Corrupt(format!(
                "the log is purged up to {} but the state machine is applied only up to {}; \
                 the entries in between are gone",
                show(&last_purged),
                show(&applied),
            )));
        }
        let _guard = self.save_lock.lock();
        let stored: Option<SnapshotMeta<NodeId, NodeInfo>> = self.meta(KEY_SNAPSHOT_META)?;
        if let Some(s) = stored.filter(|s| s.last_log_id < last_purged) {
            tracing::warn!(
                snapshot = %show(&s.last_log_id),
                purged = %show(&last_purged),
                "stored snapshot is older than the log's purge point; dropping it to be rebuilt"
            );
            let mut batch = WriteBatch::default();
            let m = cf(&self.db, CF_SM_META);
            batch.delete_cf(m, KEY_SNAPSHOT_META);
            batch.delete_cf(m, KEY_SNAPSHOT_DATA);
            self.db.write_opt(batch, &synced())?;
        }
        Ok(())
    }

    /// Shared counters, readable while openraft owns the state machine.
    pub fn metrics(&self) -> Arc<StateMachineMetrics> {
        self.metrics.clone()
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        read_meta(&self.db, key)
    }
}

/// A state applied by a release without journals (0.1) has history
/// nobody recorded: its journals start after what it applied, so a watch
/// from earlier is told the history is gone rather than shown nothing.
fn start_journals(db: &DB, applied: u64) -> Result<(), StoreError> {
    if applied == 0 {
        return Ok(());
    }
    let sm = cf(db, CF_SM);
    let mut batch = WriteBatch::default();
    for d in raftmesh_proto::Domain::JOURNALED {
        let key = journal::meta_key(d);
        if db.get_cf(sm, &key)?.is_none() {
            let m = journal::JournalMeta {
                complete_from: applied + 1,
                ..Default::default()
            };
            batch.put_cf(sm, key, m.encode());
        }
    }
    if !batch.is_empty() {
        db.write_opt(batch, &synced())?;
    }
    Ok(())
}

/// Callers hold the [`SaveLock`] and have checked [`supersedes`].
fn put_snapshot(
    db: &DB,
    batch: &mut WriteBatch,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    data: &[u8],
) -> Result<(), StoreError> {
    let m = cf(db, CF_SM_META);
    batch.put_cf(m, KEY_SNAPSHOT_META, serde_json::to_vec(meta)?);
    batch.put_cf(m, KEY_SNAPSHOT_DATA, data);
    Ok(())
}

fn read_meta<T: for<'de> Deserialize<'de>>(db: &DB, key: &[u8]) -> Result<Option<T>, StoreError> {
    let raw = db.get_cf(cf(db, CF_SM_META), key)?;
    Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// Snapshot body: length-prefixed (key, value) pairs of the `sm` family,
/// preceded by nothing else; the metadata travels beside it.
fn push_pair(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(&(k.len() as u32).to_be_bytes());
    out.extend_from_slice(k);
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// One (key, value) pair of a snapshot body, borrowed from it.
type Pair<'a> = (&'a [u8], &'a [u8]);

fn read_pairs(mut data: &[u8]) -> Result<Vec<Pair<'_>>, StoreError> {
    fn take<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        if data.len() < 4 {
            return Err(StoreError::Corrupt("snapshot truncated (length)".into()));
        }
        let n = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        if data.len() < 4 + n {
            return Err(StoreError::Corrupt("snapshot truncated (body)".into()));
        }
        let item = &data[4..4 + n];
        *data = &data[4 + n..];
        Ok(item)
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let k = take(&mut data)?;
        let v = take(&mut data)?;
        out.push((k, v));
    }
    Ok(out)
}

/// Builds a snapshot from a RocksDB point-in-time snapshot, so applies may
/// continue while it is written out.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    metrics: Arc<StateMachineMetrics>,
    save_lock: SaveLock,
}

/// A snapshot read from one point-in-time view, not yet stored as current.
pub(crate) struct Captured {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    data: Vec<u8>,
}

impl SnapshotBuilder {
    /// Build = capture, then save; two steps so the save can be checked
    /// against whatever happened to the live state while capturing.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let captured = self.capture()?;
        self.save(captured)
    }

    /// Reads `last_applied`, membership and the whole `sm` family from one
    /// RocksDB snapshot, so the three agree with each other even if applies
    /// or a snapshot install change the live state meanwhile: the result is
    /// the state exactly as of `last_applied`, possibly already stale.
    pub(crate) fn capture(&self) -> Result<Captured, StoreError> {
        let snap = self.db.snapshot();
        let get_meta = |key: &[u8]| snap.get_cf(cf(&self.db, CF_SM_META), key);
        let last_applied: Option<LogId<NodeId>> = get_meta(KEY_LAST_APPLIED)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?;
        let membership: Membership = get_meta(KEY_MEMBERSHIP)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?
            .unwrap_or_default();
        let mut data = Vec::new();
        for item in snap.iterator_cf(cf(&self.db, CF_SM), rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            push_pair(&mut data, &k, &v);
        }
        let n = self.metrics.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_applied {
            Some(l) => format!(
                "{}-{}-{}-{n}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        Ok(Captured { meta, data })
    }

    /// Stores a captured snapshot as the current one unless a newer one is
    /// stored by now (an install from the leader overtook this build).
    ///
    /// Either way the captured snapshot is returned. openraft keeps only its
    /// metadata (`core/sm/worker.rs`, `Worker::build_snapshot`) and hands it
    /// to `Engine::finish_building_snapshot`, whose
    /// `SnapshotHandler::update_snapshot` drops a snapshot `<=` the one it
    /// already has; the engine took the installed snapshot's metadata before
    /// the install reached us (`FollowingHandler::install_full_snapshot`),
    /// so a lost build neither moves its snapshot state nor triggers a purge.
    /// Returning the stored snapshot instead would be just as ignored, and
    /// cost a read of its whole body. (At startup openraft does use the
    /// result as its snapshot, `StorageHelper::get_initial_state`, but
    /// nothing installs concurrently there, so it is the stored one.)
    pub(crate) fn save(&self, captured: Captured) -> Result<Snapshot<TypeConfig>, StoreError> {
        let Captured { meta, data } = captured;
        {
            let _guard = self.save_lock.lock();
            let stored: Option<SnapshotMeta<NodeId, NodeInfo>> =
                read_meta(&self.db, KEY_SNAPSHOT_META)?;
            if supersedes(&meta.last_log_id, stored.as_ref()) {
                let mut batch = WriteBatch::default();
                put_snapshot(&self.db, &mut batch, &meta, &data)?;
                self.db.write_opt(batch, &synced())?;
            } else {
                tracing::info!(
                    built = %show(&meta.last_log_id),
                    stored = %show(&stored.and_then(|s| s.last_log_id)),
                    "built snapshot is not newer than the stored one; keeping the stored one"
                );
            }
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build().map_err(StoreError::write)
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
            db: self.db.clone(),
            metrics: self.metrics.clone(),
            save_lock: self.save_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the whole state with the snapshot in one synced batch: the
    /// old data is range-deleted and the new data, `last_applied`,
    /// membership and the snapshot itself are written atomically.
    ///
    /// Refuses a snapshot older than the stored one: the stored snapshot is
    /// at most `last_applied`, and openraft only installs snapshots newer
    /// than what it has committed, so this would be a bug that moves the
    /// state backwards.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let install = || -> Result<(), StoreError> {
            let _guard = self.save_lock.lock();
            let stored: Option<SnapshotMeta<NodeId, NodeInfo>> = self.meta(KEY_SNAPSHOT_META)?;
            if let Some(s) = &stored {
                if s.last_log_id > meta.last_log_id {
                    return Err(StoreError::StaleSnapshot {
                        incoming: show(&meta.last_log_id),
                        current: show(&s.last_log_id),
                    });
                }
            }
            let mut batch = WriteBatch::default();
            let sm = cf(&self.db, CF_SM);
            batch.delete_range_cf(sm, &[][..], SM_KEY_END);
            for (k, v) in read_pairs(&data)? {
                batch.put_cf(sm, k, v);
            }
            let m = cf(&self.db, CF_SM_META);
            batch.put_cf(m, KEY_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id)?);
            batch.put_cf(
                m,
                KEY_MEMBERSHIP,
                serde_json::to_vec(&meta.last_membership)?,
            );
            if supersedes(&meta.last_log_id, stored.as_ref()) {
                put_snapshot(&self.db, &mut batch, meta, &data)?;
            }
            self.db.write_opt(batch, &synced())?;
            Ok(())
        };
        install().map_err(|e| e.write())?;
        self.feed.reset(meta.last_log_id.map_or(0, |l| l.index));
        self.metrics
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let read = || -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
            let Some(meta) = self.meta::<SnapshotMeta<NodeId, NodeInfo>>(KEY_SNAPSHOT_META)? else {
                return Ok(None);
            };
            let data = self
                .db
                .get_cf(cf(&self.db, CF_SM_META), KEY_SNAPSHOT_DATA)?
                .ok_or_else(|| StoreError::Corrupt("snapshot meta without data".into()))?;
            Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
        };
        read().map_err(StoreError::read)
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
        let newer_data = newer.snapshot.get_ref().clone();

        let dir = TempDir::new().unwrap();
        {
            let (mut log, mut sm, reader) = open(dir.path()).unwrap();
            sm.apply(puts(1..=4)).await.unwrap();
            let builder = sm.get_snapshot_builder().await;
            let captured = builder.capture().unwrap();

            sm.install_snapshot(&newer.meta, Box::new(Cursor::new(newer_data.clone())))
                .await
                .unwrap();
            // openraft purges the log up to an installed snapshot.
            log.purge(newer.meta.last_log_id.unwrap()).await.unwrap();

            let built = builder.save(captured).unwrap();
            assert_eq!(index(&built), 4, "the build still reports what it built");

            let cur = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(index(&cur), 10);
            assert_eq!(cur.meta, newer.meta);
            assert_eq!(cur.snapshot.into_inner(), newer_data);
            // The live state is the installed one; the build did not touch it.
            assert_eq!(reader.kv_scan("", None, usize::MAX).unwrap().0.len(), 10);
        }

        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, newer.meta);
        assert_eq!(cur.snapshot.into_inner(), newer_data);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 10);
    }
}
