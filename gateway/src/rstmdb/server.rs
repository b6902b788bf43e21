//! rstmdb's TCP transport: one task reads and dispatches a connection's
//! requests, one writes its responses and events, one proposes its writes.
//!
//! - Pipelining: requests are read while earlier ones run; each gets exactly
//!   one response, matched by id. At most `max_in_flight` run at once per
//!   connection: past that the reader stops reading (TCP backpressure).
//! - Writes of one connection are applied in the order sent: they go, in
//!   order, to the connection's sequencer, which hands whatever is queued
//!   to [`Replicate::write_seq`] under the connection's ordered key and
//!   waits for it before the next run.
//! - A frame whose framing is intact but whose content is bad (CRC, JSON,
//!   unknown op) is answered BAD_REQUEST and the connection goes on; a
//!   stream that is not RCPX framing is answered once and closed.
//! - Watches are tasks feeding the same writer: replay paced by the socket,
//!   then live; their end (lagged, no leader, compacted) is told with a
//!   message of type `subscription_end`, which the real clients' read loops
//!   skip without failing, and only that subscription ends.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use raftmesh_proto::feed::{FeedEnd, FeedNext};
use raftmesh_proto::{ApplyResult, Cmd, Domain, Event, MachineCmd, MachineErrorCode, MachineEvent};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::frame::{self, WireMode};
use super::ops::{self, opt_str, opt_strings, opt_u64, str_param, version_param};
use super::wire::{self, Meta, Request, WireError};
use crate::seam::{Backend, FeedStream, SubscribeError, WriteOutcome};

/// Limits and auth of the rstmdb listener.
#[derive(Clone, Debug)]
pub struct RstmdbConfig {
    /// Largest frame payload (or jsonl line) read or written.
    pub max_frame_bytes: usize,
    pub max_batch_ops: usize,
    /// Requests of one connection running at once.
    pub max_in_flight: usize,
    /// SHA-256 hex digests (lowercase) of the accepted bearer tokens; when
    /// set, only HELLO, AUTH, PING and BYE pass before a successful AUTH.
    pub token_hashes: Option<Arc<HashSet<String>>>,
    /// A watch on a node without a leader this long is ended.
    pub watch_leaderless: Duration,
    /// Messages (responses and events) queued for a connection's socket.
    pub out_buffer: usize,
    pub node_id: u64,
}

impl Default for RstmdbConfig {
    fn default() -> Self {
        RstmdbConfig {
            max_frame_bytes: 16 << 20,
            max_batch_ops: ops::MAX_BATCH_OPS,
            max_in_flight: 256,
            token_hashes: None,
            watch_leaderless: Duration::from_secs(3),
            out_buffer: 1024,
            node_id: 0,
        }
    }
}

/// Lowercase SHA-256 hex of a token, the form tokens are configured in.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves rstmdb's wire on `listener` until `shutdown` resolves; open
/// connections are closed then.
pub async fn run<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    cfg: RstmdbConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "rstmdb listening");
    }
    let (stop, stopping) = watch::channel(false);
    let cfg = Arc::new(cfg);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("rstmdb accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (b, c, s) = (backend.clone(), cfg.clone(), stopping.clone());
                tokio::spawn(async move {
                    serve(stream, b, c, s).await;
                    tracing::debug!(%peer, "rstmdb connection closed");
                });
            }
        }
    }
    let _ = stop.send(true);
    Ok(())
}

/// Connection numbers, unique in this process over every transport: a
/// connection's number names its ordered write key and its trace ids.
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub(crate) enum Out {
    Msg(Value),
    /// Frame what follows in this mode (after HELLO's answer).
    Mode(WireMode),
    Close,
}

/// A queued write: its commands and how to answer.
struct WriteJob {
    id: String,
    kind: WriteKind,
    trace: String,
    _permit: OwnedSemaphorePermit,
}

enum WriteKind {
    One(String, MachineCmd),
    Batch(ops::Batch),
}

