//! The seam between the HTTP APIs and the cluster: small traits the gateway
//! owns, so it never needs openraft or RocksDB, and each API module asks only
//! for what it uses (pm3 KV: [`Replicate`] + [`KvRead`]; operations:
//! [`ClusterOps`]). The node implements them.

use std::future::Future;
use std::time::Duration;

use raftmesh_proto::feed::FeedNext;
use raftmesh_proto::{
    ApplyResult, ClusterError, ClusterProgress, Cmd, Domain, Instance, InstancePage, KvEntry,
    LogCompaction, MachineView, NodeId, NodeInfo, Retention, RoomValues, RoomView,
};
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
    /// Where rstmdb clients reach it; empty when it has not told yet.
    pub rstmdb_addr: String,
    pub voter: bool,
    /// Highest log index known replicated to it (leader only).
    pub matched_index: Option<u64>,
    /// The feature version its membership entry records.
    pub version: u32,
}

/// This node's Raft log, as rstmdb's WAL_STATS reports its WAL.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LogStats {
    pub node_id: NodeId,
    /// Entries held (not yet purged).
    pub entries: u64,
    /// The first and last index held; none when the log is empty.
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// RocksDB table files of the log, and its bytes (files + memtable).
    pub files: u64,
    pub bytes: u64,
    /// Since the process started: entry bytes written and read, write
    /// batches, reads, and synced writes (one WAL fsync each).
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub writes: u64,
    pub reads: u64,
    pub fsyncs: u64,
}

/// Everything `/cluster` shows.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// The feature version this node advertises.
    pub version: u32,
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
    /// The cluster this node's data dir belongs to (none for a cluster
    /// formed before cluster ids existed, or a node not yet joined).
    pub cluster_id: Option<String>,
    /// Set when this node learned it is no longer a member; it then no
    /// longer campaigns and should be stopped.
    pub removed: Option<RemovedStatus>,
    /// Set when this node stopped serving (it met an entry it cannot
    /// decode, or Raft stopped on a fatal error): why, and what to do.
    pub halted: Option<String>,
}

/// Why a node considers itself removed.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RemovedStatus {
    /// Log index of the membership config without this node.
    pub at_index: u64,
    /// The voters of that config.
    pub voters: Vec<NodeId>,
    pub hint: String,
}

/// What a finished membership change did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MembershipOutcome {
    /// Log index of the last membership entry written.
    pub index: u64,
    /// add-learner: the commit index the learner had to reach, and where it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<u64>,
    /// Removed voters that did not confirm their demotion before being
    /// dropped (likely down): stop them by hand.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_demoted: Vec<NodeId>,
}

/// One page of a bounded key scan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyPage {
    /// Live keys in byte order.
    pub keys: Vec<String>,
    /// Set when more keys follow: continue the scan after this key.
    pub next_after: Option<String>,
}

/// Getting a command replicated, and reads linearized. Every write API asks
/// for this; nothing else reaches the log.
pub trait Replicate: Send + Sync + 'static {
    /// Replicate `cmd` as (part of) one log entry and wait until it is
    /// applied. [`ClusterError::outcome_unknown`] means it was sent but its
    /// fate is unknown.
    fn write(&self, cmd: Cmd) -> impl Future<Output = Result<WriteOutcome, ClusterError>> + Send;

    /// Replicate one connection's writes, applied in this order (a
    /// pipelining protocol's guarantee): the leader queues them together
    /// under `order`, the connection's ordered conflict key, so packing
    /// never lets a later one pass an earlier one. One outcome each.
    fn write_seq(
        &self,
        cmds: Vec<Cmd>,
        order: String,
    ) -> impl Future<Output = Vec<Result<WriteOutcome, ClusterError>>> + Send;

    /// Linearizable read barrier: confirm the read index with the leader,
    /// then wait until the local state machine has applied it. Returns the
    /// applied index the subsequent local read reflects.
    fn read_barrier(&self) -> impl Future<Output = Result<u64, ClusterError>> + Send;
}

/// Local reads of the pm3 KV state (after a barrier, or stale).
pub trait KvRead: Send + Sync + 'static {
    /// One key.
    fn kv_get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<KvEntry>, ClusterError>> + Send;

    /// At most `limit` live keys with `prefix`, in byte order, starting
    /// after `after` (exclusive) when given. Runs off the async workers.
    fn kv_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<KeyPage, ClusterError>> + Send;
}

