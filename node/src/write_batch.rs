//! Write batching on the leader: concurrent client writes are packed into one
//! Raft entry ([`Cmd::Pack`]) so a burst costs one append, one fsync, one
//! replication round and one apply instead of one each. A batch holds at
//! most one write per key, so a key's revision (the entry's index) still
//! names exactly one value; a second write to the same key waits for the
//! next batch. A few batches may be in flight at once to keep the Raft
//! pipeline full; a batch is taken and handed to Raft under one lock, so
//! entries reach the log in the order they were packed — the second write
//! to a key, or a connection's next write, never lands before the first.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::Raft;
use raftmesh_proto::{ApplyResult, ClusterError, Cmd, ConflictKey, Domain, LogEntry, TypeConfig};
use tokio::sync::oneshot;

use raftmesh_proto::codec::cmd_len;

use crate::classify;

/// Largest number of client writes in one entry.
const MAX_BATCH: usize = 512;
/// Batches proposed concurrently.
const MAX_IN_FLIGHT: usize = 2;

/// A write's outcome: its entry's index and result.
type Outcome = Result<(u64, ApplyResult), ClusterError>;
type Reply = oneshot::Sender<Outcome>;

/// Bounds on the leader's write work.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a write may take from arrival to commit, queueing included,
    /// before it is answered "outcome unknown" (or, if never proposed,
    /// "not applied").
    pub timeout: Duration,
    /// Writes waiting to be proposed; one more is refused as overloaded.
    pub max_pending: usize,
    /// Largest encoded entry; a single command over it is refused up front.
    pub max_entry_bytes: usize,
}

pub struct WriteBatcher {
    raft: Raft<TypeConfig>,
    limits: Limits,
    state: Mutex<State>,
    /// Held from taking a batch until Raft has it: packing order is log order.
    submit: tokio::sync::Mutex<()>,
}

struct Pending {
    cmd: Cmd,
    /// The connection whose writes keep their order ([`Domain::Session`]).
    order: Option<String>,
    /// Encoded size, so packing stops before an entry gets too large.
    bytes: usize,
    /// Arrival + timeout: the time queued counts against the write timeout.
    deadline: Instant,
    reply: Reply,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    in_flight: usize,
}

