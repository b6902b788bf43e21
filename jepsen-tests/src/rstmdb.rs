//! rstmdb workload: real `rstmdb-client` 0.3.0 connections to every node's
//! rstmdb port. Setup puts a one-state machine whose `STEP` event loops on
//! itself (the payload is merged into ctx) and creates a few instances.
//! Clients then chain APPLY_EVENTs per instance, each with
//! `expected_wal_offset` = the offset the client knows for the instance's
//! current tag (from its last ack or GET_INSTANCE) and a payload with a new
//! unique tag, and read with GET_INSTANCE: a CAS register over tags per
//! instance (see [`crate::checker::rstmdb`]). An ambiguous write is never
//! retried. Watchers on every node (the first per node WATCH_ALL, further
//! ones WATCH_INSTANCE of one instance each), sent raw with `from_offset`
//! through the client's connection, resume after every ending at the last
//! complete offset + 1: several instances' writes may share one offset (one
//! Raft entry), so the last offset a cut WATCH_ALL stream delivered may be
//! partial and is asked for again; an instance's events have offsets of
//! their own ([`crate::checker::rstmdb`]). After heal a fence write (for
//! WATCH_ALL) and final reads (per instance) tell them when they have
//! everything.
//!
//! The client's read loop skips messages it does not know, so a watcher
//! never sees the server's `subscription_end`: an end it is not told of
//! (no leader, lagged, a paused node) shows as silence, and a watcher
//! resumes after [`IDLE`] without events (writers keep a live stream busier).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rstmdb_client::{Client, ClientError, ConnectionConfig};
use rstmdb_protocol::message::StreamEvent;
use rstmdb_protocol::{ErrorCode, Operation, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::checker::rstmdb::{RecordedEvent, RstmdbSession, F_CAS, F_READ, F_RSTMDB_WATCH};
use crate::checker::watch::{complete_through, F_FENCE};
use crate::checker::CheckResult;
use crate::history::{Op, OpType};
use crate::rng::Rng;
use crate::workload::{BoxFut, Completion, Http, Invocation, ProcessState, Sink, Workload};

pub const MACHINE: &str = "jepsen";
const EVENT: &str = "STEP";
const FENCE_INSTANCE: &str = "fence";
/// Watchers, setup and post-heal processes, far above the clients'.
pub const WATCHER_PROCESS_BASE: u64 = 1 << 40;
const SETUP_PROCESS: u64 = 1 << 41;
const FINAL_PROCESS_BASE: u64 = (1 << 41) + 1;
/// A request waits this long for its answer before it is in doubt.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections kept per node.
const POOL_PER_NODE: usize = 32;
/// Setup: machine, instances and their first reads, with retries.
const SETUP_TIME: Duration = Duration::from_secs(60);
/// A watch that delivers nothing this long is resumed.
const IDLE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(200);
const MAX_SESSIONS: usize = 20_000;
/// Events kept per watcher, to bound memory.
const MAX_EVENTS: usize = 2_000_000;
const FENCE_TRIES: usize = 60;
const FENCE_TIME: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(30);
/// After the clients' end, watchers stop on their own at the latest this
/// much later (only an aborted run gets there).
const HARD_STOP_AFTER_END: Duration = Duration::from_secs(240);

/// The rstmdb address of a node from its HTTP base URL (same IP).
pub fn rstmdb_addr(base: &str) -> Option<SocketAddr> {
    let host = base.strip_prefix("http://")?.split(':').next()?;
    Some(SocketAddr::new(
        host.parse().ok()?,
        crate::cluster::RSTMDB_PORT,
    ))
}

/// One client connection and whether its read loop has ended.
struct Conn {
    client: Client,
    closed: watch::Receiver<bool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The read loop holds the connection: ending it closes the socket.
        self.reader.abort();
    }
}

