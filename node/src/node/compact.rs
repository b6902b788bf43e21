//! rstmdb's COMPACT and WAL_STATS over the Raft log: each member snapshots
//! its own state and purges its own log up to that snapshot; the node a
//! client asked fans COMPACT out to every member and gathers the reports.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raftmesh_gateway::seam::LogStats;
use raftmesh_proto::{ClusterError, LogCompaction};

use super::Node;
use crate::network;

/// How long a member waits for the snapshot it asked for to be saved.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);
/// How long it waits for openraft to purge; openraft holds a purge back
/// while a replication stream still reads those entries, and the report
/// then says how far it got.
const PURGE_WAIT: Duration = Duration::from_secs(10);
/// How long the fan-out waits for a member's report.
const MEMBER_WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(20);

impl Node {
    /// Snapshots this node (when `force`, or when its snapshot is behind
    /// what it applied), purges its log up to the snapshot, and compacts
    /// the log's files so the space comes back now.
    pub(crate) async fn compact_local(&self, force: bool) -> Result<LogCompaction, ClusterError> {
        let store = |e: raftmesh_raft_store::StoreError| ClusterError::internal(e.to_string());
        let before = self.reader.log_files().map_err(store)?;
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map(|l| l.index);
        let current = m.snapshot.map(|l| l.index);
        let snapshot_created = force || current < applied;
        if snapshot_created {
            let saved = self.sm_metrics.snapshots_saved.load(Ordering::Relaxed);
            self.raft.trigger().snapshot().await.map_err(|e| {
                ClusterError::internal(format!("node {}: raft stopped: {e}", self.id))
            })?;
            let deadline = Instant::now() + SNAPSHOT_WAIT;
            loop {
                let done = self.sm_metrics.snapshots_saved.load(Ordering::Relaxed) > saved;
                let at = self.raft.metrics().borrow().snapshot.map(|l| l.index);
                if done && at >= applied {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(ClusterError::timed_out(format!(
                        "node {}: the snapshot was not saved within {} s",
                        self.id,
                        SNAPSHOT_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        let snapshot_index = self.raft.metrics().borrow().snapshot.map(|l| l.index);
        if let Some(upto) = snapshot_index {
            self.raft.trigger().purge_log(upto).await.map_err(|e| {
                ClusterError::internal(format!("node {}: raft stopped: {e}", self.id))
            })?;
            let deadline = Instant::now() + PURGE_WAIT;
            while self.raft.metrics().borrow().purged.map(|l| l.index) < Some(upto)
                && Instant::now() < deadline
            {
                tokio::time::sleep(POLL).await;
            }
        }
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || reader.compact_log())
            .await
            .map_err(|e| ClusterError::internal(format!("log compaction task: {e}")))?
            .map_err(store)?;
        let after = self.reader.log_files().map_err(store)?;
        Ok(LogCompaction {
            node_id: self.id,
            snapshot_index,
            snapshot_created,
            purged_index: self.raft.metrics().borrow().purged.map(|l| l.index),
            files_before: before.files,
            files_after: after.files,
            bytes_before: before.bytes,
            bytes_after: after.bytes,
            error: None,
        })
    }

    /// [`Node::compact_local`] on every member at once, this one included;
    /// a member that cannot report gets its error, not a failed whole.
    pub(crate) async fn compact_members(&self, force: bool) -> Vec<LogCompaction> {
        let members: Vec<(u64, String)> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.grpc_addr.clone()))
                .collect()
        };
        let runs = members.into_iter().map(|(id, addr)| async move {
            let r = if id == self.id {
                self.compact_local(force).await
            } else {
                network::compact(&self.channels, &addr, force, MEMBER_WAIT)
                    .await
                    .map(LogCompaction::from)
                    .map_err(|s| {
                        ClusterError::internal(format!("node {id} at {addr}: {}", s.message()))
                    })
            };
            r.unwrap_or_else(|e| LogCompaction {
                node_id: id,
                error: Some(e.to_string()),
                ..Default::default()
            })
        });
        let mut out = futures::future::join_all(runs).await;
        out.sort_by_key(|c| c.node_id);
        out
    }

    pub(crate) fn log_stats_now(&self) -> Result<LogStats, ClusterError> {
        let files = self
            .reader
            .log_files()
            .map_err(|e| ClusterError::internal(e.to_string()))?;
        let io = self.reader.log_io();
        let m = self.raft.metrics().borrow().clone();
        let last = m.last_log_index;
        let purged = m.purged.map(|l| l.index);
        let first = match (last, purged) {
            (Some(l), Some(p)) if l > p => Some(p + 1),
            (Some(_), Some(_)) | (None, _) => None,
            (Some(_), None) => Some(0),
        };
        Ok(LogStats {
            node_id: self.id,
            entries: first.map_or(0, |f| last.unwrap_or(0) + 1 - f),
            first_index: first,
            last_index: last,
            files: files.files,
            bytes: files.bytes,
            bytes_written: io.bytes_written,
            bytes_read: io.bytes_read,
            writes: io.writes,
            reads: io.reads,
            fsyncs: io.fsyncs,
        })
    }
}
