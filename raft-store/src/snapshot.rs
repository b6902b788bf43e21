//! Snapshots of the state machine: the version 2 file format, building a
//! snapshot file from a RocksDB point-in-time view, installing a received
//! one so that a crash at any point finishes it at the next open, and
//! converting the snapshot release 0.1 kept inside RocksDB.
//!
//! A snapshot is the whole `sm` column family, every key whatever its
//! prefix, so each replicated domain travels in it without code here
//! knowing about it. Bodies are streamed through bounded buffers and never
//! held in memory whole. DESIGN.md, "Snapshots", describes the format and
//! the install protocol.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{LogId, SnapshotMeta, StoredMembership};
use raftmesh_proto::{NodeId, NodeInfo};
use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::state_machine::{KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use crate::{cf, StoreError, CF_SM, CF_SM_META};

/// openraft's description of a snapshot.
pub type Meta = SnapshotMeta<NodeId, NodeInfo>;
type Membership = StoredMembership<NodeId, NodeInfo>;

/// First bytes of every snapshot file. The high first byte is never the
/// first byte of a release 0.1 body (a big-endian key length), so the two
/// cannot be confused, and it catches transports that strip the 8th bit.
pub const MAGIC: [u8; 8] = *b"\x89RMSNAP\n";
/// The format this code writes and the only one it reads.
pub const VERSION: u32 = 2;
/// A key length of `u32::MAX` ends the pairs; no key is that long.
const END_OF_PAIRS: u32 = u32::MAX;
/// The header is metadata (a membership config): far below this. A larger
/// length is corruption and is refused before it is allocated.
const MAX_HEADER_BYTES: u32 = 16 << 20;
/// Buffer of every snapshot file read and write.
const IO_BUF: usize = 256 << 10;
/// An install writes the pairs in batches of about this many bytes.
const INGEST_BATCH_BYTES: usize = 4 << 20;

/// Snapshot files live in this directory inside the RocksDB directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// The current snapshot's `SnapshotMeta` (JSON).
const KEY_SNAPSHOT_META: &[u8] = b"snapshot_meta";
/// The current snapshot's file name in [`SNAPSHOT_DIR`]; set with
/// `snapshot_meta` in one synced batch.
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
/// Release 0.1's body, stored in RocksDB; converted to a file at open.
const KEY_SNAPSHOT_DATA: &[u8] = b"snapshot_data";
/// An install in progress ([`Installing`]): while set, the `sm` family may
/// hold a mix of old and new state, and open finishes the install.
const KEY_INSTALLING: &[u8] = b"installing";

/// Upper bound for delete_range over the `sm` family: every data key
/// starts with an ASCII namespace prefix, so it sorts below 0xff. Keys at
/// or above it, should one ever exist, are deleted one by one.
const SM_KEY_END: &[u8] = &[0xff; 8];

/// The header's JSON body. serde ignores fields it does not know, and a
/// field added later is `#[serde(default)]`, so header fields are added
/// without a new format version; [`VERSION`] changes only for a layout an
/// older reader would misread.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Header {
    pub meta: Meta,
}

/// A snapshot body this node cannot use. Each names what is wrong, so the
/// sender's and the receiver's logs say why a transfer was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "not a raftmesh snapshot file: it does not start with the format header \
         (release 0.1 sent bodies without one); this node reads format version {VERSION}"
    )]
    NoHeader,
    #[error("snapshot format version {0} is not supported: this node reads version {VERSION}")]
    Version(u32),
    #[error("snapshot is truncated: {what} at byte {offset} needs {need} bytes, {left} left")]
    Truncated {
        what: &'static str,
        offset: u64,
        need: u64,
        left: u64,
    },
    #[error("snapshot header is not valid: {0}")]
    Header(String),
    #[error(
        "snapshot checksum mismatch: the trailer says crc32c {stored:08x}, \
         the body hashes to {computed:08x}"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("snapshot trailer counts {stored} pairs but the body holds {read}")]
    Count { stored: u64, read: u64 },
    #[error("snapshot has {0} bytes after its trailer")]
    Trailing(u64),
    #[error("snapshot header describes {header}, but it was offered as {offered}")]
    MetaMismatch { header: String, offered: String },
    #[error("a key or value of {0} bytes does not fit a snapshot pair")]
    TooLong(usize),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io {
        what: what.to_string(),
        source,
    }
}

/// Writes a version 2 body: header, pairs, trailer. The checksum covers
/// every byte before it.
pub(crate) struct Writer<W: Write> {
    out: W,
    crc: u32,
    count: u64,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W, header: &Header) -> Result<Self, StoreError> {
        let body = serde_json::to_vec(header)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&n| n <= MAX_HEADER_BYTES)
            .ok_or(FormatError::TooLong(body.len()))?;
        let mut w = Writer {
            out,
            crc: 0,
            count: 0,
        };
        let write = |w: &mut Self| -> io::Result<()> {
            w.put(&MAGIC)?;
            w.put(&VERSION.to_be_bytes())?;
            w.put(&len.to_be_bytes())?;
            w.put(&body)
        };
        write(&mut w).map_err(io_err("writing a snapshot header"))?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)
    }

    pub(crate) fn pair(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let len = |b: &[u8]| {
            u32::try_from(b.len())
                .ok()
                .filter(|&n| n != END_OF_PAIRS)
                .ok_or(FormatError::TooLong(b.len()))
        };
        let (kl, vl) = (len(key)?, len(value)?);
        let mut write = || -> io::Result<()> {
            self.put(&kl.to_be_bytes())?;
            self.put(key)?;
            self.put(&vl.to_be_bytes())?;
            self.put(value)
        };
        write().map_err(io_err("writing a snapshot pair"))?;
        self.count += 1;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<W, StoreError> {
        let mut write = || -> io::Result<()> {
            self.put(&END_OF_PAIRS.to_be_bytes())?;
            self.put(&self.count.to_be_bytes())?;
            let crc = self.crc;
            self.out.write_all(&crc.to_be_bytes())?;
            self.out.flush()
        };
        write().map_err(io_err("writing a snapshot trailer"))?;
        Ok(self.out)
    }
}

