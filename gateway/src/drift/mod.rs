//! The DriftDB API (spec `driftdb.md`): rooms over WebSocket and HTTP.
//! Room routes are public (the room id is the secret) with CORS for
//! browsers; `DELETE /room/:id` is internal. Every push is a Raft entry
//! ([`RoomCmd`]); this node's sockets get the room's pushes from the feed
//! ([`hub`]), so clients on different nodes share one sequence.

mod cbor;
mod hub;
mod socket;
pub mod wire;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{from_fn, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use raftmesh_proto::{ApplyResult, Cmd, RoomCmd, RoomErrorCode, RoomResult};
use serde_json::Value;

pub(crate) use cbor::{decode as cbor_decode, encode_json as cbor_encode};
pub(crate) use hub::Hub;
use wire::{ClientMsg, DriftError};

use crate::seam::Backend;
use crate::AppState;

/// Local choices of the room API (limits on pushes are cluster settings).
#[derive(Clone, Debug)]
pub struct DriftConfig {
    /// Where clients reach this node, e.g. `https://example.com/drift`:
    /// `socket_url` and `http_url` are built on it. Unset: from the
    /// request's Host and scheme (`X-Forwarded-Proto`).
    pub public_url: Option<String>,
    /// Messages queued for one socket; a socket this far behind the room's
    /// pushes is closed with a reason.
    pub socket_queue: usize,
    /// Largest WebSocket message or `/send` body read.
    pub max_frame_bytes: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            public_url: None,
            socket_queue: 4096,
            max_frame_bytes: 2 << 20,
        }
    }
}

/// What the room handlers and sockets share.
pub(crate) struct DriftState<B> {
    pub backend: Arc<B>,
    pub cfg: Arc<DriftConfig>,
    pub hub: Arc<Hub>,
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl<B> Clone for DriftState<B> {
    fn clone(&self) -> Self {
        DriftState {
            backend: self.backend.clone(),
            cfg: self.cfg.clone(),
            hub: self.hub.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

impl<B> DriftState<B> {
    fn of(st: &AppState<B>) -> Self {
        DriftState {
            backend: st.backend.clone(),
            cfg: st.drift.clone(),
            hub: st.hub.clone(),
            stopping: st.stopping.clone(),
        }
    }
}

pub(crate) fn routes<B: Backend>(cfg: &DriftConfig) -> Router<AppState<B>> {
    Router::new()
        .route("/new", post(new_room::<B>))
        .route("/room/{id}", get(get_room::<B>).delete(delete_room::<B>))
        .route("/room/{id}/connect", get(connect::<B>))
        .route("/room/{id}/send", post(send::<B>))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.max_frame_bytes))
        .layer(from_fn(cors))
}

/// Whether a request to `path` with `method` is one of the public room
/// routes (the internal gate lets them through).
pub(crate) fn is_public(method: &Method, path: &str) -> bool {
    path == "/new" || (path.starts_with("/room/") && method != Method::DELETE)
}

/// CORS as DriftDB's browser clients need: any origin; GET and POST; the
/// authorization, accept and content-type headers; preflights answered.
async fn cors(req: Request, next: Next) -> Response {
    let preflight = req.method() == Method::OPTIONS;
    let mut r = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, accept, content-type"),
    );
    r
}

/// The base URL clients use to reach this node, `(http base, ws base)`.
fn bases(cfg: &DriftConfig, headers: &HeaderMap) -> (String, String) {
    if let Some(base) = &cfg.public_url {
        let base = base.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        return (base.to_string(), ws);
    }
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split(',').next())
        .map(str::trim)
        .unwrap_or("localhost");
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    if tls {
        (format!("https://{host}"), format!("wss://{host}"))
    } else {
        (format!("http://{host}"), format!("ws://{host}"))
    }
}

fn room_json(cfg: &DriftConfig, headers: &HeaderMap, room: &str) -> Response {
    let (http, ws) = bases(cfg, headers);
    let body = serde_json::json!({
        "room": room,
        "socket_url": format!("{ws}/room/{room}/connect"),
        "http_url": format!("{http}/room/{room}/send"),
    });
    axum::Json(body).into_response()
}

/// Room ids are 32 random hex digits: URL-safe, and the id is the secret.
fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn write<B: Backend>(b: &B, cmd: RoomCmd) -> Result<(u64, RoomResult), DriftError> {
    let w = b.write(Cmd::Room(cmd)).await?;
    match w.result {
        ApplyResult::Room(r) => Ok((w.index, r)),
        other => Err(DriftError::Internal(format!("unexpected result {other:?}"))),
    }
}

