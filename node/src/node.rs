//! One raftmesh node: the Raft instance, routing of writes and read-index
//! requests to the leader, bootstrap, and the gateway's [`Backend`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use raftmesh_gateway::seam::{
    ClusterOps, ClusterStatus, FeedStream, JournalInfo, KeyPage, KvRead, LogStats, MachineRead,
    MemberStatus, MembershipOutcome, RaftView, RemovedStatus, Replicate, RoomRead, Subscribe,
    SubscribeError, WriteOutcome,
};
use raftmesh_proto::feed::FeedNext;
use raftmesh_proto::pb::{ForwardRequest, StatusReply};
use raftmesh_proto::{
    version_or_legacy, ClusterError, ClusterProgress, Cmd, Domain, ForwardOp, ForwardReplyBody,
    Instance, InstancePage, KvEntry, LeaderHint, LogCompaction, MachineView, MemberProgress,
    NodeId, NodeInfo, RoomValues, RoomView, TypeConfig,
};
use raftmesh_raft_store::{FeedError, StateMachineMetrics, StoreReader};
use tokio::sync::watch;

use crate::classify;
use crate::classify::WriteErr;
use crate::config::Config;
use crate::error::NodeError;
use crate::identity::{self, Identity};
use crate::network::{self, Channels, Contacts, NetworkFactory};
use crate::read_index::ReadIndexBatcher;
use crate::version_gate::{self, LiveVersions};
use crate::write_batch::{Limits, WriteBatcher};

/// Forwarding crosses at most this many nodes, so a request cannot loop
/// while leadership moves between nodes with stale views.
const MAX_HOPS: u32 = 3;
/// How long one membership step on the leader may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
/// How often membership waits poll the leader's progress.
const PROGRESS_POLL: Duration = Duration::from_millis(200);
/// How long a removal waits for the removed voter to learn that it became a
/// learner before dropping it anyway (it may be down).
const DEMOTION_WAIT: Duration = Duration::from_secs(10);
/// How long the add-learner probe waits for the new node's `Status`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the leader waits for a member's `Status` when learning versions.
const VERSION_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A write the version gate would refuse asks the members that look too
/// old again, unless they answered within this.
const VERSION_REPROBE_AFTER: Duration = Duration::from_secs(1);
/// How long recording a member's new version in the membership may take.
const VERSION_RECORD_TIMEOUT: Duration = Duration::from_secs(5);

mod compact;
mod rooms;

pub(crate) struct Node {
    pub id: NodeId,
    pub raft: Raft<TypeConfig>,
    reader: StoreReader,
    channels: Channels,
    cfg: Config,
    /// Which node and cluster the data dir belongs to.
    pub identity: Arc<Identity>,
    /// When each follower last accepted an append (leader side).
    contacts: Contacts,
    /// When this node last received an `AppendEntries`: a node that hears
    /// nothing for long asks its peers whether it is still a member.
    last_append_rx: Mutex<Instant>,
    /// Set once this node learned it is no longer in the membership.
    removed: Mutex<Option<RemovedStatus>>,
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
    /// The versions members advertised lately (leader side, version gate).
    live_versions: LiveVersions,
    /// Why this node stopped serving, once it did (see [`Node::halt`]).
    halted: watch::Sender<Option<String>>,
}

