//! The applied-event feed: the one record of what this node applied, which
//! watches (and later rooms, consumers, long-polls) subscribe to.
//!
//! After each applied run is written, the state machine publishes the run's
//! entries that produced events on a bounded broadcast, and a `Reset` when a
//! snapshot replaced the state. A [`Subscription`] replays the retained
//! journal (read page by page as its consumer pulls, so a slow consumer
//! slows only its own reads), then follows the broadcast:
//!
//! - no gap: it subscribes to the broadcast before its last journal read,
//!   and the state machine writes a run before publishing it, so every
//!   entry is in that read or arrives on the broadcast;
//! - no duplicate: it skips what it already delivered, by index;
//! - entry boundaries: it hands out whole entries and ends only between
//!   them;
//! - lag: a consumer that falls a whole live buffer behind is ended with
//!   [`End::Lagged`] naming the last index it completed, never skipped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raftmesh_proto::codec::decode_journal;
pub use raftmesh_proto::feed::{AppliedEntry, FeedEnd as End, FeedNext as Next};
use raftmesh_proto::{Domain, Event};
use rocksdb::DB;
use tokio::sync::broadcast;

use crate::apply::journal::{meta_key, record_key, record_prefix, JournalMeta};
use crate::snapshot::StateGate;
use crate::{cf, StoreError, CF_SM};

/// Journal records read per page of a replay.
const PAGE: usize = 256;

