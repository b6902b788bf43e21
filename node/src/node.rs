//! One raftmesh node: the Raft instance, routing of writes and read-index
//! requests to the leader, bootstrap, and the gateway's [`Backend`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState, SnapshotPolicy};
use raftmesh_gateway::backend::{Backend, ClusterStatus, MemberStatus, RaftView, WriteOutcome};
use raftmesh_proto::pb::{ForwardRequest, StatusReply};
use raftmesh_proto::{
    ClusterError, Cmd, ForwardOp, ForwardReplyBody, KvEntry, NodeId, NodeInfo, TypeConfig,
};
use raftmesh_raft_store::{StateMachineMetrics, StoreReader};
use tokio::sync::watch;

use crate::config::Config;
use crate::network::{self, Channels, NetworkFactory};
use crate::read_index::ReadIndexBatcher;
use crate::write_batch::{write_error, WriteBatcher, WriteErr};

/// Forwarding crosses at most this many nodes, so a request cannot loop
/// while leadership moves between nodes with stale views.
const MAX_HOPS: u32 = 3;
/// How long a membership change may take (a learner may need a snapshot).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Node {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    reader: StoreReader,
    channels: Channels,
    cfg: Config,
    /// The `--peer` list: addresses for bootstrap and for members not yet in
    /// a membership config.
    peers: BTreeMap<NodeId, String>,
    /// Last committed index this node knows, +1 (0 = none); polled from the
    /// Raft state because openraft metrics do not carry it.
    committed_plus1: AtomicU64,
    /// Times the known leader changed, for /metrics and /cluster.
    leader_changes: AtomicU64,
    sm_metrics: Arc<StateMachineMetrics>,
    /// Shares one leadership confirmation among concurrent reads.
    read_batcher: Arc<ReadIndexBatcher>,
    /// Packs concurrent writes into one log entry.
    write_batcher: Arc<WriteBatcher>,
}

