//! Room workload (DriftDB API): a few rooms made with `POST /new` in setup,
//! a few keys each. The runner's clients append unique strings over HTTP
//! (`POST /room/:id/send`: 200 acknowledged, 503 and 4xx not applied,
//! anything else unknown). Socket senders, one per node and room, append
//! over a WebSocket in small bursts; a push's ack is the room delivering the
//! sender's own value back to its socket, which names the seq, and any
//! other ending (an `error`, a close, no echo in time) leaves the burst's
//! rest unknown and ends the socket (never retried). Watchers,
//! sockets on every node, record every push delivered; each session starts
//! with a `get` from seq 0 of every key (asked again after a refusal), so a
//! reconnect resyncs. After heal,
//! every node answers a `get` of every key. See [`crate::checker::room`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::checker::room::{F_APPEND, F_ROOM_READ, F_ROOM_WATCH};
use crate::checker::CheckResult;
use crate::history::{Op, OpType};
use crate::rng::Rng;
use crate::workload::{
    write_outcome, BoxFut, Completion, Http, Invocation, ProcessState, Reply, Sink, Workload,
};

/// Watcher processes are numbered from here, socket senders from
/// [`SENDER_PROCESS_BASE`]: far above the HTTP clients'.
pub const WATCHER_PROCESS_BASE: u64 = 1 << 40;
pub const SENDER_PROCESS_BASE: u64 = 1 << 41;
/// Sessions per watcher or sender: far more than a run needs.
const MAX_SESSIONS: u64 = 20_000;
/// Frames kept per session, to bound memory.
const MAX_FRAMES: usize = 1_000_000;
/// Connecting, including the upgrade.
const CONNECT: Duration = Duration::from_secs(3);
/// A socket pings this often and gives up after [`IDLE`] of silence (a
/// paused node sends nothing, not even a close).
const PING: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(5);
/// How long a socket sender waits for its own push to come back.
const ECHO: Duration = Duration::from_secs(5);
/// A watcher asks again for keys whose `get` may have been refused, at
/// most this often and this many times per session.
const REGET_AFTER: Duration = Duration::from_millis(500);
const MAX_REGETS: usize = 40;
/// Pushes a socket sender sends back to back, and the pause after their
/// echoes.
const BURST: u64 = 3;
const SEND_PAUSE: Duration = Duration::from_millis(200);
/// Room creation in setup: attempts and total time.
const CREATE_TRIES: usize = 60;
const CREATE_TIME: Duration = Duration::from_secs(30);
/// Final reads: attempts per key and node.
const READ_TRIES: usize = 20;
/// After the final reads, how long watchers get to take the last pushes.
const SETTLE: Duration = Duration::from_secs(2);
/// After the clients' end, sockets stop on their own at the latest this
/// much later (only an aborted run gets there).
const HARD_STOP_AFTER_END: Duration = Duration::from_secs(240);

pub struct Room {
    pub room_count: usize,
    pub keys: Vec<String>,
    pub watchers_per_node: u32,
    rooms: Mutex<Vec<String>>,
    next_value: AtomicU64,
    running: Mutex<Option<Running>>,
}

struct Running {
    stop: watch::Sender<bool>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Room {
    /// `room_count` rooms of three keys; watchers per node and room, 1-2.
    pub fn new(room_count: usize, watchers_per_node: u32) -> Self {
        Self {
            room_count: room_count.clamp(1, 8),
            keys: (0..3).map(|i| format!("k{i}")).collect(),
            watchers_per_node: watchers_per_node.clamp(1, 2),
            rooms: Mutex::default(),
            next_value: AtomicU64::new(1),
            running: Mutex::default(),
        }
    }

    fn rooms(&self) -> Vec<String> {
        self.rooms.lock().expect("rooms").clone()
    }
}

fn ws_base(base: &str) -> String {
    match base.strip_prefix("http://") {
        Some(rest) => format!("ws://{rest}"),
        None => base.to_string(),
    }
}

fn record(sink: &Sink, process: u64, kind: OpType, f: &str, key: &str, node: u32, value: Value) {
    sink(Op {
        process,
        kind,
        f: f.into(),
        key: key.into(),
        value,
        node,
        time: 0,
        error: None,
    });
}

fn record_end(sink: &Sink, process: u64, f: &str, key: &str, node: u32, c: Completion) {
    sink(Op {
        process,
        kind: c.kind,
        f: f.into(),
        key: key.into(),
        value: c.value,
        node,
        time: 0,
        error: c.error,
    });
}

/// `init` data as `[[value, seq], …]`.
fn init_pairs(data: &Value) -> Value {
    Value::Array(
        data.as_array()
            .into_iter()
            .flatten()
            .map(|d| json!([d["value"], d["seq"]]))
            .collect(),
    )
}

impl Workload for Room {
    fn name(&self) -> &'static str {
        "room"
    }