/// Reads a version 2 body and checks it as it goes: the trailer's count
/// and checksum are compared once the last pair was read, so a caller must
/// not act on the pairs before [`Reader::next_pair`] returned `false`.
pub(crate) struct Reader<R: Read> {
    inp: R,
    crc: u32,
    offset: u64,
    /// The body's length, so a corrupt length field is caught before it
    /// is allocated.
    len: u64,
    count: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub(crate) fn open(inp: R, len: u64) -> Result<(Self, Header), StoreError> {
        let mut r = Reader {
            inp,
            crc: 0,
            offset: 0,
            len,
            count: 0,
            done: false,
        };
        if len < MAGIC.len() as u64 {
            return Err(FormatError::NoHeader.into());
        }
        let mut magic = [0u8; 8];
        r.take(&mut magic, "magic")?;
        if magic != MAGIC {
            return Err(FormatError::NoHeader.into());
        }
        let version = r.u32("format version")?;
        if version != VERSION {
            return Err(FormatError::Version(version).into());
        }
        let hlen = r.u32("header length")?;
        if hlen > MAX_HEADER_BYTES {
            return Err(FormatError::Header(format!(
                "its length {hlen} exceeds {MAX_HEADER_BYTES} bytes"
            ))
            .into());
        }
        let mut body = Vec::new();
        r.fill(&mut body, hlen, "header")?;
        let header =
            serde_json::from_slice(&body).map_err(|e| FormatError::Header(e.to_string()))?;
        Ok((r, header))
    }

    fn left(&self) -> u64 {
        self.len - self.offset
    }

    fn check_left(&self, need: u64, what: &'static str) -> Result<(), StoreError> {
        if need > self.left() {
            return Err(FormatError::Truncated {
                what,
                offset: self.offset,
                need,
                left: self.left(),
            }
            .into());
        }
        Ok(())
    }

    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StoreError> {
        self.take_raw(buf, what)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn take_raw(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), StoreError> {
        self.check_left(buf.len() as u64, what)?;
        match self.inp.read_exact(buf) {
            Ok(()) => {}
            // Shorter than its length said (it shrank while being read).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(FormatError::Truncated {
                    what,
                    offset: self.offset,
                    need: buf.len() as u64,
                    left: 0,
                }
                .into())
            }
            Err(e) => return Err(io_err("reading a snapshot")(e)),
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.take(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    fn fill(&mut self, buf: &mut Vec<u8>, n: u32, what: &'static str) -> Result<(), StoreError> {
        self.check_left(u64::from(n), what)?;
        buf.clear();
        buf.resize(n as usize, 0);
        self.take(buf, what)
    }

    /// The next pair into `key` and `value` (reusing their allocations);
    /// `false` once the pairs ended and the trailer checked out.
    pub(crate) fn next_pair(
        &mut self,
        key: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<bool, StoreError> {
        if self.done {
            return Ok(false);
        }
        let kl = self.u32("key length")?;
        if kl == END_OF_PAIRS {
            self.trailer()?;
            self.done = true;
            return Ok(false);
        }
        self.fill(key, kl, "key")?;
        let vl = self.u32("value length")?;
        self.fill(value, vl, "value")?;
        self.count += 1;
        Ok(true)
    }

    fn trailer(&mut self) -> Result<(), StoreError> {
        let mut c = [0u8; 8];
        self.take(&mut c, "pair count")?;
        let computed = self.crc;
        let mut s = [0u8; 4];
        self.take_raw(&mut s, "checksum")?;
        let stored = u32::from_be_bytes(s);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed }.into());
        }
        let stored = u64::from_be_bytes(c);
        if stored != self.count {
            return Err(FormatError::Count {
                stored,
                read: self.count,
            }
            .into());
        }
        // Nothing may follow, also if the body grew while being read.
        let mut extra = [0u8; 1];
        let more = self
            .inp
            .read(&mut extra)
            .map_err(io_err("reading a snapshot"))?;
        if self.left() > 0 || more > 0 {
            return Err(FormatError::Trailing(self.left().max(more as u64)).into());
        }
        Ok(())
    }
}

/// Reads the whole body in `file` from its start and checks it: header,
/// version, checksum, count, and, with `expected`, that its header
/// describes that snapshot.
pub(crate) fn verify_file(file: &mut File, expected: Option<&Meta>) -> Result<Header, StoreError> {
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("reading a snapshot"))?;
    let len = file.metadata().map_err(io_err("reading a snapshot"))?.len();
    let (mut r, header) = Reader::open(BufReader::with_capacity(IO_BUF, &mut *file), len)?;
    if let Some(meta) = expected {
        same_meta(&header.meta, meta)?;
    }
    let (mut k, mut v) = (Vec::new(), Vec::new());
    while r.next_pair(&mut k, &mut v)? {}
    Ok(header)
}