impl Conn {
    /// Connects (HELLO) and starts the read loop; with `events`, a receiver
    /// of pushed events subscribed before the loop reads anything.
    async fn open(
        addr: SocketAddr,
        events: bool,
    ) -> Result<(Conn, Option<broadcast::Receiver<StreamEvent>>), String> {
        let cfg = ConnectionConfig::new(addr)
            .with_client_name("jepsen-tests")
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_request_timeout(REQUEST_TIMEOUT);
        let client = Client::new(cfg);
        match tokio::time::timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, client.connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => return Err("connect: timed out".into()),
        }
        let conn = client.connection();
        let rx = events.then(|| conn.subscribe_stream_events());
        let (tx, closed) = watch::channel(false);
        let reader = tokio::spawn(async move {
            let _ = conn.read_loop().await;
            let _ = tx.send(true);
        });
        Ok((
            Conn {
                client,
                closed,
                reader,
            },
            rx,
        ))
    }

    fn alive(&self) -> bool {
        !*self.closed.borrow() && self.client.is_connected()
    }

    /// One raw request; a request that may have reached the server and got
    /// no answer is `Lost`.
    async fn call(&self, op: Operation, params: Value) -> Reply {
        let mut closed = self.closed.clone();
        let conn = self.client.connection();
        tokio::select! {
            r = conn.request(op, params) => match r {
                Ok(resp) => Reply::Answer(Box::new(resp)),
                // Checked before anything is written.
                Err(ClientError::NotConnected) => Reply::NotSent("not connected".into()),
                Err(e) => Reply::Lost(e.to_string()),
            },
            _ = closed.wait_for(|c| *c) => Reply::Lost("connection closed".into()),
        }
    }
}

enum Reply {
    Answer(Box<Response>),
    NotSent(String),
    Lost(String),
}

/// An error answer's `(code, message, retryable, details)` in one line.
fn describe(resp: &Response) -> String {
    match &resp.error {
        Some(e) => format!(
            "{:?} {} (retryable {}, details {})",
            e.code,
            e.message,
            e.retryable,
            serde_json::to_string(&e.details).unwrap_or_default()
        ),
        None => "error without an error object".into(),
    }
}

/// Whether an error answer to a write means nothing was applied. CONFLICT
/// and the other decisions of the state machine are definite, as is a
/// `retryable` answer (no leader, overloaded: not proposed); "outcome
/// unknown" and anything unexpected are in doubt.
fn write_refused(resp: &Response) -> bool {
    let Some(e) = &resp.error else { return false };
    if e.details.get("outcome").and_then(Value::as_str) == Some("unknown") {
        return false;
    }
    e.retryable
        || matches!(
            e.code,
            ErrorCode::Conflict
                | ErrorCode::InstanceNotFound
                | ErrorCode::InvalidTransition
                | ErrorCode::GuardFailed
                | ErrorCode::BadRequest
                | ErrorCode::Unauthorized
                | ErrorCode::MachineNotFound
        )
}

/// APPLY_EVENT of `tag` (with `expected`: only at that offset), as a
/// completion whose value is `{"tag", "expected_offset", "wal_offset"?}`.
async fn apply(conn: &Conn, instance: &str, tag: i64, expected: Option<u64>) -> Completion {
    let mut params = json!({"instance_id": instance, "event": EVENT, "payload": {"tag": tag}});
    if let Some(o) = expected {
        params["expected_wal_offset"] = json!(o);
    }
    let mut value = json!({"tag": tag, "expected_offset": expected});
    match conn.call(Operation::ApplyEvent, params).await {
        Reply::Answer(resp) if resp.is_ok() => {
            let r = resp.result.clone().unwrap_or(Value::Null);
            value["wal_offset"] = r.get("wal_offset").cloned().unwrap_or(Value::Null);
            if r.get("ctx").and_then(|c| c.get("tag")) != Some(&json!(tag)) {
                value["ctx"] = r.get("ctx").cloned().unwrap_or(Value::Null);
            }
            Completion::ok(value)
        }
        Reply::Answer(resp) if write_refused(&resp) => Completion::fail(value, describe(&resp)),
        Reply::Answer(resp) => Completion::info(value, describe(&resp)),
        Reply::NotSent(e) => Completion::fail(value, e),
        Reply::Lost(e) => Completion::info(value, format!("lost: {e}")),
    }
}

