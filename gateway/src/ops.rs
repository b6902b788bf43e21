//! Operations and admin routes: `/cluster`, `/health`, `/ready`, `/ping`,
//! `/version`, `/peers`, `/metrics`, and membership changes. Only the four
//! liveness routes are public (see [`crate::access::PUBLIC_ROUTES`]).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use raftmesh_proto::{ClusterError, NodeId, NodeInfo};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::json::{self, json_response};
use crate::layers::with_index;
use crate::pm3::body_error;
use crate::seam::ClusterOps;
use crate::AppState;

pub(crate) fn routes<B: ClusterOps>() -> Router<AppState<B>> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready::<B>))
        .route("/ping", get(ping))
        .route("/version", get(version))
        .route("/cluster", get(cluster::<B>))
        .route("/peers", get(peers::<B>))
        .route("/metrics", get(metrics::<B>))
        .route("/cluster/progress", get(progress::<B>))
        .route("/cluster/add-learner", post(add_learner::<B>))
        .route("/cluster/change-membership", post(change_membership::<B>))
}

fn to_json<T: Serialize>(value: &T) -> Result<Response, GatewayError> {
    serde_json::to_string(value)
        .map(json_response)
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Liveness: answering at all is the signal.
async fn health() -> Response {
    json_response(r#"{"status":"ok"}"#.into())
}

/// Readiness: a leader is known and this node has applied what it knows
/// is committed; load balancers should route only to ready nodes.
async fn ready<B: ClusterOps>(State(st): State<AppState<B>>) -> Result<Response, GatewayError> {
    if st.backend.is_ready() {
        Ok(json_response(r#"{"status":"ready"}"#.into()))
    } else {
        Err(ClusterError::not_ready("no leader known or still applying committed entries").into())
    }
}

async fn ping() -> Response {
    json_response(r#""pong""#.into())
}

async fn version() -> Response {
    json_response(format!(r#"{{"version":"{}"}}"#, env!("CARGO_PKG_VERSION")))
}

async fn cluster<B: ClusterOps>(State(st): State<AppState<B>>) -> Result<Response, GatewayError> {
    to_json(&st.backend.cluster_status())
}

#[derive(Serialize)]
struct Peer<'a> {
    node_id: NodeId,
    grpc_addr: &'a str,
    http_addr: &'a str,
    voter: bool,
    leader: bool,
    /// Replication progress as the leader sees it; `null` elsewhere.
    matched_index: Option<u64>,
}

async fn peers<B: ClusterOps>(State(st): State<AppState<B>>) -> Result<Response, GatewayError> {
    let status = st.backend.cluster_status();
    let peers: Vec<Peer> = status
        .members
        .iter()
        .map(|m| Peer {
            node_id: m.node_id,
            grpc_addr: &m.grpc_addr,
            http_addr: &m.http_addr,
            voter: m.voter,
            leader: status.leader == Some(m.node_id),
            matched_index: m.matched_index,
        })
        .collect();
    to_json(&peers)
}

/// Raft metrics from the node followed by the gateway's request metrics.
async fn metrics<B: ClusterOps>(State(st): State<AppState<B>>) -> Response {
    let mut text = st.backend.raft_metrics_text();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&st.metrics.render());
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The leader's replication progress per member (answered by the leader,
/// through any node).
async fn progress<B: ClusterOps>(State(st): State<AppState<B>>) -> Result<Response, GatewayError> {
    to_json(&st.backend.cluster_progress().await?)
}

/// How long a membership change waits by default for a learner to catch up.
const DEFAULT_MEMBERSHIP_TIMEOUT_MS: u64 = 120_000;

fn default_membership_timeout() -> u64 {
    DEFAULT_MEMBERSHIP_TIMEOUT_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddLearnerBody {
    node_id: NodeId,
    grpc_addr: String,
    #[serde(default)]
    http_addr: String,
    #[serde(default = "default_membership_timeout")]
    timeout_ms: u64,
}

async fn add_learner<B: ClusterOps>(
    State(st): State<AppState<B>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let req: AddLearnerBody = json::parse_body(
        &body,
        r#"{"node_id": N, "grpc_addr": "HOST:PORT", "http_addr": "HOST:PORT"}"#,
    )?;
    if req.grpc_addr.is_empty() {
        return Err(GatewayError::BadRequest(
            "grpc_addr must not be empty".into(),
        ));
    }
    let node = NodeInfo {
        grpc_addr: req.grpc_addr,
        http_addr: req.http_addr,
    };
    let out = st
        .backend
        .add_learner(req.node_id, node, Duration::from_millis(req.timeout_ms))
        .await?;
    Ok(with_index(to_json(&out)?, Some(out.index)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeMembershipBody {
    voters: Vec<NodeId>,
    /// Promote learners even if they have not caught up or went silent.
    #[serde(default)]
    force: bool,
    #[serde(default = "default_membership_timeout")]
    timeout_ms: u64,
}

async fn change_membership<B: ClusterOps>(
    State(st): State<AppState<B>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let req: ChangeMembershipBody =
        json::parse_body(&body, r#"{"voters": [ID, ...], "force": false}"#)?;
    if req.voters.is_empty() {
        return Err(GatewayError::BadRequest("voters must not be empty".into()));
    }
    let out = st
        .backend
        .change_membership(req.voters, req.force, Duration::from_millis(req.timeout_ms))
        .await?;
    Ok(with_index(to_json(&out)?, Some(out.index)))
}
