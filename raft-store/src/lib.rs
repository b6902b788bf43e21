//! raftmesh's durable storage: the Raft log and the replicated state machine,
//! both in one RocksDB database, and the deterministic apply logic.
//!
//! This crate must not depend on tonic, axum or the node: it only knows the
//! shared contracts in `raftmesh-proto`. Everything here is reached through
//! openraft's storage-v2 traits ([`LogStore`], [`StateMachine`]) plus a
//! read-only [`StoreReader`] the node uses to serve local reads.
//!
//! Durability rule: every log append, vote, truncate, purge and snapshot
//! install is a synced RocksDB write (WAL fsync) before openraft hears it
//! is done. The committed index and state-machine applies are not synced on
//! their own: they share the WAL with the log, so the next synced write
//! covers them; after a crash a slightly stale committed index is safe and
//! openraft re-applies the committed log tail from `last_applied`.

pub mod apply;
pub mod feed;
mod kv;
mod log_store;
mod machine_read;
mod room_read;
mod snapshot;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, StorageError, StorageIOError};
use raftmesh_proto::{KvEntry, NodeId};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};

pub use feed::{AppliedEntry, End, Feed, FeedError, Next, Subscription};
pub use log_store::{LogIo, LogIoCounts, LogStore};
pub use machine_read::InstancePage;
pub use room_read::{RoomValues, RoomView};
pub use snapshot::{
    verify_received, FormatError, MAGIC as SNAPSHOT_MAGIC, SNAPSHOT_DIR,
    VERSION as SNAPSHOT_VERSION,
};
pub use state_machine::{StateMachine, StateMachineMetrics};

/// Raft log entries, keyed by big-endian index so iteration is in log order.
const CF_LOGS: &str = "logs";
/// Vote, committed log id, last purged log id.
const CF_RAFT_META: &str = "raft_meta";
/// Replicated state; every key starts with its table's prefix, so
/// snapshots dump and install this one column family, every key in it:
///
/// | prefix | table |
/// |---|---|
/// | `k/` | pm3 KV: key → 8-byte revision + compact JSON value |
/// | `M/`, `I/`, `X/`, `N/`, `Y/`, `Ye/` | rstmdb machines, instances, list indexes, counts, idempotency ([`apply::machine`]) |
/// | `r/`, `rk/`, `rv/` | DriftDB rooms, each key's value count, the values ([`apply::room`]) |
/// | `j/` | the journal: `j/<domain>/<seq>` → an entry's events ([`apply::journal`]) |
/// | `m/` | the state's own metadata: `m/time` the apply clock, `m/journal/<domain>`, `m/settings/…` cluster-wide settings |
const CF_SM: &str = "sm";
/// last_applied, membership, the current snapshot's meta and file name,
/// and the marker of an install in progress.
const CF_SM_META: &str = "sm_meta";

/// Failures of this crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("decoding stored data: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("decoding a log entry: {0}")]
    Entry(#[from] raftmesh_proto::codec::CodecError),
    /// The stored entry at `index` does not decode; when it was written by
    /// a newer release the message says to upgrade this node.
    /// (`error` is shown, not chained as a source: openraft's error text
    /// would repeat it.)
    #[error("log entry {index}: {error}")]
    LogEntry {
        index: u64,
        error: raftmesh_proto::codec::CodecError,
    },
    #[error("corrupt store: {0}")]
    Corrupt(String),
    #[error("snapshot at {incoming} is older than the current snapshot at {current}")]
    StaleSnapshot { incoming: String, current: String },
    #[error(transparent)]
    Snapshot(#[from] FormatError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("a storage task stopped: {0}")]
    Stopped(String),
}

impl StoreError {
    fn read(self) -> StorageError<NodeId> {
        StorageIOError::read(AnyError::new(&self)).into()
    }
    fn write(self) -> StorageError<NodeId> {
        StorageIOError::write(AnyError::new(&self)).into()
    }
}

/// Local choices of how the store runs; nothing here changes what apply
/// decides.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Applied runs the feed's live buffer holds; a subscriber this far
    /// behind is ended as lagged.
    pub feed_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            feed_capacity: 1024,
        }
    }
}

/// [`open_with`] default options.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine, StoreReader), StoreError> {
    open_with(dir, &StoreOptions::default())
}

/// Opens (or creates) the store in `dir` and returns the two openraft halves
/// and a reader for local queries; all share one RocksDB handle.
///
/// Snapshot files live in `dir/snapshots/` ([`SNAPSHOT_DIR`]); opening
/// finishes a snapshot install a crash interrupted and converts a release
/// 0.1 snapshot to a file. Fails with [`StoreError::Corrupt`] if the state
/// machine is behind the log's purge point, and drops a stored snapshot
/// behind it so openraft rebuilds one as it starts.
pub fn open_with(
    dir: &Path,
    options: &StoreOptions,
) -> Result<(LogStore, StateMachine, StoreReader), StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_RAFT_META, CF_SM, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?);
    let sm = StateMachine::new(db.clone(), dir, options)?;
    sm.check_purge_point(log_store::last_purged(&db)?)?;
    let io = Arc::new(LogIo::default());
    let reader = StoreReader {
        db: db.clone(),
        feed: sm.feed(),
        gate: sm.gate(),
        log_io: io.clone(),
    };
    Ok((LogStore::new(db, io), sm, reader))
}