/// GET_INSTANCE as a read: ok `{"revision": last_wal_offset, "value": ctx.tag}`.
async fn get(conn: &Conn, instance: &str) -> Completion {
    let params = json!({ "instance_id": instance });
    match conn.call(Operation::GetInstance, params).await {
        Reply::Answer(resp) if resp.is_ok() => {
            let r = resp.result.clone().unwrap_or(Value::Null);
            let tag = r
                .get("ctx")
                .and_then(|c| c.get("tag"))
                .cloned()
                .unwrap_or(Value::Null);
            Completion::ok(json!({"revision": r.get("last_wal_offset"), "value": tag}))
        }
        Reply::Answer(resp) => Completion::fail(Value::Null, describe(&resp)),
        Reply::NotSent(e) | Reply::Lost(e) => Completion::fail(Value::Null, e),
    }
}

/// (instance, tag) → the offset it was written at (null tag: creation).
type Offsets = Arc<Mutex<HashMap<(String, Option<i64>), u64>>>;

pub struct Rstmdb {
    pub instances: Vec<String>,
    pub watchers_per_node: u32,
    next_tag: AtomicI64,
    /// The offset each (instance, tag) was written at, as acks and reads
    /// told: what a cas from that tag expects.
    offsets: Offsets,
    /// Between `next` and `invoke`: a planned cas's new tag → its offset.
    planned: Mutex<HashMap<i64, (u64, Option<u64>)>>,
    /// (process, instance) whose last cas met a CONFLICT: read next.
    stale: Mutex<HashSet<(u64, String)>>,
    pools: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    ready: (watch::Sender<bool>, watch::Receiver<bool>),
    running: Mutex<Option<Running>>,
}

/// The background tasks of a run and their controls.
struct Running {
    sink: Sink,
    setup: tokio::task::JoinHandle<()>,
    target: watch::Sender<Option<Targets>>,
    stop: watch::Sender<bool>,
    watchers: Vec<tokio::task::JoinHandle<WatcherEnd>>,
}

/// Where watchers are done: the fence's offset for WATCH_ALL, each
/// instance's last offset (read after heal) for WATCH_INSTANCE.
#[derive(Clone, Debug, Default)]
struct Targets {
    all: Option<u64>,
    instance: HashMap<String, u64>,
}

struct WatcherEnd {
    process: u64,
    sessions: usize,
    events: usize,
    next_from: u64,
    caught_up: bool,
}

impl Rstmdb {
    pub fn new(instance_count: usize, watchers_per_node: u32) -> Self {
        Self {
            instances: (0..instance_count.clamp(1, 16))
                .map(|i| format!("i{i}"))
                .collect(),
            watchers_per_node: watchers_per_node.clamp(1, 8),
            next_tag: AtomicI64::new(1),
            offsets: Offsets::default(),
            planned: Mutex::new(HashMap::new()),
            stale: Mutex::new(HashSet::new()),
            pools: Mutex::new(HashMap::new()),
            ready: watch::channel(false),
            running: Mutex::new(None),
        }
    }

    fn tag(&self) -> i64 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// An open connection to `addr`: a pooled one or a new one (each turn
    /// takes one from the pool, so the loop ends).
    async fn checkout(&self, addr: SocketAddr) -> Result<Conn, String> {
        loop {
            let pooled = self
                .pools
                .lock()
                .expect("pool")
                .get_mut(&addr)
                .and_then(Vec::pop);
            match pooled {
                Some(c) if c.alive() => return Ok(c),
                Some(_) => continue,
                None => return Conn::open(addr, false).await.map(|(c, _)| c),
            }
        }
    }

