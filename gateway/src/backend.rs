//! The seam between the HTTP APIs and the cluster. The gateway owns this trait
//! so it never needs openraft or RocksDB; the node implements it.

use std::future::Future;

use raftmesh_proto::{ApplyResult, ClusterError, Cmd, KvEntry, NodeId, NodeInfo};
use serde::Serialize;

/// The node's Raft view at one instant, stamped on every response as
/// `X-Raft-*` headers. Always read from Raft metrics, never from config.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RaftView {
    pub node_id: NodeId,
    pub is_leader: bool,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// Last log index applied to this node's state machine.
    pub applied_index: u64,
}

/// A committed write's outcome.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// Log index of the entry; the pm3 revision of what it wrote.
    pub index: u64,
    pub result: ApplyResult,
}

/// Replication state of one member as the leader sees it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub grpc_addr: String,
    pub http_addr: String,
    pub voter: bool,
    /// Highest log index known replicated to it (leader only).
    pub matched_index: Option<u64>,
}

/// Everything `/cluster` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub last_snapshot_index: Option<u64>,
    pub last_purged_index: Option<u64>,
    /// Highest committed index this node knows.
    pub committed_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    pub leader_changes: u64,
}

/// What the gateway needs from the cluster. All methods are answered by the
/// local node; writes and read barriers may travel to the leader.
pub trait Backend: Send + Sync + 'static {
    /// Current Raft view for response headers.
    fn raft_view(&self) -> RaftView;

    /// Replicate `cmd` as one log entry and wait until it is applied.
    /// `ClusterError::Unknown` means it was sent but its fate is unknown.
    fn write(&self, cmd: Cmd) -> impl Future<Output = Result<WriteOutcome, ClusterError>> + Send;

    /// Linearizable read barrier: confirm the read index with the leader,
    /// then wait until the local state machine has applied it. Returns the
    /// applied index the subsequent local read reflects.
    fn read_barrier(&self) -> impl Future<Output = Result<u64, ClusterError>> + Send;

    /// Local state-machine read of one key.
    fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, ClusterError>;

    /// Local state-machine listing of live keys with `prefix`, sorted.
    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, ClusterError>;

    fn cluster_status(&self) -> ClusterStatus;

    /// True when a leader is known and this node has applied everything it
    /// knows to be committed.
    fn is_ready(&self) -> bool;

    /// Prometheus text lines for Raft metrics (the gateway adds its own).
    fn raft_metrics_text(&self) -> String;

    /// Add a non-voting member and (always) wait until it caught up.
    fn add_learner(
        &self,
        node_id: NodeId,
        node: NodeInfo,
    ) -> impl Future<Output = Result<u64, ClusterError>> + Send;

    /// Make `voters` the set of voting members (joint consensus underneath).
    fn change_membership(
        &self,
        voters: Vec<NodeId>,
    ) -> impl Future<Output = Result<u64, ClusterError>> + Send;
}
