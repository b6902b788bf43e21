//! raftmesh's HTTP gateway: the axum routes of the compatible APIs (pm3 KV,
//! CAS and watch; rstmdb over WebSocket and POST, and its TCP wire), their
//! JSON shapes, the operations routes, and the seam
//! traits ([`seam`]) through which all of it reaches the cluster.
//!
//! The gateway owns HTTP concerns only: routing, request validation, status
//! mapping ([`GatewayError`], one function), the `X-Raft-*` response
//! headers, the internal/external gate, request metrics and connection
//! handling. Replication and storage live behind [`Replicate`], [`KvRead`]
//! and [`ClusterOps`], implemented by the node crate, so this crate must not
//! depend on openraft, RocksDB or tonic; it shares only the plain types of
//! `raftmesh-proto` (`Cmd`, `ApplyResult`, `ClusterError`, ...).

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;

mod access;
mod conn;
pub mod drift;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod layers;
pub mod metrics;
mod ops;
mod pm3;
mod query;
pub mod rstmdb;
pub mod seam;

pub use error::GatewayError;
pub use seam::{
    Backend, ClusterOps, ClusterStatus, FeedStream, JournalInfo, KeyPage, KvRead, MachineRead,
    MemberStatus, MembershipOutcome, RaftView, RemovedStatus, Replicate, RoomRead, Subscribe,
    SubscribeError, WriteOutcome,
};

/// Room for the JSON envelope around a value (`{"value": ..., "revision":
/// N}`) and for whitespace in a client's formatting; the value itself is
/// checked exactly, after compaction, against `max_value_bytes`.
const ENVELOPE_SLACK: usize = 64 * 1024;

/// Limits of the gateway. Body limits derive from these so an oversized
/// request is refused while it is read, not after it is buffered.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Longest pm3 key, in bytes (spec: 1024).
    pub max_key_bytes: usize,
    /// Largest stored value, compact JSON bytes (spec default: 1 MiB).
    pub max_value_bytes: usize,
    /// Most keys one `GET /kv` answers (and the largest `?limit=`); a
    /// longer listing is continued with `?after=`.
    pub max_list_keys: usize,
    /// A watch on a node that has had no leader this long is ended, so its
    /// client moves to a node that has one (the election timeout).
    pub watch_leaderless: std::time::Duration,
    /// rstmdb's limits and tokens, for `GET`/`POST /rstmdb` (the same as
    /// the TCP listener's).
    pub rstmdb: rstmdb::RstmdbConfig,
    /// The DriftDB room API's local settings.
    pub drift: drift::DriftConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_list_keys: 10_000,
            watch_leaderless: std::time::Duration::from_millis(3000),
            rstmdb: rstmdb::RstmdbConfig::default(),
            drift: drift::DriftConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// Request body limit for routes carrying one value.
    pub fn body_limit(&self) -> usize {
        self.max_value_bytes + ENVELOPE_SLACK
    }

    /// CAS carries two values (`expected` and `desired`), each up to the limit.
    pub fn cas_body_limit(&self) -> usize {
        2 * self.max_value_bytes + ENVELOPE_SLACK
    }
}

/// What every handler and middleware shares.
pub(crate) struct AppState<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) cfg: Arc<GatewayConfig>,
    pub(crate) rstmdb: Arc<rstmdb::RstmdbConfig>,
    pub(crate) drift: Arc<drift::DriftConfig>,
    /// This node's room sockets and their fan-out from the feed.
    pub(crate) hub: Arc<drift::Hub>,
    pub(crate) metrics: Arc<metrics::HttpMetrics>,
    /// Turns true when the server begins to shut down: long-lived streams
    /// (watches) end then, so draining does not wait on them forever.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

// Manual impl: a derive would require `B: Clone`.
impl<B> Clone for AppState<B> {
    fn clone(&self) -> Self {
        AppState {
            backend: self.backend.clone(),
            cfg: self.cfg.clone(),
            rstmdb: self.rstmdb.clone(),
            drift: self.drift.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

/// All gateway routes. Peer addresses come from `ConnectInfo<SocketAddr>`;
/// served without it (plain `into_make_service`) every non-public route
/// answers 403, since the internal gate fails closed. Use [`run`].
pub fn router<B: Backend>(backend: Arc<B>, cfg: GatewayConfig) -> Router {
    // Never signalled (the sender is dropped, which streams read as "not
    // stopping"): streams of this router end with their clients.
    let (_, stopping) = tokio::sync::watch::channel(false);
    router_stopping(backend, cfg, stopping)
}

fn router_stopping<B: Backend>(
    backend: Arc<B>,
    cfg: GatewayConfig,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let state = AppState {
        backend,
        metrics: Arc::new(metrics::HttpMetrics::default()),
        rstmdb: Arc::new(cfg.rstmdb.clone()),
        drift: Arc::new(cfg.drift.clone()),
        hub: Arc::new(drift::Hub::default()),
        cfg: Arc::new(cfg),
        stopping,
    };
    // Layers added later wrap the earlier ones: the Raft headers are
    // outermost so every answer (403, 404, 413 included) carries them, and
    // metrics see the final status.
    Router::new()
        .merge(pm3::routes::<B>(&state.cfg))
        .merge(ops::routes::<B>())
        .merge(ops::settings_routes::<B>())
        .merge(rstmdb::routes::<B>(&state.rstmdb))
        .merge(drift::routes::<B>(&state.drift))
        .fallback(layers::fallback)
        .method_not_allowed_fallback(layers::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.cfg.body_limit()))
        .layer(from_fn(layers::internal_only))
        .layer(from_fn(layers::pretty))
        .layer(from_fn_with_state(
            state.clone(),
            layers::record_metrics::<B>,
        ))
        .layer(from_fn_with_state(state.clone(), layers::raft_headers::<B>))
        .with_state(state)
}

/// Resolves when the server begins to stop; never if nobody can stop it.
pub(crate) async fn stopping(mut rx: tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains
/// in-flight requests. Taking a bound listener lets callers (and tests) bind
/// port 0 and learn the address first.
pub async fn run<B: Backend>(
    listener: tokio::net::TcpListener,
    backend: Arc<B>,
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "gateway listening");
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let app = router_stopping(backend, cfg, stopping.clone()).layer(from_fn(conn::expose_peer));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    axum::serve(
        conn::GatewayListener(listener),
        app.into_make_service_with_connect_info::<conn::Peer>(),
    )
    .with_graceful_shutdown(self::stopping(stopping))
    .await
}
