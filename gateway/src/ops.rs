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
use raftmesh_proto::{
    ApplyResult, ClusterError, Cmd, Domain, NodeId, NodeInfo, Retention, RoomLimits, SettingsCmd,
};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::json::{self, json_response};
use crate::layers::with_index;
use crate::pm3::body_error;
use crate::seam::{ClusterOps, Replicate, Subscribe};
use crate::AppState;

pub(crate) mod fuzzing;

/// Cluster-wide settings: replicated state, so written through the log.
pub(crate) fn settings_routes<B: Replicate + Subscribe>() -> Router<AppState<B>> {
    Router::new()
        .route("/cluster/journal", get(journal::<B>))
        .route(
            "/cluster/settings/retention/{domain}",
            axum::routing::put(set_retention::<B>),
        )
        .route(
            "/cluster/settings/allow-flush-all",
            axum::routing::put(set_allow_flush_all::<B>),
        )
        .route(
            "/cluster/settings/room-limits",
            axum::routing::put(set_room_limits::<B>),
        )
}

/// `PUT /cluster/settings/room-limits` `{"max_message_bytes": N,
/// "max_keys": N, "max_values_per_key": N, "idle_ttl_ms": N}`: the limits
/// every room push is checked against, on every node (omitted fields keep
/// their defaults; `idle_ttl_ms` 0 keeps idle rooms).
async fn set_room_limits<B: Replicate>(
    State(st): State<AppState<B>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        max_message_bytes: Option<u64>,
        max_keys: Option<u64>,
        max_values_per_key: Option<u64>,
        idle_ttl_ms: Option<u64>,
    }
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let b: Body = json::parse_body(
        &body,
        r#"{"max_message_bytes": N, "max_keys": N, "max_values_per_key": N, "idle_ttl_ms": N}"#,
    )?;
    let d = RoomLimits::default();
    let limits = RoomLimits {
        max_message_bytes: b.max_message_bytes.unwrap_or(d.max_message_bytes),
        max_keys: b.max_keys.unwrap_or(d.max_keys),
        max_values_per_key: b.max_values_per_key.unwrap_or(d.max_values_per_key),
        idle_ttl_ms: b.idle_ttl_ms.unwrap_or(d.idle_ttl_ms),
    };
    if limits.max_message_bytes == 0 || limits.max_keys == 0 || limits.max_values_per_key == 0 {
        return Err(GatewayError::BadRequest(
            "max_message_bytes, max_keys and max_values_per_key must be at least 1".into(),
        ));
    }
    let out = st
        .backend
        .write(Cmd::Settings(SettingsCmd::SetRoomLimits(limits)))
        .await?;
    Ok(with_index(
        json_response(format!(r#"{{"revision":{}}}"#, out.index)),
        Some(out.index),
    ))
}

#[derive(Deserialize)]
struct AllowBody {
    allow: bool,
}

/// `PUT /cluster/settings/allow-flush-all` `{"allow": true}`: whether
/// rstmdb's FLUSH_ALL may clear every machine and instance, cluster-wide.
async fn set_allow_flush_all<B: Replicate>(
    State(st): State<AppState<B>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let req: AllowBody = json::parse_body(&body, r#"{"allow": true|false}"#)?;
    let out = st
        .backend
        .write(Cmd::Settings(SettingsCmd::AllowFlushAll(req.allow)))
        .await?;
    Ok(with_index(
        json_response(format!(r#"{{"revision":{}}}"#, out.index)),
        Some(out.index),
    ))
}

fn journaled(name: &str) -> Result<Domain, GatewayError> {
    Domain::from_name(name)
        .filter(|d| Domain::JOURNALED.contains(d))
        .ok_or_else(|| {
            let known: Vec<&str> = Domain::JOURNALED.iter().map(|d| d.name()).collect();
            GatewayError::NotFound(format!(
                "no journal named {name:?}; journals: {}",
                known.join(", ")
            ))
        })
}

/// `GET /cluster/journal`: every journal as this node holds it.
async fn journal<B: Subscribe>(State(st): State<AppState<B>>) -> Result<Response, GatewayError> {
    let mut out = serde_json::Map::new();
    for d in Domain::JOURNALED {
        let info = st.backend.journal(d)?;
        out.insert(
            d.name().into(),
            serde_json::to_value(info)
                .map_err(|e| GatewayError::Internal(format!("journal info: {e}")))?,
        );
    }
    Ok(json_response(serde_json::Value::Object(out).to_string()))
}

/// `PUT /cluster/settings/retention/{domain}` `{"max_events": N,
/// "max_bytes": M}`: how much history the domain's journal keeps, on every
/// node, from the entry that sets it on.
async fn set_retention<B: Replicate>(
    State(st): State<AppState<B>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let domain = journaled(&name)?;
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let retention: Retention = json::parse_body(&body, r#"{"max_events": N, "max_bytes": N}"#)?;
    if retention.max_events == 0 || retention.max_bytes == 0 {
        return Err(GatewayError::BadRequest(
            "max_events and max_bytes must be at least 1".into(),
        ));
    }
    let out = st
        .backend
        .write(Cmd::Settings(SettingsCmd::SetRetention {
            domain,
            retention,
        }))
        .await?;
    match out.result {
        ApplyResult::Settings(_) => Ok(with_index(
            json_response(format!(r#"{{"revision":{}}}"#, out.index)),
            Some(out.index),
        )),
        other => Err(GatewayError::Internal(format!(
            "unexpected apply result for a setting: {other:?}"
        ))),
    }
}

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
    rstmdb_addr: &'a str,
    voter: bool,
    leader: bool,
    /// Replication progress as the leader sees it; `null` elsewhere.
    matched_index: Option<u64>,
    /// Feature version, as its membership entry records it.
    version: u32,
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
            rstmdb_addr: &m.rstmdb_addr,
            voter: m.voter,
            leader: status.leader == Some(m.node_id),
            matched_index: m.matched_index,
            version: m.version,
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
    /// Taken from the node itself when it tells one (it does from 0.2).
    #[serde(default)]
    rstmdb_addr: String,
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
    // The leader records the version the node itself advertises.
    let node = NodeInfo {
        grpc_addr: req.grpc_addr,
        http_addr: req.http_addr,
        rstmdb_addr: req.rstmdb_addr,
        ..NodeInfo::default()
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