impl Node {
    /// Opens the store and starts Raft (not yet the servers).
    pub async fn start(cfg: Config) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| NodeError::io(&cfg.data_dir, e))?;
        let identity = Arc::new(Identity::open(&cfg.data_dir, cfg.node_id)?);
        let db_dir = cfg.data_dir.join("db");
        let options = raftmesh_raft_store::StoreOptions {
            feed_capacity: cfg.feed_buffer,
        };
        let (log, sm, reader) =
            raftmesh_raft_store::open_with(&db_dir, &options).map_err(|source| {
                NodeError::Store {
                    path: db_dir.clone(),
                    source,
                }
            })?;
        let sm_metrics = sm.metrics();
        let rc = openraft::Config {
            cluster_name: "raftmesh".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
            max_in_snapshot_log_to_keep: cfg.keep_logs,
            install_snapshot_timeout: 30_000,
            snapshot_max_chunk_size: cfg.snapshot_chunk_bytes as u64,
            // Entries per AppendEntries, so the largest entries still fit in
            // one gRPC message.
            max_payload_entries: (network::MAX_MESSAGE_BYTES / cfg.max_entry_bytes).clamp(1, 300)
                as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let channels = Channels::default();
        let contacts = Contacts::default();
        let net = NetworkFactory {
            channels: channels.clone(),
            identity: identity.clone(),
            contacts: contacts.clone(),
        };
        let raft = Raft::new(cfg.node_id, Arc::new(rc), net, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let read_batcher =
            ReadIndexBatcher::new(raft.clone(), Duration::from_millis(cfg.write_timeout_ms));
        let write_batcher = WriteBatcher::new(
            raft.clone(),
            Limits {
                timeout: Duration::from_millis(cfg.write_timeout_ms),
                max_pending: cfg.max_pending_writes,
                max_entry_bytes: cfg.max_entry_bytes,
            },
        );
        Ok(Arc::new(Self {
            read_batcher,
            write_batcher,
            id: cfg.node_id,
            raft,
            reader,
            channels,
            peers: cfg.peer_map()?,
            cfg,
            identity,
            contacts,
            last_append_rx: Mutex::new(Instant::now()),
            removed: Mutex::new(None),
            committed_plus1: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            sm_metrics,
            live_versions: LiveVersions::default(),
            halted: watch::channel(None).0,
        }))
    }

    /// Becomes dead once every handle on the store is dropped.
    pub fn store_closed(&self) -> raftmesh_raft_store::StoreClosed {
        self.reader.closed_when_dropped()
    }

    pub fn self_info(&self) -> NodeInfo {
        NodeInfo {
            grpc_addr: self.cfg.grpc_advertised(),
            http_addr: self.cfg.http_advertised(),
            version: self.cfg.advertised_version,
            rstmdb_addr: self.cfg.rstmdb_advertised(),
        }
    }

    /// Stops this node serving for good: it met something it must not go
    /// past (an entry it cannot decode, a fatal Raft error). Logs why, stops
    /// campaigning and refuses every request with the reason; `server::run`
    /// then exits the process with it. The first reason is kept.
    pub fn halt(&self, reason: String) {
        let first = self.halted.send_if_modified(|h| {
            if h.is_some() {
                return false;
            }
            *h = Some(reason.clone());
            true
        });
        if first {
            self.raft.runtime_config().elect(false);
            tracing::error!("node {} stops: {reason}", self.id);
        }
    }

    /// Why this node stopped serving, if it did.
    pub fn halted(&self) -> Option<String> {
        self.halted.borrow().clone()
    }

    pub fn watch_halted(&self) -> watch::Receiver<Option<String>> {
        self.halted.subscribe()
    }

    pub async fn status_reply(&self) -> StatusReply {
        let m = self.raft.metrics().borrow().clone();
        let info = self.self_info();
        let membership = m.membership_config.membership();
        StatusReply {
            node_id: self.id,
            grpc_addr: info.grpc_addr,
            http_addr: info.http_addr,
            rstmdb_addr: info.rstmdb_addr,
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            cluster_id: self.identity.cluster_id().unwrap_or_default().to_string(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            membership_index: m.membership_config.log_id().map(|l| l.index),
            version: self.cfg.advertised_version,
        }
    }

    /// Cuts this node's inter-node traffic both ways (tests' partitions).
    pub fn set_isolated(&self, on: bool) {
        self.channels.set_isolated(on);
    }

    pub fn is_isolated(&self) -> bool {
        self.channels.is_isolated()
    }

    /// Called by the gRPC service for every `AppendEntries` received.
    pub fn note_append_received(&self) {
        *self.last_append_rx.lock().expect("append clock") = Instant::now();
    }

    /// Makes sure the data dir has a cluster id before this node forms a
    /// cluster, so every member learns the same one from it.
    fn ensure_cluster_id(&self) -> bool {
        let id = self
            .identity
            .cluster_id()
            .map_or_else(identity::new_cluster_id, str::to_owned);
        match self.identity.adopt_cluster(&id) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("not initializing: {e}");
                false
            }
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
            if !self.ensure_cluster_id() {
                return;
            }
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
                        joined |= s.initialized || !s.cluster_id.is_empty();
                        members.insert(
                            id,
                            NodeInfo {
                                grpc_addr: addr.clone(),
                                http_addr: s.http_addr,
                                version: version_or_legacy(s.version),
                                rstmdb_addr: s.rstmdb_addr,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::debug!("peer {id} at {addr} not answering yet: {}", e.message());
                        // A node that cannot follow a cluster this build
                        // forms (0.1 has no Append) never joins it; assume
                        // this build's version until it answers (the leader
                        // then records what it advertises).
                        members.insert(
                            id,
                            NodeInfo {
                                grpc_addr: addr.clone(),
                                http_addr: String::new(),
                                version: self.cfg.advertised_version,
                                rstmdb_addr: String::new(),
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
                if !self.ensure_cluster_id() {
                    return;
                }
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

    /// Keeps the committed index and the leader-change count fresh, and
    /// notices when this node is no longer a member.
    pub async fn watch_state(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        self.check_running(&metrics.borrow());
        let mut last_leader = metrics.borrow().current_leader;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut membership_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.refresh_committed().await,
                _ = membership_tick.tick() => {
                    self.check_membership().await;
                    self.refresh_versions().await;
                }
                r = metrics.changed() => {
                    self.check_running(&metrics.borrow());
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

    /// Raft stops on a fatal error (a storage error: an entry in the log
    /// this build cannot decode, a failed disk); the node then serves
    /// nothing and stops with the reason.
    fn check_running(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) {
        match &m.running_state {
            Ok(()) | Err(openraft::error::Fatal::Stopped) => {}
            Err(e) => self.halt(format!("Raft stopped on a fatal error: {e}")),
        }
    }

    /// Each member's feature version for the gate: what it advertised
    /// lately, else its membership entry; this node's own is its config.
    fn member_versions(&self) -> BTreeMap<NodeId, u32> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        version_gate::effective(
            m.membership().nodes().map(|(id, n)| (*id, n.version)),
            &self.live_versions,
            (self.id, self.cfg.advertised_version),
        )
    }

    /// On the leader: refuses a write needing feature version `needs` that
    /// some member cannot decode, before it is proposed. A member that looks
    /// too old is asked again first, so a node just restarted on a new build
    /// is not refused.
    async fn gate(&self, needs: u32) -> Result<(), ClusterError> {
        let versions = self.member_versions();
        if version_gate::check(&versions, needs).is_ok() {
            return Ok(());
        }
        let ask: Vec<NodeId> = versions
            .iter()
            .filter(|(id, v)| {
                **v < needs
                    && **id != self.id
                    && !self.live_versions.seen_within(**id, VERSION_REPROBE_AFTER)
            })
            .map(|(id, _)| *id)
            .collect();
        self.probe_versions(&ask).await;
        version_gate::check(&self.member_versions(), needs)
            .map_err(|m| ClusterError::rejected(format!("{m}; nothing was proposed")))
    }

    /// Asks these members' `Status`, concurrently and bounded, and records
    /// the versions they advertise (only from the node the address serves).
    async fn probe_versions(&self, ids: &[NodeId]) {
        let probes = ids.iter().filter_map(|&id| {
            let addr = self.addr_of(id)?;
            Some(async move {
                let s = network::status(&self.channels, &addr, VERSION_PROBE_TIMEOUT).await;
                (id, s)
            })
        });
        for (id, reply) in futures::future::join_all(probes).await {
            match reply {
                Ok(s) if s.node_id == id => {
                    self.live_versions.record(id, version_or_legacy(s.version));
                    self.live_versions.record_rstmdb(id, s.rstmdb_addr);
                }
                Ok(s) => {
                    tracing::debug!("the address of node {id} is served by node {}", s.node_id)
                }
                Err(e) => tracing::debug!("node {id} did not tell its version: {}", e.message()),
            }
        }
    }

    /// On the leader: learns every member's advertised version and rstmdb
    /// address and, where they differ from the membership entry (a node
    /// restarted on another build, or one joined before entries had an
    /// rstmdb address), rewrites that entry (`SetNodes`, gRPC and HTTP
    /// addresses unchanged), so the stored config — what a new leader
    /// starts from — converges.
    async fn refresh_versions(&self) {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return;
        }
        let membership = m.membership_config.membership().clone();
        let others: Vec<NodeId> = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.id)
            .collect();
        self.probe_versions(&others).await;
        let changed: BTreeMap<NodeId, NodeInfo> = membership
            .nodes()
            .filter_map(|(id, n)| {
                let (version, rstmdb) = if *id == self.id {
                    (
                        Some(self.cfg.advertised_version),
                        Some(self.cfg.rstmdb_advertised()),
                    )
                } else {
                    (
                        self.live_versions.fresh(*id),
                        self.live_versions.rstmdb(*id),
                    )
                };
                let next = NodeInfo {
                    version: version.unwrap_or(n.version),
                    rstmdb_addr: rstmdb.unwrap_or_else(|| n.rstmdb_addr.clone()),
                    ..n.clone()
                };
                (next != *n).then_some((*id, next))
            })
            .collect();
        // One change at a time: openraft refuses one while a joint config
        // is in place; the next tick tries again.
        if changed.is_empty() || membership.get_joint_config().len() != 1 {
            return;
        }
        let what: Vec<String> = changed
            .iter()
            .map(|(id, n)| {
                let (was, at) = membership
                    .get_node(id)
                    .map_or((0, ""), |o| (o.version, o.rstmdb_addr.as_str()));
                format!(
                    "node {id} version {was} → {}, rstmdb {at:?} → {:?}",
                    n.version, n.rstmdb_addr
                )
            })
            .collect();
        // Short: this runs in the state watcher, which shutdown waits for.
        let r = tokio::time::timeout(
            VERSION_RECORD_TIMEOUT,
            self.raft
                .change_membership(ChangeMembers::SetNodes(changed), false),
        )
        .await;
        match membership_result(r) {
            Ok(body) => tracing::info!(?body, "membership records {}", what.join(", ")),
            Err(e) => tracing::warn!("recording {} in the membership: {e}", what.join(", ")),
        }
    }

    async fn refresh_committed(&self) {
        let committed = self
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await;
        if let Ok(c) = committed {
            self.committed_plus1
                .fetch_max(c.map_or(0, |i| i + 1), Ordering::Relaxed);
        }
    }

    /// The committed index this node knows. What it applied is committed
    /// too, so the applied index bounds it from below even between polls.
    fn committed_index(&self, m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> Option<u64> {
        let polled = self.committed_plus1.load(Ordering::Relaxed).checked_sub(1);
        polled.max(m.last_applied.map(|l| l.index))
    }

    /// A node outside the membership must stop campaigning: it learns that
    /// from its own config, or — when no leader has sent it anything for a
    /// while (a voter removed while down never receives the config that
    /// removes it) — from a peer that knows a newer config without it.
    async fn check_membership(&self) {
        let m = self.raft.metrics().borrow().clone();
        let Some(own_index) = m.membership_config.log_id().map(|l| l.index) else {
            return; // not yet joined to any cluster
        };
        let membership = m.membership_config.membership();
        if membership.get_node(&self.id).is_none() {
            self.mark_removed(own_index, membership.voter_ids().collect());
            return;
        }
        let silence = self.last_append_rx.lock().expect("append clock").elapsed();
        let bound = Duration::from_millis(3 * self.cfg.election_timeout_max_ms);
        if m.state == ServerState::Leader || silence < bound {
            self.clear_removed();
            return;
        }
        let mut addrs: BTreeSet<String> = membership
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, n)| n.grpc_addr.clone())
            .collect();
        addrs.extend(
            self.peers
                .iter()
                .filter(|(id, _)| **id != self.id)
                .map(|(_, a)| a.clone()),
        );
        for addr in addrs {
            let Ok(s) = network::status(&self.channels, &addr, Duration::from_millis(500)).await
            else {
                continue;
            };
            let same_cluster = s.cluster_id.is_empty()
                || self.identity.cluster_id().is_none_or(|c| c == s.cluster_id);
            let newer = s.membership_index.is_some_and(|i| i > own_index);
            let without_me = !s.voters.contains(&self.id) && !s.learners.contains(&self.id);
            if same_cluster && newer && without_me {
                self.mark_removed(s.membership_index.unwrap_or_default(), s.voters);
                return;
            }
        }
    }

    fn mark_removed(&self, at_index: u64, voters: Vec<NodeId>) {
        let mut removed = self.removed.lock().expect("removed flag");
        if removed.is_some() {
            return;
        }
        self.raft.runtime_config().elect(false);
        tracing::error!(
            "node {} is not a member of the cluster (the membership at log index {at_index} \
             has voters {voters:?}); it no longer starts elections — stop this node",
            self.id
        );
        *removed = Some(RemovedStatus {
            at_index,
            voters,
            hint: "this node was removed from the cluster; stop it".into(),
        });
    }

    fn clear_removed(&self) {
        let mut removed = self.removed.lock().expect("removed flag");
        if removed.take().is_some() {
            self.raft.runtime_config().elect(true);
            tracing::info!("node {} is a member again; elections re-enabled", self.id);
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
    /// nothing was applied ([`ClusterError::is_retryable`]: no leader yet,
    /// leader unreachable before sending, or a node that turned out not to
    /// be leader), within `leader_wait_ms`; an ambiguous outcome is returned
    /// as `Unknown` and never retried.
    pub async fn route(&self, op: ForwardOp, hops: u32) -> Result<ForwardReplyBody, ClusterError> {
        if let Some(reason) = self.halted() {
            return Err(ClusterError::not_ready(format!(
                "node {} stopped serving: {reason}",
                self.id
            )));
        }
        let wait = Duration::from_millis(self.cfg.leader_wait_ms);
        let deadline = Instant::now() + wait;
        let mut hops = hops;
        loop {
            let Some(leader) = self.leader_by(deadline).await else {
                return Err(ClusterError::no_leader(format!(
                    "no leader elected within {} ms",
                    wait.as_millis()
                )));
            };
            let result = if leader == self.id {
                self.execute(&op).await
            } else if hops >= MAX_HOPS {
                Err(ClusterError::NotLeader {
                    leader: Some(self.hint(leader)),
                })
            } else {
                self.forward(leader, &op, hops).await
            };
            let again = matches!(
                result,
                Err(ClusterError::NotLeader { .. } | ClusterError::NoLeader { .. })
            );
            match result {
                Err(_) if again && Instant::now() < deadline && hops < MAX_HOPS => {
                    if matches!(result, Err(ClusterError::NotLeader { .. })) {
                        hops += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Err(ClusterError::NotLeader { leader }) => {
                    return Err(ClusterError::NoLeader {
                        message: "leadership is moving".into(),
                        leader,
                    })
                }
                other => return other,
            }
        }
    }

    /// What this node knows about `id` as a leader hint.
    fn hint(&self, id: NodeId) -> LeaderHint {
        let m = self.raft.metrics();
        let m = m.borrow();
        classify::hint(id, m.membership_config.membership().get_node(&id))
    }

    async fn forward(
        &self,
        leader: NodeId,
        op: &ForwardOp,
        hops: u32,
    ) -> Result<ForwardReplyBody, ClusterError> {
        let Some(addr) = self.addr_of(leader) else {
            return Err(ClusterError::no_leader(format!(
                "no address known for leader {leader}"
            )));
        };
        let hint = self.hint(leader);
        // Writes travel in the binary codec, with the version they need;
        // other ops are small JSON.
        let mut req = ForwardRequest {
            hops: hops + 1,
            ..Default::default()
        };
        match op {
            ForwardOp::Write { cmd } => {
                req.cmd = raftmesh_proto::codec::encode_cmd(cmd);
                req.cmd_version = cmd.required_version();
            }
            ForwardOp::WriteSeq { cmds, order } => {
                req.cmds = cmds.iter().map(raftmesh_proto::codec::encode_cmd).collect();
                req.order = order.clone();
                req.cmd_version = cmds.iter().map(Cmd::required_version).max().unwrap_or(0);
            }
            other => {
                req.op =
                    serde_json::to_vec(other).map_err(|e| ClusterError::internal(e.to_string()))?
            }
        }
        let mut req = tonic::Request::new(req);
        let ttl = match op {
            ForwardOp::AddLearner { .. }
            | ForwardOp::ChangeMembership { .. }
            | ForwardOp::RemoveNodes { .. } => MEMBERSHIP_TIMEOUT,
            _ => Duration::from_millis(self.cfg.write_timeout_ms + self.cfg.leader_wait_ms),
        };
        req.set_timeout(ttl);
        network::stamp(&mut req, &self.identity);
        let read_only = matches!(op, ForwardOp::ReadIndex | ForwardOp::Progress);
        let reply = match self.channels.client(&addr) {
            Ok(mut client) => client.forward(req).await,
            Err(s) => Err(s),
        };
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                let undecodable = |e: String| {
                    let msg = format!("leader {hint} answered undecodably: {e}");
                    if read_only {
                        ClusterError::not_ready(msg)
                    } else {
                        ClusterError::unknown(msg)
                    }
                };
                if !reply.written.is_empty() {
                    let (index, result) = raftmesh_proto::codec::decode_written(&reply.written)
                        .map_err(|e| undecodable(e.to_string()))?;
                    return Ok(ForwardReplyBody::Written { index, result });
                }
                if !reply.written_seq.is_empty() {
                    let seq = raftmesh_proto::codec::decode_written_seq(&reply.written_seq)
                        .map_err(|e| undecodable(e.to_string()))?;
                    return Ok(ForwardReplyBody::WrittenSeq(seq));
                }
                serde_json::from_slice(&reply.result).map_err(|e| undecodable(e.to_string()))?
            }
            Err(s) if read_only => Err(classify::read_index_failure(&s, hint)),
            Err(s) => Err(classify::forward_failure(&s, hint)),
        }
    }

    /// Runs `op` on this node as leader.
    async fn execute(&self, op: &ForwardOp) -> Result<ForwardReplyBody, ClusterError> {
        match op {
            ForwardOp::Write { cmd } => {
                self.gate(cmd.required_version()).await?;
                self.write_batcher
                    .submit(cmd.clone())
                    .await
                    .map(|(index, result)| ForwardReplyBody::Written { index, result })
            }
            ForwardOp::WriteSeq { cmds, order } => {
                // One refusal for the whole sequence, so none of a
                // connection's writes passes one refused before it.
                let needs = cmds.iter().map(Cmd::required_version).max().unwrap_or(0);
                self.gate(needs).await?;
                Ok(ForwardReplyBody::WrittenSeq(
                    self.write_batcher.submit_seq(cmds.clone(), order).await,
                ))
            }
            ForwardOp::ReadIndex => self
                .read_batcher
                .read_index()
                .await
                .map(|index| ForwardReplyBody::ReadIndex { index }),
            ForwardOp::AddLearner { node_id, node } => self.add_learner_here(*node_id, node).await,
            ForwardOp::ChangeMembership { voters, retain } => {
                let set: BTreeSet<NodeId> = voters.iter().copied().collect();
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    self.raft
                        .change_membership(ChangeMembers::ReplaceAllVoters(set), *retain),
                )
                .await;
                membership_result(r)
            }
            ForwardOp::RemoveNodes { ids } => {
                let set: BTreeSet<NodeId> = ids.iter().copied().collect();
                let r = tokio::time::timeout(
                    MEMBERSHIP_TIMEOUT,
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(set), false),
                )
                .await;
                membership_result(r)
            }
            ForwardOp::Progress => self.progress_here().map(ForwardReplyBody::Progress),
        }
    }

    /// On the leader: refuses a node that cannot work as a member (does not
    /// answer, is another node, belongs to another cluster), then adds it as
    /// a learner without waiting. openraft's blocking add only waits until
    /// the learner is within `replication_lag_threshold` entries, which an
    /// unreachable node "is" at once on a young cluster; the caller waits
    /// for the returned target instead.
    async fn add_learner_here(
        &self,
        node_id: NodeId,
        node: &NodeInfo,
    ) -> Result<ForwardReplyBody, ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        if m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v == node_id)
        {
            return Err(ClusterError::rejected(format!(
                "node {node_id} is already a voter"
            )));
        }
        let addr = &node.grpc_addr;
        let probe = network::status(&self.channels, addr, PROBE_TIMEOUT)
            .await
            .map_err(|s| {
                ClusterError::rejected(format!(
                    "node {node_id} at {addr} does not answer ({}); start it first. \
                     Membership is unchanged",
                    s.message()
                ))
            })?;
        if probe.node_id != node_id {
            return Err(ClusterError::rejected(format!(
                "the node at {addr} is node {}, not node {node_id}; membership is unchanged",
                probe.node_id
            )));
        }
        if let Some(mine) = self.identity.cluster_id() {
            if !probe.cluster_id.is_empty() && probe.cluster_id != mine {
                return Err(ClusterError::rejected(format!(
                    "node {node_id} at {addr} belongs to cluster {}, this is cluster {mine}; \
                     give it an empty data dir. Membership is unchanged",
                    probe.cluster_id
                )));
            }
        }
        self.refresh_committed().await;
        let target = self.committed_index(&m).unwrap_or(0);
        // What it supports is what it says, not what the request says.
        let version = version_or_legacy(probe.version);
        self.live_versions.record(node_id, version);
        self.live_versions
            .record_rstmdb(node_id, probe.rstmdb_addr.clone());
        let rstmdb_addr = if probe.rstmdb_addr.is_empty() {
            node.rstmdb_addr.clone()
        } else {
            probe.rstmdb_addr.clone()
        };
        let node = NodeInfo {
            version,
            rstmdb_addr,
            ..node.clone()
        };
        let r = tokio::time::timeout(
            MEMBERSHIP_TIMEOUT,
            self.raft.add_learner(node_id, node, false),
        )
        .await;
        match membership_result(r)? {
            ForwardReplyBody::Done { index } => {
                Ok(ForwardReplyBody::LearnerAdded { index, target })
            }
            other => Err(unexpected(other)),
        }
    }

    /// On the leader: every member's replication progress.
    fn progress_here(&self) -> Result<ClusterProgress, ClusterError> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(ClusterError::NotLeader {
                leader: m.current_leader.map(|l| self.hint(l)),
            });
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, _)| {
                let me = *id == self.id;
                MemberProgress {
                    node_id: *id,
                    voter: voters.contains(id),
                    matched_index: if me {
                        m.last_log_index
                    } else {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id).cloned().flatten())
                            .map(|l| l.index)
                    },
                    last_contact_ms: if me {
                        Some(0)
                    } else {
                        self.contacts.since(*id).map(|d| d.as_millis() as u64)
                    },
                }
            })
            .collect();
        Ok(ClusterProgress {
            leader: self.id,
            committed_index: self.committed_index(&m).unwrap_or(0),
            membership_index: m.membership_config.log_id().map_or(0, |l| l.index),
            members,
        })
    }

    async fn progress(&self) -> Result<ClusterProgress, ClusterError> {
        match self.route(ForwardOp::Progress, 0).await? {
            ForwardReplyBody::Progress(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Polls the leader until `done` holds for the progress (Ok), or the
    /// deadline passes (Err with the last progress seen).
    async fn wait_progress(
        &self,
        deadline: Instant,
        what: &str,
        mut done: impl FnMut(&ClusterProgress) -> bool,
    ) -> Result<ClusterProgress, ClusterProgress> {
        let mut last_log = Instant::now();
        loop {
            let p = match self.progress().await {
                Ok(p) => p,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("progress while waiting for {what}: {e}");
                    tokio::time::sleep(PROGRESS_POLL).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!("no progress while waiting for {what}: {e}");
                    return Err(ClusterProgress {
                        leader: 0,
                        committed_index: 0,
                        membership_index: 0,
                        members: Vec::new(),
                    });
                }
            };
            if done(&p) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(p);
            }
            if last_log.elapsed() >= Duration::from_secs(2) {
                tracing::info!(?p, "waiting for {what}");
                last_log = Instant::now();
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        }
    }

    /// Silence bound for promotion: a learner that accepted no append for
    /// this long is treated as down.
    fn max_silence(&self) -> Duration {
        Duration::from_millis((4 * self.cfg.election_timeout_max_ms).max(2_000))
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
        Err(_) => Err(ClusterError::unknown(
            "membership change did not finish in time; check /cluster",
        )),
        Ok(Ok(resp)) => Ok(ForwardReplyBody::Done {
            index: resp.log_id.index,
        }),
        Ok(Err(e)) => Err(classify::write_failure(e)),
    }
}

fn unexpected(body: ForwardReplyBody) -> ClusterError {
    ClusterError::internal(format!("unexpected reply from leader: {body:?}"))
}

impl Replicate for Node {
    async fn write(&self, cmd: Cmd) -> Result<WriteOutcome, ClusterError> {
        match self.route(ForwardOp::Write { cmd }, 0).await? {
            ForwardReplyBody::Written { index, result } => Ok(WriteOutcome { index, result }),
            other => Err(unexpected(other)),
        }
    }

    async fn write_seq(
        &self,
        cmds: Vec<Cmd>,
        order: String,
    ) -> Vec<Result<WriteOutcome, ClusterError>> {
        let n = cmds.len();
        match self.route(ForwardOp::WriteSeq { cmds, order }, 0).await {
            Ok(ForwardReplyBody::WrittenSeq(seq)) if seq.len() == n => seq
                .into_iter()
                .map(|r| r.map(|(index, result)| WriteOutcome { index, result }))
                .collect(),
            Ok(other) => vec![Err(unexpected(other)); n],
            // The sequence as a whole failed: the same for each write.
            Err(e) => vec![Err(e); n],
        }
    }

    async fn read_barrier(&self) -> Result<u64, ClusterError> {
        if self.removed.lock().expect("removed flag").is_some() {
            // Nothing is replicated here any more: a read would wait forever.
            return Err(ClusterError::not_ready(
                "this node was removed from the cluster and no longer receives its log; \
                 ask another node",
            ));
        }
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
                // openraft's wait error carries its whole metrics dump: log it.
                tracing::debug!("read barrier at {index}: {e}");
                ClusterError::not_ready(format!(
                    "this node has not applied the read index {index} within {} ms",
                    wait.as_millis()
                ))
            })?;
        Ok(m.last_applied.map_or(0, |l| l.index).max(index))
    }
}