fn same_meta(header: &Meta, offered: &Meta) -> Result<(), StoreError> {
    if header != offered {
        return Err(FormatError::MetaMismatch {
            header: header.to_string(),
            offered: offered.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Checks a received snapshot body before it is handed to openraft: the
/// format and version, its checksum, and that its header describes `meta`.
/// A body this fails for would otherwise fail the install, which openraft
/// treats as a fatal storage error; refused here, the sender just hears why.
pub async fn verify_received(
    file: tokio::fs::File,
    meta: &Meta,
) -> Result<tokio::fs::File, StoreError> {
    let mut f = file.into_std().await;
    let meta = meta.clone();
    let f = blocking(move || {
        verify_file(&mut f, Some(&meta))?;
        f.seek(SeekFrom::Start(0))
            .map_err(io_err("reading a snapshot"))?;
        Ok(f)
    })
    .await?;
    Ok(tokio::fs::File::from_std(f))
}

/// Runs blocking file and RocksDB work off the async runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Stopped(e.to_string())),
    }
}

/// Release 0.1's body: length-prefixed (key, value) pairs, nothing else.
fn legacy_pairs(
    mut data: &[u8],
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    fn take<'a>(data: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
        if data.len() < 4 {
            return Err(StoreError::Corrupt(
                "release 0.1 snapshot truncated (length)".into(),
            ));
        }
        let n = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        if data.len() < 4 + n {
            return Err(StoreError::Corrupt(
                "release 0.1 snapshot truncated (body)".into(),
            ));
        }
        let item = &data[4..4 + n];
        *data = &data[4 + n..];
        Ok(item)
    }
    while !data.is_empty() {
        let k = take(&mut data)?;
        let v = take(&mut data)?;
        each(k, v)?;
    }
    Ok(())
}

/// Held around every read-compare-write of the stored snapshot. openraft
/// runs a build on its own task while the state machine task may install a
/// snapshot; RocksDB has no compare-and-set, so without this a build could
/// read "nothing newer stored", lose the CPU to an install, and then
/// overwrite the installed snapshot with an older one.
#[derive(Default)]
struct SaveLock(Mutex<()>);

impl SaveLock {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic while holding it leaves
        // nothing inconsistent behind.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Shared with every reader of the `sm` family: an install holds it
/// exclusively while the family is a mix of old and new state (it is
/// written in several batches), reads and snapshot captures hold it shared,
/// so none of them sees the mix. An install that failed midway leaves the
/// mix until the next open finishes it, so from then on every read fails.
#[derive(Clone, Default)]
pub(crate) struct StateGate(Arc<GateInner>);

#[derive(Default)]
struct GateInner {
    lock: RwLock<()>,
    broken: AtomicBool,
}

impl StateGate {
    pub(crate) fn read(&self) -> Result<RwLockReadGuard<'_, ()>, StoreError> {
        // The lock guards no data; a panicked install sets `broken` first.
        let guard = self.0.lock.read().unwrap_or_else(PoisonError::into_inner);
        if self.0.broken.load(Ordering::Acquire) {
            return Err(StoreError::Corrupt(
                "a snapshot install failed midway; the state is incomplete until the \
                 store is reopened, which finishes the install"
                    .into(),
            ));
        }
        Ok(guard)
    }
    fn write(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.lock.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a snapshot at `last_log_id` may replace the stored one: only if
/// it is strictly newer by `LogId` order, the order openraft's engine uses
/// to pick its current snapshot (it ignores one `<=` its own), so the stored
/// snapshot and the engine's view never disagree. An equal log id means the
/// same committed state, so keeping the stored copy loses nothing.
fn supersedes(last_log_id: &Option<LogId<NodeId>>, stored: Option<&Meta>) -> bool {
    stored.is_none_or(|s| *last_log_id > s.last_log_id)
}

pub(crate) fn show(id: &Option<LogId<NodeId>>) -> String {
    id.map_or_else(|| "none".into(), |l| format!("index {} ({l})", l.index))
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

pub(crate) fn read_meta<T: for<'de> Deserialize<'de>>(
    db: &DB,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    let raw = db.get_cf(cf(db, CF_SM_META), key)?;
    Ok(raw.map(|v| serde_json::from_slice(&v)).transpose()?)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing {}", dir.display())))
}

/// The install in progress, recorded before the first write to `sm`.
#[derive(Serialize, Deserialize, Debug)]
struct Installing {
    meta: Meta,
    /// The verified body, durable under this name in [`SNAPSHOT_DIR`].
    file: String,
    /// Whether it becomes the stored snapshot (it supersedes the stored
    /// one), or only the state (same log id as the stored one).
    keep: bool,
}

/// A snapshot file written from one point-in-time view, not yet stored as
/// current.
pub(crate) struct Captured {
    pub(crate) meta: Meta,
    file: String,
}

/// The snapshots of one store: its directory, the current snapshot's
/// record in `sm_meta`, and the locks around them.
pub(crate) struct Snapshots {
    db: Arc<DB>,
    dir: PathBuf,
    save_lock: SaveLock,
    gate: StateGate,
    /// Makes file names unique; starts at the clock so a restart does not
    /// reuse the names of a crashed run's leftovers.
    seq: AtomicU64,
}

impl Snapshots {
    /// Opens `<db_dir>/snapshots`, finishes an install a crash interrupted,
    /// converts a release 0.1 snapshot to a file, and deletes files no
    /// record names (a crashed build's temp file, a superseded snapshot
    /// whose delete a crash skipped).
    pub(crate) fn open(db: Arc<DB>, db_dir: &Path) -> Result<Self, StoreError> {
        let dir = db_dir.join(SNAPSHOT_DIR);
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let s = Snapshots {
            db,
            dir,
            save_lock: SaveLock::default(),
            gate: StateGate::default(),
            seq: AtomicU64::new(start),
        };
        s.finish_interrupted_install()?;
        s.convert_legacy()?;
        s.sweep()?;
        Ok(s)
    }

    pub(crate) fn gate(&self) -> StateGate {
        self.gate.clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn fresh_name(&self, last_log_id: &Option<LogId<NodeId>>) -> String {
        let index = last_log_id.map_or(0, |l| l.index);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{index:020}-{n:016x}.snap")
    }

    fn current_name(&self) -> Result<Option<String>, StoreError> {
        let raw = self
            .db
            .get_cf(cf(&self.db, CF_SM_META), KEY_SNAPSHOT_FILE)?;
        raw.map(|v| {
            String::from_utf8(v)
                .map_err(|e| StoreError::Corrupt(format!("snapshot file name: {e}")))
        })
        .transpose()
    }

    fn remove(&self, name: &str) {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Left for the sweep at the next open.
            Err(e) => tracing::warn!("could not delete {}: {e}", path.display()),
        }
    }

    /// Writes a snapshot file durably: a temp name, fsync, rename, fsync of
    /// the directory, so a name in `sm_meta` always names a whole file.
    fn write_file(
        &self,
        header: &Header,
        fill: impl FnOnce(&mut Writer<BufWriter<File>>) -> Result<(), StoreError>,
    ) -> Result<String, StoreError> {
        let name = self.fresh_name(&header.meta.last_log_id);
        let tmp = self.path(&format!("{name}.tmp"));
        let write = || -> Result<(), StoreError> {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err(format!("creating {}", tmp.display())))?;
            let mut w = Writer::new(BufWriter::with_capacity(IO_BUF, f), header)?;
            fill(&mut w)?;
            let f = w
                .finish()?
                .into_inner()
                .map_err(|e| io_err(format!("writing {}", tmp.display()))(e.into_error()))?;
            f.sync_all()
                .map_err(io_err(format!("syncing {}", tmp.display())))?;
            fs::rename(&tmp, self.path(&name))
                .map_err(io_err(format!("renaming {}", tmp.display())))?;
            sync_dir(&self.dir)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(name)
    }

    /// Writes the snapshot of `last_applied`, membership and the whole `sm`
    /// family, read from one RocksDB snapshot so the three agree with each
    /// other even if applies or an install change the live state meanwhile:
    /// the result is the state exactly as of `last_applied`, possibly
    /// already stale. `n` tells builds of the same state apart.
    pub(crate) fn capture(&self, n: u64) -> Result<Captured, StoreError> {
        let snap = {
            let _shared = self.gate.read()?;
            self.db.snapshot()
        };
        let get_meta = |key: &[u8]| snap.get_cf(cf(&self.db, CF_SM_META), key);
        let last_applied: Option<LogId<NodeId>> = get_meta(KEY_LAST_APPLIED)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?;
        let membership: Membership = get_meta(KEY_MEMBERSHIP)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()?
            .unwrap_or_default();
        let snapshot_id = match &last_applied {
            Some(l) => format!(
                "{}-{}-{}-{n}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{n}"),
        };
        let meta = Meta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let header = Header { meta: meta.clone() };
        let file = self.write_file(&header, |w| {
            for item in snap.iterator_cf(cf(&self.db, CF_SM), rocksdb::IteratorMode::Start) {
                let (k, v) = item?;
                w.pair(&k, &v)?;
            }
            Ok(())
        })?;
        Ok(Captured { meta, file })
    }

    /// Stores a captured snapshot as the current one unless a newer one is
    /// stored by now (an install from the leader overtook this build), and
    /// deletes the file it replaces.
    ///
    /// Either way the captured snapshot is returned, open (a lost build's
    /// file is deleted once open). openraft keeps only its metadata
    /// (`core/sm/worker.rs`, `Worker::build_snapshot`) and hands it to
    /// `Engine::finish_building_snapshot`, whose
    /// `SnapshotHandler::update_snapshot` drops a snapshot `<=` the one it
    /// already has; the engine took the installed snapshot's metadata
    /// before the install reached us (`FollowingHandler::install_full_snapshot`),
    /// so a lost build neither moves its snapshot state nor triggers a
    /// purge. (At startup openraft does use the result as its snapshot,
    /// `StorageHelper::get_initial_state`, but nothing installs
    /// concurrently there, so it is the stored one.)
    pub(crate) fn save(&self, captured: Captured) -> Result<(Meta, File), StoreError> {
        let Captured { meta, file } = captured;
        let path = self.path(&file);
        let _guard = self.save_lock.lock();
        let stored: Option<Meta> = read_meta(&self.db, KEY_SNAPSHOT_META)?;
        let open = || File::open(&path).map_err(io_err(format!("opening {}", path.display())));
        if supersedes(&meta.last_log_id, stored.as_ref()) {
            let old = self.current_name()?;
            let mut batch = WriteBatch::default();
            self.put_current(&mut batch, &meta, &file)?;
            self.db.write_opt(batch, &synced())?;
            if let Some(old) = old.filter(|o| *o != file) {
                self.remove(&old);
            }
            Ok((meta, open()?))
        } else {
            tracing::info!(
                built = %show(&meta.last_log_id),
                stored = %show(&stored.and_then(|s| s.last_log_id)),
                "built snapshot is not newer than the stored one; keeping the stored one"
            );
            let f = open()?;
            self.remove(&file);
            Ok((meta, f))
        }
    }

    fn put_current(
        &self,
        batch: &mut WriteBatch,
        meta: &Meta,
        file: &str,
    ) -> Result<(), StoreError> {
        let m = cf(&self.db, CF_SM_META);
        batch.put_cf(m, KEY_SNAPSHOT_META, serde_json::to_vec(meta)?);
        batch.put_cf(m, KEY_SNAPSHOT_FILE, file.as_bytes());
        batch.delete_cf(m, KEY_SNAPSHOT_DATA);
        Ok(())
    }

    /// The stored snapshot, its file open at the start. Under the save lock,
    /// so a concurrent save cannot delete the file between reading its name
    /// and opening it (once open, a delete no longer matters).
    pub(crate) fn current(&self) -> Result<Option<(Meta, File)>, StoreError> {
        let _guard = self.save_lock.lock();
        let Some(meta) = read_meta::<Meta>(&self.db, KEY_SNAPSHOT_META)? else {
            return Ok(None);
        };
        let name = self
            .current_name()?
            .ok_or_else(|| StoreError::Corrupt("snapshot meta without a snapshot file".into()))?;
        let path = self.path(&name);
        let f = File::open(&path).map_err(io_err(format!(
            "opening the stored snapshot {}",
            path.display()
        )))?;
        Ok(Some((meta, f)))
    }

    /// A fresh file to receive a snapshot into, already unlinked: openraft
    /// may drop a received snapshot without installing it (a stale vote, a
    /// snapshot it already has), and then nothing is left behind. Install
    /// copies the body to a named file while verifying it.
    pub(crate) fn receiving_file(&self) -> Result<File, StoreError> {
        let path = self.path(&format!("recv-{}.part", self.fresh_name(&None)));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        fs::remove_file(&path).map_err(io_err(format!("unlinking {}", path.display())))?;
        Ok(f)
    }

    /// Verifies `body` (format, version, checksum, that its header is
    /// `meta`) while copying it to a new durable file; returns its name.
    /// Nothing is installed from a body that fails.
    fn stage(&self, meta: &Meta, body: &mut File) -> Result<String, StoreError> {
        body.seek(SeekFrom::Start(0))
            .map_err(io_err("reading a received snapshot"))?;
        let len = body
            .metadata()
            .map_err(io_err("reading a received snapshot"))?
            .len();
        let header = Header { meta: meta.clone() };
        self.write_file(&header, |w| {
            let (mut r, header) = Reader::open(BufReader::with_capacity(IO_BUF, &mut *body), len)?;
            same_meta(&header.meta, meta)?;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            while r.next_pair(&mut k, &mut v)? {
                w.pair(&k, &v)?;
            }
            Ok(())
        })
    }

    /// Replaces the state with the snapshot `body`, refusing one older than
    /// the stored snapshot: the stored snapshot is at most `last_applied`,
    /// and openraft only installs snapshots newer than what it has
    /// committed, so that would be a bug that moves the state backwards.
    ///
    /// Steps: verify and copy the body to a named file; record the install
    /// in `sm_meta` (synced); write the pairs in bounded batches after a
    /// range delete; write `last_applied`, membership, the snapshot record
    /// and clear the marker in one synced batch. A crash after the marker
    /// leaves it set, and the next open redoes the install from the file
    /// (every step is idempotent) before anything reads the state.
    pub(crate) fn install(&self, meta: &Meta, mut body: File) -> Result<(), StoreError> {
        let file = self.stage(meta, &mut body)?;
        drop(body);
        let _guard = self.save_lock.lock();
        let stored: Option<Meta> = match read_meta(&self.db, KEY_SNAPSHOT_META) {
            Ok(s) => s,
            Err(e) => {
                self.remove(&file);
                return Err(e);
            }
        };
        if let Some(s) = stored.as_ref().filter(|s| s.last_log_id > meta.last_log_id) {
            self.remove(&file);
            return Err(StoreError::StaleSnapshot {
                incoming: show(&meta.last_log_id),
                current: show(&s.last_log_id),
            });
        }
        let inst = Installing {
            meta: meta.clone(),
            file,
            keep: supersedes(&meta.last_log_id, stored.as_ref()),
        };
        let mark = || -> Result<(), StoreError> {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf(&self.db, CF_SM_META),
                KEY_INSTALLING,
                serde_json::to_vec(&inst)?,
            );
            Ok(self.db.write_opt(batch, &synced())?)
        };
        if let Err(e) = mark() {
            self.remove(&inst.file);
            return Err(e);
        }
        let _exclusive = self.gate.write();
        // Set until the ingest succeeds, so a failure (or a panic) leaves
        // the state closed to readers; the marker and the file stay, and
        // open redoes the install.
        self.gate.0.broken.store(true, Ordering::Release);
        self.ingest(&inst)?;
        self.gate.0.broken.store(false, Ordering::Release);
        Ok(())
    }

    /// Writes the marked install's pairs and finishes it; safe to repeat.
    fn ingest(&self, inst: &Installing) -> Result<(), StoreError> {
        let path = self.path(&inst.file);
        let what = format!("reading {}", path.display());
        let f = File::open(&path).map_err(io_err(&what))?;
        let len = f.metadata().map_err(io_err(&what))?.len();
        let (mut r, header) = Reader::open(BufReader::with_capacity(IO_BUF, f), len)?;
        same_meta(&header.meta, &inst.meta)?;

        let sm = cf(&self.db, CF_SM);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(sm, &[][..], SM_KEY_END);
        let high = self.db.iterator_cf(
            sm,
            rocksdb::IteratorMode::From(SM_KEY_END, rocksdb::Direction::Forward),
        );
        for item in high {
            batch.delete_cf(sm, item?.0);
        }
        let (mut k, mut v) = (Vec::new(), Vec::new());
        while r.next_pair(&mut k, &mut v)? {
            batch.put_cf(sm, &k, &v);
            if batch.size_in_bytes() >= INGEST_BATCH_BYTES {
                // WAL on, not synced: the final synced batch makes these
                // durable too (one WAL), and a crash before it redoes all.
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        let meta = &inst.meta;
        let m = cf(&self.db, CF_SM_META);
        batch.put_cf(m, KEY_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id)?);
        batch.put_cf(
            m,
            KEY_MEMBERSHIP,
            serde_json::to_vec(&meta.last_membership)?,
        );
        let obsolete = if inst.keep {
            let old = self.current_name()?;
            self.put_current(&mut batch, meta, &inst.file)?;
            old.filter(|o| *o != inst.file)
        } else {
            Some(inst.file.clone())
        };
        batch.delete_cf(m, KEY_INSTALLING);
        self.db.write_opt(batch, &synced())?;
        if let Some(old) = obsolete {
            self.remove(&old);
        }
        Ok(())
    }

    fn finish_interrupted_install(&self) -> Result<(), StoreError> {
        let Some(inst) = read_meta::<Installing>(&self.db, KEY_INSTALLING)? else {
            return Ok(());
        };
        tracing::warn!(
            snapshot = %show(&inst.meta.last_log_id),
            file = %inst.file,
            "finishing a snapshot install that was interrupted"
        );
        self.ingest(&inst).map_err(|e| {
            StoreError::Corrupt(format!(
                "a snapshot install of {} was interrupted and cannot be finished: {e}",
                show(&inst.meta.last_log_id)
            ))
        })
    }

    /// Release 0.1 kept its snapshot body in `sm_meta`; it becomes a
    /// version 2 file, and the key is deleted in the batch that names the
    /// file. The 0.1 body is one RocksDB value, so it is read whole, once.
    fn convert_legacy(&self) -> Result<(), StoreError> {
        let m = cf(&self.db, CF_SM_META);
        let Some(data) = self.db.get_pinned_cf(m, KEY_SNAPSHOT_DATA)? else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        batch.delete_cf(m, KEY_SNAPSHOT_DATA);
        if let Some(meta) = read_meta::<Meta>(&self.db, KEY_SNAPSHOT_META)? {
            let header = Header { meta };
            let name = self.write_file(&header, |w| legacy_pairs(&data, |k, v| w.pair(k, v)))?;
            tracing::info!(
                snapshot = %show(&header.meta.last_log_id),
                "converted the release 0.1 snapshot to {name}"
            );
            batch.put_cf(m, KEY_SNAPSHOT_FILE, name.as_bytes());
        }
        drop(data);
        Ok(self.db.write_opt(batch, &synced())?)
    }

    /// Deletes every file of the directory but the stored snapshot's.
    fn sweep(&self) -> Result<(), StoreError> {
        let keep = self.current_name()?;
        let what = format!("listing {}", self.dir.display());
        for entry in fs::read_dir(&self.dir).map_err(io_err(&what))? {
            let entry = entry.map_err(io_err(&what))?;
            let name = entry.file_name();
            if keep.as_deref().is_some_and(|k| name == *k) {
                continue;
            }
            if entry.file_type().map_err(io_err(&what))?.is_file() {
                tracing::info!(
                    "deleting {}: no snapshot record names it",
                    entry.path().display()
                );
                self.remove(&name.to_string_lossy());
            }
        }
        Ok(())
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
        let applied: Option<LogId<NodeId>> = read_meta(&self.db, KEY_LAST_APPLIED)?;
        if applied < last_purged {
            return Err(StoreError::Corrupt(format!(
                "the log is purged up to {} but the state machine is applied only up to {}; \
                 the entries in between are gone",
                show(&last_purged),
                show(&applied),
            )));
        }
        let _guard = self.save_lock.lock();
        let stored: Option<Meta> = read_meta(&self.db, KEY_SNAPSHOT_META)?;
        if let Some(s) = stored.filter(|s| s.last_log_id < last_purged) {
            tracing::warn!(
                snapshot = %show(&s.last_log_id),
                purged = %show(&last_purged),
                "stored snapshot is older than the log's purge point; dropping it to be rebuilt"
            );
            let old = self.current_name()?;
            let mut batch = WriteBatch::default();
            let m = cf(&self.db, CF_SM_META);
            batch.delete_cf(m, KEY_SNAPSHOT_META);
            batch.delete_cf(m, KEY_SNAPSHOT_FILE);
            batch.delete_cf(m, KEY_SNAPSHOT_DATA);
            self.db.write_opt(batch, &synced())?;
            if let Some(old) = old {
                self.remove(&old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder};
    use raftmesh_proto::{Cmd, KvCmd, LogEntry, TypeConfig};
    use tempfile::TempDir;

    use super::*;
    use crate::open;

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn meta_at(index: u64) -> Meta {
        Meta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), index)),
            last_membership: Membership::default(),
            snapshot_id: format!("2-1-{index}-0"),
        }
    }

    fn encode(meta: &Meta, pairs: &Pairs) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &Header { meta: meta.clone() }).unwrap();
        for (k, v) in pairs {
            w.pair(k, v).unwrap();
        }
        w.finish().unwrap()
    }

    fn decode(body: &[u8]) -> Result<(Header, Pairs), StoreError> {
        let (mut r, header) = Reader::open(body, body.len() as u64)?;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while r.next_pair(&mut k, &mut v)? {
            out.push((k.clone(), v.clone()));
        }
        Ok((header, out))
    }

    fn sample() -> Pairs {
        vec![
            (b"j/\x00\x00\x00\x01".to_vec(), b"event".to_vec()),
            (
                b"k/a".to_vec(),
                b"\x00\x00\x00\x00\x00\x00\x00\x03\"x\"".to_vec(),
            ),
            (b"k/empty".to_vec(), Vec::new()),
            (b"m/time".to_vec(), 7u64.to_be_bytes().to_vec()),
        ]
    }

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
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

    /// Every key and value of the `sm` family, in order.
    fn sm_state(db: &DB) -> Pairs {
        db.iterator_cf(cf(db, CF_SM), rocksdb::IteratorMode::Start)
            .map(|i| {
                let (k, v) = i.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_body_roundtrips_header_and_pairs() {
        let meta = meta_at(42);
        for pairs in [sample(), Vec::new()] {
            let body = encode(&meta, &pairs);
            assert!(body.starts_with(&MAGIC));
            assert_eq!(&body[8..12], &VERSION.to_be_bytes());
            let (header, back) = decode(&body).unwrap();
            assert_eq!(header.meta, meta);
            assert_eq!(back, pairs);
        }
    }

    /// A field a later writer adds to the header is skipped, not refused.
    #[test]
    fn a_header_field_this_reader_does_not_know_is_ignored() {
        let meta = meta_at(1);
        let json = serde_json::json!({ "meta": meta, "compression": "none" });
        let body = serde_json::to_vec(&json).unwrap();
        let mut raw = Vec::new();
        let mut crc = 0;
        let mut put = |b: &[u8]| {
            crc = crc32c::crc32c_append(crc, b);
            raw.extend_from_slice(b);
        };
        put(&MAGIC);
        put(&VERSION.to_be_bytes());
        put(&(body.len() as u32).to_be_bytes());
        put(&body);
        put(&END_OF_PAIRS.to_be_bytes());
        put(&0u64.to_be_bytes());
        raw.extend_from_slice(&crc.to_be_bytes());
        let (header, pairs) = decode(&raw).unwrap();
        assert_eq!(header.meta, meta);
        assert!(pairs.is_empty());
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum() {
        let body = encode(&meta_at(3), &sample());
        let at = body.len() - 30; // inside the last pair
        let mut bad = body.clone();
        bad[at] ^= 0x01;
        let err = decode(&bad).unwrap_err();
        assert!(
            matches!(err, StoreError::Snapshot(FormatError::Checksum { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn every_truncation_is_refused_with_a_clear_error() {
        let body = encode(&meta_at(3), &sample());
        for len in 0..body.len() {
            let err = decode(&body[..len]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("truncated") || (len < 8 && msg.contains("format header")),
                "cut at {len}: {msg}"
            );
        }
        let mut longer = body.clone();
        longer.push(0);
        let err = decode(&longer).unwrap_err();
        assert!(err.to_string().contains("after its trailer"), "{err}");
    }

    #[test]
    fn an_unknown_version_and_a_headerless_body_are_named() {
        let mut v3 = encode(&meta_at(3), &sample());
        v3[8..12].copy_from_slice(&3u32.to_be_bytes());
        let err = decode(&v3).unwrap_err().to_string();
        assert!(
            err.contains("format version 3 is not supported") && err.contains("version 2"),
            "{err}"
        );

        // Release 0.1's body: bare pairs.
        let mut legacy = Vec::new();
        for (k, v) in sample() {
            legacy.extend_from_slice(&(k.len() as u32).to_be_bytes());
            legacy.extend_from_slice(&k);
            legacy.extend_from_slice(&(v.len() as u32).to_be_bytes());
            legacy.extend_from_slice(&v);
        }
        let err = decode(&legacy).unwrap_err().to_string();
        assert!(
            err.contains("release 0.1") && err.contains("format version 2"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_received_body_must_be_the_snapshot_its_header_names() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("body");
        fs::write(&path, encode(&meta_at(5), &sample())).unwrap();
        let file = || async { tokio::fs::File::open(&path).await.unwrap() };
        verify_received(file().await, &meta_at(5)).await.unwrap();
        let err = verify_received(file().await, &meta_at(6))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Snapshot(FormatError::MetaMismatch { .. })),
            "{err}"
        );
        // A long length field is refused before it is allocated.
        let mut huge = encode(&meta_at(5), &Vec::new())[..12].to_vec();
        huge.extend_from_slice(&(MAX_HEADER_BYTES + 1).to_be_bytes());
        fs::write(&path, huge).unwrap();
        let err = verify_received(file().await, &meta_at(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("header is not valid"), "{err}");
    }

    /// What release 0.1 left in `sm_meta`: the meta and the bare pairs.
    #[tokio::test]
    async fn a_legacy_stored_snapshot_becomes_a_v2_file_at_open() {
        let dir = TempDir::new().unwrap();
        let (want_meta, want_pairs) = {
            let (_log, mut sm, reader) = open(dir.path()).unwrap();
            sm.apply(entries(1..=5)).await.unwrap();
            let db = reader.db_for_tests();
            let pairs = sm_state(&db);
            let mut legacy = Vec::new();
            for (k, v) in &pairs {
                legacy.extend_from_slice(&(k.len() as u32).to_be_bytes());
                legacy.extend_from_slice(k);
                legacy.extend_from_slice(&(v.len() as u32).to_be_bytes());
                legacy.extend_from_slice(v);
            }
            let meta = Meta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
                last_membership: Membership::default(),
                snapshot_id: "1-1-5-0".into(),
            };
            let m = cf(&db, CF_SM_META);
            db.put_cf(m, KEY_SNAPSHOT_META, serde_json::to_vec(&meta).unwrap())
                .unwrap();
            db.put_cf(m, KEY_SNAPSHOT_DATA, legacy).unwrap();
            (meta, pairs)
        };
        let (_log, mut sm, reader) = open(dir.path()).unwrap();
        let db = reader.db_for_tests();
        let m = cf(&db, CF_SM_META);
        assert!(db.get_cf(m, KEY_SNAPSHOT_DATA).unwrap().is_none());
        let name = String::from_utf8(db.get_cf(m, KEY_SNAPSHOT_FILE).unwrap().unwrap()).unwrap();
        assert_eq!(files(dir.path()), vec![name.clone()]);
        let body = fs::read(dir.path().join(SNAPSHOT_DIR).join(&name)).unwrap();
        let (header, pairs) = decode(&body).unwrap();
        assert_eq!((header.meta, pairs), (want_meta.clone(), want_pairs));

        // It serves like any snapshot: openraft's view, and an install.
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, want_meta);
        let other = TempDir::new().unwrap();
        let (_l2, mut sm2, reader2) = open(other.path()).unwrap();
        sm2.install_snapshot(&cur.meta, cur.snapshot).await.unwrap();
        assert_eq!(reader2.kv_scan("", None, 100).unwrap().0.len(), 5);
    }

    /// The leader's snapshot at 10 (ten keys), and a follower at 4 with a key
    /// the snapshot does not have.
    async fn leader_and_follower() -> (TempDir, Meta, PathBuf, Pairs, TempDir) {
        let leader_dir = TempDir::new().unwrap();
        let (meta, body, pairs) = {
            let (_l, mut leader, reader) = open(leader_dir.path()).unwrap();
            leader.apply(entries(1..=10)).await.unwrap();
            let snap = leader
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            let name = files(leader_dir.path()).remove(0);
            let body = leader_dir.path().join(SNAPSHOT_DIR).join(name);
            (snap.meta, body, sm_state(&reader.db_for_tests()))
        };
        let dir = TempDir::new().unwrap();
        {
            let (_log, mut sm, reader) = open(dir.path()).unwrap();
            sm.apply(entries(1..=4)).await.unwrap();
            let db = reader.db_for_tests();
            db.put_cf(cf(&db, CF_SM), b"x/stale", b"old").unwrap();
        }
        (leader_dir, meta, body, pairs, dir)
    }

    /// A crash anywhere between the install's marker and its last batch:
    /// reopening finishes the install, so the state is the snapshot's and
    /// nothing of the old state is left or reported applied.
    #[tokio::test]
    async fn open_finishes_an_install_a_crash_interrupted() {
        for written in [0usize, 1, 6] {
            let (_leader, meta, body, want, dir) = leader_and_follower().await;
            {
                let db = Arc::new(
                    DB::open_cf(
                        &rocksdb::Options::default(),
                        dir.path(),
                        [crate::CF_LOGS, crate::CF_RAFT_META, CF_SM, CF_SM_META],
                    )
                    .unwrap(),
                );
                let snaps = Snapshots::open(db.clone(), dir.path()).unwrap();
                let file = snaps.stage(&meta, &mut File::open(&body).unwrap()).unwrap();
                let inst = Installing {
                    meta: meta.clone(),
                    file,
                    keep: true,
                };
                db.put_cf(
                    cf(&db, CF_SM_META),
                    KEY_INSTALLING,
                    serde_json::to_vec(&inst).unwrap(),
                )
                .unwrap();
                // Part of the ingest: the old state cleared, some pairs in.
                if written > 0 {
                    let sm = cf(&db, CF_SM);
                    db.delete_range_cf(sm, &[][..], SM_KEY_END).unwrap();
                    for (k, v) in want.iter().take(written) {
                        db.put_cf(sm, k, v).unwrap();
                    }
                }
            }
            let (_log, mut sm, reader) = open(dir.path()).unwrap();
            let db = reader.db_for_tests();
            assert_eq!(sm_state(&db), want, "after {written} pairs");
            assert!(db
                .get_cf(cf(&db, CF_SM_META), KEY_INSTALLING)
                .unwrap()
                .is_none());
            let (applied, _) = sm.applied_state().await.unwrap();
            assert_eq!(applied, meta.last_log_id);
            let cur = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(cur.meta, meta);
            assert_eq!(files(dir.path()).len(), 1, "only the installed file");
        }
    }

    /// Without the file the marker names, the install cannot be finished,
    /// and the store does not open as if it were applied.
    #[tokio::test]
    async fn an_interrupted_install_without_its_file_refuses_to_open() {
        let (_leader, meta, _body, _want, dir) = leader_and_follower().await;
        {
            let (_log, _sm, reader) = open(dir.path()).unwrap();
            let db = reader.db_for_tests();
            let inst = Installing {
                meta,
                file: "gone.snap".into(),
                keep: true,
            };
            db.put_cf(
                cf(&db, CF_SM_META),
                KEY_INSTALLING,
                serde_json::to_vec(&inst).unwrap(),
            )
            .unwrap();
        }
        match open(dir.path()) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("interrupted"), "{msg}"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("opened with an unfinished install"),
        }
    }

    /// A crashed build's temp file and a superseded snapshot whose delete a
    /// crash skipped are deleted at open; the stored snapshot stays.
    #[tokio::test]
    async fn open_deletes_files_no_record_names() {
        let dir = TempDir::new().unwrap();
        let kept = {
            let (_log, mut sm, _reader) = open(dir.path()).unwrap();
            sm.apply(entries(1..=3)).await.unwrap();
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            files(dir.path())
        };
        let snaps = dir.path().join(SNAPSHOT_DIR);
        fs::write(snaps.join("00000000000000000002-1.snap"), b"old").unwrap();
        fs::write(snaps.join("00000000000000000004-2.snap.tmp"), b"half").unwrap();
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        assert_eq!(files(dir.path()), kept);
        assert!(sm.get_current_snapshot().await.unwrap().is_some());
    }

    /// A superseded snapshot's file is deleted, and so is a lost build's.
    #[tokio::test]
    async fn only_the_stored_snapshot_keeps_a_file() {
        let (_leader, meta, body, _want, dir) = leader_and_follower().await;
        let (_log, mut sm, _reader) = open(dir.path()).unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let built = files(dir.path());
        assert_eq!(built.len(), 1);
        let file = tokio::fs::File::open(&body).await.unwrap();
        sm.install_snapshot(&meta, Box::new(file)).await.unwrap();
        let installed = files(dir.path());
        assert_eq!(installed.len(), 1);
        assert_ne!(installed, built);
        // A build of the same state does not replace it, and leaves nothing.
        builder.build_snapshot().await.unwrap();
        assert_eq!(files(dir.path()), installed);
    }
}
