//! The Raft log in RocksDB (openraft `RaftLogStorage`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use raftmesh_proto::{codec, NodeId, TypeConfig};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{cf, StoreError, CF_LOGS, CF_RAFT_META};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

fn idx_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// The purge point, read before openraft takes the store (see `crate::open`).
pub(crate) fn last_purged(db: &DB) -> Result<Option<LogId<NodeId>>, StoreError> {
    let raw = db.get_cf(cf(db, CF_RAFT_META), KEY_LAST_PURGED)?;
    Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
}

/// Decodes the stored entry under key `k`; an error names its index.
fn decode_at(k: &[u8], v: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    codec::decode_entry(v).map_err(|error| match <[u8; 8]>::try_from(k) {
        Ok(b) => StoreError::LogEntry {
            index: u64::from_be_bytes(b),
            error,
        },
        Err(_) => StoreError::Entry(error),
    })
}

/// The log's I/O since the process started, as rstmdb's WAL_STATS reports
/// its WAL's: entry bytes written and read, write batches and reads, and
/// synced writes (each one WAL fsync).
#[derive(Debug, Default)]
pub struct LogIo {
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub fsyncs: AtomicU64,
}

/// A plain copy of [`LogIo`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogIoCounts {
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub reads: u64,
    pub fsyncs: u64,
}

impl LogIo {
    pub fn counts(&self) -> LogIoCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LogIoCounts {
            bytes_written: g(&self.bytes_written),
            bytes_read: g(&self.bytes_read),
            writes: g(&self.writes),
            reads: g(&self.reads),
            fsyncs: g(&self.fsyncs),
        }
    }

    fn synced_write(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
}

/// Log storage. Cheap to clone: openraft takes clones as log readers.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    io: Arc<LogIo>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, io: Arc<LogIo>) -> Self {
        Self { db, io }
    }

    /// Stores `bytes` as the log entry at `index`, unchecked and synced.
    /// For tests of what a node does with an entry it cannot decode (one a
    /// newer release wrote); never used by a node.
    #[doc(hidden)]
    pub fn put_raw_entry(&self, index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(cf(&self.db, CF_LOGS), idx_key(index), bytes, &synced())?;
        Ok(())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        let raw = self.db.get_cf(cf(&self.db, CF_RAFT_META), key)?;
        Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
    }

    /// Meta writes are synced: a vote or commit point must survive a crash
    /// before openraft acts on it.
    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StoreError> {
        let v = serde_json::to_vec(value)?;
        let n = v.len() as u64;
        self.db
            .put_cf_opt(cf(&self.db, CF_RAFT_META), key, v, &synced())?;
        self.io.synced_write(n);
        Ok(())
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let mut iter = self
            .db
            .iterator_cf(cf(&self.db, CF_LOGS), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let e: Entry<TypeConfig> = decode_at(&k, &v)?;
                Ok(Some(e.log_id))
            }
        }
    }

    fn read_range(
        &self,
        start: u64,
        end_exclusive: Option<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let mut out = Vec::new();
        let from = idx_key(start);
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOGS),
            IteratorMode::From(&from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let idx = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("log key is not 8 bytes".into()))?,
            );
            if end_exclusive.is_some_and(|end| idx >= end) {
                break;
            }
            self.io
                .bytes_read
                .fetch_add(v.len() as u64, Ordering::Relaxed);
            out.push(decode_at(&k, &v)?);
        }
        self.io.reads.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        self.read_range(start, end).map_err(StoreError::read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged = last_purged(&self.db).map_err(StoreError::read)?;
        let last = self.last_log_id().map_err(StoreError::read)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta(KEY_VOTE, vote).map_err(StoreError::write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE).map_err(StoreError::read)
    }

    /// Not fsynced on its own: it shares the WAL with the log, so the next
    /// append's sync (there is one per write burst) makes it durable. A
    /// committed index that is a little behind after a crash is safe — it
    /// only bounds what is re-applied at start — and syncing here cost one
    /// extra fsync per commit advance (about 4% of leader CPU under load).
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let v = serde_json::to_vec(&committed).map_err(|e| StoreError::from(e).write())?;
        self.db
            .put_cf(cf(&self.db, CF_RAFT_META), KEY_COMMITTED, v)
            .map_err(|e| StoreError::from(e).write())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)
            .map_err(StoreError::read)?
            .flatten())
    }

    /// One `WriteBatch` and one WAL fsync per append call; openraft hands us
    /// everything it has buffered, so a burst of client writes costs one sync.
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let logs = cf(&self.db, CF_LOGS);
        let mut bytes = 0;
        for e in entries {
            let v = codec::encode_entry(&e);
            bytes += v.len() as u64;
            batch.put_cf(logs, idx_key(e.log_id.index), v);
        }
        let res = self.db.write_opt(batch, &synced());
        match res {
            Ok(()) => {
                self.io.synced_write(bytes);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StoreError::from(e).write())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS),
            idx_key(log_id.index),
            idx_key(u64::MAX),
        );
        // delete_range's end is exclusive; u64::MAX is never a real index.
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StoreError::from(e).write())?;
        self.io.synced_write(0);
        Ok(())
    }

    /// Records the purge point and drops the entries in one synced batch, so
    /// a crash never leaves a log whose start is unknown.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut batch = WriteBatch::default();
        let v = serde_json::to_vec(&log_id).map_err(|e| StoreError::from(e).write())?;
        batch.put_cf(cf(&self.db, CF_RAFT_META), KEY_LAST_PURGED, v);
        batch.delete_range_cf(cf(&self.db, CF_LOGS), idx_key(0), idx_key(log_id.index + 1));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StoreError::from(e).write())?;
        self.io.synced_write(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry a newer release wrote is not read as anything: the error
    /// names its index and says to upgrade.
    #[tokio::test]
    async fn an_undecodable_entry_is_named_by_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm, _reader) = crate::open(dir.path()).unwrap();
        log.put_raw_entry(5, &[0x03, 0x0a, 0x00]).unwrap();
        for err in [
            log.try_get_log_entries(0..10)
                .await
                .unwrap_err()
                .to_string(),
            log.get_log_state().await.unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("log entry 5: entry format version 3")
                    && err.contains("upgrade this node"),
                "{err}"
            );
        }
    }
}