impl KvRead for Node {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, ClusterError> {
        // A point read is served from RocksDB's memtable or block cache in
        // microseconds: not worth a thread hop.
        self.reader
            .kv_get(key)
            .map_err(|e| ClusterError::internal(e.to_string()))
    }

    async fn kv_scan(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, ClusterError> {
        // A scan walks up to `limit` keys: off the async workers.
        let reader = self.reader.clone();
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        let (keys, more) =
            tokio::task::spawn_blocking(move || reader.kv_scan(&prefix, after.as_deref(), limit))
                .await
                .map_err(|e| ClusterError::internal(format!("scan task: {e}")))?
                .map_err(|e| ClusterError::internal(e.to_string()))?;
        let next_after = if more { keys.last().cloned() } else { None };
        Ok(KeyPage { keys, next_after })
    }
}

/// A feed subscription as the gateway sees it.
pub(crate) struct NodeFeed(raftmesh_raft_store::Subscription);

impl FeedStream for NodeFeed {
    async fn next(&mut self) -> FeedNext {
        self.0.next().await
    }

    fn next_index(&self) -> u64 {
        self.0.next_index()
    }
}

impl Subscribe for Node {
    type Stream = NodeFeed;

    fn subscribe(&self, domain: Domain, from: Option<u64>) -> Result<NodeFeed, SubscribeError> {
        match self.reader.feed().subscribe(domain, from) {
            Ok(s) => Ok(NodeFeed(s)),
            Err(FeedError::Compacted { from, oldest }) => {
                Err(SubscribeError::Compacted { from, oldest })
            }
            Err(FeedError::Store(e)) => Err(SubscribeError::Cluster(ClusterError::internal(
                format!("reading the journal: {e}"),
            ))),
        }
    }