/// Takes from `queue`, in order, the writes that fit one entry: within
/// [`MAX_BATCH`] writes and `max_entry_bytes` (a single write is always
/// taken: `submit` bounded its size), and without two writes to one
/// exclusive key, or an exclusive and an ordered write to one key (see
/// [`ConflictKey`]). A write that does not fit waits for a later entry, and
/// so does every later write that shares a key with it: writes to one key
/// are applied in arrival order, and a connection whose writes carry its
/// own ordered key keeps its order too. Returns the batch and the writes
/// whose deadline passed; the rest stay queued in order.
fn pack(
    queue: &mut VecDeque<Pending>,
    now: Instant,
    max_entry_bytes: usize,
) -> (Vec<Pending>, Vec<Pending>) {
    let mut exclusive = HashSet::new();
    let mut ordered = HashSet::new();
    // Keys of writes left for a later entry: nothing after them may pass.
    let mut waiting: HashSet<(Domain, String)> = HashSet::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut expired = Vec::new();
    let mut rest = VecDeque::with_capacity(queue.len());
    let mut bytes = 0;
    let mut full = false;
    for p in queue.drain(..) {
        if p.deadline <= now {
            expired.push(p);
            continue;
        }
        let mut keys: Vec<(bool, (Domain, String))> = p
            .cmd
            .conflict_keys()
            .into_iter()
            .map(|k| match k {
                ConflictKey::Exclusive(d, key) => (true, (d, key)),
                ConflictKey::Ordered(d, key) => (false, (d, key)),
            })
            .collect();
        if let Some(o) = &p.order {
            keys.push((false, (Domain::Session, o.clone())));
        }
        full = full
            || batch.len() >= MAX_BATCH
            || (!batch.is_empty() && bytes + p.bytes > max_entry_bytes);
        let blocked = full
            || keys.iter().any(|(excl, k)| {
                waiting.contains(k) || exclusive.contains(k) || (*excl && ordered.contains(k))
            });
        if blocked {
            waiting.extend(keys.into_iter().map(|(_, k)| k));
            rest.push_back(p);
            continue;
        }
        for (excl, k) in keys {
            if excl {
                exclusive.insert(k);
            } else {
                ordered.insert(k);
            }
        }
        bytes += p.bytes;
        batch.push(p);
    }
    *queue = rest;
    (batch, expired)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl WriteBatcher {
    pub fn new(raft: Raft<TypeConfig>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            raft,
            limits,
            state: Mutex::default(),
            submit: tokio::sync::Mutex::new(()),
        })
    }

    /// Proposes `cmd` (in some batch) and returns its entry index and result.
    pub async fn submit(self: &Arc<Self>, cmd: Cmd) -> Result<(u64, ApplyResult), ClusterError> {
        let rx = self.enqueue(cmd, None)?;
        Self::outcome(rx).await
    }

    /// Proposes `cmds` in their order: queued together, with `order` as
    /// their shared ordered key, so no later one is packed before an
    /// earlier one. One outcome per command.
    pub async fn submit_seq(self: &Arc<Self>, cmds: Vec<Cmd>, order: &str) -> Vec<Outcome> {
        let queued: Vec<_> = cmds
            .into_iter()
            .map(|c| self.enqueue(c, Some(order.to_string())))
            .collect();
        let mut out = Vec::with_capacity(queued.len());
        for q in queued {
            out.push(match q {
                Ok(rx) => Self::outcome(rx).await,
                Err(e) => Err(e),
            });
        }
        out
    }

    async fn outcome(rx: oneshot::Receiver<Outcome>) -> Outcome {
        rx.await.unwrap_or_else(|_| {
            Err(ClusterError::unknown(
                "the node stopped while the write was in flight",
            ))
        })
    }

    /// Queues `cmd` now (synchronously, so callers fix the order) and
    /// starts a driver if fewer than [`MAX_IN_FLIGHT`] run.
    fn enqueue(
        self: &Arc<Self>,
        cmd: Cmd,
        order: Option<String>,
    ) -> Result<oneshot::Receiver<Outcome>, ClusterError> {
        let bytes = cmd_len(&cmd);
        if bytes > self.limits.max_entry_bytes {
            return Err(ClusterError::TooLarge {
                message: format!(
                    "the command is {bytes} bytes encoded; a log entry may be at most {} bytes \
                     (max-entry-bytes); nothing was proposed",
                    self.limits.max_entry_bytes
                ),
            });
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().expect("write batch state");
            if s.queue.len() >= self.limits.max_pending {
                return Err(ClusterError::Overloaded {
                    message: format!(
                        "{} writes are already waiting on the leader (max-pending-writes)",
                        s.queue.len()
                    ),
                });
            }
            s.queue.push_back(Pending {
                cmd,
                order,
                bytes,
                deadline: Instant::now() + self.limits.timeout,
                reply: tx,
            });
            if s.in_flight < MAX_IN_FLIGHT {
                s.in_flight += 1;
                true
            } else {
                false
            }
        };
        if start {
            tokio::spawn(self.clone().drive());
        }
        Ok(rx)
    }

    /// Takes the next batch (see [`pack`]) and answers the writes whose
    /// deadline passed while queued: they were never proposed, so nothing
    /// was applied.
    fn take_batch(&self) -> Option<Vec<Pending>> {
        let mut s = self.state.lock().expect("write batch state");
        let (batch, expired) = pack(&mut s.queue, Instant::now(), self.limits.max_entry_bytes);
        for p in expired {
            let _ = p.reply.send(Err(ClusterError::Overloaded {
                message: format!(
                    "the write waited {} ms on the leader without being proposed",
                    self.limits.timeout.as_millis()
                ),
            }));
        }
        if batch.is_empty() {
            s.in_flight -= 1;
            return None;
        }
        Some(batch)
    }

    async fn drive(self: Arc<Self>) {
        loop {
            let submitted = {
                let _order = self.submit.lock().await;
                let Some(batch) = self.take_batch() else {
                    return;
                };
                let deadline = batch
                    .iter()
                    .map(|p| p.deadline)
                    .min()
                    .expect("a batch is not empty");
                let (cmds, replies): (Vec<Cmd>, Vec<Reply>) =
                    batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
                let single = cmds.len() == 1;
                let cmd = if single {
                    cmds.into_iter().next().expect("one")
                } else {
                    Cmd::Pack(cmds)
                };
                let entry = LogEntry {
                    time_ms: now_ms(),
                    cmd,
                };
                // Only the hand-over to Raft is under the lock; the wait
                // for commit is not.
                let rx = self.raft.client_write_ff(entry).await;
                (rx, deadline, single, replies)
            };
            let (rx, deadline, single, replies) = submitted;
            let rx = match rx {
                Ok(rx) => rx,
                Err(fatal) => {
                    let err = classify::write_failure(openraft::error::RaftError::Fatal(fatal));
                    for tx in replies {
                        let _ = tx.send(Err(err.clone()));
                    }
                    continue;
                }
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(Ok(resp))) => {
                    let index = resp.log_id.index;
                    match resp.data {
                        ApplyResult::Pack(results) if !single => {
                            for (tx, r) in replies.into_iter().zip(results) {
                                let _ = tx.send(Ok((index, r)));
                            }
                        }
                        r => {
                            for tx in replies {
                                let _ = tx.send(Ok((index, r.clone())));
                            }
                        }
                    }
                }
                Ok(Ok(Err(e))) => {
                    let err = classify::write_failure(openraft::error::RaftError::APIError(e));
                    for tx in replies {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
                // Raft dropped the request (it stopped): it may have been
                // appended, so the outcome is unknown.
                Ok(Err(_)) => {
                    for tx in replies {
                        let _ = tx.send(Err(ClusterError::unknown(
                            "Raft stopped while the write was in flight; it may still be applied",
                        )));
                    }
                }
                Err(_) => {
                    for tx in replies {
                        let _ = tx.send(Err(ClusterError::unknown(format!(
                            "not committed within {} ms of arrival; the write may still be applied",
                            self.limits.timeout.as_millis()
                        ))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value_len: usize, deadline: Instant) -> Pending {
        let cmd = Cmd::Kv(raftmesh_proto::KvCmd::Put {
            key: key.into(),
            value: "1".repeat(value_len),
            if_revision: None,
        });
        Pending {
            bytes: cmd_len(&cmd),
            cmd,
            order: None,
            deadline,
            reply: oneshot::channel().0,
        }
    }

    fn put_on(conn: &str, key: &str) -> Pending {
        Pending {
            order: Some(conn.into()),
            ..put(key, 1, Instant::now() + Duration::from_secs(60))
        }
    }

    fn keys(ps: &[Pending]) -> Vec<String> {
        ps.iter()
            .map(|p| match &p.cmd {
                Cmd::Kv(k) => k.key().to_string(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn packing_takes_one_write_per_key_within_the_byte_bound() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut q: VecDeque<Pending> = [
            put("a", 10, later),
            put("b", 10, later),
            put("a", 10, later),
            put("c", 10, later),
            put("d", 10, later),
        ]
        .into();
        let small = cmd_len(&q[0].cmd);
        let (batch, expired) = pack(&mut q, Instant::now(), 1 << 20);
        assert!(expired.is_empty());
        // The second "a" waits for the next entry; writes to other keys
        // behind it still go now.
        assert_eq!(keys(&batch), ["a", "b", "c", "d"]);
        assert_eq!(keys(q.make_contiguous()), ["a"]);
        // At the byte bound the entry is closed: later writes wait, in order.
        let mut q: VecDeque<Pending> = [
            put("a", 10, later),
            put("c", 400, later),
            put("d", 10, later),
        ]
        .into();
        let (batch, _) = pack(&mut q, Instant::now(), 2 * small);
        assert_eq!(keys(&batch), ["a"]);
        assert_eq!(keys(q.make_contiguous()), ["c", "d"]);
        // An entry over the bound on its own still goes alone.
        let (batch, _) = pack(&mut q, Instant::now(), 1);
        assert_eq!(keys(&batch), ["c"]);
        let (batch, _) = pack(&mut q, Instant::now(), 1 << 20);
        assert_eq!(keys(&batch), ["d"]);
    }

    /// A write waiting behind a conflict holds back every later write to
    /// its key, so one key's writes apply in arrival order.
    #[test]
    fn a_waiting_write_holds_back_later_writes_to_its_key() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut q: VecDeque<Pending> = [
            put("a", 1, later),
            put("a", 2, later),
            put("b", 1, later),
            put("a", 3, later),
        ]
        .into();
        let (batch, _) = pack(&mut q, Instant::now(), 1 << 20);
        assert_eq!(keys(&batch), ["a", "b"]);
        let values: Vec<usize> = q
            .iter()
            .map(|p| match &p.cmd {
                Cmd::Kv(raftmesh_proto::KvCmd::Put { value, .. }) => value.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(values, [2, 3], "the two later writes to a keep their order");
    }

    /// A connection's writes keep their order even on distinct keys: one
    /// that must wait holds back the connection's later ones.
    #[test]
    fn a_connections_writes_are_never_reordered() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut q: VecDeque<Pending> = [
            put("x", 1, later),
            put_on("c1", "x"),
            put_on("c1", "y"),
            put_on("c2", "z"),
        ]
        .into();
        let (batch, _) = pack(&mut q, Instant::now(), 1 << 20);
        // c1's write to x must wait for the next entry, so its write to y
        // waits too; c2 is not held back.
        assert_eq!(keys(&batch), ["x", "z"]);
        assert_eq!(keys(q.make_contiguous()), ["x", "y"]);
        let (batch, _) = pack(&mut q, Instant::now(), 1 << 20);
        assert_eq!(keys(&batch), ["x", "y"], "in one entry, in order");
    }

    #[test]
    fn writes_past_their_deadline_are_not_proposed() {
        let now = Instant::now();
        let mut q: VecDeque<Pending> = [
            put("a", 1, now - Duration::from_millis(1)),
            put("b", 1, now + Duration::from_secs(1)),
        ]
        .into();
        let (batch, expired) = pack(&mut q, now, 1 << 20);
        assert_eq!(keys(&batch), ["b"]);
        assert_eq!(keys(&expired), ["a"]);
        assert!(q.is_empty());
    }
}