    fn next(&self, rng: &mut Rng, state: &mut ProcessState) -> Invocation {
        let n = self.next_value.fetch_add(1, Ordering::Relaxed);
        let rooms = self.rooms();
        let room = if rooms.is_empty() {
            "none".to_string()
        } else {
            rng.pick(&rooms).clone()
        };
        Invocation {
            f: F_APPEND.into(),
            key: format!("{room}/{}", rng.pick(&self.keys)),
            value: json!(format!("h{}-{n}", state.process)),
        }
    }

    fn invoke<'a>(
        &'a self,
        http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion> {
        Box::pin(async move {
            let (room, key) = inv.key.split_once('/').unwrap_or((&inv.key, ""));
            let body = json!({"type": "push", "key": key, "value": inv.value, "action": {"type": "append"}});
            let reply = http
                .call(
                    reqwest::Method::POST,
                    &format!("{base}/room/{room}/send"),
                    Some(body),
                )
                .await;
            let v = inv.value.clone();
            write_outcome(
                reply,
                |_| Completion::ok(json!({ "value": v })),
                inv.value.clone(),
            )
        })
    }

    fn keys(&self) -> Vec<String> {
        vec!["probe_room".into()]
    }

    /// Creates the rooms, retried on any node: an extra room from an
    /// unknown outcome is never used and harms nothing.
    fn setup<'a>(
        &'a self,
        http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let t0 = Instant::now();
            let mut made = Vec::new();
            for attempt in 0..CREATE_TRIES {
                if made.len() >= self.room_count || t0.elapsed() > CREATE_TIME || bases.is_empty() {
                    break;
                }
                let (_, base) = &bases[attempt % bases.len()];
                match http
                    .call(reqwest::Method::POST, &format!("{base}/new"), None)
                    .await
                {
                    Reply::Status(200, body) if body["room"].is_string() => {
                        made.push(body["room"].as_str().unwrap_or_default().to_string());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            anyhow::ensure!(!made.is_empty(), "room: no room could be created");
            tracing::info!("room: rooms {made:?}");
            *self.rooms.lock().expect("rooms") = made;
            Ok(())
        })
    }

    fn start_background(&self, bases: &[(u32, String)], sink: Sink, end: Instant) {
        let (stop, stop_rx) = watch::channel(false);
        let hard_stop = end + HARD_STOP_AFTER_END;
        let rooms = self.rooms();
        let mut watchers = Vec::new();
        let mut senders = Vec::new();
        let mut i = 0u64;
        for room in &rooms {
            for n in 0..bases.len() {
                for _ in 0..self.watchers_per_node {
                    let s = Socket {
                        bases: bases.to_vec(),
                        first: n,
                        room: room.clone(),
                        keys: self.keys.clone(),
                        sink: sink.clone(),
                        stop: stop_rx.clone(),
                        hard_stop,
                    };
                    watchers.push(tokio::spawn(s.watch(WATCHER_PROCESS_BASE + i)));
                    i += 1;
                }
                let s = Socket {
                    bases: bases.to_vec(),
                    first: n,
                    room: room.clone(),
                    keys: self.keys.clone(),
                    sink: sink.clone(),
                    stop: stop_rx.clone(),
                    hard_stop: end,
                };
                let idx = senders.len() as u64;
                senders.push(tokio::spawn(s.send(idx)));
            }
        }
        *self.running.lock().expect("sockets") = Some(Running {
            stop,
            watchers,
            senders,
        });
    }

