//! One apply run as a transaction over the state machine's key space: a
//! byte-keyed overlay in front of RocksDB, so every command reads what the
//! commands before it in the run wrote, with savepoints so an all-or-nothing
//! group can be undone, and one `WriteBatch` at the end. It also collects
//! the events the commands emit, which a rollback drops with the writes.

use std::collections::BTreeMap;

use raftmesh_proto::Event;
use rocksdb::{WriteBatch, DB};

use crate::{cf, StoreError, CF_SM};

/// What a savepoint restores: each key written since, with its previous
/// overlay state (`None` = the key was not in the overlay).
type Undo = Vec<(Vec<u8>, Option<Option<Vec<u8>>>)>;

/// Keys and values, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The run's pending writes (`None` = deleted).
pub struct Txn<'a> {
    db: &'a DB,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// One per open savepoint, innermost last, with how many events had
    /// been emitted when it opened.
    undo: Vec<(Undo, usize)>,
    /// Events of the entry being applied, in the order emitted.
    events: Vec<Event>,
}

impl<'a> Txn<'a> {
    pub fn new(db: &'a DB) -> Self {
        Txn {
            db,
            writes: BTreeMap::new(),
            undo: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The value of `key` as this run sees it: pending writes first.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => Ok(self.db.get_cf(cf(self.db, CF_SM), key)?),
        }
    }

    /// The first `limit` live keys with `prefix`, in byte order, with their
    /// values, as this run sees them (pending writes merged over RocksDB).
    pub fn scan(&self, prefix: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        // Stored keys: read enough that pending deletes cannot leave fewer
        // than `limit` (each pending write can hide at most one).
        let pending = self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix));
        let hidden = pending.clone().count();
        let iter = crate::prefix_iter(self.db, prefix, prefix);
        for item in iter.take(limit.saturating_add(hidden)) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.insert(k.to_vec(), v.to_vec());
        }
        for (k, v) in pending {
            match v {
                Some(v) => {
                    out.insert(k.clone(), v.clone());
                }
                None => {
                    out.remove(k);
                }
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.set(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.set(key, None);
    }

    fn set(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let before = self.writes.insert(key.clone(), value);
        if let Some((undo, _)) = self.undo.last_mut() {
            undo.push((key, before));
        }
    }

    /// Records what a command changed, for the journal and the feed.
    pub fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    /// The events emitted since the last call: one entry's events.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Opens a savepoint: [`Txn::rollback`] undoes every write after it.
    pub fn savepoint(&mut self) {
        self.undo.push((Vec::new(), self.events.len()));
    }

    /// Undoes the writes since the last savepoint and closes it.
    pub fn rollback(&mut self) {
        let Some((undo, events)) = self.undo.pop() else {
            return;
        };
        self.events.truncate(events);
        for (key, before) in undo.into_iter().rev() {
            match before {
                Some(v) => {
                    self.writes.insert(key, v);
                }
                None => {
                    self.writes.remove(&key);
                }
            }
        }
    }

    /// Keeps the writes since the last savepoint and closes it (an outer
    /// savepoint can still undo them).
    pub fn release(&mut self) {
        if let Some((undo, _)) = self.undo.pop() {
            if let Some((outer, _)) = self.undo.last_mut() {
                outer.extend(undo);
            }
        }
    }

    /// Moves the pending writes into `batch`.
    pub fn write_into(self, batch: &mut WriteBatch) {
        let data = cf(self.db, CF_SM);
        for (k, v) in self.writes {
            match v {
                Some(v) => batch.put_cf(data, k, v),
                None => batch.delete_cf(data, k),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, std::sync::Arc<DB>) {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, reader) = crate::open(dir.path()).unwrap();
        (dir, reader.db_for_tests())
    }

    #[test]
    fn reads_see_pending_writes_and_rollback_restores_them() {
        let (_d, db) = db();
        db.put_cf(cf(&db, CF_SM), b"a", b"stored").unwrap();
        let mut t = Txn::new(&db);
        assert_eq!(t.get(b"a").unwrap().as_deref(), Some(&b"stored"[..]));
        t.put(b"a".to_vec(), b"1".to_vec());
        t.savepoint();
        t.put(b"a".to_vec(), b"2".to_vec());
        t.put(b"b".to_vec(), b"x".to_vec());
        t.delete(b"a".to_vec());
        assert_eq!(t.get(b"a").unwrap(), None);
        t.rollback();
        assert_eq!(t.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(t.get(b"b").unwrap(), None);
    }

    #[test]
    fn nested_savepoints() {
        let (_d, db) = db();
        let mut t = Txn::new(&db);
        t.savepoint();
        t.put(b"k".to_vec(), b"outer".to_vec());
        t.savepoint();
        t.put(b"k".to_vec(), b"inner".to_vec());
        t.release();
        assert_eq!(t.get(b"k").unwrap().as_deref(), Some(&b"inner"[..]));
        // The outer rollback undoes the released inner writes too.
        t.rollback();
        assert_eq!(t.get(b"k").unwrap(), None);
    }

    #[test]
    fn rollback_drops_the_events_emitted_since_the_savepoint() {
        use raftmesh_proto::KvEvent;
        let ev = |k: &str| Event::Kv(KvEvent::Deleted { key: k.into() });
        let (_d, db) = db();
        let mut t = Txn::new(&db);
        t.emit(ev("kept"));
        t.savepoint();
        t.emit(ev("inner-released"));
        t.savepoint();
        t.emit(ev("undone"));
        t.rollback();
        t.release();
        assert_eq!(t.take_events(), [ev("kept"), ev("inner-released")]);
        t.savepoint();
        t.emit(ev("x"));
        t.rollback();
        assert!(t.take_events().is_empty());
    }

    #[test]
    fn scan_merges_pending_writes_over_stored_keys() {
        let (_d, db) = db();
        for k in ["p/1", "p/2", "p/3", "q/1"] {
            db.put_cf(cf(&db, CF_SM), k, b"s").unwrap();
        }
        let mut t = Txn::new(&db);
        t.delete(b"p/1".to_vec());
        t.put(b"p/0".to_vec(), b"n".to_vec());
        t.put(b"p/2".to_vec(), b"n".to_vec());
        let got = t.scan(b"p/", 10).unwrap();
        let keys: Vec<&[u8]> = got.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"p/0"[..], b"p/2", b"p/3"]);
        assert_eq!(got[1].1, b"n");
        assert_eq!(t.scan(b"p/", 2).unwrap().len(), 2);
    }

    #[test]
    fn written_in_one_batch() {
        let (_d, db) = db();
        db.put_cf(cf(&db, CF_SM), b"gone", b"x").unwrap();
        let mut t = Txn::new(&db);
        t.put(b"new".to_vec(), b"v".to_vec());
        t.delete(b"gone".to_vec());
        let mut batch = WriteBatch::default();
        t.write_into(&mut batch);
        db.write(batch).unwrap();
        assert_eq!(
            db.get_cf(cf(&db, CF_SM), b"new").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(db.get_cf(cf(&db, CF_SM), b"gone").unwrap(), None);
    }
}
