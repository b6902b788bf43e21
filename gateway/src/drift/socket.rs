//! One DriftDB WebSocket: a reader that parses client messages, a
//! sequencer that proposes the socket's pushes in the order sent (one
//! ordered run at a time, as rstmdb's connections do), and a writer that
//! sends the room's pushes from the hub, the socket's own answers, and the
//! close frame with its reason.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use raftmesh_proto::{ApplyResult, Cmd, RoomCmd, RoomResult};
use serde_json::Value;
use tokio::sync::mpsc;

use super::hub::{Changed, Kill, Out, CLOSE_GOING_AWAY};
use super::wire::{self, ClientMsg, DriftError};
use super::DriftState;
use crate::seam::Backend;

/// How long a sender's `stream_size` waits for its own push to reach its
/// socket first (the push comes from the node's apply, the answer from the
/// leader).
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// Values of one key read per page for `init`.
const PAGE: usize = 10_000;

pub(crate) struct Opts {
    pub debug: bool,
    /// Frames out are CBOR (binary) rather than JSON (text).
    pub cbor: bool,
}

static NEXT_SOCKET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) async fn serve<B: Backend>(ws: WebSocket, st: DriftState<B>, room: String, opts: Opts) {
    let (mut sink, mut frames) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(st.cfg.socket_queue.max(1));
    let kill = Arc::new(Kill::default());
    let (debug_tx, mut debug_rx) = if opts.debug {
        let (tx, rx) = mpsc::unbounded_channel::<Changed>();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let id = match st
        .hub
        .join(&st.backend, &room, out_tx.clone(), kill.clone(), debug_tx)
    {
        Ok(id) => id,
        Err(e) => {
            let msg = wire::error_msg(&format!("cannot follow the room: {e:?}"));
            let _ = sink.send(Message::Text(msg.into())).await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    if opts.debug {
        // A debug socket starts with every key's whole stream.
        if let Err(e) = send_all_keys(&st, &room, &out_tx).await {
            let _ = out_tx
                .send(text(wire::error_msg(&e.socket_message())))
                .await;
        }
    }
    let cbor = opts.cbor;
    let writer = {
        let (kill, st, room) = (kill.clone(), st.clone(), room.clone());
        tokio::spawn(async move {
            loop {
                let changed = async {
                    match debug_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    c = kill.closed() => {
                        let frame = CloseFrame { code: c.code, reason: c.reason.into() };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        return;
                    }
                    o = out_rx.recv() => match o {
                        Some(Out::Text(t)) => {
                            // Everything already queued goes out with one
                            // flush, not one write per frame.
                            let mut frames = vec![t];
                            while frames.len() < 256 {
                                match out_rx.try_recv() {
                                    Ok(Out::Text(t)) => frames.push(t),
                                    Err(_) => break,
                                }
                            }
                            for t in frames {
                                if sink.feed(frame_of(&t, cbor)).await.is_err() {
                                    return;
                                }
                            }
                            if sink.flush().await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    Some(ch) = changed => {
                        let msg = match whole_stream(&st, &room, &ch.key).await {
                            Ok(m) => m,
                            Err(e) => wire::error_msg(&e.socket_message()),
                        };
                        if sink.send(frame_of(&msg, cbor)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let (push_tx, push_rx) = mpsc::channel::<(String, RoomCmd)>(st.cfg.socket_queue.max(1));
    let sequencer = tokio::spawn(sequence(
        st.clone(),
        push_rx,
        out_tx.clone(),
        format!(
            "drift-{}",
            NEXT_SOCKET.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
    ));
    let mut stopping = st.stopping.clone();
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = stopping.wait_for(|s| *s) => {
                kill.close(CLOSE_GOING_AWAY, "the node is stopping");
                break;
            }
            _ = kill.closed() => break,
        };
        let value = match frame {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str())
                .map_err(|e| format!("the message is not JSON: {e}")),
            Some(Ok(Message::Binary(b))) => super::cbor::decode(&b),
            // Pings are answered once by the WebSocket layer.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
        };
        let msg = value.and_then(|v| wire::parse(&v));
        match msg {
            Err(why) => {
                if out_tx.send(text(wire::error_msg(&why))).await.is_err() {
                    break;
                }
            }
            Ok(ClientMsg::Ping { nonce }) => {
                if out_tx.send(text(wire::pong_msg(&nonce))).await.is_err() {
                    break;
                }
            }
            Ok(ClientMsg::Get { key, seq }) => {
                let Some(seq) = seq else { continue };
                let (st, room, out) = (st.clone(), room.clone(), out_tx.clone());
                tokio::spawn(async move {
                    let msg = match init(&st, &room, &key, seq).await {
                        Ok(m) => m,
                        Err(e) => wire::error_msg(&e.socket_message()),
                    };
                    let _ = out.send(text(msg)).await;
                });
            }
            Ok(ClientMsg::Push { key, value, action }) => {
                let cmd = RoomCmd::Push {
                    room: room.clone(),
                    key: key.clone(),
                    value,
                    action,
                };
                if push_tx.send((key, cmd)).await.is_err() {
                    break;
                }
            }
        }
    }
    st.hub.leave(&room, id);
    drop(push_tx);
    let _ = sequencer.await;
    kill.close(1000, "closed");
    drop(out_tx);
    let _ = writer.await;
}

/// A message as this socket's frames carry it.
fn frame_of(json: &str, cbor: bool) -> Message {
    if cbor {
        Message::Binary(super::cbor::encode_json(json).into())
    } else {
        Message::Text(json.into())
    }
}

fn text(s: String) -> Out {
    Out::Text(s.into())
}

/// Proposes the socket's pushes in order; answers each refused one with an
/// `error`, and each stored stream longer than 1 with `stream_size` after
/// the push itself reached the socket. The answers go through an ordered
/// task of their own, so waiting for an echo never holds back the next
/// run of pushes.
async fn sequence<B: Backend>(
    st: DriftState<B>,
    mut rx: mpsc::Receiver<(String, RoomCmd)>,
    out: mpsc::Sender<Out>,
    order: String,
) {
    let (answers, mut answer_rx) = mpsc::channel::<(u64, String)>(st.cfg.socket_queue.max(1));
    let answering = {
        let hub = st.hub.clone();
        tokio::spawn(async move {
            while let Some((index, msg)) = answer_rx.recv().await {
                if index > 0 {
                    hub.delivered(index, ECHO_WAIT).await;
                }
                if out.send(text(msg)).await.is_err() {
                    return;
                }
            }
        })
    };
    while let Some(first) = rx.recv().await {
        let mut run = vec![first];
        while run.len() < 256 {
            match rx.try_recv() {
                Ok(p) => run.push(p),
                Err(_) => break,
            }
        }
        let cmds = run.iter().map(|(_, c)| Cmd::Room(c.clone())).collect();
        let outcomes = st.backend.write_seq(cmds, order.clone()).await;
        for ((key, _), outcome) in run.into_iter().zip(outcomes) {
            // (index to wait for, message); index 0: send at once.
            let answer = match outcome {
                Ok(w) => match w.result {
                    ApplyResult::Room(RoomResult::Pushed { size, .. }) if size > 1 => {
                        Some((w.index, wire::stream_size_msg(&key, size)))
                    }
                    ApplyResult::Room(RoomResult::Pushed { .. }) => None,
                    ApplyResult::Room(RoomResult::Refused(e)) => {
                        Some((0, wire::error_msg(&e.message)))
                    }
                    other => Some((0, wire::error_msg(&format!("unexpected result {other:?}")))),
                },
                Err(e) => Some((0, wire::error_msg(&DriftError::from(e).socket_message()))),
            };
            if let Some(a) = answer {
                if answers.send(a).await.is_err() {
                    return;
                }
            }
        }
    }
    drop(answers);
    let _ = answering.await;
}

/// Every retained value of `key` after `seq`, as `init`, read after a
/// barrier so a value acknowledged anywhere is in it.
pub(crate) async fn init<B: Backend>(
    st: &DriftState<B>,
    room: &str,
    key: &str,
    seq: u64,
) -> Result<String, DriftError> {
    st.backend.read_barrier().await?;
    let values = values_after(st, room, key, seq).await?;
    Ok(wire::init_msg(key, &values))
}

async fn values_after<B: Backend>(
    st: &DriftState<B>,
    room: &str,
    key: &str,
    mut after: u64,
) -> Result<Vec<(u64, String)>, DriftError> {
    let mut all = Vec::new();
    loop {
        let page = st.backend.room_values(room, key, after, PAGE).await?;
        if let Some((last, _)) = page.values.last() {
            after = *last;
        }
        all.extend(page.values);
        if !page.more {
            return Ok(all);
        }
    }
}

async fn whole_stream<B: Backend>(
    st: &DriftState<B>,
    room: &str,
    key: &str,
) -> Result<String, DriftError> {
    let values = values_after(st, room, key, 0).await?;
    Ok(wire::init_msg(key, &values))
}

async fn send_all_keys<B: Backend>(
    st: &DriftState<B>,
    room: &str,
    out: &mpsc::Sender<Out>,
) -> Result<(), DriftError> {
    let mut after: Option<String> = None;
    loop {
        let (keys, more) = st.backend.room_keys(room, after.clone(), 1000).await?;
        for k in &keys {
            let msg = whole_stream(st, room, k).await?;
            if out.send(text(msg)).await.is_err() {
                return Ok(());
            }
        }
        if !more {
            return Ok(());
        }
        after = keys.last().cloned();
    }
}