#[derive(Clone, Debug)]
enum Item {
    /// Entries of one run that produced events, in index order; the run
    /// was applied up to `last`.
    Applied {
        entries: Arc<[AppliedEntry]>,
        last: u64,
    },
    /// A snapshot replaced the state.
    Reset,
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("index {from} is older than the retained history, which starts at {oldest}")]
    Compacted { from: u64, oldest: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Shared by the state machine (which publishes) and readers.
pub struct Feed {
    db: Arc<DB>,
    /// Journal reads share it with snapshot installs.
    gate: StateGate,
    tx: broadcast::Sender<Item>,
    /// The last index published (or installed): "now" for a subscription
    /// without a start.
    applied: AtomicU64,
}

impl Feed {
    pub(crate) fn new(db: Arc<DB>, gate: StateGate, capacity: usize, applied: u64) -> Arc<Feed> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Arc::new(Feed {
            db,
            gate,
            tx,
            applied: AtomicU64::new(applied),
        })
    }

    /// Called after the run is written.
    pub(crate) fn publish(&self, entries: Vec<AppliedEntry>, last: u64) {
        self.applied.store(last, Ordering::Release);
        if !entries.is_empty() {
            // No receiver is not an error: nobody is watching.
            let _ = self.tx.send(Item::Applied {
                entries: entries.into(),
                last,
            });
        }
    }

    /// Called after a snapshot install is written.
    pub(crate) fn reset(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        let _ = self.tx.send(Item::Reset);
    }

    /// The last index applied and published.
    pub fn applied_index(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// The oldest index from which `domain`'s history is whole.
    pub fn oldest(&self, domain: Domain) -> Result<u64, StoreError> {
        let _shared = self.gate.read()?;
        Ok(self.meta(&self.db.snapshot(), domain)?.complete_from)
    }

    fn meta(
        &self,
        snap: &rocksdb::Snapshot<'_>,
        domain: Domain,
    ) -> Result<JournalMeta, StoreError> {
        snap.get_cf(cf(&self.db, CF_SM), meta_key(domain))?
            .map_or(Ok(JournalMeta::default()), |raw| JournalMeta::decode(&raw))
    }

    /// Every event of `domain` from entry `from` on (default: what is
    /// applied next). Refused if `from` is older than the journal keeps.
    pub fn subscribe(
        self: &Arc<Self>,
        domain: Domain,
        from: Option<u64>,
    ) -> Result<Subscription, FeedError> {
        let from = from.unwrap_or_else(|| self.applied_index() + 1).max(1);
        let oldest = self.oldest(domain)?;
        if from < oldest {
            return Err(FeedError::Compacted { from, oldest });
        }
        Ok(Subscription {
            feed: self.clone(),
            domain,
            next: from,
            pending: VecDeque::new(),
            live: None,
        })
    }

    /// Up to `limit` retained entries of `domain` with index >= `from`, read
    /// from one point-in-time view.
    pub fn read(
        &self,
        domain: Domain,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AppliedEntry>, FeedError> {
        self.page_of(domain, from, limit)
    }

    fn page(&self, domain: Domain, from: u64) -> Result<Vec<AppliedEntry>, FeedError> {
        self.page_of(domain, from, PAGE)
    }

    fn page_of(
        &self,
        domain: Domain,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AppliedEntry>, FeedError> {
        let _shared = self.gate.read()?;
        let snap = self.db.snapshot();
        let m = self.meta(&snap, domain)?;
        if from < m.complete_from {
            return Err(FeedError::Compacted {
                from,
                oldest: m.complete_from,
            });
        }
        let sm = cf(&self.db, CF_SM);
        let index_at = |seq: u64| -> Result<u64, StoreError> {
            let raw = snap.get_cf(sm, record_key(domain, seq))?.ok_or_else(|| {
                StoreError::Corrupt(format!("journal {} lacks record {seq}", domain.name()))
            })?;
            Ok(decode_journal(&raw)?.index)
        };
        // The first kept record whose index is >= from (indexes grow with seq).
        let (mut lo, mut hi) = (m.oldest_seq, m.next_seq);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if index_at(mid)? < from {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        if lo == m.next_seq {
            return Ok(out);
        }
        let prefix = record_prefix(domain);
        let start = record_key(domain, lo);
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snap);
        let iter = self.db.iterator_cf_opt(
            sm,
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(StoreError::from)?;
            if !k.starts_with(&prefix) || out.len() == limit {
                break;
            }
            let r = decode_journal(&v).map_err(StoreError::from)?;
            out.push(AppliedEntry {
                index: r.index,
                time_ms: r.time_ms,
                events: r.events,
            });
        }
        Ok(out)
    }
}

/// A consumer's position in the feed of one domain. Pull with
/// [`Subscription::next`]; it reads the journal only as fast as it is pulled.
pub struct Subscription {
    feed: Arc<Feed>,
    domain: Domain,
    /// Every entry before this index was delivered or had nothing for us.
    next: u64,
    /// Read but not yet handed out.
    pending: VecDeque<AppliedEntry>,
    /// Set once the replay caught up with the journal.
    live: Option<broadcast::Receiver<Item>>,
}

impl Subscription {
    /// Where a new subscription would resume this one.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    pub fn domain(&self) -> Domain {
        self.domain
    }

    /// The next whole entry, or why the subscription ended (after which it
    /// only ends again).
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.next = e.index + 1;
                return Next::Entry(e);
            }
            let step = match self.live.as_mut() {
                None => self.replay(),
                Some(rx) => match rx.recv().await {
                    Ok(Item::Applied { entries, last }) => {
                        for e in entries.iter().filter(|e| e.index >= self.next) {
                            let events: Vec<Event> = e
                                .events
                                .iter()
                                .filter(|ev| ev.domain() == self.domain)
                                .cloned()
                                .collect();
                            if !events.is_empty() {
                                self.pending.push_back(AppliedEntry {
                                    index: e.index,
                                    time_ms: e.time_ms,
                                    events,
                                });
                            }
                        }
                        if self.pending.is_empty() {
                            self.next = self.next.max(last + 1);
                        }
                        Ok(())
                    }
                    // The state was replaced; the snapshot carries the
                    // journal, so replay from it.
                    Ok(Item::Reset) => {
                        self.live = None;
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => Err(End::Lagged {
                        last_index: self.next - 1,
                    }),
                    Err(broadcast::error::RecvError::Closed) => Err(End::Closed),
                },
            };
            if let Err(end) = step {
                self.live = None;
                self.pending.clear();
                return Next::End(end);
            }
        }
    }

    /// One replay step: a page of the journal, or the switch to live.
    fn replay(&mut self) -> Result<(), End> {
        let page = self.read()?;
        if page.len() == PAGE {
            self.pending.extend(page);
            return Ok(());
        }
        // Near the head: subscribe, then read once more, so an entry
        // published before the subscription is in this read.
        self.live = Some(self.feed.tx.subscribe());
        let page = self.read()?;
        if page.len() == PAGE {
            // More arrived than a page: records after this one may predate
            // the subscription, so keep replaying.
            self.live = None;
        }
        self.pending.extend(page);
        Ok(())
    }

    fn read(&self) -> Result<Vec<AppliedEntry>, End> {
        match self.feed.page(self.domain, self.next) {
            Ok(p) => Ok(p),
            Err(FeedError::Compacted { oldest, .. }) => Err(End::Compacted { oldest }),
            Err(FeedError::Store(e)) => Err(End::Failed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use raftmesh_proto::{Cmd, KvCmd, KvEvent, LogEntry, Retention, SettingsCmd, TypeConfig};
    use tempfile::TempDir;

    use super::*;
    use crate::{open_with, StateMachine, StoreOptions, StoreReader};

    fn put(key: &str, if_revision: Option<u64>) -> Cmd {
        Cmd::Kv(KvCmd::Put {
            key: key.into(),
            value: "1".into(),
            if_revision,
        })
    }

    fn entry(index: u64, cmd: Cmd) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogEntry {
                time_ms: index,
                cmd,
            }),
        }
    }

    fn puts(range: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
        range
            .map(|i| entry(i, put(&format!("k{i}"), None)))
            .collect()
    }

    fn store(capacity: usize) -> (TempDir, StateMachine, StoreReader) {
        let dir = TempDir::new().unwrap();
        let (_log, sm, reader) = open_with(
            dir.path(),
            &StoreOptions {
                feed_capacity: capacity,
            },
        )
        .unwrap();
        (dir, sm, reader)
    }

    async fn take(sub: &mut Subscription, n: usize) -> Vec<AppliedEntry> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
                Ok(Next::Entry(e)) => out.push(e),
                Ok(Next::End(end)) => panic!("ended early: {end:?}"),
                Err(_) => panic!("stalled after {} entries", out.len()),
            }
        }
        out
    }

    /// Waits briefly: `Some` if the subscription produced something.
    async fn poll(sub: &mut Subscription) -> Option<Next> {
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .ok()
    }

    fn indexes(es: &[AppliedEntry]) -> Vec<u64> {
        es.iter().map(|e| e.index).collect()
    }

    #[tokio::test]
    async fn replays_then_follows_live_without_gap_or_duplicate() {
        let (_d, mut sm, reader) = store(64);
        sm.apply(puts(1..=600)).await.unwrap();
        let mut sub = reader.feed().subscribe(Domain::Kv, Some(4)).unwrap();
        // Pages of the journal, while the state keeps moving.
        let first = take(&mut sub, 300).await;
        sm.apply(puts(601..=650)).await.unwrap();
        let rest = take(&mut sub, 347).await;
        sm.apply(puts(651..=660)).await.unwrap();
        let live = take(&mut sub, 10).await;
        let all: Vec<u64> = [first, rest, live]
            .iter()
            .flat_map(|v| indexes(v))
            .collect();
        assert_eq!(all, (4..=660).collect::<Vec<_>>());
        assert!(poll(&mut sub).await.is_none(), "nothing more was applied");
    }

    #[tokio::test]
    async fn a_subscription_mid_stream_starts_at_what_is_applied_next() {
        let (_d, mut sm, reader) = store(64);
        sm.apply(puts(1..=5)).await.unwrap();
        let mut sub = reader.feed().subscribe(Domain::Kv, None).unwrap();
        assert!(poll(&mut sub).await.is_none());
        sm.apply(puts(6..=7)).await.unwrap();
        let got = take(&mut sub, 2).await;
        assert_eq!(indexes(&got), [6, 7]);
        assert_eq!(
            got[1].events,
            [Event::Kv(KvEvent::Put {
                key: "k7".into(),
                value: "1".into()
            })]
        );
        assert_eq!(got[1].time_ms, 7);
    }

    #[tokio::test]
    async fn an_entry_travels_whole_and_a_lagging_subscriber_ends_at_an_entry_boundary() {
        let (_d, mut sm, reader) = store(2);
        let mut sub = reader.feed().subscribe(Domain::Kv, Some(1)).unwrap();
        assert!(poll(&mut sub).await.is_none(), "caught up and live");
        sm.apply(vec![entry(
            1,
            Cmd::Pack(vec![put("a", None), put("b", None), put("c", None)]),
        )])
        .await
        .unwrap();
        let got = take(&mut sub, 1).await;
        assert_eq!(got[0].events.len(), 3, "one entry, all its events");
        // Three runs into a buffer of two, unread.
        for i in 2..=4 {
            sm.apply(puts(i..=i)).await.unwrap();
        }
        match poll(&mut sub).await {
            Some(Next::End(End::Lagged { last_index })) => assert_eq!(last_index, 1),
            _ => panic!("expected a lagged end"),
        }
        // Resuming from the named index loses nothing.
        let mut again = reader.feed().subscribe(Domain::Kv, Some(2)).unwrap();
        assert_eq!(indexes(&take(&mut again, 3).await), [2, 3, 4]);
    }

    #[tokio::test]
    async fn history_older_than_retained_is_refused_with_the_oldest_kept() {
        let (_d, mut sm, reader) = store(64);
        let keep = Cmd::Settings(SettingsCmd::SetRetention {
            domain: Domain::Kv,
            retention: Retention {
                max_events: 10,
                max_bytes: u64::MAX,
            },
        });
        sm.apply(vec![entry(1, keep)]).await.unwrap();
        sm.apply(puts(2..=30)).await.unwrap();
        match reader.feed().subscribe(Domain::Kv, Some(5)) {
            Err(FeedError::Compacted { from: 5, oldest }) => assert_eq!(oldest, 21),
            _ => panic!("expected compacted"),
        }
        let mut sub = reader.feed().subscribe(Domain::Kv, Some(21)).unwrap();
        assert_eq!(
            indexes(&take(&mut sub, 10).await),
            (21..=30).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_refused_all_or_nothing_group_emits_nothing() {
        let (_d, mut sm, reader) = store(64);
        let mut sub = reader.feed().subscribe(Domain::Kv, Some(1)).unwrap();
        sm.apply(vec![
            entry(1, Cmd::Atomic(vec![put("a", None), put("b", Some(99))])),
            entry(2, Cmd::Atomic(vec![put("a", None), put("b", Some(0))])),
        ])
        .await
        .unwrap();
        let got = take(&mut sub, 1).await;
        assert_eq!(indexes(&got), [2]);
        assert_eq!(got[0].events.len(), 2);
    }

    #[tokio::test]
    async fn after_a_snapshot_install_a_subscriber_continues_from_the_snapshots_journal() {
        // The leader's state at 20, journal included.
        let (_ld, mut leader, _lr) = store(64);
        leader.apply(puts(1..=20)).await.unwrap();
        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let (_d, mut sm, reader) = store(64);
        sm.apply(puts(1..=5)).await.unwrap();
        let mut sub = reader.feed().subscribe(Domain::Kv, Some(1)).unwrap();
        assert_eq!(indexes(&take(&mut sub, 5).await), [1, 2, 3, 4, 5]);
        assert!(poll(&mut sub).await.is_none(), "live");
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(
            indexes(&take(&mut sub, 15).await),
            (6..=20).collect::<Vec<_>>()
        );
        sm.apply(puts(21..=21)).await.unwrap();
        assert_eq!(indexes(&take(&mut sub, 1).await), [21]);
    }
}