    fn journal_page(
        &self,
        domain: Domain,
        from: u64,
        limit: usize,
    ) -> Result<Vec<raftmesh_proto::feed::AppliedEntry>, SubscribeError> {
        self.reader
            .feed()
            .read(domain, from, limit)
            .map_err(|e| match e {
                FeedError::Compacted { from, oldest } => SubscribeError::Compacted { from, oldest },
                FeedError::Store(e) => SubscribeError::Cluster(ClusterError::internal(format!(
                    "reading the journal: {e}"
                ))),
            })
    }

    fn journal(&self, domain: Domain) -> Result<JournalInfo, ClusterError> {
        let (m, retention) = self
            .reader
            .journal_info(domain)
            .map_err(|e| ClusterError::internal(format!("reading the journal: {e}")))?;
        Ok(JournalInfo {
            oldest: m.complete_from,
            events: m.events,
            bytes: m.bytes,
            retention,
        })
    }
}

/// Store reads of the machine domain, off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, raftmesh_raft_store::StoreError> + Send + 'static,
) -> Result<T, ClusterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClusterError::internal(format!("read task: {e}")))?
        .map_err(|e| ClusterError::internal(format!("reading the store: {e}")))
}

impl RoomRead for Node {
    async fn room_get(&self, room: &str) -> Result<Option<RoomView>, ClusterError> {
        // A point read: not worth a thread hop (see kv_get).
        self.reader
            .room_get(room)
            .map_err(|e| ClusterError::internal(e.to_string()))
    }