impl Node {
    /// Opens the store and starts Raft (not yet the servers).
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let (log, sm, reader) = raftmesh_raft_store::open(&cfg.data_dir.join("db"))?;
        let sm_metrics = sm.metrics();
        let rc = openraft::Config {
            cluster_name: "raftmesh".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            install_snapshot_timeout: 30_000,
            ..Default::default()
        }
        .validate()?;
        let channels = Channels::default();
        let net = NetworkFactory {
            channels: channels.clone(),
        };
        let raft = Raft::new(cfg.node_id, Arc::new(rc), net, log, sm).await?;
        let read_batcher =
            ReadIndexBatcher::new(raft.clone(), Duration::from_millis(cfg.write_timeout_ms));
        let write_batcher =
            WriteBatcher::new(raft.clone(), Duration::from_millis(cfg.write_timeout_ms));
        Ok(Arc::new(Self {
            read_batcher,
            write_batcher,
            id: cfg.node_id,
            raft,
            reader,
            channels,
            peers: cfg.peer_map()?,
            cfg,
            committed_plus1: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            sm_metrics,
        }))
    }

    pub fn self_info(&self) -> NodeInfo {
        NodeInfo {
            grpc_addr: self.cfg.grpc_advertised(),
            http_addr: self.cfg.http_advertised(),
        }
    }

    pub async fn status_reply(&self) -> StatusReply {
        let m = self.raft.metrics().borrow().clone();
        let info = self.self_info();
        StatusReply {
            node_id: self.id,
            grpc_addr: info.grpc_addr,
            http_addr: info.http_addr,
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
        }
    }

    /// Forms the cluster once. A single node initializes itself; with peers
    /// only the lowest id does, once a majority answers and none of them
    /// already belongs to a cluster. A restart never re-initializes.
    pub async fn bootstrap(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        if self.peers.is_empty() {
            let members = BTreeMap::from([(self.id, self.self_info())]);
            if let Err(e) = self.raft.initialize(members).await {
                tracing::error!("initializing single-node cluster: {e}");
            }
            return;
        }
        if self.peers.keys().next() != Some(&self.id) {
            tracing::info!("waiting to be joined by the lowest-id peer or an operator");
            return;
        }
        loop {
            let mut members = BTreeMap::from([(self.id, self.self_info())]);
            let mut answered = 1;
            let mut joined = false;
            for (&id, addr) in self.peers.iter().filter(|(id, _)| **id != self.id) {
                match network::status(&self.channels, addr, Duration::from_secs(1)).await {
                    Ok(s) => {
                        answered += 1;
                        joined |= s.initialized;
                        members.insert(
                            id,
                            NodeInfo {
                                grpc_addr: addr.clone(),
                                http_addr: s.http_addr,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::debug!("peer {id} at {addr} not answering yet: {}", e.message());
                        members.insert(
                            id,
                            NodeInfo {
                                grpc_addr: addr.clone(),
                                http_addr: String::new(),
                            },
                        );
                    }
                }
            }
            if joined || self.raft.is_initialized().await.unwrap_or(true) {
                tracing::info!("a peer already belongs to a cluster; not initializing");
                return;
            }
            if answered * 2 > self.peers.len() {
                tracing::info!(
                    "{answered}/{} peers answered; initializing",
                    self.peers.len()
                );
                if let Err(e) = self.raft.initialize(members).await {
                    tracing::error!("initializing cluster: {e}");
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Keeps the committed index and the leader-change count fresh.
    pub async fn watch_state(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        let mut last_leader = metrics.borrow().current_leader;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let committed = self.raft.with_raft_state(|st| st.committed.map(|l| l.index)).await;
                    if let Ok(c) = committed {
                        self.committed_plus1.store(c.map_or(0, |i| i + 1), Ordering::Relaxed);
                    }
                }
                r = metrics.changed() => {
                    if r.is_err() { return; }
                    let leader = metrics.borrow().current_leader;
                    if leader != last_leader {
                        if leader.is_some() {
                            self.leader_changes.fetch_add(1, Ordering::Relaxed);
                        }
                        last_leader = leader;
                    }
                }
            }
        }
    }

    fn addr_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.grpc_addr.clone())
            .or_else(|| self.peers.get(&id).cloned())
    }

    /// Waits (bounded) until some node is known as leader.
    async fn leader_by(&self, deadline: Instant) -> Option<NodeId> {
        if let Some(l) = self.raft.metrics().borrow().current_leader {
            return Some(l);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let m = self
            .raft
            .wait(Some(left))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .ok()?;
        m.current_leader
    }

    /// Runs `op` on the leader, here or over `Forward`. Retries only where
    /// nothing was applied (no leader yet, leader unreachable before
    /// sending, or a node that turned out not to be leader); an ambiguous
    /// outcome is returned as `Unknown` and never retried.
    pub async fn route(&self, op: ForwardOp, hops: u32) -> Result<ForwardReplyBody, ClusterError> {
        let wait = Duration::from_millis(self.cfg.leader_wait_ms);
        let deadline = Instant::now() + wait;
        let mut hops = hops;
        loop {
            let Some(leader) = self.leader_by(deadline).await else {
                return Err(ClusterError::NoLeader(format!(
                    "no leader elected within {} ms; retry is safe",
                    wait.as_millis()
                )));
            };
            let result = if leader == self.id {
                self.execute(&op).await
            } else if hops >= MAX_HOPS {
                Err(ClusterError::NotLeader {
                    leader: Some(leader),
                })
            } else {
                self.forward(leader, &op, hops).await
            };
            match result {
                Err(ClusterError::NotLeader { .. } | ClusterError::NoLeader(_))
                    if Instant::now() < deadline && hops < MAX_HOPS =>
                {
                    if matches!(result, Err(ClusterError::NotLeader { .. })) {
                        hops += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(ClusterError::NotLeader { leader }) => {
                    return Err(ClusterError::NoLeader(format!(
                        "leadership is moving (last hint: {leader:?}); nothing was applied, retry is safe"
                    )))
                }
                other => return other,
            }
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        op: &ForwardOp,
        hops: u32,
    ) -> Result<ForwardReplyBody, ClusterError> {
        let Some(addr) = self.addr_of(leader) else {
            return Err(ClusterError::NoLeader(format!(
                "no address known for leader {leader}"
            )));
        };
        let mut client = self
            .channels
            .client(&addr)
            .map_err(|s| ClusterError::Internal(s.message().to_string()))?;
        let bytes = serde_json::to_vec(op).map_err(|e| ClusterError::Internal(e.to_string()))?;
        let mut req = tonic::Request::new(ForwardRequest {
            op: bytes,
            hops: hops + 1,
        });
        let ttl = match op {
            ForwardOp::AddLearner { .. } | ForwardOp::ChangeMembership { .. } => MEMBERSHIP_TIMEOUT,
            _ => Duration::from_millis(self.cfg.write_timeout_ms + self.cfg.leader_wait_ms),
        };
        req.set_timeout(ttl);
        match client.forward(req).await {
            Ok(reply) => serde_json::from_slice(&reply.into_inner().result).map_err(|e| {
                ClusterError::Unknown(format!("leader {leader} answered undecodably: {e}"))
            })?,
            Err(s) if network::never_sent(&s) => Err(ClusterError::NoLeader(format!(
                "leader {leader} at {addr} unreachable: {}",
                s.message()
            ))),
            Err(s) => match op {
                ForwardOp::ReadIndex => Err(ClusterError::NotReady(format!(
                    "read index from leader {leader} failed: {}",
                    s.message()
                ))),
                _ => Err(ClusterError::Unknown(format!(
                    "sent to leader {leader}, then the call failed ({}): {}",
                    s.code(),
                    s.message()
                ))),
            },
        }
    }

    /// Runs `op` on this node as leader.
    async fn execute(&self, op: &ForwardOp) -> Result<ForwardReplyBody, ClusterError> {
        match op {
            ForwardOp::Write { cmd } => self
                .write_batcher
                .submit(cmd.clone())
                .await
                .map(|(index, result)| ForwardReplyBody::Written { index, result }),
            ForwardOp::ReadIndex => self
                .read_batcher
                .read_index()
                .await
                .map(|index| ForwardReplyBody::ReadIndex { index }),
            ForwardOp::AddLearner { node_id, node } => {
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    self.raft.add_learner(*node_id, node.clone(), true),
                )
                .await;
                membership_result(r)
            }
            ForwardOp::ChangeMembership { voters } => {
                let set: BTreeSet<NodeId> = voters.iter().copied().collect();
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    self.raft.change_membership(set, false),
                )
                .await;
                membership_result(r)
            }
        }
    }

    fn view_of(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> RaftView {
        RaftView {
            node_id: self.id,
            is_leader: m.current_leader == Some(self.id) && m.state == ServerState::Leader,
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

fn membership_result(
    r: Result<
        Result<openraft::raft::ClientWriteResponse<TypeConfig>, WriteErr>,
        tokio::time::error::Elapsed,
    >,
) -> Result<ForwardReplyBody, ClusterError> {
    match r {
        Err(_) => Err(ClusterError::Unknown(
            "membership change did not finish in time; check /cluster".into(),
        )),
        Ok(Ok(resp)) => Ok(ForwardReplyBody::Done {
            index: resp.log_id.index,
        }),
        Ok(Err(e)) => Err(write_error(e)),
    }
}

fn unexpected(body: ForwardReplyBody) -> ClusterError {
    ClusterError::Internal(format!("unexpected reply from leader: {body:?}"))
}

impl Backend for Node {
    fn raft_view(&self) -> RaftView {
        let m = self.raft.metrics();
        let m = m.borrow();
        self.view_of(&m)
    }

    async fn write(&self, cmd: Cmd) -> Result<WriteOutcome, ClusterError> {
        match self.route(ForwardOp::Write { cmd }, 0).await? {
            ForwardReplyBody::Written { index, result } => Ok(WriteOutcome { index, result }),
            other => Err(unexpected(other)),
        }
    }

    async fn read_barrier(&self) -> Result<u64, ClusterError> {
        let index = match self.route(ForwardOp::ReadIndex, 0).await? {
            ForwardReplyBody::ReadIndex { index } => index,
            other => return Err(unexpected(other)),
        };
        let wait = Duration::from_millis(self.cfg.write_timeout_ms);
        let m = self
            .raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|e| {
                ClusterError::NotReady(format!("not caught up to read index {index}: {e}"))
            })?;
        Ok(m.last_applied.map_or(0, |l| l.index).max(index))
    }

    fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, ClusterError> {
        self.reader
            .kv_get(key)
            .map_err(|e| ClusterError::Internal(e.to_string()))
    }

    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, ClusterError> {
        self.reader
            .kv_list(prefix)
            .map_err(|e| ClusterError::Internal(e.to_string()))
    }

    fn cluster_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                node_id: *id,
                grpc_addr: n.grpc_addr.clone(),
                http_addr: n.http_addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
            })
            .collect();
        let committed = self.committed_plus1.load(Ordering::Relaxed);
        ClusterStatus {
            id: self.id,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            last_snapshot_index: m.snapshot.map(|l| l.index),
            last_purged_index: m.purged.map(|l| l.index),
            committed_index: committed.checked_sub(1),
            members,
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
        }
    }

    fn is_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let applied_plus1 = m.last_applied.map_or(0, |l| l.index + 1);
        m.current_leader.is_some()
            && m.running_state.is_ok()
            && applied_plus1 >= self.committed_plus1.load(Ordering::Relaxed)
    }

    fn raft_metrics_text(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("raftmesh_raft_term", "Current Raft term.", m.current_term);
        gauge(
            "raftmesh_raft_is_leader",
            "1 if this node is the leader.",
            u64::from(m.state == ServerState::Leader),
        );
        gauge(
            "raftmesh_raft_last_log_index",
            "Last log index appended.",
            m.last_log_index.unwrap_or(0),
        );
        gauge(
            "raftmesh_raft_last_applied_index",
            "Last log index applied to the state machine.",
            m.last_applied.map_or(0, |l| l.index),
        );
        gauge(
            "raftmesh_raft_committed_index",
            "Last committed index known to this node.",
            self.committed_plus1
                .load(Ordering::Relaxed)
                .saturating_sub(1),
        );
        gauge(
            "raftmesh_raft_snapshot_index",
            "Last log index in the current snapshot.",
            m.snapshot.map_or(0, |l| l.index),
        );
        gauge(
            "raftmesh_raft_purged_index",
            "Last purged log index.",
            m.purged.map_or(0, |l| l.index),
        );
        let counters = [
            (
                "raftmesh_raft_leader_changes_total",
                "Times this node saw a new leader.",
                self.leader_changes.load(Ordering::Relaxed),
            ),
            (
                "raftmesh_sm_applied_entries_total",
                "Log entries applied by this process.",
                self.sm_metrics.applied_entries.load(Ordering::Relaxed),
            ),
            (
                "raftmesh_sm_snapshots_built_total",
                "Snapshots built by this process.",
                self.sm_metrics.snapshots_built.load(Ordering::Relaxed),
            ),
            (
                "raftmesh_sm_snapshots_installed_total",
                "Snapshots installed from a leader by this process.",
                self.sm_metrics.snapshots_installed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        if let Some(rep) = &m.replication {
            let name = "raftmesh_raft_follower_matched_index";
            let _ = writeln!(
                out,
                "# HELP {name} Highest log index known replicated to a follower.\n# TYPE {name} gauge"
            );
            for (id, l) in rep {
                let _ = writeln!(
                    out,
                    "{name}{{peer=\"{id}\"}} {}",
                    l.as_ref().map_or(0, |l| l.index)
                );
            }
        }
        out
    }

    async fn add_learner(&self, node_id: NodeId, node: NodeInfo) -> Result<u64, ClusterError> {
        match self
            .route(ForwardOp::AddLearner { node_id, node }, 0)
            .await?
        {
            ForwardReplyBody::Done { index } => Ok(index),
            other => Err(unexpected(other)),
        }
    }

    async fn change_membership(&self, voters: Vec<NodeId>) -> Result<u64, ClusterError> {
        if voters.is_empty() {
            return Err(ClusterError::Rejected("voters must not be empty".into()));
        }
        match self
            .route(ForwardOp::ChangeMembership { voters }, 0)
            .await?
        {
            ForwardReplyBody::Done { index } => Ok(index),
            other => Err(unexpected(other)),
        }
    }
}