    fn checkin(&self, addr: SocketAddr, conn: Conn) {
        if conn.alive() {
            let mut pools = self.pools.lock().expect("pool");
            let pool = pools.entry(addr).or_default();
            if pool.len() < POOL_PER_NODE {
                pool.push(conn);
            }
        }
    }

    /// Learns what an ok op says about (instance, tag) → offset.
    fn learn(&self, instance: &str, c: &Completion, tag: Option<Value>, offset_key: &str) {
        if c.kind != OpType::Ok {
            return;
        }
        let (Some(tag), Some(offset)) = (tag, c.value.get(offset_key).and_then(Value::as_u64))
        else {
            return;
        };
        if tag.is_null() || tag.is_i64() {
            self.offsets
                .lock()
                .expect("offsets")
                .insert((instance.to_string(), tag.as_i64()), offset);
        }
    }

    /// One op on a pooled connection to `addr`; what it tells of offsets is
    /// learnt, and a CONFLICT makes the process read that instance next.
    async fn run_op(&self, addr: SocketAddr, inv: &Invocation) -> Completion {
        let conn = match self.checkout(addr).await {
            Ok(c) => c,
            Err(e) => {
                return Completion::fail(
                    if inv.f == F_READ {
                        Value::Null
                    } else {
                        json!({"tag": inv.value.get(1)})
                    },
                    format!("not sent: {e}"),
                )
            }
        };
        let done = match inv.f.as_str() {
            F_READ => {
                let c = get(&conn, &inv.key).await;
                self.learn(&inv.key, &c, c.value.get("value").cloned(), "revision");
                c
            }
            F_CAS => {
                let tag = inv.value[1].as_i64().unwrap_or(0);
                let planned = self.planned.lock().expect("planned").remove(&tag);
                let (process, expected) = planned.unwrap_or((0, None));
                let c = apply(&conn, &inv.key, tag, expected).await;
                self.learn(&inv.key, &c, Some(json!(tag)), "wal_offset");
                let conflict = c
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("Conflict "));
                if c.kind == OpType::Fail && conflict {
                    self.stale
                        .lock()
                        .expect("stale")
                        .insert((process, inv.key.clone()));
                }
                c
            }
            other => Completion::fail(Value::Null, format!("unknown f {other}")),
        };
        // A connection that lost an answer is not reused.
        if done.kind != OpType::Info {
            self.checkin(addr, conn);
        }
        done
    }
}

/// Records an op's invoke, runs it, records its completion.
async fn recorded<F: std::future::Future<Output = Completion>>(
    sink: &Sink,
    process: u64,
    node: u32,
    inv: &Invocation,
    run: F,
) -> Completion {
    let op = |kind, value: Value, error: Option<String>| Op {
        process,
        kind,
        f: inv.f.clone(),
        key: inv.key.clone(),
        value,
        node,
        time: 0,
        error,
    };
    sink(op(OpType::Invoke, inv.value.clone(), None));
    let c = run.await;
    sink(op(c.kind, c.value.clone(), c.error.clone()));
    c
}

