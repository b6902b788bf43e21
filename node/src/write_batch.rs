//! Write batching on the leader: concurrent client writes are packed into one
//! Raft entry ([`Cmd::Batch`]) so a burst costs one append, one fsync, one
//! replication round and one apply instead of one each. A batch holds at
//! most one write per key, so a key's revision (the entry's index) still
//! names exactly one value; a second write to the same key waits for the
//! next batch. A few batches may be in flight at once to keep the Raft
//! pipeline full.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use raftmesh_proto::{ApplyResult, ClusterError, Cmd, LogEntry, NodeId, NodeInfo, TypeConfig};
use tokio::sync::oneshot;

/// Largest number of client writes in one entry.
const MAX_BATCH: usize = 512;
/// Batches proposed concurrently.
const MAX_IN_FLIGHT: usize = 2;

type Reply = oneshot::Sender<Result<(u64, ApplyResult), ClusterError>>;

pub struct WriteBatcher {
    raft: Raft<TypeConfig>,
    /// How long a batch may wait for its commit before "outcome unknown".
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Vec<(Cmd, Reply)>,
    in_flight: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl WriteBatcher {
    pub fn new(raft: Raft<TypeConfig>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            raft,
            timeout,
            state: Mutex::default(),
        })
    }

    /// Proposes `cmd` (in some batch) and returns its entry index and result.
    pub async fn submit(self: &Arc<Self>, cmd: Cmd) -> Result<(u64, ApplyResult), ClusterError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().expect("write batch state");
            s.queue.push((cmd, tx));
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
        rx.await.unwrap_or_else(|_| {
            Err(ClusterError::Unknown(
                "the node stopped while the write was in flight".into(),
            ))
        })
    }

    /// Takes the next batch: queued writes in order, one per key.
    fn take_batch(&self) -> Option<Vec<(Cmd, Reply)>> {
        let mut s = self.state.lock().expect("write batch state");
        if s.queue.is_empty() {
            s.in_flight -= 1;
            return None;
        }
        let mut keys = HashSet::new();
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for (cmd, tx) in s.queue.drain(..) {
            let fits = batch.len() < MAX_BATCH
                && match cmd.key() {
                    Some(k) => keys.insert(k.to_string()),
                    None => batch.is_empty(),
                };
            if fits {
                batch.push((cmd, tx));
            } else {
                rest.push((cmd, tx));
            }
        }
        s.queue = rest;
        Some(batch)
    }

    async fn drive(self: Arc<Self>) {
        while let Some(batch) = self.take_batch() {
            let (cmds, replies): (Vec<Cmd>, Vec<Reply>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let cmd = if single {
                cmds.into_iter().next().expect("one")
            } else {
                Cmd::Batch { cmds }
            };
            let entry = LogEntry {
                time_ms: now_ms(),
                cmd,
            };
            let outcome = tokio::time::timeout(self.timeout, self.raft.client_write(entry)).await;
            match outcome {
                Ok(Ok(resp)) => {
                    let index = resp.log_id.index;
                    match resp.data {
                        ApplyResult::Batch { results } if !single => {
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
                Ok(Err(e)) => {
                    let err = write_error(e);
                    for tx in replies {
                        let _ = tx.send(Err(err.clone()));
                    }
                }
                Err(_) => {
                    for tx in replies {
                        let _ = tx.send(Err(ClusterError::Unknown(format!(
                            "not committed within {} ms; the write may still be applied",
                            self.timeout.as_millis()
                        ))));
                    }
                }
            }
        }
    }
}

pub type WriteErr = RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

/// Maps openraft's write errors: a refusal before the entry could commit
/// is `NotLeader` (safe to retry elsewhere); a stopped node is `Unknown`.
pub fn write_error(e: WriteErr) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ClusterError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Rejected(e.to_string())
        }
        RaftError::Fatal(f) => ClusterError::Unknown(format!(
            "the node stopped while the write was in flight: {f}"
        )),
    }
}
