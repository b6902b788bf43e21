//! The journal: for each journaled domain, the events of every applied
//! entry that produced some, kept as state so every node holds the same
//! history and snapshots carry it. Watches replay it before they go live.
//!
//! Layout in the `sm` family (see the table in the crate root):
//! - `j/<domain>/<seq>`: one record (an entry's events in that domain),
//!   `seq` a dense per-domain counter (8 bytes big-endian), so trimming the
//!   oldest record is a point delete and needs no scan inside apply;
//! - `m/journal/<domain>`: the domain's [`JournalMeta`];
//! - `m/settings/retention/<domain>`: the domain's [`Retention`] when set.
//!
//! Retention is per domain, so one busy domain cannot evict another's
//! history, and it is a replicated setting, so every node trims alike.

use raftmesh_proto::codec::{decode_journal, encode_journal, JournalRecord};
use raftmesh_proto::{Domain, Event, Retention};

use super::txn::Txn;
use crate::StoreError;

/// Where a domain's journal stands. Stored as five 8-byte big-endian
/// numbers; a reader ignores bytes after them, so fields can be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalMeta {
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The seq of the oldest record kept (`== next_seq`: none).
    pub oldest_seq: u64,
    /// Events in the kept records.
    pub events: u64,
    /// Encoded bytes of the kept records.
    pub bytes: u64,
    /// Every event of every entry at or after this index is kept: the
    /// oldest `from` a watch may ask for.
    pub complete_from: u64,
}

impl Default for JournalMeta {
    /// A journal that has kept everything since the first entry.
    fn default() -> Self {
        JournalMeta {
            next_seq: 0,
            oldest_seq: 0,
            events: 0,
            bytes: 0,
            complete_from: 1,
        }
    }
}

impl JournalMeta {
    const LEN: usize = 40;

    pub(crate) fn encode(&self) -> Vec<u8> {
        [
            self.next_seq,
            self.oldest_seq,
            self.events,
            self.bytes,
            self.complete_from,
        ]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        if raw.len() < Self::LEN {
            return Err(StoreError::Corrupt(format!(
                "journal meta is {} bytes, expected at least {}",
                raw.len(),
                Self::LEN
            )));
        }
        let n = |i: usize| u64::from_be_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(JournalMeta {
            next_seq: n(0),
            oldest_seq: n(1),
            events: n(2),
            bytes: n(3),
            complete_from: n(4),
        })
    }
}

pub(crate) fn meta_key(domain: Domain) -> Vec<u8> {
    format!("m/journal/{}", domain.name()).into_bytes()
}

/// The prefix of a domain's records; the seq follows it.
pub(crate) fn record_prefix(domain: Domain) -> Vec<u8> {
    format!("j/{}/", domain.name()).into_bytes()
}

pub(crate) fn record_key(domain: Domain, seq: u64) -> Vec<u8> {
    let mut k = record_prefix(domain);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn retention_key(domain: Domain) -> Vec<u8> {
    format!("m/settings/retention/{}", domain.name()).into_bytes()
}

pub fn meta(txn: &Txn<'_>, domain: Domain) -> Result<JournalMeta, StoreError> {
    txn.get(&meta_key(domain))?
        .map_or(Ok(JournalMeta::default()), |raw| JournalMeta::decode(&raw))
}

/// The domain's retention: the cluster's setting, else the default.
pub fn retention(txn: &Txn<'_>, domain: Domain) -> Result<Retention, StoreError> {
    let Some(raw) = txn.get(&retention_key(domain))? else {
        return Ok(Retention::default_for(domain));
    };
    if raw.len() < 16 {
        return Err(StoreError::Corrupt(
            "retention setting shorter than 16 bytes".into(),
        ));
    }
    let n = |i: usize| u64::from_be_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    Ok(Retention {
        max_events: n(0),
        max_bytes: n(8),
    })
}

pub fn set_retention(txn: &mut Txn<'_>, domain: Domain, r: Retention) {
    let mut v = r.max_events.to_be_bytes().to_vec();
    v.extend_from_slice(&r.max_bytes.to_be_bytes());
    txn.put(retention_key(domain), v);
}

/// Journals the events entry `index` produced: one record per domain that
/// has a journal, then trims each such domain to its retention.
pub fn append(
    txn: &mut Txn<'_>,
    index: u64,
    time_ms: u64,
    events: &[Event],
) -> Result<(), StoreError> {
    for domain in Domain::JOURNALED {
        let mine: Vec<Event> = events
            .iter()
            .filter(|e| e.domain() == domain)
            .cloned()
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut m = meta(txn, domain)?;
        m.events += mine.len() as u64;
        let record = encode_journal(&JournalRecord {
            index,
            time_ms,
            events: mine,
        });
        m.bytes += record.len() as u64;
        txn.put(record_key(domain, m.next_seq), record);
        m.next_seq += 1;
        trim(txn, domain, &mut m)?;
        txn.put(meta_key(domain), m.encode());
    }
    Ok(())
}

/// Drops the oldest records while the journal is over its retention,
/// keeping at least the newest record.
fn trim(txn: &mut Txn<'_>, domain: Domain, m: &mut JournalMeta) -> Result<(), StoreError> {
    let keep = retention(txn, domain)?;
    while (m.events > keep.max_events || m.bytes > keep.max_bytes) && m.next_seq - m.oldest_seq > 1
    {
        let key = record_key(domain, m.oldest_seq);
        let raw = txn.get(&key)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "journal {} lacks record {} its meta counts",
                domain.name(),
                m.oldest_seq
            ))
        })?;
        let r = decode_journal(&raw)?;
        m.events = m.events.saturating_sub(r.events.len() as u64);
        m.bytes = m.bytes.saturating_sub(raw.len() as u64);
        m.complete_from = m.complete_from.max(r.index + 1);
        m.oldest_seq += 1;
        txn.delete(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmesh_proto::KvEvent;

    fn put(k: &str) -> Event {
        Event::Kv(KvEvent::Put {
            key: k.into(),
            value: "1".into(),
        })
    }

    #[test]
    fn trims_the_oldest_to_the_retention_and_says_from_where_it_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, reader) = crate::open(dir.path()).unwrap();
        let db = reader.db_for_tests();
        let mut t = Txn::new(&db);
        set_retention(
            &mut t,
            Domain::Kv,
            Retention {
                max_events: 3,
                max_bytes: u64::MAX,
            },
        );
        append(&mut t, 5, 0, &[put("a"), put("b")]).unwrap();
        append(&mut t, 7, 0, &[put("c")]).unwrap();
        assert_eq!(meta(&t, Domain::Kv).unwrap().complete_from, 1);
        // Four events: the record of entry 5 goes, so 6 and later are whole.
        append(&mut t, 9, 0, &[put("d")]).unwrap();
        let m = meta(&t, Domain::Kv).unwrap();
        assert_eq!((m.oldest_seq, m.next_seq, m.events), (1, 3, 2));
        assert_eq!(m.complete_from, 6);
        assert!(t.get(&record_key(Domain::Kv, 0)).unwrap().is_none());
        // One entry larger than the bound is still kept whole.
        append(&mut t, 10, 0, &[put("e"), put("f"), put("g"), put("h")]).unwrap();
        let m = meta(&t, Domain::Kv).unwrap();
        assert_eq!((m.oldest_seq, m.next_seq, m.events), (3, 4, 4));
        assert_eq!(m.complete_from, 10);
        let r = decode_journal(&t.get(&record_key(Domain::Kv, 3)).unwrap().unwrap()).unwrap();
        assert_eq!(r.index, 10);
        assert_eq!(r.events.len(), 4);
    }
}