/// A response's `meta` from the node's Raft view: `wal_offset` is the
/// write's index, or (0) the applied index a read reflects.
fn meta_of(view: &crate::seam::RaftView, wal_offset: u64, trace_id: String) -> Meta {
    Meta {
        leader: view.is_leader,
        wal_offset: if wal_offset == 0 {
            view.applied_index
        } else {
            wal_offset
        },
        server_time_ms: now_ms(),
        trace_id,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) struct Conn<B: Backend> {
    backend: Arc<B>,
    cfg: Arc<RstmdbConfig>,
    conn: u64,
    out: mpsc::Sender<Out>,
    writes: mpsc::Sender<WriteJob>,
    permits: Arc<Semaphore>,
    mode: WireMode,
    /// Set by AUTH, or up front when no tokens are configured or the
    /// HTTP request carried a valid bearer token.
    pub(crate) authed: bool,
    watches: HashMap<String, tokio::task::AbortHandle>,
    next_sub: u64,
    /// False on one-shot HTTP requests: a watch needs a connection.
    pub(crate) watches_allowed: bool,
}

impl<B: Backend> Conn<B> {
    /// A connection answering into `out`, with its write sequencer running
    /// (it ends once the connection is dropped and its queued writes are
    /// answered).
    pub(crate) fn open(
        backend: Arc<B>,
        cfg: Arc<RstmdbConfig>,
        out: mpsc::Sender<Out>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let (write_tx, write_rx) = mpsc::channel::<WriteJob>(cfg.max_in_flight.max(1));
        let sequencer = tokio::spawn(sequence(
            backend.clone(),
            out.clone(),
            write_rx,
            format!("rstmdb-{}-{conn}", cfg.node_id),
        ));
        let c = Conn {
            backend,
            conn,
            out,
            writes: write_tx,
            permits: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
            mode: WireMode::BinaryJson,
            authed: cfg.token_hashes.is_none(),
            watches: HashMap::new(),
            next_sub: 1,
            watches_allowed: true,
            cfg,
        };
        (c, sequencer)
    }

    /// Ends the connection's watches and waits for its queued writes to be
    /// answered.
    pub(crate) async fn finish(mut self, sequencer: tokio::task::JoinHandle<()>) {
        for (_, w) in self.watches.drain() {
            w.abort();
        }
        drop(self);
        let _ = sequencer.await;
    }
}

/// The JSON text of an outgoing message, never over `max` bytes: an answer
/// the client's decoder would refuse is replaced by an error naming its size.
pub(crate) fn fit(v: &Value, max: usize) -> Vec<u8> {
    let text = serde_json::to_vec(v).expect("JSON values serialize");
    if text.len() <= max {
        return text;
    }
    let id = v.get("id").and_then(Value::as_str).unwrap_or("");
    let e = WireError::BadRequest(format!(
        "the answer is {} bytes, over the {max}-byte frame limit; ask for less (limit)",
        text.len()
    ));
    let meta = v.get("meta").cloned().unwrap_or(Value::Null);
    let mut r =
        json!({"type": "response", "id": id, "status": "error", "error": wire::error_object(&e)});
    if meta.is_object() {
        r["meta"] = meta;
    }
    serde_json::to_vec(&r).expect("JSON values serialize")
}

async fn serve<B: Backend>(
    stream: TcpStream,
    backend: Arc<B>,
    cfg: Arc<RstmdbConfig>,
    mut stopping: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(cfg.out_buffer.max(1));
    let max = cfg.max_frame_bytes;
    let writer = tokio::spawn(async move {
        let mut mode = WireMode::BinaryJson;
        let mut buf = BytesMut::new();
        while let Some(o) = out_rx.recv().await {
            let mut close = false;
            let mut item = Some(o);
            // Everything already queued goes out in one write.
            while let Some(o) = item.take() {
                match o {
                    Out::Msg(v) => encode(&mut buf, mode, &v, max),
                    Out::Mode(m) => mode = m,
                    Out::Close => close = true,
                }
                if !close && buf.len() < 1 << 20 {
                    item = out_rx.try_recv().ok();
                }
            }
            if wr.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
            if close {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    let (mut c, sequencer) = Conn::open(backend, cfg, out_tx.clone());
    let mut buf = BytesMut::with_capacity(8192);
    let mut first = true;
    'read: loop {
        loop {
            if first && !buf.is_empty() {
                first = false;
                // A client typing JSON lines (nc) speaks jsonl from the start.
                if buf[0] == b'{' {
                    c.mode = WireMode::Jsonl;
                    let _ = c.out.send(Out::Mode(WireMode::Jsonl)).await;
                }
            }
            let next = match c.mode {
                WireMode::BinaryJson => frame::decode_frame(&mut buf, max).map_err(|e| {
                    let keep = e.keeps_alignment();
                    (e.to_string(), keep)
                }),
                WireMode::Jsonl => frame::decode_line(&mut buf, max).map_err(|e| {
                    let keep = matches!(e, frame::LineError::NotUtf8);
                    (e.to_string(), keep)
                }),
            };
            match next {
                Ok(Some(text)) => {
                    if !c.request(&text).await {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err((why, keep)) => {
                    let meta = c.meta(0, "");
                    let e = WireError::BadRequest(format!("bad frame: {why}"));
                    let _ = c.out.send(Out::Msg(wire::error("", &e, &meta))).await;
                    if !keep {
                        break 'read;
                    }
                }
            }
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break 'read,
                Ok(_) => {}
            },
            _ = stopping.wait_for(|s| *s) => break 'read,
        }
    }
    // The sequencer finishes the writes already queued, then the writer
    // sends what is left and closes.
    c.finish(sequencer).await;
    let _ = out_tx.send(Out::Close).await;
    drop(out_tx);
    let _ = writer.await;
}

fn encode(buf: &mut BytesMut, mode: WireMode, v: &Value, max: usize) {
    let text = fit(v, max);
    match mode {
        WireMode::BinaryJson => frame::encode_frame(buf, &text),
        WireMode::Jsonl => {
            buf.extend_from_slice(&text);
            buf.extend_from_slice(b"\n");
        }
    }
}

/// Proposes a connection's writes in the order they were queued.
async fn sequence<B: Backend>(
    backend: Arc<B>,
    out: mpsc::Sender<Out>,
    mut rx: mpsc::Receiver<WriteJob>,
    order: String,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < 256 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut cmds = Vec::new();
        for j in &jobs {
            match &j.kind {
                WriteKind::One(_, c) => cmds.push(Cmd::Machine(c.clone())),
                WriteKind::Batch(b) => match ops::batch_cmd(b) {
                    Some(atomic) => cmds.push(atomic),
                    None => cmds.extend(b.ops.iter().map(|(_, c)| Cmd::Machine(c.clone()))),
                },
            }
        }
        let mut outcomes = backend.write_seq(cmds, order.clone()).await.into_iter();
        for j in jobs {
            let view = backend.raft_view();
            let meta = |index: u64| meta_of(&view, index, j.trace.clone());
            let msg = match &j.kind {
                WriteKind::One(op, cmd) => match outcomes.next() {
                    Some(Ok(WriteOutcome { index, result })) => {
                        match ops::write_result(op, cmd, &result) {
                            Ok(v) => wire::ok(&j.id, v, &meta(index)),
                            Err(e) => wire::error(&j.id, &e, &meta(index)),
                        }
                    }
                    Some(Err(e)) => wire::error(&j.id, &e.into(), &meta(view.applied_index)),
                    None => wire::error(
                        &j.id,
                        &WireError::Internal("write lost its outcome".into()),
                        &meta(view.applied_index),
                    ),
                },
                WriteKind::Batch(b) => {
                    batch_response(&j.id, b, &mut outcomes, &meta, view.applied_index)
                }
            };
            if out.send(Out::Msg(msg)).await.is_err() {
                return;
            }
        }
    }
}

fn batch_response(
    id: &str,
    b: &ops::Batch,
    outcomes: &mut impl Iterator<Item = Result<WriteOutcome, raftmesh_proto::ClusterError>>,
    meta: &dyn Fn(u64) -> Meta,
    applied: u64,
) -> Value {
    if b.atomic {
        return match outcomes.next() {
            Some(Ok(WriteOutcome { index, result })) => {
                let ApplyResult::Atomic { kept, results } = result else {
                    let e = WireError::Internal(format!("unexpected batch result {result:?}"));
                    return wire::error(id, &e, &meta(index));
                };
                let mut items = Vec::new();
                for (i, ((op, cmd), r)) in b.ops.iter().zip(&results).enumerate() {
                    match ops::write_result(op, cmd, r) {
                        Ok(v) => items.push(json!({"status": "ok", "result": v, "error": null})),
                        Err(e) if !kept => {
                            return wire::error(id, &ops::atomic_refusal(i, op, e), &meta(index));
                        }
                        Err(e) => items.push(
                            json!({"status": "error", "result": null, "error": wire::error_object(&e)}),
                        ),
                    }
                }
                wire::ok(id, json!({ "results": items }), &meta(index))
            }
            Some(Err(e)) => wire::error(id, &e.into(), &meta(applied)),
            None => wire::error(
                id,
                &WireError::Internal("batch lost its outcome".into()),
                &meta(applied),
            ),
        };
    }
    let mut items = Vec::new();
    let mut last = applied;
    for (op, cmd) in &b.ops {
        let item = match outcomes.next() {
            Some(Ok(WriteOutcome { index, result })) => {
                last = index;
                ops::write_result(op, cmd, &result)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(WireError::Internal("batch op lost its outcome".into())),
        };
        items.push(match item {
            Ok(v) => json!({"status": "ok", "result": v, "error": null}),
            Err(e) => json!({"status": "error", "result": null, "error": wire::error_object(&e)}),
        });
    }
    wire::ok(id, json!({ "results": items }), &meta(last))
}

/// Which applied events a watch forwards.
#[derive(Clone, Default)]
struct Filter {
    instance: Option<String>,
    machines: Vec<String>,
    from_states: Vec<String>,
    to_states: Vec<String>,
    events: Vec<String>,
}

impl Filter {
    fn matches(&self, e: &MachineEvent) -> bool {
        let MachineEvent::EventApplied {
            instance_id,
            machine,
            from_state,
            to_state,
            event,
            ..
        } = e
        else {
            return false;
        };
        let any = |list: &[String], v: &String| list.is_empty() || list.contains(v);
        self.instance.as_ref().is_none_or(|i| i == instance_id)
            && any(&self.machines, machine)
            && any(&self.from_states, from_state)
            && any(&self.to_states, to_state)
            && any(&self.events, event)
    }
}

impl<B: Backend> Conn<B> {
    fn meta(&self, wal_offset: u64, id: &str) -> Meta {
        meta_of(&self.backend.raft_view(), wal_offset, self.trace(id))
    }

    fn trace(&self, id: &str) -> String {
        format!("{}-{}-{id}", self.cfg.node_id, self.conn)
    }

    async fn send(&self, v: Value) -> bool {
        self.out.send(Out::Msg(v)).await.is_ok()
    }

    async fn answer(&self, id: &str, r: Result<(Value, u64), WireError>) -> bool {
        let msg = match r {
            Ok((v, off)) => wire::ok(id, v, &self.meta(off, id)),
            Err(e) => wire::error(id, &e, &self.meta(0, id)),
        };
        self.send(msg).await
    }

    /// Handles one request; false when the connection is to close.
    pub(crate) async fn request(&mut self, text: &str) -> bool {
        let req = match wire::parse_request(text) {
            Ok(r) => r,
            Err((id, e)) => return self.answer(id.as_deref().unwrap_or(""), Err(e)).await,
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        let op = req.op.clone();
        if !self.authed && !matches!(op.as_str(), "HELLO" | "AUTH" | "PING" | "BYE") {
            return self.answer(&req.id, Err(WireError::Unauthorized)).await;
        }
        match op.as_str() {
            "HELLO" => self.hello(req).await,
            "AUTH" => {
                let r = self.auth(&req.params);
                self.answer(&req.id, r.map(|v| (v, 0))).await
            }
            "PING" => self.answer(&req.id, Ok((json!({"pong": true}), 0))).await,
            "BYE" => {
                self.answer(&req.id, Ok((json!({"goodbye": true}), 0)))
                    .await;
                false
            }
            "INFO" => {
                let v = self.info();
                self.answer(&req.id, Ok((v, 0))).await
            }
            "WATCH_INSTANCE" | "WATCH_ALL" => self.watch(req).await,
            "UNWATCH" => {
                let r = str_param(&req.params, "subscription_id").map(|s| {
                    let removed = self.watches.remove(s).map(|w| w.abort()).is_some();
                    (json!({"subscription_id": s, "removed": removed}), 0)
                });
                self.answer(&req.id, r).await
            }
            op if ops::is_write(op) => self.queue_write(req, permit).await,
            "WAL_STATS" => {
                let r = self.backend.log_stats().map_err(WireError::from);
                self.answer(&req.id, r.map(|s| (wal_stats(&s), 0))).await
            }
            "COMPACT" => {
                let force = match req.params.get("force_snapshot") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        let e = WireError::BadRequest(format!(
                            "force_snapshot must be a boolean, not {other}"
                        ));
                        return self.answer(&req.id, Err(e)).await;
                    }
                };
                let (b, out, trace) = (self.backend.clone(), self.out.clone(), self.trace(&req.id));
                tokio::spawn(async move {
                    let _permit = permit;
                    let r = compact_result(b.compact(force).await);
                    let meta = meta_of(&b.raft_view(), 0, trace);
                    let msg = match r {
                        Ok(v) => wire::ok(&req.id, v, &meta),
                        Err(e) => wire::error(&req.id, &e, &meta),
                    };
                    let _ = out.send(Out::Msg(msg)).await;
                });
                true
            }
            "GET_MACHINE" | "LIST_MACHINES" | "GET_INSTANCE" | "LIST_INSTANCES" | "WAL_READ"
            | "SNAPSHOT_INSTANCE" => {
                let (b, out, trace) = (self.backend.clone(), self.out.clone(), self.trace(&req.id));
                tokio::spawn(async move {
                    let _permit = permit;
                    let r = read(&*b, &req.op, &req.params).await;
                    let view = b.raft_view();
                    let meta = |off: u64| meta_of(&view, off, trace.clone());
                    let msg = match r {
                        Ok((v, off)) => wire::ok(&req.id, v, &meta(off)),
                        Err(e) => wire::error(&req.id, &e, &meta(0)),
                    };
                    let _ = out.send(Out::Msg(msg)).await;
                });
                true
            }
            other => {
                self.answer(
                    &req.id,
                    Err(WireError::BadRequest(format!("unknown op {other:?}"))),
                )
                .await
            }
        }
    }

    async fn hello(&mut self, req: Request) -> bool {
        let p = &req.params;
        match opt_u64(p, "protocol_version") {
            Ok(Some(1)) => {}
            Ok(other) => {
                let e = WireError::UnsupportedProtocol(format!(
                    "protocol_version {} is not supported; this server speaks 1",
                    other.map_or("missing".to_string(), |v| v.to_string())
                ));
                return self.answer(&req.id, Err(e)).await;
            }
            Err(e) => return self.answer(&req.id, Err(e)).await,
        }
        let modes = match opt_strings(p, "wire_modes") {
            Ok(m) => m,
            Err(e) => return self.answer(&req.id, Err(e)).await,
        };
        let mode = if modes.is_empty() || modes.iter().any(|m| m == "binary_json") {
            WireMode::BinaryJson
        } else if modes.iter().any(|m| m == "jsonl") {
            WireMode::Jsonl
        } else {
            let e = WireError::UnsupportedProtocol(format!(
                "no common wire mode in {modes:?}; this server speaks binary_json and jsonl"
            ));
            return self.answer(&req.id, Err(e)).await;
        };
        let v = json!({
            "protocol_version": 1,
            "wire_mode": mode.name(),
            "server_name": "raftmesh",
            "server_version": env!("CARGO_PKG_VERSION"),
            "features": ["idempotency", "batch", "wal_read", "watch_from_offset"],
        });
        let ok = self.answer(&req.id, Ok((v, 0))).await;
        if mode != self.mode {
            self.mode = mode;
            let _ = self.out.send(Out::Mode(mode)).await;
        }
        ok
    }

    fn auth(&mut self, p: &Map<String, Value>) -> Result<Value, WireError> {
        let method = str_param(p, "method")?;
        if method != "bearer" {
            return Err(WireError::AuthFailed(format!(
                "unsupported auth method {method:?}; use \"bearer\""
            )));
        }
        let token = match p.get("token") {
            Some(Value::String(t)) if !t.is_empty() => t,
            _ => return Err(WireError::AuthFailed("empty token".into())),
        };
        if let Some(hashes) = &self.cfg.token_hashes {
            if !hashes.contains(&token_hash(token)) {
                return Err(WireError::AuthFailed("invalid token".into()));
            }
        }
        self.authed = true;
        Ok(json!({"authenticated": true}))
    }

    fn info(&self) -> Value {
        let s = self.backend.cluster_status();
        json!({
            "server_name": "raftmesh",
            "server_version": env!("CARGO_PKG_VERSION"),
            "protocol_version": 1,
            "features": ["idempotency", "batch", "wal_read", "watch_from_offset"],
            "max_frame_bytes": self.cfg.max_frame_bytes,
            "max_batch_ops": self.cfg.max_batch_ops,
            "node_id": s.id,
            "role": s.role,
            "leader_id": s.leader,
            "term": s.term,
            "commit_index": s.committed_index,
            // Where each member serves rstmdb: a client may go to any.
            "members": s.members.iter().map(|m| json!({
                "node_id": m.node_id,
                "rstmdb_addr": m.rstmdb_addr,
                "voter": m.voter,
                "leader": s.leader == Some(m.node_id),
            })).collect::<Vec<_>>(),
        })
    }

    async fn queue_write(&mut self, req: Request, permit: OwnedSemaphorePermit) -> bool {
        let mut new_id = || uuid::Uuid::new_v4().to_string();
        let kind = if req.op == "BATCH" {
            ops::batch(&req.params, self.cfg.max_batch_ops, &mut new_id).map(WriteKind::Batch)
        } else {
            ops::write_cmd(&req.op, &req.params, &mut new_id)
                .map(|c| WriteKind::One(req.op.clone(), c))
        };
        match kind {
            Ok(kind) => {
                let job = WriteJob {
                    trace: self.trace(&req.id),
                    id: req.id,
                    kind,
                    _permit: permit,
                };
                self.writes.send(job).await.is_ok()
            }
            Err(e) => self.answer(&req.id, Err(e)).await,
        }
    }

    async fn watch(&mut self, req: Request) -> bool {
        if !self.watches_allowed {
            let e = WireError::BadRequest(format!(
                "{} needs a connection: use the WebSocket GET /rstmdb or the TCP port",
                req.op
            ));
            return self.answer(&req.id, Err(e)).await;
        }
        let p = &req.params;
        let parsed = (|| -> Result<(Filter, bool, Option<u64>), WireError> {
            let include_ctx = p
                .get("include_ctx")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let from = opt_u64(p, "from_offset")?;
            let f = if req.op == "WATCH_INSTANCE" {
                Filter {
                    instance: Some(str_param(p, "instance_id")?.to_string()),
                    ..Default::default()
                }
            } else {
                Filter {
                    instance: None,
                    machines: opt_strings(p, "machines")?,
                    from_states: opt_strings(p, "from_states")?,
                    to_states: opt_strings(p, "to_states")?,
                    events: opt_strings(p, "events")?,
                }
            };
            Ok((f, include_ctx, from))
        })();
        let (filter, include_ctx, from) = match parsed {
            Ok(x) => x,
            Err(e) => return self.answer(&req.id, Err(e)).await,
        };
        // Subscribed before the current state is read: nothing applied in
        // between is missed.
        let sub = match self
            .backend
            .subscribe(Domain::Machine, from.map(|f| f.max(1)))
        {
            Ok(s) => s,
            Err(SubscribeError::Compacted { from, oldest }) => {
                let e = WireError::Compacted {
                    message: format!(
                        "from_offset {from} is older than the retained history, which starts at {oldest}"
                    ),
                    oldest,
                };
                return self.answer(&req.id, Err(e)).await;
            }
            Err(SubscribeError::Cluster(c)) => return self.answer(&req.id, Err(c.into())).await,
        };
        let sub_id = format!("sub-{}-{}-{}", self.cfg.node_id, self.conn, self.next_sub);
        self.next_sub += 1;
        let result = if let Some(id) = &filter.instance {
            match self.backend.instance_get(id).await {
                Ok(Some(i)) => json!({
                    "subscription_id": sub_id,
                    "instance_id": id,
                    "current_state": i.state,
                    "current_wal_offset": i.last_wal_offset,
                }),
                Ok(None) => {
                    let e = ops::not_found(
                        MachineErrorCode::InstanceNotFound,
                        format!("instance {id:?} not found"),
                    );
                    return self.answer(&req.id, Err(e)).await;
                }
                Err(e) => return self.answer(&req.id, Err(e.into())).await,
            }
        } else {
            json!({"subscription_id": sub_id, "wal_offset": self.backend.raft_view().applied_index})
        };
        // The answer is queued before the task starts: it precedes every event.
        if !self.answer(&req.id, Ok((result, 0))).await {
            return false;
        }
        let task = tokio::spawn(forward_events(
            self.backend.clone(),
            sub,
            filter,
            include_ctx,
            sub_id.clone(),
            self.out.clone(),
            self.cfg.watch_leaderless,
        ));
        self.watches.insert(sub_id, task.abort_handle());
        true
    }
}

/// Pushes a subscription's matching events, paced by the socket (a full
/// out queue stops the pull), until it ends; the end is told.
async fn forward_events<B: Backend>(
    backend: Arc<B>,
    mut sub: B::Stream,
    filter: Filter,
    include_ctx: bool,
    sub_id: String,
    out: mpsc::Sender<Out>,
    leaderless: Duration,
) {
    let mut tick = tokio::time::interval((leaderless / 4).max(Duration::from_millis(25)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since: Option<Instant> = None;
    let end = |reason: &str, last: u64, extra: Option<(&str, u64)>| {
        let mut v = json!({
            "type": "subscription_end",
            "subscription_id": sub_id,
            "reason": reason,
            "last_wal_offset": last,
        });
        if let Some((k, n)) = extra {
            v[k] = n.into();
        }
        Out::Msg(v)
    };
    loop {
        tokio::select! {
            next = sub.next() => match next {
                FeedNext::Entry(e) => {
                    for ev in &e.events {
                        let Event::Machine(m) = ev else { continue };
                        if !filter.matches(m) {
                            continue;
                        }
                        if out.send(Out::Msg(event_json(&sub_id, e.index, m, include_ctx))).await.is_err() {
                            return;
                        }
                    }
                }
                FeedNext::End(FeedEnd::Lagged { last_index }) => {
                    let _ = out.send(end("lagged", last_index, None)).await;
                    return;
                }
                FeedNext::End(FeedEnd::Compacted { oldest }) => {
                    let last = sub.next_index().saturating_sub(1);
                    let _ = out.send(end("compacted", last, Some(("oldest_offset", oldest)))).await;
                    return;
                }
                FeedNext::End(FeedEnd::Closed) => {
                    let _ = out.send(end("shutting_down", sub.next_index().saturating_sub(1), None)).await;
                    return;
                }
                FeedNext::End(FeedEnd::Failed(why)) => {
                    tracing::warn!("watch {sub_id}: {why}");
                    let _ = out.send(end("failed", sub.next_index().saturating_sub(1), None)).await;
                    return;
                }
            },
            _ = tick.tick() => {
                if backend.raft_view().leader_id.is_some() {
                    since = None;
                } else if since.get_or_insert_with(Instant::now).elapsed() >= leaderless {
                    let _ = out.send(end("no_leader", sub.next_index().saturating_sub(1), None)).await;
                    return;
                }
            }
        }
    }
}

fn event_json(sub_id: &str, index: u64, e: &MachineEvent, include_ctx: bool) -> Value {
    let MachineEvent::EventApplied {
        instance_id,
        machine,
        version,
        from_state,
        to_state,
        event,
        payload,
        ctx,
        event_id,
        ..
    } = e
    else {
        return Value::Null;
    };
    let mut v = json!({
        "type": "event",
        "subscription_id": sub_id,
        "instance_id": instance_id,
        "machine": machine,
        "version": version,
        "wal_offset": index,
        "from_state": from_state,
        "to_state": to_state,
        "event": event,
        "payload": ops::parse_json(payload),
    });
    if include_ctx {
        v["ctx"] = ops::parse_json(ctx);
    }
    if let Some(id) = event_id {
        v["event_id"] = id.clone().into();
    }
    v
}

/// Linearizable reads: a barrier, then the local state.
async fn read<B: Backend>(
    b: &B,
    op: &str,
    p: &Map<String, Value>,
) -> Result<(Value, u64), WireError> {
    let at = b.read_barrier().await?;
    Ok(match op {
        "GET_MACHINE" => {
            let machine = str_param(p, "machine")?;
            let version = version_param(p)?;
            let Some(m) = b.machine_get(machine, version).await? else {
                return Err(ops::not_found(
                    MachineErrorCode::MachineNotFound,
                    format!("machine {machine:?} version {version} not found"),
                ));
            };
            (
                json!({"definition": ops::parse_json(&m.definition), "checksum": m.checksum}),
                at,
            )
        }
        "LIST_MACHINES" => {
            let items: Vec<Value> = b
                .machine_list(100_000)
                .await?
                .into_iter()
                .map(|(m, v)| json!({"machine": m, "versions": v}))
                .collect();
            (json!({ "items": items }), at)
        }
        "GET_INSTANCE" => {
            let id = str_param(p, "instance_id")?;
            let Some(i) = b.instance_get(id).await? else {
                return Err(ops::not_found(
                    MachineErrorCode::InstanceNotFound,
                    format!("instance {id:?} not found"),
                ));
            };
            (ops::instance_json(&i), at)
        }
        "LIST_INSTANCES" => {
            let limit = opt_u64(p, "limit")?.unwrap_or(100) as usize;
            if limit > ops::MAX_LIST_LIMIT {
                return Err(WireError::BadRequest(format!(
                    "limit {limit} is over {}",
                    ops::MAX_LIST_LIMIT
                )));
            }
            let offset = opt_u64(p, "offset")?.unwrap_or(0) as usize;
            let page = b
                .instance_list(opt_str(p, "machine")?, opt_str(p, "state")?, limit, offset)
                .await?;
            let items: Vec<Value> = page
                .instances
                .iter()
                .map(|(id, i)| {
                    json!({
                        "id": id,
                        "machine": i.machine,
                        "version": i.version,
                        "state": i.state,
                        "created_at": i.created_at,
                        "updated_at": i.updated_at,
                        "last_wal_offset": i.last_wal_offset,
                    })
                })
                .collect();
            (
                json!({"instances": items, "total": page.total, "has_more": page.has_more}),
                at,
            )
        }
        "SNAPSHOT_INSTANCE" => {
            let id = str_param(p, "instance_id")?;
            let Some(i) = b.instance_get(id).await? else {
                return Err(ops::not_found(
                    MachineErrorCode::InstanceNotFound,
                    format!("instance {id:?} not found"),
                ));
            };
            let body = json!({"instance_id": id, "state": i.state, "ctx": ops::parse_json(&i.ctx)})
                .to_string();
            (
                json!({
                    "instance_id": id,
                    "snapshot_id": format!("snap-{id}-{}", i.last_wal_offset),
                    "wal_offset": i.last_wal_offset,
                    "size_bytes": body.len(),
                    "checksum": format!("{:08x}", crc32c::crc32c(body.as_bytes())),
                }),
                at,
            )
        }
        "WAL_READ" => {
            let from = opt_u64(p, "from_offset")?
                .ok_or_else(|| WireError::BadRequest("missing from_offset".into()))?;
            let limit = opt_u64(p, "limit")?.unwrap_or(100).clamp(1, 10_000) as usize;
            let entries = b
                .journal_page(Domain::Machine, from.max(1), limit)
                .map_err(|e| match e {
                    SubscribeError::Compacted { from, oldest } => WireError::Compacted {
                        message: format!(
                            "from_offset {from} is older than the retained history, which starts at {oldest}"
                        ),
                        oldest,
                    },
                    SubscribeError::Cluster(c) => c.into(),
                })?;
            let mut records = Vec::new();
            for e in &entries {
                for ev in &e.events {
                    if let Event::Machine(m) = ev {
                        records.push(json!({"sequence": records.len() as u64 + 1, "offset": e.index, "entry": wal_entry(m)}));
                    }
                }
            }
            let next = entries.last().map(|e| e.index + 1);
            (json!({"records": records, "next_offset": next}), at)
        }
        other => return Err(WireError::BadRequest(format!("unknown op {other:?}"))),
    })
}

/// WAL_STATS in rstmdb's shape (the Python client requires every field),
/// over this node's Raft log: its entries, RocksDB files and bytes, and
/// its I/O since the process started.
fn wal_stats(s: &crate::seam::LogStats) -> Value {
    json!({
        "entry_count": s.entries,
        "segment_count": s.files,
        "total_size_bytes": s.bytes,
        "latest_offset": s.last_index,
        "first_offset": s.first_index,
        "node_id": s.node_id,
        "io_stats": {
            "bytes_written": s.bytes_written,
            "bytes_read": s.bytes_read,
            "writes": s.writes,
            "reads": s.reads,
            "fsyncs": s.fsyncs,
        },
    })
}

/// COMPACT's answer: the sums the rstmdb CLI prints, and each member's
/// report. Fails only when no member compacted.
fn compact_result(nodes: Vec<raftmesh_proto::LogCompaction>) -> Result<Value, WireError> {
    if !nodes.is_empty() && nodes.iter().all(|n| n.error.is_some()) {
        let why: Vec<&str> = nodes.iter().filter_map(|n| n.error.as_deref()).collect();
        return Err(WireError::Internal(format!(
            "no member compacted: {}",
            why.join("; ")
        )));
    }
    let ok = || nodes.iter().filter(|n| n.error.is_none());
    let sum = |f: fn(&raftmesh_proto::LogCompaction) -> u64| ok().map(f).sum::<u64>();
    Ok(json!({
        "snapshots_created": ok().filter(|n| n.snapshot_created).count(),
        "segments_deleted": sum(|n| n.files_before.saturating_sub(n.files_after)),
        "bytes_reclaimed": sum(|n| n.bytes_before.saturating_sub(n.bytes_after)),
        "total_snapshots": ok().filter(|n| n.snapshot_index.is_some()).count(),
        "wal_segments": sum(|n| n.files_after),
        "nodes": nodes,
    }))
}

/// A journal event as rstmdb's WAL_READ tags it.
fn wal_entry(m: &MachineEvent) -> Value {
    let mut v = match m {
        MachineEvent::MachinePut {
            machine,
            version,
            checksum,
            definition,
        } => json!({"type": "put_machine", "machine": machine, "version": version,
                    "definition_hash": checksum, "definition": ops::parse_json(definition)}),
        MachineEvent::InstanceCreated {
            instance_id,
            machine,
            version,
            state,
            ctx,
            idempotency_key,
        } => json!({"type": "create_instance", "instance_id": instance_id, "machine": machine,
                    "version": version, "initial_state": state, "initial_ctx": ops::parse_json(ctx),
                    "idempotency_key": idempotency_key}),
        MachineEvent::EventApplied {
            instance_id,
            event,
            from_state,
            to_state,
            payload,
            ctx,
            event_id,
            idempotency_key,
            ..
        } => json!({"type": "apply_event", "instance_id": instance_id, "event": event,
                    "from_state": from_state, "to_state": to_state, "payload": ops::parse_json(payload),
                    "ctx": ops::parse_json(ctx), "event_id": event_id, "idempotency_key": idempotency_key}),
        MachineEvent::InstanceDeleted {
            instance_id,
            idempotency_key,
            ..
        } => {
            json!({"type": "delete_instance", "instance_id": instance_id, "idempotency_key": idempotency_key})
        }
        MachineEvent::Flushed => json!({"type": "flush_all"}),
    };
    // Absent optional fields are left out rather than sent as null.
    if let Value::Object(o) = &mut v {
        o.retain(|_, x| !x.is_null());
    }
    v
}
