//! raftmesh's contracts between crates and between nodes: the generated gRPC
//! code, the replicated commands by domain ([`cmd`]), the versioned binary
//! codec every log entry is stored and sent in ([`codec`], golden tests pin
//! its bytes), the reader of release 0.1's JSON entries ([`legacy`]), the
//! openraft [`TypeConfig`], and the errors every layer shares.
//!
//! This crate must not depend on RocksDB, axum, or any other raftmesh crate:
//! everything else depends on it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Generated tonic/prost code for `proto/raftmesh.proto`.
pub mod pb {
    tonic::include_proto!("raftmesh.v1");
}

pub mod cmd;
pub mod codec;
pub mod feed;
pub mod legacy;

pub use cmd::{
    ApplyResult, Cmd, ConflictKey, Domain, Event, Instance, InstancePage, KvCmd, KvEntry, KvEvent,
    KvResult, MachineCmd, MachineError, MachineErrorCode, MachineEvent, MachineResult, MachineView,
    PushAction, Retention, RoomCmd, RoomError, RoomErrorCode, RoomEvent, RoomLimits, RoomResult,
    RoomValues, RoomView, SettingsCmd, SettingsResult,
};

/// The feature version of this build: the newest commands and log format it
/// decodes and applies. Every node advertises it (`Status`, and its
/// membership [`NodeInfo`]), and a leader proposes no command that needs more
/// ([`Cmd::required_version`]) than the oldest member supports, so a rolling
/// upgrade never hands a node an entry it cannot read. Release 0.1 is
/// version 1 (it advertised none); version 2 is the binary log codec;
/// version 3 adds DriftDB rooms.
pub const FEATURE_VERSION: u32 = 3;

/// The version of a node that advertised none: release 0.1.
pub const LEGACY_VERSION: u32 = 1;

/// A version as protobuf carries it: 0 (absent) was sent by a node that
/// advertised none, i.e. [`LEGACY_VERSION`].
pub fn version_or_legacy(v: u32) -> u32 {
    if v == 0 {
        LEGACY_VERSION
    } else {
        v
    }
}

fn legacy_version() -> u32 {
    LEGACY_VERSION
}

/// gRPC request metadata carrying the sender's cluster id; a node of another
/// cluster refuses the request, a node that has joined none adopts it.
pub const CLUSTER_ID_HEADER: &str = "raftmesh-cluster-id";

/// A Raft node id, as given by `--node-id`.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft configuration of raftmesh.
    pub TypeConfig:
        D = LogEntry,
        R = ApplyResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        // A file: snapshots are built to, sent from and received into
        // files, never held in memory whole (raft-store's `snapshot`).
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What the cluster stores about each member; kept in the Raft membership so
/// every node can reach every other one (forwarding, hop) without local config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Address other nodes dial for gRPC.
    pub grpc_addr: String,
    /// Address clients use for the HTTP gateway.
    #[serde(default)]
    pub http_addr: String,
    /// The [`FEATURE_VERSION`] the node advertised when this entry was last
    /// written; the leader updates it when a member advertises another.
    /// 0.1 stored none: absent means [`LEGACY_VERSION`].
    #[serde(default = "legacy_version")]
    pub version: u32,
    /// Address rstmdb clients use; empty when the node has not told it
    /// (older entries), and then left out of the JSON form.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rstmdb_addr: String,
}

/// What compacting one node's log did; rstmdb's COMPACT reports one per
/// member and sums them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LogCompaction {
    pub node_id: NodeId,
    /// The snapshot the log is purged up to; none when there is none yet.
    pub snapshot_index: Option<u64>,
    /// A new snapshot was built (not only the current one reused).
    pub snapshot_created: bool,
    /// The last log index now purged.
    pub purged_index: Option<u64>,
    /// The log's table files and bytes on disk before and after.
    pub files_before: u64,
    pub files_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Why this member could not compact (unreachable, too old, failed);
    /// the figures are then zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<pb::CompactReply> for LogCompaction {
    fn from(r: pb::CompactReply) -> Self {
        LogCompaction {
            node_id: r.node_id,
            snapshot_index: r.snapshot_index,
            snapshot_created: r.snapshot_created,
            purged_index: r.purged_index,
            files_before: r.files_before,
            files_after: r.files_after,
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            error: None,
        }
    }
}

impl From<&LogCompaction> for pb::CompactReply {
    fn from(c: &LogCompaction) -> Self {
        pb::CompactReply {
            node_id: c.node_id,
            snapshot_index: c.snapshot_index,
            snapshot_created: c.snapshot_created,
            purged_index: c.purged_index,
            files_before: c.files_before,
            files_after: c.files_after,
            bytes_before: c.bytes_before,
            bytes_after: c.bytes_after,
        }
    }
}