    async fn room_values(
        &self,
        room: &str,
        key: &str,
        after: u64,
        limit: usize,
    ) -> Result<RoomValues, ClusterError> {
        let (r, room, key) = (self.reader.clone(), room.to_string(), key.to_string());
        blocking(move || r.room_values(&room, &key, after, limit)).await
    }

    async fn room_keys(
        &self,
        room: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), ClusterError> {
        let (r, room) = (self.reader.clone(), room.to_string());
        blocking(move || r.room_keys(&room, after.as_deref(), limit)).await
    }
}

impl MachineRead for Node {
    async fn machine_get(
        &self,
        machine: &str,
        version: u32,
    ) -> Result<Option<MachineView>, ClusterError> {
        let (r, m) = (self.reader.clone(), machine.to_string());
        blocking(move || {
            Ok(r.machine_get(&m, version)?.map(|rec| MachineView {
                definition: rec.definition,
                checksum: rec.checksum,
            }))
        })
        .await
    }

    async fn machine_list(&self, limit: usize) -> Result<Vec<(String, Vec<u32>)>, ClusterError> {
        let r = self.reader.clone();
        blocking(move || r.machine_list(limit)).await
    }

    async fn instance_get(&self, id: &str) -> Result<Option<Instance>, ClusterError> {
        let (r, id) = (self.reader.clone(), id.to_string());
        blocking(move || r.instance_get(&id)).await
    }

