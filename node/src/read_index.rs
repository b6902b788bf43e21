//! Read-index batching on the leader. Confirming leadership costs a
//! heartbeat round to a quorum; concurrent linearizable reads share one
//! round. A read joins the next round that starts after it arrived, never
//! one already in flight, so the index it gets was confirmed after the read
//! began — which is what linearizability needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use raftmesh_proto::{ClusterError, TypeConfig};
use tokio::sync::oneshot;

use crate::classify;

type Reply = oneshot::Sender<Result<u64, ClusterError>>;

pub struct ReadIndexBatcher {
    raft: Raft<TypeConfig>,
    /// Bound on one leadership confirmation.
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Reads waiting for the next round.
    queue: Vec<Reply>,
    /// A driver task is running rounds.
    running: bool,
}

impl ReadIndexBatcher {
    pub fn new(raft: Raft<TypeConfig>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            raft,
            timeout,
            state: Mutex::default(),
        })
    }

    /// The read index for a read that arrives now.
    pub async fn read_index(self: &Arc<Self>) -> Result<u64, ClusterError> {
        let (tx, rx) = oneshot::channel();
        let start_driver = {
            let mut s = self.state.lock().expect("read batch state");
            s.queue.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive());
        }
        rx.await
            .unwrap_or_else(|_| Err(ClusterError::not_ready("read-index round was dropped")))
    }

    /// Runs rounds back to back while reads keep arriving.
    async fn drive(self: Arc<Self>) {
        loop {
            let batch = {
                let mut s = self.state.lock().expect("read batch state");
                if s.queue.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.queue)
            };
            let result = self.round().await;
            for tx in batch {
                let _ = tx.send(result.clone());
            }
        }
    }

    async fn round(&self) -> Result<u64, ClusterError> {
        match tokio::time::timeout(self.timeout, self.raft.get_read_log_id()).await {
            Err(_) => Err(ClusterError::not_ready(
                "leadership not confirmed by a quorum in time",
            )),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(e)) => Err(classify::read_failure(e)),
        }
    }
}
