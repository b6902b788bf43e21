//! An in-process cluster for tests: `n` real nodes in this process, each
//! with RocksDB in its own temp dir and real gRPC and HTTP servers on
//! loopback ports chosen by the OS, with hooks to stop a node, restart it on
//! the same data dir and ports, and isolate it from its peers. Nothing is
//! faked: writes go through Raft, fsync and apply as in production.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use raftmesh_proto::NodeId;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::NodeError;
use crate::server::{Listeners, RunningNode};

/// Raft timings for tests: short, so elections and catch-up are quick.
pub fn test_config(node_id: NodeId) -> Config {
    Config {
        node_id,
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..Config::default()
    }
}

/// One node of a [`TestCluster`].
pub struct TestNode {
    pub cfg: Config,
    /// Addresses stay the same across restarts.
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub rstmdb_addr: SocketAddr,
    _dir: tempfile::TempDir,
    running: Option<RunningNode>,
    /// Listeners bound before the node starts (first start only).
    bound: Option<Listeners>,
}

impl TestNode {
    pub fn data_dir(&self) -> &PathBuf {
        &self.cfg.data_dir
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn running(&self) -> Option<&RunningNode> {
        self.running.as_ref()
    }
}

pub struct TestCluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
}

/// Starts nodes `1..=n`, each listing all of them as peers, with
/// [`test_config`]; returns once they agree on a leader.
pub async fn start_cluster(n: u64) -> Result<TestCluster, NodeError> {
    start_cluster_with(n, |_| {}).await
}

/// [`start_cluster`] with each node's config adjusted by `tweak`.
pub async fn start_cluster_with(
    n: u64,
    tweak: impl Fn(&mut Config),
) -> Result<TestCluster, NodeError> {
    let mut c = TestCluster {
        nodes: BTreeMap::new(),
    };
    let ids: Vec<NodeId> = (1..=n).collect();
    for &id in &ids {
        c.prepare(id, &tweak).await?;
    }
    let peers: Vec<String> = ids
        .iter()
        .map(|id| format!("{id}={}", c.nodes[id].grpc_addr))
        .collect();
    for &id in &ids {
        c.nodes.get_mut(&id).expect("prepared").cfg.peers = peers.clone();
    }
    for &id in &ids {
        c.start(id).await?;
    }
    c.wait_for_leader(&ids, Duration::from_secs(20)).await?;
    Ok(c)
}

async fn bind() -> Result<(TcpListener, SocketAddr), NodeError> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| NodeError::Config(format!("binding 127.0.0.1:0: {e}")))?;
    let a = l
        .local_addr()
        .map_err(|e| NodeError::Config(format!("listener address: {e}")))?;
    Ok((l, a))
}

impl TestCluster {
    /// Binds a node's ports and makes its data dir, without starting it.
    /// Its peers are empty (a one-node cluster) until set.
    pub async fn prepare(
        &mut self,
        id: NodeId,
        tweak: &impl Fn(&mut Config),
    ) -> Result<&mut TestNode, NodeError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("raftmesh-t{id}-"))
            .tempdir()
            .map_err(|e| NodeError::io(&std::env::temp_dir(), e))?;
        let (grpc, grpc_addr) = bind().await?;
        let (http, http_addr) = bind().await?;
        let (rstmdb, rstmdb_addr) = bind().await?;
        let mut cfg = test_config(id);
        cfg.data_dir = dir.path().join("data");
        cfg.grpc_addr = grpc_addr.to_string();
        cfg.http_addr = http_addr.to_string();
        cfg.rstmdb_addr = rstmdb_addr.to_string();
        tweak(&mut cfg);
        cfg.validate()?;
        self.nodes.insert(
            id,
            TestNode {
                cfg,
                grpc_addr,
                http_addr,
                rstmdb_addr,
                _dir: dir,
                running: None,
                bound: Some(Listeners { grpc, http, rstmdb }),
            },
        );
        Ok(self.nodes.get_mut(&id).expect("just inserted"))
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn url(&self, id: NodeId) -> String {
        format!("http://{}", self.node(id).http_addr)
    }

    /// Starts (or restarts, on the same data dir and ports) a node.
    pub async fn start(&mut self, id: NodeId) -> Result<(), NodeError> {
        let n = self
            .nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"));
        assert!(n.running.is_none(), "node {id} is already running");
        let listeners = match n.bound.take() {
            Some(l) => l,
            None => rebind(n.grpc_addr, n.http_addr, n.rstmdb_addr).await?,
        };
        n.running = Some(RunningNode::start(n.cfg.clone(), listeners).await?);
        Ok(())
    }

    /// Stops a node cleanly (its store is closed when this returns).
    pub async fn stop(&mut self, id: NodeId) {
        let n = self
            .nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"));
        if let Some(r) = n.running.take() {
            r.shutdown().await;
        }
    }

    /// Stops then starts a node on the same data dir and addresses.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), NodeError> {
        self.stop(id).await;
        self.start(id).await
    }

    /// Cuts a running node off its peers, both ways; `false` heals it.
    pub fn isolate(&self, id: NodeId, on: bool) {
        if let Some(r) = &self.node(id).running {
            r.set_isolated(on);
        }
    }

    /// The leader all of `ids` agree on (and which says it leads).
    pub async fn wait_for_leader(
        &self,
        ids: &[NodeId],
        timeout: Duration,
    ) -> Result<NodeId, NodeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = ids
                .iter()
                .filter_map(|id| self.node(*id).running.as_ref())
                .map(|r| r.node.raft.metrics().borrow().clone())
                .collect();
            if let Some(l) = views.first().and_then(|m| m.current_leader) {
                let agreed = views.iter().all(|m| m.current_leader == Some(l));
                let leads = views
                    .iter()
                    .any(|m| m.id == l && m.state == openraft::ServerState::Leader);
                if agreed && leads && ids.contains(&l) {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                return Err(NodeError::Request(format!(
                    "nodes {ids:?} did not agree on a leader within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node (also done, less gracefully, on drop).
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Binds the addresses a stopped node had. The old sockets are closed, and
/// tokio sets SO_REUSEADDR, so the ports are free again at once.
async fn rebind(
    grpc: SocketAddr,
    http: SocketAddr,
    rstmdb: SocketAddr,
) -> Result<Listeners, NodeError> {
    let bind = |a: SocketAddr| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpListener::bind(a).await {
                Ok(l) => return Ok(l),
                Err(e) if Instant::now() > deadline => {
                    return Err(NodeError::Config(format!("rebinding {a}: {e}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    Ok(Listeners {
        grpc: bind(grpc).await?,
        http: bind(http).await?,
        rstmdb: bind(rstmdb).await?,
    })
}
