//! rstmdb through the HTTP gateway: `GET /rstmdb` upgrades to a WebSocket
//! carrying one JSON envelope per text frame in each direction (pipelined
//! requests, watches and their events), and `POST /rstmdb` answers one
//! request. Both run the TCP transport's connection ([`Conn`]): the same
//! dispatch, ordering and limits, and rstmdb's own tokens — a bearer token
//! in `Authorization`, or AUTH on the socket — not the pm3 internal rule.
//! A node with no rstmdb tokens configured has nothing to check, so then
//! `/rstmdb` is served to internal peers only, like the pm3 routes: exposing
//! the HTTP port (for public APIs) never opens rstmdb to anyone unasked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::server::{fit, token_hash, Conn, Out, RstmdbConfig};
use super::wire::{self, Meta, WireError};
use crate::seam::Backend;
use crate::{access, AppState, GatewayError};

type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Without tokens, only internal peers (see the module doc).
fn admitted(peer: &Peer, headers: &HeaderMap, cfg: &RstmdbConfig) -> bool {
    let peer = peer.as_ref().map(|p| p.0 .0);
    cfg.token_hashes.is_some() || access::is_internal(peer, headers)
}

pub(crate) fn routes<B: Backend>(cfg: &RstmdbConfig) -> Router<AppState<B>> {
    Router::new()
        .route("/rstmdb", get(socket::<B>).post(one::<B>))
        .layer(DefaultBodyLimit::max(cfg.max_frame_bytes))
}

/// What the `Authorization` header says: no header, a token the node
/// accepts (or any token when none are configured), or a refused one.
enum Bearer {
    Absent,
    Valid,
    Refused(&'static str),
}

fn bearer(headers: &HeaderMap, cfg: &RstmdbConfig) -> Bearer {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Bearer::Absent;
    };
    let Some(token) = v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) else {
        return Bearer::Refused("Authorization must be \"Bearer <token>\"");
    };
    match &cfg.token_hashes {
        Some(h) if !h.contains(&token_hash(token.trim())) => Bearer::Refused("invalid token"),
        _ => Bearer::Valid,
    }
}

/// An error answer outside any request (a refused token), with the node's
/// Raft view in `meta` like every other answer.
fn refusal<B: Backend>(st: &AppState<B>, e: WireError) -> Response {
    json_answer(&outside_error(&*st.backend, &e, "http"), usize::MAX)
}

/// An error envelope answering no request, `meta` from the Raft view.
fn outside_error<B: Backend>(b: &B, e: &WireError, transport: &str) -> Value {
    let view = b.raft_view();
    let meta = Meta {
        leader: view.is_leader,
        wal_offset: view.applied_index,
        server_time_ms: super::server::now_ms(),
        trace_id: format!("{}-{transport}", view.node_id),
    };
    wire::error("", e, &meta)
}

fn json_answer(v: &Value, max: usize) -> Response {
    let status = StatusCode::from_u16(wire::http_status(v)).unwrap_or(StatusCode::OK);
    let mut r = (status, fit(v, max)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `POST /rstmdb`: the body is one request envelope, the answer its one
/// response (HTTP status from [`wire::http_status`]). WATCH needs a
/// connection and is refused here.
async fn one<B: Backend>(
    State(st): State<AppState<B>>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cfg = st.rstmdb.clone();
    if !admitted(&peer, &headers, &cfg) {
        return GatewayError::Forbidden.into_response();
    }
    let authed = match bearer(&headers, &cfg) {
        Bearer::Refused(why) => return refusal(&st, WireError::AuthFailed(why.into())),
        Bearer::Valid => true,
        Bearer::Absent => false,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        let e = WireError::BadRequest("the body is not UTF-8 JSON".into());
        return refusal(&st, e);
    };
    let max = cfg.max_frame_bytes;
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(4);
    let (mut c, sequencer) = Conn::open(st.backend.clone(), cfg, out_tx);
    c.authed |= authed;
    c.watches_allowed = false;
    c.request(text).await;
    c.finish(sequencer).await;
    // A read answers from a task of its own, which holds the channel open
    // until it has.
    while let Some(o) = out_rx.recv().await {
        if let Out::Msg(v) = o {
            return json_answer(&v, max);
        }
    }
    refusal(&st, WireError::Internal("the request got no answer".into()))
}

/// `GET /rstmdb`: a WebSocket speaking the envelopes as text frames.
async fn socket<B: Backend>(
    State(st): State<AppState<B>>,
    peer: Peer,
    headers: HeaderMap,
    up: WebSocketUpgrade,
) -> Response {
    if !admitted(&peer, &headers, &st.rstmdb) {
        return GatewayError::Forbidden.into_response();
    }
    let authed = match bearer(&headers, &st.rstmdb) {
        Bearer::Refused(why) => return refusal(&st, WireError::AuthFailed(why.into())),
        Bearer::Valid => true,
        Bearer::Absent => false,
    };
    let max = st.rstmdb.max_frame_bytes;
    up.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| serve_socket(ws, st, authed))
}

async fn serve_socket<B: Backend>(ws: WebSocket, st: AppState<B>, authed: bool) {
    let cfg = st.rstmdb.clone();
    let max = cfg.max_frame_bytes;
    let (mut sink, mut frames) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(cfg.out_buffer.max(1));
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            match o {
                Out::Msg(v) => {
                    let text = String::from_utf8(fit(&v, max)).expect("JSON is UTF-8");
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                // Frames are text either way: HELLO's mode changes nothing.
                Out::Mode(_) => {}
                Out::Close => {
                    let _ = sink.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    });
    let (mut c, sequencer) = Conn::open(st.backend.clone(), Arc::clone(&cfg), out_tx.clone());
    c.authed |= authed;
    let mut stopping = st.stopping.clone();
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = stopping.wait_for(|s| *s) => break,
        };
        match frame {
            Some(Ok(Message::Text(t))) => {
                if !c.request(t.as_str()).await {
                    break;
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let e = WireError::BadRequest(
                    "send each request as a text frame holding its JSON envelope".into(),
                );
                let msg = outside_error(&*st.backend, &e, "ws");
                if out_tx.send(Out::Msg(msg)).await.is_err() {
                    break;
                }
            }
            // Pings are answered by the WebSocket layer.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
        }
    }
    c.finish(sequencer).await;
    let _ = out_tx.send(Out::Close).await;
    drop(out_tx);
    let _ = writer.await;
}