    /// Waits for the socket senders (they stop at the clients' end), reads
    /// every key on every node, lets the watchers take the last pushes and
    /// stops them.
    fn final_reads<'a>(
        &'a self,
        http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>> {
        Box::pin(async move {
            let running = self.running.lock().expect("sockets").take();
            if let Some(r) = &running {
                for t in &r.senders {
                    // Each ends within an echo wait of the clients' end.
                    let deadline = Instant::now() + ECHO + CONNECT + Duration::from_secs(2);
                    while !t.is_finished() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    t.abort();
                }
            }
            let mut out = Vec::new();
            for (id, base) in bases {
                for room in self.rooms() {
                    for key in &self.keys {
                        let inv = Invocation {
                            f: F_ROOM_READ.into(),
                            key: format!("{room}/{key}"),
                            value: Value::Null,
                        };
                        let body = json!({"type": "get", "key": key, "seq": 0});
                        let url = format!("{base}/room/{room}/send");
                        let mut done = None;
                        let mut last = String::new();
                        for _ in 0..READ_TRIES {
                            match http
                                .call(reqwest::Method::POST, &url, Some(body.clone()))
                                .await
                            {
                                Reply::Status(200, b) if b["type"] == "init" => {
                                    done = Some(Completion::ok(init_pairs(&b["data"])));
                                    break;
                                }
                                Reply::Status(s, b) => last = format!("{s} {b}"),
                                Reply::NotSent(e) | Reply::Lost(e) => last = e,
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let c = done.unwrap_or_else(|| {
                            Completion::fail(Value::Null, format!("final read failed: {last}"))
                        });
                        out.push((*id, inv, c));
                    }
                }
            }
            if let Some(r) = running {
                tokio::time::sleep(SETTLE).await;
                let _ = r.stop.send(true);
                for mut t in r.watchers {
                    if tokio::time::timeout(Duration::from_secs(5), &mut t)
                        .await
                        .is_err()
                    {
                        t.abort();
                    }
                }
            }
            out
        })
    }

    fn check(&self, history: &[Op], _budget: Duration) -> Vec<CheckResult> {
        vec![crate::checker::room::check_room(history)]
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One watcher or socket sender of a room.
struct Socket {
    bases: Vec<(u32, String)>,
    /// Index into `bases` of the first node it connects to.
    first: usize,
    room: String,
    keys: Vec<String>,
    sink: Sink,
    stop: watch::Receiver<bool>,
    hard_stop: Instant,
}

/// A parsed server frame.
enum Frame {
    Msg(Value),
    /// The socket ended, and why.
    End(String),
    Nothing,
}

impl Socket {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.hard_stop
    }

    async fn connect(&self, session: u64) -> (u32, Result<Ws, String>) {
        let (node, base) = &self.bases[(self.first + session as usize) % self.bases.len()];
        let url = format!("{}/room/{}/connect", ws_base(base), self.room);
        let r = match tokio::time::timeout(CONNECT, tokio_tungstenite::connect_async(url)).await {
            Err(_) => Err("no upgrade in time".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok((ws, _))) => Ok(ws),
        };
        (*node, r)
    }

    /// Waits at most `within` for the next frame; pings when due.
    async fn next_frame(ws: &mut Ws, within: Duration) -> Frame {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => Frame::Nothing,
            Ok(None) => Frame::End("closed without a close frame".into()),
            Ok(Some(Err(e))) => Frame::End(format!("socket error: {e}")),
            Ok(Some(Ok(Message::Close(f)))) => Frame::End(format!("closed: {f:?}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                Frame::Msg(serde_json::from_str(t.as_str()).unwrap_or(Value::String(t.to_string())))
            }
            Ok(Some(Ok(_))) => Frame::Nothing,
        }
    }

    /// Sessions until stopped: each connects (to the next node after an
    /// ending), `get`s every key from seq 0 and records what it receives.
    async fn watch(self, process: u64) {
        let mut session = 0u64;
        while session < MAX_SESSIONS && !self.stopping() {
            let (node, ws) = self.connect(session).await;
            let resync = session > 0;
            session += 1;
            let inv = json!({"room": self.room, "resync": resync});
            record(
                &self.sink,
                process,
                OpType::Invoke,
                F_ROOM_WATCH,
                &self.room,
                node,
                inv.clone(),
            );
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    record_end(
                        &self.sink,
                        process,
                        F_ROOM_WATCH,
                        &self.room,
                        node,
                        Completion::fail(inv, e),
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            let (mut pushes, mut inits, mut errors) = (Vec::new(), Vec::new(), Vec::new());
            let mut why = None;
            for k in &self.keys {
                let get = json!({"type": "get", "key": k, "seq": 0}).to_string();
                if let Err(e) = ws.send(Message::Text(get.into())).await {
                    why = Some(format!("get not sent: {e}"));
                    break;
                }
            }
            let mut last_frame = Instant::now();
            let mut last_ping = Instant::now();
            // Keys without an `init` yet. An `error` does not name its
            // message, so after one every such key is asked again (a
            // second `init` is harmless).
            let mut pending: Vec<&String> = self.keys.iter().collect();
            let mut regets = 0usize;
            let mut reget_at: Option<Instant> = None;
            let why = loop {
                if let Some(w) = why.take() {
                    break w;
                }
                if reget_at.is_some_and(|t| Instant::now() >= t) {
                    reget_at = None;
                    for k in &pending {
                        let get = json!({"type": "get", "key": k, "seq": 0}).to_string();
                        if ws.send(Message::Text(get.into())).await.is_err() {
                            why = Some("get not sent".into());
                        }
                    }
                    continue;
                }
                if self.stopping() {
                    let _ = ws.close(None).await;
                    break "stopped".to_string();
                }
                if last_frame.elapsed() > IDLE {
                    break format!("nothing for {} s", IDLE.as_secs());
                }
                if pushes.len() + inits.len() >= MAX_FRAMES {
                    break "frame budget".into();
                }
                if last_ping.elapsed() >= PING {
                    last_ping = Instant::now();
                    let ping = json!({"type": "ping"}).to_string();
                    if ws.send(Message::Text(ping.into())).await.is_err() {
                        break "ping not sent".into();
                    }
                }
                match Self::next_frame(&mut ws, Duration::from_millis(200)).await {
                    Frame::Nothing => {}
                    Frame::End(w) => break w,
                    Frame::Msg(m) => {
                        last_frame = Instant::now();
                        match m["type"].as_str() {
                            Some("push") => pushes.push(json!([m["key"], m["value"], m["seq"]])),
                            Some("init") => {
                                pending.retain(|k| m["key"] != json!(k));
                                inits.push(json!([m["key"], init_pairs(&m["data"])]));
                            }
                            Some("error") => {
                                errors.push(m["message"].clone());
                                if !pending.is_empty() && reget_at.is_none() && regets < MAX_REGETS
                                {
                                    regets += 1;
                                    reget_at = Some(Instant::now() + REGET_AFTER);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            };
            let value = json!({
                "room": self.room, "resync": resync, "pushes": pushes, "inits": inits,
                "errors": errors, "end": why,
            });
            record_end(
                &self.sink,
                process,
                F_ROOM_WATCH,
                &self.room,
                node,
                Completion::ok(value),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Socket sessions until the clients' end. Each sends bursts of
    /// [`BURST`] pushes back to back (so the server sequences several at
    /// once) and waits for all their echoes; push `i` of a burst is process
    /// `i` of the session, so each process has one push in flight. Any
    /// ending before every echo leaves the rest unknown and ends the socket.
    /// Acks and unknowns carry the socket and the send index, for the
    /// checker's per-socket order.
    async fn send(self, idx: u64) {
        let mut n = 0u64;
        let mut session = 0u64;
        while session < MAX_SESSIONS && !self.stopping() {
            let base_process = SENDER_PROCESS_BASE + (idx << 24) + (session << 3);
            let socket = format!("{idx}-{session}");
            let (node, ws) = self.connect(session).await;
            session += 1;
            let Ok(mut ws) = ws else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            };
            let mut sent = 0u64;
            let mut ended = None;
            while ended.is_none() && !self.stopping() {
                // In flight: (process, op key, value, send index).
                let mut inflight: Vec<(u64, String, String, u64)> = Vec::new();
                for slot in 0..BURST {
                    n += 1;
                    let value = format!("s{idx}-{n}");
                    let key = &self.keys[(n as usize) % self.keys.len()];
                    let op_key = format!("{}/{key}", self.room);
                    let process = base_process + slot;
                    record(
                        &self.sink,
                        process,
                        OpType::Invoke,
                        F_APPEND,
                        &op_key,
                        node,
                        json!(value),
                    );
                    let push = json!({"type": "push", "key": key, "value": value, "action": {"type": "append"}});
                    inflight.push((process, op_key, value, sent));
                    sent += 1;
                    if let Err(e) = ws.send(Message::Text(push.to_string().into())).await {
                        ended = Some(format!("push not sent whole: {e}"));
                        break;
                    }
                }
                let deadline = Instant::now() + ECHO;
                while ended.is_none() && !inflight.is_empty() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        ended = Some("no echo in time".into());
                        break;
                    }
                    match Self::next_frame(&mut ws, left).await {
                        Frame::Nothing => {}
                        Frame::End(w) => ended = Some(w),
                        Frame::Msg(m) => match m["type"].as_str() {
                            Some("push") => {
                                let Some(i) =
                                    inflight.iter().position(|f| m["value"] == json!(f.2))
                                else {
                                    continue;
                                };
                                let (process, op_key, value, at) = inflight.remove(i);
                                let ok = json!({"value": value, "seq": m["seq"], "socket": socket, "sent": at});
                                record_end(
                                    &self.sink,
                                    process,
                                    F_APPEND,
                                    &op_key,
                                    node,
                                    Completion::ok(ok),
                                );
                            }
                            Some("error") => ended = Some(format!("error: {}", m["message"])),
                            _ => {}
                        },
                    }
                }
                let why = ended.clone().unwrap_or_default();
                for (process, op_key, value, at) in inflight {
                    let v = json!({"value": value, "socket": socket, "sent": at});
                    record_end(
                        &self.sink,
                        process,
                        F_APPEND,
                        &op_key,
                        node,
                        Completion::info(v, why.clone()),
                    );
                }
                tokio::time::sleep(SEND_PAUSE).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
    }
}