/// An iterator over the `sm` keys with `prefix`, from `from` (at or after
/// the prefix), that RocksDB stops at the end of the prefix: without the
/// bound a seek into an empty prefix walks on over whatever follows,
/// tombstones included (the trimmed journal's, which made every machine
/// write step over thousands of them).
pub(crate) fn prefix_iter<'a>(
    db: &'a DB,
    prefix: &[u8],
    from: &[u8],
) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(end) = prefix_end(prefix) {
        opts.set_iterate_upper_bound(end);
    }
    db.iterator_cf_opt(
        cf(db, CF_SM),
        opts,
        rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
    )
}

/// The smallest key after every key starting with `prefix` (none when the
/// prefix is all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column family is created at open")
}

/// Read-only access to the applied state, for serving reads locally. Reads see
/// whole apply batches: apply writes data and `last_applied` atomically.
/// A snapshot install writes in several batches, so every read holds the
/// install gate shared and never sees a half-installed state.
#[derive(Clone)]
pub struct StoreReader {
    db: Arc<DB>,
    feed: Arc<Feed>,
    /// Shared with snapshot installs: a read never sees a half-installed state.
    gate: snapshot::StateGate,
    /// The log's I/O counters, which the log store (owned by openraft) bumps.
    log_io: Arc<LogIo>,
}

/// Whether every handle on a store is gone (see
/// [`StoreReader::closed_when_dropped`]).
pub struct StoreClosed(std::sync::Weak<DB>);

impl StoreClosed {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }
}

/// Where the Raft log's bytes are on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogFiles {
    /// RocksDB table files holding log entries.
    pub files: u64,
    /// Their bytes plus the log's part of the memtables not yet flushed.
    pub bytes: u64,
}

impl StoreReader {
    #[cfg(test)]
    pub(crate) fn db_for_tests(&self) -> Arc<DB> {
        self.db.clone()
    }

    /// A handle that says when the last user of the database is gone (the
    /// state machine openraft's worker holds is dropped a little after
    /// Raft shuts down): the data dir can be opened again only then.
    pub fn closed_when_dropped(&self) -> StoreClosed {
        StoreClosed(Arc::downgrade(&self.db))
    }

    /// The applied-event feed, to subscribe to.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// The log's I/O since the process started.
    pub fn log_io(&self) -> LogIoCounts {
        self.log_io.counts()
    }

    /// The log's table files and bytes.
    pub fn log_files(&self) -> Result<LogFiles, StoreError> {
        let mut out = LogFiles::default();
        for f in self.db.live_files()? {
            if f.column_family_name == CF_LOGS {
                out.files += 1;
                out.bytes += f.size as u64;
            }
        }
        let mem = self
            .db
            .property_int_value_cf(cf(&self.db, CF_LOGS), "rocksdb.cur-size-all-mem-tables")?;
        out.bytes += mem.unwrap_or(0);
        Ok(out)
    }

    /// Rewrites the log's files so the space of purged entries (deleted as
    /// a range, which RocksDB drops lazily) is given back now. Safe while
    /// the log is written: RocksDB compacts alongside writes.
    pub fn compact_log(&self) -> Result<(), StoreError> {
        let logs = cf(&self.db, CF_LOGS);
        self.db.flush_cf(logs)?;
        self.db.compact_range_cf(logs, None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }

    /// Where `domain`'s journal stands, and the retention in force.
    pub fn journal_info(
        &self,
        domain: raftmesh_proto::Domain,
    ) -> Result<(apply::journal::JournalMeta, raftmesh_proto::Retention), StoreError> {
        let _shared = self.gate.read()?;
        let txn = apply::Txn::new(&self.db);
        Ok((
            apply::journal::meta(&txn, domain)?,
            apply::journal::retention(&txn, domain)?,
        ))
    }

    /// The pm3 KV record of `key`, if live.
    pub fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let _shared = self.gate.read()?;
        let raw = self.db.get_cf(cf(&self.db, CF_SM), kv::data_key(key))?;
        raw.map(|v| kv::decode(&v)).transpose()
    }

    /// At most `limit` live pm3 keys starting with `prefix`, in byte order,
    /// after `after` (exclusive) when given; and whether more follow. The
    /// bound keeps one request from walking the whole keyspace.
    pub fn kv_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let start = kv::data_key(prefix);
        let from = match after {
            // The smallest key greater than `after`.
            Some(a) if a >= prefix => {
                let mut k = kv::data_key(a);
                k.push(0);
                k
            }
            _ => start.clone(),
        };
        let mut out = Vec::new();
        let _shared = self.gate.read()?;
        let iter = prefix_iter(&self.db, &start, &from);
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let key = std::str::from_utf8(&k[kv::PREFIX.len()..])
                .map_err(|e| StoreError::Corrupt(format!("non-utf8 key: {e}")))?;
            out.push(key.to_string());
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"Ye/"), Some(b"Ye0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
