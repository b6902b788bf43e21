//! Running a node: its gRPC and HTTP servers and background tasks, from
//! bound listeners to a clean shutdown. Taking bound listeners lets the
//! binary bind configured addresses and tests bind port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use raftmesh_proto::pb::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::error::NodeError;
use crate::node::Node;
use crate::{grpc, network};

/// The two sockets a node serves.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    pub rstmdb: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses; the error names the one that failed.
    pub async fn bind(cfg: &Config) -> Result<Self, NodeError> {
        let bind = |addr: String, what: &'static str| async move {
            TcpListener::bind(&addr)
                .await
                .map_err(|e| NodeError::Config(format!("binding the {what} address {addr}: {e}")))
        };
        Ok(Listeners {
            grpc: bind(cfg.grpc_addr.clone(), "gRPC").await?,
            http: bind(cfg.http_addr.clone(), "HTTP").await?,
            rstmdb: bind(cfg.rstmdb_addr.clone(), "rstmdb").await?,
        })
    }
}

/// Accepted inter-node connections with TCP_NODELAY set on each socket.
/// tonic's `Server::tcp_nodelay` applies only to addresses tonic binds
/// itself, not to an incoming stream handed to it, so a plain listener
/// stream left Nagle on and made small Raft messages wait for ACKs.
pub(crate) fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// A started node: servers running, Raft running, until [`shutdown`].
///
/// [`shutdown`]: RunningNode::shutdown
pub struct RunningNode {
    pub(crate) node: Arc<Node>,
    gw_cfg: raftmesh_gateway::GatewayConfig,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    rstmdb_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Opens the store, starts Raft, serves gRPC and HTTP on `listeners`,
    /// and starts bootstrap and the state watcher.
    pub async fn start(cfg: Config, listeners: Listeners) -> Result<Self, NodeError> {
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_err(|e| NodeError::Config(format!("listener address: {e}")))
        };
        let grpc_addr = local(&listeners.grpc)?;
        let http_addr = local(&listeners.http)?;
        let rstmdb_addr = local(&listeners.rstmdb)?;
        let rstmdb_cfg = raftmesh_gateway::rstmdb::RstmdbConfig {
            max_frame_bytes: cfg.rstmdb_max_frame_bytes,
            token_hashes: cfg.rstmdb_tokens()?.map(Arc::new),
            watch_leaderless: std::time::Duration::from_millis(cfg.election_timeout_max_ms),
            node_id: cfg.node_id,
            ..Default::default()
        };
        let gw_cfg = raftmesh_gateway::GatewayConfig {
            max_key_bytes: cfg.max_key_bytes,
            max_value_bytes: cfg.max_value_bytes,
            max_list_keys: cfg.max_list_keys,
            watch_leaderless: std::time::Duration::from_millis(cfg.election_timeout_max_ms),
            rstmdb: rstmdb_cfg.clone(),
            drift: raftmesh_gateway::drift::DriftConfig {
                public_url: cfg.drift_public_url.clone(),
                socket_queue: cfg.drift_socket_queue,
                ..Default::default()
            },
        };
        let node = Node::start(cfg).await?;

        let (stop, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let svc = RaftServiceServer::new(grpc::Service { node: node.clone() })
            .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(network::MAX_MESSAGE_BYTES);
        let grpc_server = tonic::transport::Server::builder()
            .initial_stream_window_size(network::H2_STREAM_WINDOW)
            .initial_connection_window_size(network::H2_CONNECTION_WINDOW)
            .add_service(svc)
            .serve_with_incoming_shutdown(grpc_incoming(listeners.grpc), stopped(stop_rx.clone()));
        let http_server = raftmesh_gateway::run(
            listeners.http,
            node.clone(),
            gw_cfg.clone(),
            stopped(stop_rx.clone()),
        );
        let rstmdb_server = raftmesh_gateway::rstmdb::run(
            listeners.rstmdb,
            node.clone(),
            rstmdb_cfg,
            stopped(stop_rx.clone()),
        );
        let tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = rstmdb_server.await {
                    tracing::error!("rstmdb server: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = grpc_server.await {
                    tracing::error!("gRPC server: {e}");
                }
            }),
            tokio::spawn(async move {
                if let Err(e) = http_server.await {
                    tracing::error!("HTTP server: {e}");
                }
            }),
            tokio::spawn(node.clone().bootstrap(stop_rx.clone())),
            tokio::spawn(node.clone().expire_idle_rooms(stop_rx.clone())),
            tokio::spawn(node.clone().watch_state(stop_rx)),
        ];
        Ok(RunningNode {
            node,
            gw_cfg,
            grpc_addr,
            http_addr,
            rstmdb_addr,
            stop,
            tasks,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn rstmdb_addr(&self) -> SocketAddr {
        self.rstmdb_addr
    }

    /// The gateway's routes over this node, for driving requests in
    /// process (with a chosen peer address) as the HTTP server would.
    pub fn router(&self) -> axum::Router {
        raftmesh_gateway::router(self.node.clone(), self.gw_cfg.clone())
    }

    /// The node's Raft state as `X-Raft-*` headers show it.
    pub fn raft_view(&self) -> raftmesh_gateway::RaftView {
        use raftmesh_gateway::ClusterOps as _;
        self.node.raft_view()
    }

    /// Why the node stopped serving, if it did: it met a log entry it
    /// cannot decode, or Raft stopped on a fatal error. [`run`] exits then.
    pub fn halted(&self) -> Option<String> {
        self.node.halted()
    }

    /// Cuts the node off the network both ways (its RPCs fail as if the
    /// peer were unreachable); `false` heals it.
    pub fn set_isolated(&self, on: bool) {
        self.node.set_isolated(on);
    }

    /// Stops serving, drains in-flight requests, stops Raft, and closes the
    /// store (all handles on RocksDB are released before this returns, so
    /// the same data dir can be opened again at once).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        let mut node = self.node;
        let closed = node.store_closed();
        // Handlers finishing their last requests may hold the node briefly,
        // and openraft's state-machine worker drops its store handle a
        // little after Raft shut down: wait (bounded) for both.
        for _ in 0..500 {
            match Arc::try_unwrap(node) {
                Ok(n) => {
                    drop(n);
                    for _ in 0..500 {
                        if closed.is_closed() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    tracing::warn!("the store is still open after shutdown; it closes when its last user drops it");
                    return;
                }
                Err(n) => node = n,
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tracing::warn!("node still referenced after shutdown; the store closes when it is dropped");
    }
}

/// Runs a node on `listeners` until `shutdown` resolves, or until the node
/// stops serving (see [`RunningNode::halted`]): then it shuts down and
/// returns [`NodeError::Halted`], so the process exits non-zero with the
/// reason instead of lingering as a member that cannot follow.
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    tracing::info!(?cfg, "starting raftmesh node");
    let node = match RunningNode::start(cfg, listeners).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("not starting: {e}");
            return Err(e);
        }
    };
    let mut halted = node.node.watch_halted();
    let halt = async move {
        match halted.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The node is gone: nothing will report a halt.
            Err(_) => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
        reason = halt => Err(NodeError::Halted(reason)),
    };
    node.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    /// Every accepted inter-node socket has TCP_NODELAY on.
    #[tokio::test]
    async fn accepted_grpc_sockets_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::grpc_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
        // What tonic's own stream wrapper does, for contrast: Nagle stays on.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut plain = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = plain.next().await.unwrap().unwrap();
        assert!(!accepted.nodelay().unwrap());
    }
}