async fn new_room<B: Backend>(State(st): State<AppState<B>>, headers: HeaderMap) -> Response {
    let room = new_id();
    match write(&*st.backend, RoomCmd::Create { room: room.clone() }).await {
        Ok((_, RoomResult::Created)) => room_json(&st.drift, &headers, &room),
        Ok((_, RoomResult::Refused(e))) => DriftError::Internal(e.message).into_response(),
        Ok((_, other)) => {
            DriftError::Internal(format!("unexpected result {other:?}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The room after a read barrier, so a room created on any node is found.
async fn existing<B: Backend>(b: &B, id: &str) -> Result<(), DriftError> {
    let missing = || DriftError::NoRoom(format!("no room {id:?}"));
    if !valid_id(id) {
        return Err(missing());
    }
    b.read_barrier().await?;
    match b.room_get(id).await? {
        Some(_) => Ok(()),
        None => Err(missing()),
    }
}

async fn get_room<B: Backend>(
    State(st): State<AppState<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match existing(&*st.backend, &id).await {
        Ok(()) => room_json(&st.drift, &headers, &id),
        Err(e) => e.into_response(),
    }
}

async fn delete_room<B: Backend>(
    State(st): State<AppState<B>>,
    Path(id): Path<String>,
) -> Response {
    match write(&*st.backend, RoomCmd::Delete { room: id.clone() }).await {
        Ok((_, RoomResult::Deleted { existed: true })) => StatusCode::NO_CONTENT.into_response(),
        Ok((_, RoomResult::Deleted { existed: false })) => {
            DriftError::NoRoom(format!("no room {id:?}")).into_response()
        }
        Ok((_, other)) => {
            DriftError::Internal(format!("unexpected result {other:?}")).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `debug` and `cbor` flags: true/false/1/0, read leniently (a reconnecting
/// npm client repeats `?cbor=true` in the value).
fn flag(q: &std::collections::HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| {
        let v = v.trim().to_ascii_lowercase();
        v.starts_with("true") || v.starts_with('1')
    })
}

async fn connect<B: Backend>(
    State(st): State<AppState<B>>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    up: WebSocketUpgrade,
) -> Response {
    if let Err(e) = existing(&*st.backend, &id).await {
        return e.into_response();
    }
    let opts = socket::Opts {
        debug: flag(&q, "debug"),
        cbor: flag(&q, "cbor"),
    };
    let ds = DriftState::of(&st);
    let max = ds.cfg.max_frame_bytes;
    up.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| socket::serve(ws, ds, id, opts))
}

/// `POST /room/:id/send`: one client message, answered as a socket sender
/// would be: a push → `null` or `stream_size`; a get → `init` (`null` for
/// `seq: null`); a ping → `pong`.
async fn send<B: Backend>(
    State(st): State<AppState<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match send_inner(&DriftState::of(&st), &id, &headers, &body).await {
        Ok(json) => {
            let mut r = json.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn send_inner<B: Backend>(
    st: &DriftState<B>,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, DriftError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if !json_type {
        return Err(DriftError::ContentType);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| DriftError::BadJson(format!("the body is not JSON: {e}")))?;
    let msg = wire::parse(&v).map_err(DriftError::Schema)?;
    existing(&*st.backend, id).await?;
    match msg {
        ClientMsg::Ping { nonce } => Ok(wire::pong_msg(&nonce)),
        ClientMsg::Get { seq: None, .. } => Ok("null".into()),
        ClientMsg::Get {
            key,
            seq: Some(seq),
        } => socket::init(st, id, &key, seq).await,
        ClientMsg::Push { key, value, action } => {
            let cmd = RoomCmd::Push {
                room: id.to_string(),
                key: key.clone(),
                value,
                action,
            };
            match write(&*st.backend, cmd).await? {
                (_, RoomResult::Pushed { size, .. }) if size > 1 => {
                    Ok(wire::stream_size_msg(&key, size))
                }
                (_, RoomResult::Pushed { .. }) => Ok("null".into()),
                (_, RoomResult::Refused(e)) if e.code == RoomErrorCode::NoSuchRoom => {
                    Err(DriftError::NoRoom(e.message))
                }
                (_, RoomResult::Refused(e)) => Err(DriftError::Refused(e.message)),
                (_, other) => Err(DriftError::Internal(format!("unexpected result {other:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_request_or_the_configured_base() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("n3:8083"));
        let cfg = DriftConfig::default();
        assert_eq!(
            bases(&cfg, &h),
            ("http://n3:8083".into(), "ws://n3:8083".into())
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("example.com"));
        assert_eq!(
            bases(&cfg, &h),
            ("https://example.com".into(), "wss://example.com".into())
        );
        let cfg = DriftConfig {
            public_url: Some("https://example.com/drift/".into()),
            ..DriftConfig::default()
        };
        assert_eq!(
            bases(&cfg, &h),
            (
                "https://example.com/drift".into(),
                "wss://example.com/drift".into()
            )
        );
    }

    #[test]
    fn flags_are_read_leniently_and_ids_checked() {
        let q = |s: &str| {
            let mut m = std::collections::HashMap::new();
            m.insert("cbor".to_string(), s.to_string());
            m
        };
        assert!(flag(&q("true"), "cbor"));
        assert!(flag(&q("true?cbor=true"), "cbor"));
        assert!(flag(&q("1"), "cbor"));
        assert!(!flag(&q("false"), "cbor"));
        assert!(!flag(&q("0"), "cbor"));
        assert!(!flag(&q("true"), "debug"));
        assert!(valid_id(&new_id()));
        assert!(new_id().len() >= 24);
        assert!(!valid_id("a/b") && !valid_id("") && !valid_id("a\0"));
        assert!(is_public(&Method::GET, "/room/x/connect"));
        assert!(is_public(&Method::POST, "/new"));
        assert!(!is_public(&Method::DELETE, "/room/x"));
        assert!(!is_public(&Method::GET, "/kv/x"));
    }
}