    async fn instance_list(
        &self,
        machine: Option<String>,
        state: Option<String>,
        limit: usize,
        offset: usize,
    ) -> Result<InstancePage, ClusterError> {
        let r = self.reader.clone();
        blocking(move || r.instance_list(machine.as_deref(), state.as_deref(), limit, offset)).await
    }
}

impl ClusterOps for Node {
    fn raft_view(&self) -> RaftView {
        let m = self.raft.metrics();
        let m = m.borrow();
        self.view_of(&m)
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
                rstmdb_addr: n.rstmdb_addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
                version: n.version,
            })
            .collect();
        ClusterStatus {
            id: self.id,
            version: self.cfg.advertised_version,
            role: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            last_snapshot_index: m.snapshot.map(|l| l.index),
            last_purged_index: m.purged.map(|l| l.index),
            committed_index: self.committed_index(&m),
            members,
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            cluster_id: self.identity.cluster_id().map(str::to_owned),
            removed: self.removed.lock().expect("removed flag").clone(),
            halted: self.halted(),
        }
    }

    fn is_ready(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let applied_plus1 = m.last_applied.map_or(0, |l| l.index + 1);
        m.current_leader.is_some()
            && m.running_state.is_ok()
            && applied_plus1 >= self.committed_plus1.load(Ordering::Relaxed)
            && self.removed.lock().expect("removed flag").is_none()
            && self.halted.borrow().is_none()
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

    /// Adds a learner and waits until its matched index reaches the leader's
    /// commit index as of the call: a fixed target, so the wait ends under
    /// load too.
    async fn add_learner(
        &self,
        node_id: NodeId,
        node: NodeInfo,
        timeout: Duration,
    ) -> Result<MembershipOutcome, ClusterError> {
        let deadline = Instant::now() + timeout;
        let (index, target) = match self
            .route(ForwardOp::AddLearner { node_id, node }, 0)
            .await?
        {
            ForwardReplyBody::LearnerAdded { index, target } => (index, target),
            other => return Err(unexpected(other)),
        };
        tracing::info!("node {node_id} added as learner at index {index}; catching up to {target}");
        let matched = |p: &ClusterProgress| p.member(node_id).and_then(|m| m.matched_index);
        match self
            .wait_progress(
                deadline,
                &format!("learner {node_id} to reach {target}"),
                |p| matched(p).is_some_and(|i| i >= target),
            )
            .await
        {
            Ok(p) => Ok(MembershipOutcome {
                index,
                target: Some(target),
                matched: matched(&p),
                not_demoted: Vec::new(),
            }),
            Err(p) => Err(ClusterError::timed_out(format!(
                "node {node_id} was added as a learner (log index {index}) but matched {} of \
                 target {target} within {} s; it stays a learner and is not promoted. \
                 Check its log, then retry add-learner, or remove it",
                matched(&p).map_or_else(|| "nothing".to_string(), |i| i.to_string()),
                timeout.as_secs()
            ))),
        }
    }

    /// Sets the voters. New voters must be learners that caught up to the
    /// leader's commit index as of the call and accepted an append recently
    /// (unless `force`). Removed voters go through learner first, so they
    /// learn the config that demotes them and stop campaigning; then they
    /// are dropped.
    async fn change_membership(
        &self,
        voters: Vec<NodeId>,
        force: bool,
        timeout: Duration,
    ) -> Result<MembershipOutcome, ClusterError> {
        if voters.is_empty() {
            return Err(ClusterError::rejected("voters must not be empty"));
        }
        let deadline = Instant::now() + timeout;
        let want: BTreeSet<NodeId> = voters.iter().copied().collect();
        let p = self.progress().await?;
        let current: BTreeSet<NodeId> = p
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        for id in want.difference(&current) {
            if p.member(*id).is_none() {
                return Err(ClusterError::rejected(format!(
                    "node {id} is not a member; add it with add-learner first"
                )));
            }
        }
        let added: Vec<NodeId> = want.difference(&current).copied().collect();
        let removed: Vec<NodeId> = current.difference(&want).copied().collect();
        if !force && !added.is_empty() {
            let target = p.committed_index;
            let bound = self.max_silence();
            let ready = |p: &ClusterProgress| {
                added.iter().all(|id| {
                    p.member(*id).is_some_and(|m| {
                        m.matched_index.is_some_and(|i| i >= target)
                            && m.last_contact_ms
                                .is_some_and(|c| c <= bound.as_millis() as u64)
                    })
                })
            };
            let what = format!("learners {added:?} to reach {target}");
            if let Err(p) = self.wait_progress(deadline, &what, ready).await {
                let mut why = Vec::new();
                for id in &added {
                    let m = p.member(*id);
                    let matched = m.and_then(|m| m.matched_index);
                    let contact = m.and_then(|m| m.last_contact_ms);
                    if matched.is_none_or(|i| i < target) {
                        why.push(format!(
                            "node {id} matched {} of {target}",
                            matched.map_or_else(|| "nothing".into(), |i| i.to_string())
                        ));
                    }
                    match contact {
                        None => why.push(format!("node {id} never accepted an append")),
                        Some(c) if c > bound.as_millis() as u64 => why.push(format!(
                            "node {id} last accepted an append {c} ms ago (bound {} ms)",
                            bound.as_millis()
                        )),
                        Some(_) => {}
                    }
                }
                return Err(ClusterError::rejected(format!(
                    "not promoting: {}; membership is unchanged (--force promotes anyway)",
                    why.join("; ")
                )));
            }
        }
        let index = match self
            .route(
                ForwardOp::ChangeMembership {
                    voters,
                    retain: true,
                },
                0,
            )
            .await?
        {
            ForwardReplyBody::Done { index } => index,
            other => return Err(unexpected(other)),
        };
        if removed.is_empty() {
            return Ok(MembershipOutcome {
                index,
                target: None,
                matched: None,
                not_demoted: Vec::new(),
            });
        }
        // Wait (bounded) until each removed voter has the config that makes
        // it a learner; one that is down will learn from its peers when it
        // comes back (see `check_membership`).
        let demoted = |p: &ClusterProgress, id: NodeId| {
            p.member(id)
                .and_then(|m| m.matched_index)
                .is_some_and(|i| i >= index)
        };
        let wait_until = deadline.min(Instant::now() + DEMOTION_WAIT);
        let what = format!("removed voters {removed:?} to learn they are learners");
        let not_demoted = match self
            .wait_progress(wait_until, &what, |p| {
                removed.iter().all(|id| demoted(p, *id))
            })
            .await
        {
            Ok(_) => Vec::new(),
            Err(p) => removed
                .iter()
                .copied()
                .filter(|id| !demoted(&p, *id))
                .collect(),
        };
        if !not_demoted.is_empty() {
            tracing::warn!(
                "removed voters {not_demoted:?} did not confirm their demotion; dropping them anyway"
            );
        }
        let index = match self
            .route(ForwardOp::RemoveNodes { ids: removed }, 0)
            .await?
        {
            ForwardReplyBody::Done { index } => index,
            other => return Err(unexpected(other)),
        };
        Ok(MembershipOutcome {
            index,
            target: None,
            matched: None,
            not_demoted,
        })
    }

    async fn cluster_progress(&self) -> Result<ClusterProgress, ClusterError> {
        self.progress().await
    }

    fn log_stats(&self) -> Result<LogStats, ClusterError> {
        self.log_stats_now()
    }

    async fn compact(&self, force_snapshot: bool) -> Vec<LogCompaction> {
        self.compact_members(force_snapshot).await
    }
}