/// Nothing known about a node, its version included: the oldest.
impl Default for NodeInfo {
    fn default() -> Self {
        NodeInfo {
            grpc_addr: String::new(),
            http_addr: String::new(),
            version: LEGACY_VERSION,
            rstmdb_addr: String::new(),
        }
    }
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grpc={} http={} version={}",
            self.grpc_addr, self.http_addr, self.version
        )?;
        if !self.rstmdb_addr.is_empty() {
            write!(f, " rstmdb={}", self.rstmdb_addr)?;
        }
        Ok(())
    }
}

/// The application payload of one Raft log entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// Wall-clock milliseconds stamped by the leader when it proposed the
    /// entry; apply reads time only from here, so every node agrees on it.
    pub time_ms: u64,
    pub cmd: Cmd,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.cmd, self.time_ms)
    }
}

/// A request a follower sends its leader over `RaftService.Forward`.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForwardOp {
    /// Propose this command; the leader stamps the time.
    Write { cmd: Cmd },
    /// Propose these commands in this order: one connection's writes, which
    /// must be applied in the order it sent them. `order` names the
    /// connection; its writes share an ordered conflict key, so packing
    /// never lets a later one pass an earlier one.
    WriteSeq { cmds: Vec<Cmd>, order: String },
    /// Confirm leadership and return the index a linearizable read must wait for.
    ReadIndex,
    /// Probe the node, then add it as a learner without waiting; the
    /// leader answers its commit index as the catch-up target.
    AddLearner { node_id: NodeId, node: NodeInfo },
    /// Make `voters` the voting members. With `retain`, removed voters stay
    /// as learners, so they are still replicated to and learn the config
    /// that demotes them (a voter cut off at once never does, and campaigns
    /// forever).
    ChangeMembership {
        voters: Vec<NodeId>,
        #[serde(default)]
        retain: bool,
    },
    /// Drop learners from the membership.
    RemoveNodes { ids: Vec<NodeId> },
    /// The leader's view of every member's replication progress.
    Progress,
}

/// Replication progress of the cluster as its leader sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClusterProgress {
    pub leader: NodeId,
    /// The leader's commit index when it answered.
    pub committed_index: u64,
    /// Log index of the membership config in effect on the leader.
    pub membership_index: u64,
    pub members: Vec<MemberProgress>,
}

/// One member's replication progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemberProgress {
    pub node_id: NodeId,
    pub voter: bool,
    /// Highest log index known replicated to it.
    pub matched_index: Option<u64>,
    /// Milliseconds since it last accepted an append (0 for the leader;
    /// `None` if it never did since the leader took office).
    pub last_contact_ms: Option<u64>,
}

impl ClusterProgress {
    pub fn member(&self, id: NodeId) -> Option<&MemberProgress> {
        self.members.iter().find(|m| m.node_id == id)
    }
}

/// The leader's answer to a [`ForwardOp`].
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ForwardReplyBody {
    Written {
        index: u64,
        result: ApplyResult,
    },
    /// One outcome per command of a [`ForwardOp::WriteSeq`], in order.
    WrittenSeq(Vec<Result<(u64, ApplyResult), ClusterError>>),
    ReadIndex {
        index: u64,
    },
    Done {
        index: u64,
    },
    /// A learner was added at `index`; it has caught up once its matched
    /// index reaches `target` (the commit index when it was added).
    LearnerAdded {
        index: u64,
        target: u64,
    },
    Progress(ClusterProgress),
}

/// Who leads, as far as the failing node knew: lets a client (or the
/// forwarding node) go straight there instead of asking around.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: NodeId,
    /// Empty when the node knew the id but not the addresses.
    #[serde(default)]
    pub grpc_addr: String,
    #[serde(default)]
    pub http_addr: String,
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.id)?;
        if !self.http_addr.is_empty() {
            write!(f, " at {}", self.http_addr)?;
        }
        Ok(())
    }
}