/// The cluster as operators see it: the Raft view stamped on every answer,
/// status, readiness, metrics and membership changes.
pub trait ClusterOps: Send + Sync + 'static {
    /// Current Raft view for response headers.
    fn raft_view(&self) -> RaftView;

    fn cluster_status(&self) -> ClusterStatus;

    /// True when a leader is known and this node has applied everything it
    /// knows to be committed.
    fn is_ready(&self) -> bool;

    /// Prometheus text lines for Raft metrics (the gateway adds its own).
    fn raft_metrics_text(&self) -> String;

    /// Probe the node, add it as a non-voting member, and wait (up to
    /// `timeout`) until it caught up to the leader's commit index as of
    /// the call.
    fn add_learner(
        &self,
        node_id: NodeId,
        node: NodeInfo,
        timeout: Duration,
    ) -> impl Future<Output = Result<MembershipOutcome, ClusterError>> + Send;

    /// Make `voters` the set of voting members (joint consensus underneath).
    /// Refuses to promote a learner that has not caught up or went silent,
    /// unless `force`.
    fn change_membership(
        &self,
        voters: Vec<NodeId>,
        force: bool,
        timeout: Duration,
    ) -> impl Future<Output = Result<MembershipOutcome, ClusterError>> + Send;

    /// The leader's view of every member's replication progress.
    fn cluster_progress(
        &self,
    ) -> impl Future<Output = Result<ClusterProgress, ClusterError>> + Send;

    /// This node's Raft log and its I/O.
    fn log_stats(&self) -> Result<LogStats, ClusterError>;

    /// Snapshots every member and purges its log up to that snapshot, in
    /// parallel; one report per member, an unreachable one with its error.
    fn compact(&self, force_snapshot: bool) -> impl Future<Output = Vec<LogCompaction>> + Send;
}

/// A subscription to the applied-event feed of one domain, pulled as the
/// client reads: whole entries in index order, then one end.
pub trait FeedStream: Send + 'static {
    fn next(&mut self) -> impl Future<Output = FeedNext> + Send;

    /// Every entry before this index was delivered or had nothing for the
    /// subscription: where a new one resumes it.
    fn next_index(&self) -> u64;
}

/// Why a subscription could not start.
#[derive(Debug)]
pub enum SubscribeError {
    /// `from` is older than the retained history, which starts at `oldest`.
    Compacted {
        from: u64,
        oldest: u64,
    },
    Cluster(ClusterError),
}

/// Local reads of the rstmdb machine state (after a barrier, or stale).
pub trait MachineRead: Send + Sync + 'static {
    fn machine_get(
        &self,
        machine: &str,
        version: u32,
    ) -> impl Future<Output = Result<Option<MachineView>, ClusterError>> + Send;

    /// Machines with their versions ascending, by name; at most `limit`.
    fn machine_list(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u32>)>, ClusterError>> + Send;

    fn instance_get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Instance>, ClusterError>> + Send;

    /// Instances matching the filters, ordered by id; `total` is a kept
    /// count. Runs off the async workers.
    fn instance_list(
        &self,
        machine: Option<String>,
        state: Option<String>,
        limit: usize,
        offset: usize,
    ) -> impl Future<Output = Result<InstancePage, ClusterError>> + Send;
}

/// Local reads of DriftDB rooms (after a barrier, or stale), off the async
/// workers.
pub trait RoomRead: Send + Sync + 'static {
    fn room_get(
        &self,
        room: &str,
    ) -> impl Future<Output = Result<Option<RoomView>, ClusterError>> + Send;

    /// The values of `key` with a seq greater than `after`, at most `limit`.
    fn room_values(
        &self,
        room: &str,
        key: &str,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<RoomValues, ClusterError>> + Send;

    /// Keys holding values, after `after` when given; at most `limit`, and
    /// whether more follow.
    fn room_keys(
        &self,
        room: &str,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<String>, bool), ClusterError>> + Send;
}

/// Where one domain's journal stands on this node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JournalInfo {
    /// The oldest `from` a subscription may ask for.
    pub oldest: u64,
    /// Events and encoded bytes kept now.
    pub events: u64,
    pub bytes: u64,
    /// The cluster-wide retention in force.
    pub retention: Retention,
}

/// Following what this node applies: watches, and later rooms and
/// consumers. Every node applies the whole log, so any node serves it.
pub trait Subscribe: Send + Sync + 'static {
    type Stream: FeedStream;

    /// Events of `domain` from entry `from` on (default: what is applied
    /// next): the retained history first, then live.
    fn subscribe(&self, domain: Domain, from: Option<u64>) -> Result<Self::Stream, SubscribeError>;

    /// The journal of `domain` as this node holds it (every node's is the
    /// same at the same applied index).
    fn journal(&self, domain: Domain) -> Result<JournalInfo, ClusterError>;

    /// Up to `limit` retained entries of `domain` with index >= `from`, in
    /// order (rstmdb's WAL_READ).
    fn journal_page(
        &self,
        domain: Domain,
        from: u64,
        limit: usize,
    ) -> Result<Vec<raftmesh_proto::feed::AppliedEntry>, SubscribeError>;
}

/// Everything the whole router needs; implemented for any type that
/// provides each part.
pub trait Backend: Replicate + KvRead + MachineRead + RoomRead + ClusterOps + Subscribe {}

impl<T: Replicate + KvRead + MachineRead + RoomRead + ClusterOps + Subscribe> Backend for T {}
