//! The replicated state machine in RocksDB (openraft `RaftStateMachine`),
//! and snapshots of it.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use raftmesh_proto::{ApplyResult, Cmd, KvEntry, NodeId, NodeInfo, TypeConfig};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::Deserialize;

use crate::{cf, kv, StoreError, CF_SM, CF_SM_META};

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

/// State machine; owned by openraft after `Raft::new`.
pub struct StateMachine {
    db: Arc<DB>,
    metrics: Arc<StateMachineMetrics>,
}

impl StateMachine {
    pub(crate) fn new(db: Arc<DB>) -> Result<Self, StoreError> {
        Ok(Self {
            db,
            metrics: Arc::default(),
        })
    }

    /// Shared counters, readable while openraft owns the state machine.
    pub fn metrics(&self) -> Arc<StateMachineMetrics> {
        self.metrics.clone()
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let raw = self.db.get_cf(cf(&self.db, CF_SM_META), key)?;
        Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
    }

    fn kv_lookup(
        &self,
        overlay: &HashMap<String, Option<KvEntry>>,
        key: &str,
    ) -> Result<Option<KvEntry>, StoreError> {
        if let Some(pending) = overlay.get(key) {
            return Ok(pending.clone());
        }
        let raw = self.db.get_cf(cf(&self.db, CF_SM), kv::data_key(key))?;
        raw.map(|v| kv::decode(&v)).transpose()
    }

    /// Applies one command at `index`. Deterministic: it reads only the
    /// entry and the state (pending writes of this batch first).
    fn apply_cmd(
        &self,
        index: u64,
        cmd: &Cmd,
        batch: &mut WriteBatch,
        overlay: &mut HashMap<String, Option<KvEntry>>,
    ) -> Result<ApplyResult, StoreError> {
        let data = cf(&self.db, CF_SM);
        let set = |key: &str,
                   value: &str,
                   batch: &mut WriteBatch,
                   overlay: &mut HashMap<String, Option<KvEntry>>| {
            batch.put_cf(data, kv::data_key(key), kv::encode(index, value));
            overlay.insert(
                key.to_string(),
                Some(KvEntry {
                    revision: index,
                    value: value.to_string(),
                }),
            );
        };
        Ok(match cmd {
            Cmd::KvPut {
                key,
                value,
                if_revision,
            } => {
                if let Some(want) = if_revision {
                    let current = self.kv_lookup(overlay, key)?.map_or(0, |e| e.revision);
                    if current != *want {
                        return Ok(ApplyResult::RevisionMismatch { current });
                    }
                }
                set(key, value, batch, overlay);
                ApplyResult::Written { revision: index }
            }
            Cmd::KvDelete { key } => {
                batch.delete_cf(data, kv::data_key(key));
                overlay.insert(key.clone(), None);
                ApplyResult::Deleted
            }
            Cmd::KvCas {
                key,
                expected,
                desired,
            } => {
                let current = self.kv_lookup(overlay, key)?;
                let (result, ok) = kv::decide_cas(index, current.as_ref(), expected, desired);
                if ok {
                    set(key, desired, batch, overlay);
                }
                result
            }
            Cmd::Batch { cmds } => {
                let mut results = Vec::with_capacity(cmds.len());
                for c in cmds {
                    results.push(self.apply_cmd(index, c, batch, overlay)?);
                }
                ApplyResult::Batch { results }
            }
        })
    }

    fn save_current_snapshot(
        &self,
        batch: &mut WriteBatch,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let m = cf(&self.db, CF_SM_META);
        batch.put_cf(m, KEY_SNAPSHOT_META, serde_json::to_vec(meta)?);
        batch.put_cf(m, KEY_SNAPSHOT_DATA, data);
        Ok(())
    }
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
    /// or a snapshot install change the live state meanwhile.
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

    /// Stores a captured snapshot as the current one.
    pub(crate) fn save(&self, captured: Captured) -> Result<Snapshot<TypeConfig>, StoreError> {
        let Captured { meta, data } = captured;
        let mut batch = WriteBatch::default();
        let m = cf(&self.db, CF_SM_META);
        batch.put_cf(m, KEY_SNAPSHOT_META, serde_json::to_vec(&meta)?);
        batch.put_cf(m, KEY_SNAPSHOT_DATA, &data);
        self.db.write_opt(batch, &synced())?;
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
        let mut batch = WriteBatch::default();
        let mut overlay = HashMap::new();
        let mut results = Vec::new();
        let mut last: Option<LogId<NodeId>> = None;
        let mut membership: Option<Membership> = None;
        for entry in entries {
            let index = entry.log_id.index;
            let r = match &entry.payload {
                EntryPayload::Blank => ApplyResult::None,
                EntryPayload::Normal(e) => self
                    .apply_cmd(index, &e.cmd, &mut batch, &mut overlay)
                    .map_err(|err| err.write())?,
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
        let m = cf(&self.db, CF_SM_META);
        let enc = |e: serde_json::Error| StoreError::from(e).write();
        batch.put_cf(m, KEY_LAST_APPLIED, serde_json::to_vec(&last).map_err(enc)?);
        if let Some(mem) = &membership {
            batch.put_cf(m, KEY_MEMBERSHIP, serde_json::to_vec(mem).map_err(enc)?);
        }
        self.db
            .write(batch)
            .map_err(|e| StoreError::from(e).write())?;
        self.metrics
            .applied_entries
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            metrics: self.metrics.clone(),
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
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let install = || -> Result<(), StoreError> {
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
            self.save_current_snapshot(&mut batch, meta, &data)?;
            self.db.write_opt(batch, &synced())?;
            Ok(())
        };
        install().map_err(|e| e.write())?;
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