/// Cluster-level failures, shared by the node (which produces them) and the
/// gateways (which map them to statuses, one place per API). What a client
/// may do next is a property of the variant — [`ClusterError::is_retryable`],
/// [`ClusterError::outcome_unknown`] — never of the message text.
#[derive(thiserror::Error, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterError {
    /// No leader could be reached; nothing was applied.
    #[error("no leader available: {message}")]
    NoLeader {
        message: String,
        leader: Option<LeaderHint>,
    },
    /// The request reached a node that is not leader and could not be
    /// passed on; nothing was applied.
    #[error("not leader{}", leader.as_ref().map(|l| format!(" (leader: {l})")).unwrap_or_default())]
    NotLeader { leader: Option<LeaderHint> },
    /// The leader refused to queue more work; nothing was applied.
    #[error("overloaded: {message}")]
    Overloaded { message: String },
    /// The write was sent but its outcome was not learned (timeout, leader
    /// lost mid-flight). It may or may not have been applied.
    #[error("outcome unknown: {message}")]
    Unknown { message: String },
    /// The node cannot serve this yet (catching up, no confirmed leader).
    #[error("not ready: {message}")]
    NotReady { message: String },
    /// The request is invalid for the cluster (e.g. membership rules);
    /// retrying it unchanged fails the same way.
    #[error("rejected: {message}")]
    Rejected { message: String },
    /// One command larger than a log entry may be; never proposed.
    #[error("too large: {message}")]
    TooLarge { message: String },
    /// A bounded wait ended before what it waited for happened; the message
    /// says what did happen (e.g. a learner added but not caught up).
    #[error("timed out: {message}")]
    TimedOut { message: String },
    /// Local storage or an invariant failed.
    #[error("internal error: {message}")]
    Internal { message: String },
}

impl ClusterError {
    /// Nothing was applied and the same request may succeed if sent again
    /// (here after a pause, or to another node).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader { .. }
                | ClusterError::NotLeader { .. }
                | ClusterError::Overloaded { .. }
                | ClusterError::NotReady { .. }
        )
    }

    /// The request may or may not have taken effect: read before retrying.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClusterError::Unknown { .. })
    }

    /// The leader this failure points at, if known.
    pub fn leader(&self) -> Option<&LeaderHint> {
        match self {
            ClusterError::NoLeader { leader, .. } | ClusterError::NotLeader { leader } => {
                leader.as_ref()
            }
            _ => None,
        }
    }

    pub fn no_leader(message: impl Into<String>) -> Self {
        ClusterError::NoLeader {
            message: message.into(),
            leader: None,
        }
    }
    pub fn unknown(message: impl Into<String>) -> Self {
        ClusterError::Unknown {
            message: message.into(),
        }
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        ClusterError::NotReady {
            message: message.into(),
        }
    }
    pub fn rejected(message: impl Into<String>) -> Self {
        ClusterError::Rejected {
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ClusterError::Internal {
            message: message.into(),
        }
    }
    pub fn timed_out(message: impl Into<String>) -> Self {
        ClusterError::TimedOut {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_error_roundtrips_for_forwarding() {
        let hint = LeaderHint {
            id: 2,
            grpc_addr: "h:7080".into(),
            http_addr: "h:8080".into(),
        };
        for e in [
            ClusterError::NotLeader {
                leader: Some(hint.clone()),
            },
            ClusterError::NoLeader {
                message: "x".into(),
                leader: Some(hint),
            },
            ClusterError::unknown("y"),
        ] {
            let s = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<ClusterError>(&s).unwrap(), e);
        }
    }

    /// 0.1 stored members without a version: they read back as version 1.
    #[test]
    fn node_info_without_a_version_is_legacy() {
        let n: NodeInfo = serde_json::from_str(r#"{"grpc_addr":"a:1","http_addr":"a:2"}"#).unwrap();
        assert_eq!(n.version, LEGACY_VERSION);
        let n = NodeInfo {
            version: FEATURE_VERSION,
            ..n
        };
        let back: NodeInfo = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        assert_eq!(version_or_legacy(0), LEGACY_VERSION);
        // An unknown rstmdb address adds nothing to the stored form; a known one round-trips.
        assert!(!serde_json::to_string(&n).unwrap().contains("rstmdb"));
        let n = NodeInfo {
            rstmdb_addr: "a:3".into(),
            ..n
        };
        let back: NodeInfo = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        assert_eq!(version_or_legacy(3), 3);
    }

    /// Retry-safety is a property of the variant, whatever the message says.
    #[test]
    fn retry_safety_is_data() {
        let retryable = [
            ClusterError::no_leader("outcome unknown"),
            ClusterError::NotLeader { leader: None },
            ClusterError::Overloaded {
                message: "m".into(),
            },
            ClusterError::not_ready("m"),
        ];
        for e in retryable {
            assert!(e.is_retryable() && !e.outcome_unknown(), "{e:?}");
        }
        let unknown = ClusterError::unknown("retry is safe");
        assert!(!unknown.is_retryable() && unknown.outcome_unknown());
        for e in [
            ClusterError::rejected("m"),
            ClusterError::TooLarge {
                message: "m".into(),
            },
            ClusterError::timed_out("m"),
            ClusterError::internal("m"),
        ] {
            assert!(!e.is_retryable() && !e.outcome_unknown(), "{e:?}");
        }
    }
}