impl Workload for Rstmdb {
    fn name(&self) -> &'static str {
        "rstmdb"
    }

    fn next(&self, rng: &mut Rng, state: &mut ProcessState) -> Invocation {
        let instance = rng.pick(&self.instances).clone();
        let read = Invocation {
            f: F_READ.into(),
            key: instance.clone(),
            value: Value::Null,
        };
        let process = state.process;
        if self
            .stale
            .lock()
            .expect("stale")
            .remove(&(process, instance.clone()))
            || rng.below(10) < 3
        {
            return read;
        }
        // What this process last saw there (null: the initial tag).
        let known = state
            .last_seen
            .get(&instance)
            .map_or(Some(None), |v| match v {
                Value::Null => Some(None),
                v => v.as_i64().map(Some),
            });
        let Some(known) = known else { return read };
        let Some(&offset) = self
            .offsets
            .lock()
            .expect("offsets")
            .get(&(instance.clone(), known))
        else {
            return read;
        };
        let tag = self.tag();
        self.planned
            .lock()
            .expect("planned")
            .insert(tag, (process, Some(offset)));
        Invocation {
            f: F_CAS.into(),
            key: instance,
            value: json!([known, tag]),
        }
    }

    fn invoke<'a>(
        &'a self,
        _http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion> {
        Box::pin(async move {
            let not_sent = |why: String| {
                let v = if inv.f == F_CAS {
                    json!({"tag": inv.value.get(1)})
                } else {
                    Value::Null
                };
                Completion::fail(v, why)
            };
            let mut ready = self.ready.1.clone();
            if !matches!(
                tokio::time::timeout(SETUP_TIME, ready.wait_for(|r| *r)).await,
                Ok(Ok(_))
            ) {
                return not_sent("setup not done".into());
            }
            let Some(addr) = rstmdb_addr(base) else {
                return not_sent(format!("no rstmdb address for {base}"));
            };
            self.run_op(addr, inv).await
        })
    }

    /// Outside the machine's instances: KV keys the recovery check probes.
    fn keys(&self) -> Vec<String> {
        vec!["probe_rstmdb".into()]
    }

    fn start_background(&self, bases: &[(u32, String)], sink: Sink, end: Instant) {
        let nodes: Vec<(u32, SocketAddr)> = bases
            .iter()
            .filter_map(|(id, b)| Some((*id, rstmdb_addr(b)?)))
            .collect();
        let setup = tokio::spawn(setup(
            nodes.clone(),
            self.instances.clone(),
            sink.clone(),
            self.offsets.clone(),
            self.ready.0.clone(),
        ));
        let (target, target_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let mut watchers = Vec::new();
        for i in 0..nodes.len() * self.watchers_per_node as usize {
            let (node, addr) = nodes[i % nodes.len()];
            let instance = (i >= nodes.len())
                .then(|| self.instances[(i - nodes.len()) % self.instances.len()].clone());
            let w = Watcher {
                process: WATCHER_PROCESS_BASE + i as u64,
                node,
                addr,
                instance,
                sink: sink.clone(),
                target: target_rx.clone(),
                stop: stop_rx.clone(),
                hard_stop: end + HARD_STOP_AFTER_END,
            };
            watchers.push(tokio::spawn(w.run()));
        }
        *self.running.lock().expect("running") = Some(Running {
            sink,
            setup,
            target,
            stop,
            watchers,
        });
    }

    /// Writes the fence, reads every instance on every node (both recorded
    /// directly, with their real times), lets the watchers catch up
    /// (bounded) and stops them. Returns nothing.
    fn final_reads<'a>(
        &'a self,
        _http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>> {
        Box::pin(async move {
            let Some(running) = self.running.lock().expect("running").take() else {
                return Vec::new();
            };
            let _ = running.setup.await;
            let nodes: Vec<(u32, SocketAddr)> = bases
                .iter()
                .filter_map(|(id, b)| Some((*id, rstmdb_addr(b)?)))
                .collect();
            let sink = &running.sink;
            let mut fence = None;
            let t0 = Instant::now();
            for attempt in 0..FENCE_TRIES {
                if fence.is_some() || t0.elapsed() > FENCE_TIME || nodes.is_empty() {
                    break;
                }
                let (id, addr) = nodes[attempt % nodes.len()];
                let tag = self.tag();
                let inv = Invocation {
                    f: F_FENCE.into(),
                    key: FENCE_INSTANCE.into(),
                    value: json!(tag),
                };
                let c = recorded(sink, FINAL_PROCESS_BASE, id, &inv, async {
                    match self.checkout(addr).await {
                        Ok(conn) => apply(&conn, FENCE_INSTANCE, tag, None).await,
                        Err(e) => Completion::fail(json!({ "tag": tag }), format!("not sent: {e}")),
                    }
                })
                .await;
                if c.kind == OpType::Ok {
                    fence = c.value.get("wal_offset").and_then(Value::as_u64);
                } else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            if fence.is_none() {
                tracing::warn!("rstmdb: no fence written; WATCH_ALL watchers cannot catch up");
            }
            let mut targets = Targets {
                all: fence,
                ..Targets::default()
            };
            let _ = running.target.send(Some(targets.clone()));
            // Final linearizable reads of every instance on every node.
            for (id, addr) in &nodes {
                for instance in &self.instances {
                    let inv = Invocation {
                        f: F_READ.into(),
                        key: instance.clone(),
                        value: Value::Null,
                    };
                    let process = FINAL_PROCESS_BASE + u64::from(*id);
                    let c = recorded(sink, process, *id, &inv, self.run_op(*addr, &inv)).await;
                    if let (OpType::Ok, Some(o)) =
                        (c.kind, c.value.get("revision").and_then(Value::as_u64))
                    {
                        let t = targets.instance.entry(instance.clone()).or_insert(o);
                        *t = (*t).max(o);
                    }
                }
            }
            let _ = running.target.send(Some(targets));
            let ends = crate::watch::join_watchers(running.watchers, &running.stop, CATCH_UP).await;
            for e in &ends {
                tracing::info!(
                    "rstmdb watcher {}: {}, {} events in {} sessions, next from {}",
                    e.process - WATCHER_PROCESS_BASE,
                    if e.caught_up {
                        "caught up"
                    } else {
                        "NOT caught up"
                    },
                    e.events,
                    e.sessions,
                    e.next_from
                );
            }
            self.pools.lock().expect("pool").clear();
            Vec::new()
        })
    }

    fn check(&self, history: &[Op], budget: Duration) -> Vec<CheckResult> {
        crate::checker::rstmdb::check_rstmdb(history, budget)
    }
}

/// Puts the machine, creates the instances (idempotency keys make retries
/// safe; an existing instance is as good), reads each once (recorded: the
/// clients' first cas expects the offset read) and then says ready.
async fn setup(
    nodes: Vec<(u32, SocketAddr)>,
    instances: Vec<String>,
    sink: Sink,
    offsets: Offsets,
    ready: watch::Sender<bool>,
) {
    let definition = json!({"states": ["s"], "initial": "s",
                            "transitions": [{"from": "s", "event": EVENT, "to": "s"}]});
    let mut todo: Vec<String> = instances.clone();
    todo.push(FENCE_INSTANCE.into());
    let mut machine = false;
    let mut unread: Vec<String> = instances;
    let t0 = Instant::now();
    let mut attempt = 0usize;
    while t0.elapsed() < SETUP_TIME && !unread.is_empty() && !nodes.is_empty() {
        let (id, addr) = nodes[attempt % nodes.len()];
        attempt += 1;
        let conn = match Conn::open(addr, false).await {
            Ok((c, _)) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        if !machine {
            let p = json!({"machine": MACHINE, "version": 1, "definition": definition});
            machine = matches!(conn.call(Operation::PutMachine, p).await,
                               Reply::Answer(r) if r.is_ok());
        }
        while machine && !todo.is_empty() {
            let instance = todo[0].clone();
            let p = json!({"machine": MACHINE, "version": 1, "instance_id": instance,
                           "initial_ctx": {}, "idempotency_key": format!("setup-{instance}")});
            match conn.call(Operation::CreateInstance, p).await {
                Reply::Answer(r)
                    if r.is_ok()
                        || r.error.as_ref().map(|e| e.code) == Some(ErrorCode::InstanceExists) =>
                {
                    todo.remove(0);
                }
                _ => break,
            }
        }
        while machine && todo.is_empty() && !unread.is_empty() {
            let inv = Invocation {
                f: F_READ.into(),
                key: unread[0].clone(),
                value: Value::Null,
            };
            let c = recorded(&sink, SETUP_PROCESS, id, &inv, get(&conn, &inv.key)).await;
            let offset = c.value.get("revision").and_then(Value::as_u64);
            let tag = c.value.get("value");
            match (c.kind, offset, tag) {
                (OpType::Ok, Some(o), Some(Value::Null)) => {
                    offsets
                        .lock()
                        .expect("offsets")
                        .insert((inv.key.clone(), None), o);
                    unread.remove(0);
                }
                // A tag already there: setup ran before (not in a fresh
                // cluster); not a state this workload can start from.
                (OpType::Ok, ..) => {
                    tracing::warn!("rstmdb setup: {} already written: {}", inv.key, c.value);
                    unread.remove(0);
                }
                _ => break,
            }
        }
        if !unread.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if unread.is_empty() {
        let _ = ready.send(true);
    } else {
        tracing::warn!("rstmdb setup did not finish in {} s", SETUP_TIME.as_secs());
    }
}

/// One watcher: WATCH_ALL (or WATCH_INSTANCE of `instance`) on its node
/// from offset 1, resumed after every ending at the last complete offset + 1.
struct Watcher {
    process: u64,
    node: u32,
    addr: SocketAddr,
    instance: Option<String>,
    sink: Sink,
    /// A watcher that received an event at or after its target is done.
    target: watch::Receiver<Option<Targets>>,
    stop: watch::Receiver<bool>,
    hard_stop: Instant,
}

/// Why a watch session ended, as recorded.
enum Ending {
    ConnectionLost,
    /// The client's event buffer overflowed: what follows the gap is not
    /// this session's to report.
    ClientLagged,
    Idle,
    CaughtUp,
    Stopped,
    EventBudget,
}

impl Ending {
    fn describe(&self) -> String {
        match self {
            Ending::ConnectionLost => "connection closed".into(),
            Ending::ClientLagged => "client event buffer overflowed".into(),
            Ending::Idle => format!("no event for {} s", IDLE.as_secs()),
            Ending::CaughtUp => "caught up".into(),
            Ending::Stopped => "stopped".into(),
            Ending::EventBudget => "event budget exhausted".into(),
        }
    }
}

impl Watcher {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.hard_stop
    }

    fn record(&self, kind: OpType, value: Value, error: Option<String>) {
        (self.sink)(Op {
            process: self.process,
            kind,
            f: F_RSTMDB_WATCH.into(),
            key: "watch".into(),
            value,
            node: self.node,
            time: 0,
            error,
        });
    }

    async fn run(self) -> WatcherEnd {
        let mut from = 1u64;
        let (mut sessions, mut events) = (0usize, 0usize);
        let mut backoff = Duration::from_millis(100);
        let mut caught_up = false;
        while sessions < MAX_SESSIONS && !caught_up && !self.stopping() {
            sessions += 1;
            let mut inv = json!({ "from": from });
            if let Some(i) = &self.instance {
                inv["instance"] = json!(i);
            }
            self.record(OpType::Invoke, inv, None);
            let (done, ending) = self.session(from, MAX_EVENTS - events).await;
            let delivered = match (&done.kind, &ending) {
                (OpType::Ok, _) => serde_json::from_value::<RstmdbSession>(done.value.clone())
                    .map(|s| s.events)
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            events += delivered.len();
            let offsets: Vec<u64> = delivered.iter().map(|e| e.wal_offset).collect();
            if let (Some(&last), Some(_)) = (offsets.iter().max(), &self.instance) {
                // One instance's events never share an offset: each is whole.
                from = last + 1;
            } else if !offsets.is_empty() {
                from = complete_through(from, &offsets, None) + 1;
            } else if let Some(oldest) = done.value.get("oldest").and_then(Value::as_u64) {
                // History before `oldest` is gone: go on from there.
                from = from.max(oldest);
            }
            let ok = done.kind == OpType::Ok;
            self.record(done.kind, done.value, done.error);
            match ending {
                Some(Ending::CaughtUp) => caught_up = true,
                Some(Ending::EventBudget) => break,
                _ => {}
            }
            if ok {
                backoff = Duration::from_millis(100);
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        WatcherEnd {
            process: self.process,
            sessions,
            events,
            next_from: from,
            caught_up,
        }
    }

    /// One connection's WATCH_ALL from `from`, until it ends.
    async fn session(&self, from: u64, budget: usize) -> (Completion, Option<Ending>) {
        let refused = |status: Option<u16>, oldest: Option<u64>, why: String| {
            let mut v = json!({ "from": from });
            if let Some(s) = status {
                v["status"] = json!(s);
            }
            if let Some(o) = oldest {
                v["oldest"] = json!(o);
            }
            (Completion::fail(v, why), None)
        };
        let (conn, rx) = match Conn::open(self.addr, true).await {
            Ok(x) => x,
            Err(e) => return refused(None, None, e),
        };
        let Some(mut rx) = rx else {
            return refused(None, None, "no event receiver".into());
        };
        let (op, params) = match &self.instance {
            Some(i) => (
                Operation::WatchInstance,
                json!({"instance_id": i, "include_ctx": true, "from_offset": from}),
            ),
            None => (
                Operation::WatchAll,
                json!({"machines": [MACHINE], "include_ctx": true, "from_offset": from}),
            ),
        };
        let sub = match conn.call(op, params).await {
            Reply::Answer(r) if r.is_ok() => r
                .result
                .as_ref()
                .and_then(|v| v.get("subscription_id")?.as_str())
                .unwrap_or("")
                .to_string(),
            Reply::Answer(r) => {
                // `from_offset` older than the retained journal.
                let oldest = r
                    .error
                    .as_ref()
                    .and_then(|e| e.details.get("oldest_offset")?.as_u64());
                return refused(oldest.map(|_| 410), oldest, describe(&r));
            }
            Reply::NotSent(e) | Reply::Lost(e) => return refused(None, None, e),
        };
        let mut session = RstmdbSession {
            from,
            instance: self.instance.clone(),
            subscription_id: sub,
            events: Vec::new(),
            ending: String::new(),
        };
        let push = |s: &mut RstmdbSession, e: StreamEvent| {
            let tag = e
                .payload
                .as_ref()
                .and_then(|p| p.get("tag"))
                .cloned()
                .unwrap_or(Value::Null);
            s.events.push(RecordedEvent {
                wal_offset: e.wal_offset,
                instance_id: e.instance_id,
                tag,
                subscription_id: (e.subscription_id != s.subscription_id)
                    .then_some(e.subscription_id),
            });
        };
        let mut closed = conn.closed.clone();
        let mut tick = tokio::time::interval(TICK);
        let mut last_event = Instant::now();
        let ending = loop {
            if self.stopping() {
                break Ending::Stopped;
            }
            let highest = session.events.iter().map(|e| e.wal_offset).max();
            let target = self
                .target
                .borrow()
                .as_ref()
                .and_then(|t| match &self.instance {
                    Some(i) => t.instance.get(i).copied(),
                    None => t.all,
                });
            if let (Some(t), Some(h)) = (target, highest) {
                if h >= t {
                    break Ending::CaughtUp;
                }
            }
            if session.events.len() >= budget {
                break Ending::EventBudget;
            }
            if last_event.elapsed() >= IDLE {
                break Ending::Idle;
            }
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(e) => {
                        push(&mut session, e);
                        last_event = Instant::now();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break Ending::ClientLagged,
                    Err(broadcast::error::RecvError::Closed) => break Ending::ConnectionLost,
                },
                _ = closed.wait_for(|c| *c) => {
                    // What the read loop passed on before it ended is ours.
                    let lagged = loop {
                        match rx.try_recv() {
                            Ok(e) => push(&mut session, e),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => break true,
                            Err(_) => break false,
                        }
                    };
                    break if lagged { Ending::ClientLagged } else { Ending::ConnectionLost };
                }
                _ = tick.tick() => {}
            }
        };
        session.ending = ending.describe();
        let value = serde_json::to_value(&session).unwrap_or(Value::Null);
        (
            Completion {
                kind: OpType::Ok,
                value,
                error: Some(ending.describe()),
            },
            Some(ending),
        )
    }
}
