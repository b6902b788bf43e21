//! Watch workload: writers put unique strings to a few keys under a prefix
//! through every node (the ack names the revision), while watchers on every
//! node stream `GET /watch/kv?prefix=…&from=1` for the whole run and,
//! whenever a stream ends, resume on the next node at the revision after the
//! last one they received completely (the rule of [`crate::checker::watch`]).
//! After the faults heal, two fence writes mark the end; each watcher stops
//! once it has received a line at or after the second, which proves it has
//! everything up to the first, i.e. every acknowledged write.
//!
//! Each stream is one `watch` op in the history (its lines in the
//! completion), so `check` re-judges a recording without the cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::checker::watch::{line_revision, SessionRecord, F_FENCE, F_WATCH};
use crate::checker::CheckResult;
use crate::history::{Op, OpType};
use crate::rng::Rng;
use crate::workload::{
    write_outcome, BoxFut, Completion, Http, Invocation, ProcessState, Sink, Workload,
};

/// Watcher processes are numbered from here, far above the writers' (which
/// grow by the concurrency with every unknown outcome).
pub const WATCHER_PROCESS_BASE: u64 = 1 << 40;
/// Streams per watcher: with the backoff below, far more than a run needs.
const MAX_SESSIONS: usize = 20_000;
/// Lines per watcher, to bound memory.
const MAX_LINES: usize = 2_000_000;
/// A line longer than this (no newline yet) ends the stream as malformed.
const MAX_LINE_BYTES: usize = 1 << 20;
/// A stream that sends nothing for this long is dropped and resumed on the
/// next node (a paused node sends no final line). Writers keep a live
/// stream busier than this.
const IDLE: Duration = Duration::from_secs(10);
/// Waiting for the response headers, and for a refusal's body.
const HEADERS: Duration = Duration::from_secs(3);
/// How often a stream checks for the stop, the hard stop and the target.
const TICK: Duration = Duration::from_millis(200);
/// After the first fence: how long watchers may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Fence writes: attempts and total time.
const FENCE_TRIES: usize = 60;
const FENCE_TIME: Duration = Duration::from_secs(30);
/// After the clients' end, watchers stop on their own at the latest this
/// much later (heal, recovery and catch-up all fit; only an aborted run
/// gets there).
const HARD_STOP_AFTER_END: Duration = Duration::from_secs(240);

pub struct Watch {
    pub prefix: String,
    pub keys: Vec<String>,
    pub watchers_per_node: u32,
    next_value: AtomicU64,
    running: Mutex<Option<Running>>,
}

/// The watchers of a run and their controls.
struct Running {
    /// The second fence's revision once written: a watcher that received a
    /// line at or after it is done.
    target: watch::Sender<Option<u64>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<WatcherEnd>>,
}

/// Waits for watcher tasks until `catch_up` from now; past it, tells them
/// to stop (each notices within a tick) and gives each 5 s more before
/// aborting it. Returns how the ones that finished ended.
pub(crate) async fn join_watchers<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
    stop: &watch::Sender<bool>,
    catch_up: Duration,
) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + catch_up;
    let mut ends = Vec::new();
    for mut task in tasks {
        let joined = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(r) => r,
            Err(_) => {
                let _ = stop.send(true);
                match tokio::time::timeout(Duration::from_secs(5), &mut task).await {
                    Ok(r) => r,
                    Err(_) => {
                        task.abort();
                        continue;
                    }
                }
            }
        };
        ends.extend(joined.ok());
    }
    ends
}

/// How a watcher finished, for the log.
struct WatcherEnd {
    process: u64,
    sessions: usize,
    complete_through: u64,
    caught_up: bool,
}

impl Watch {
    pub fn new(key_count: usize, watchers_per_node: u32) -> Self {
        // No `/`: a key is one path segment of `/kv/:key`.
        let prefix = "watch_".to_string();
        Self {
            keys: (0..key_count.max(1))
                .map(|i| format!("{prefix}k{i}"))
                .collect(),
            prefix,
            watchers_per_node: watchers_per_node.clamp(1, 8),
            next_value: AtomicU64::new(1),
            running: Mutex::new(None),
        }
    }

    fn fence_key(&self) -> String {
        format!("{}fence", self.prefix)
    }
}

/// `PUT {"value": value}`; ok carries `{"value", "revision"}` from the ack.
async fn put_acked(http: &Http, url: &str, value: &Value) -> Completion {
    let reply = http
        .call(reqwest::Method::PUT, url, Some(json!({ "value": value })))
        .await;
    write_outcome(
        reply,
        |body| {
            // The ack is the bare revision; a body without one is recorded
            // as such and reported by the checker.
            Completion::ok(json!({"value": value, "revision": body.as_u64()}))
        },
        value.clone(),
    )
}

impl Workload for Watch {
    fn name(&self) -> &'static str {
        "watch"
    }

    fn next(&self, rng: &mut Rng, state: &mut ProcessState) -> Invocation {
        let n = self.next_value.fetch_add(1, Ordering::Relaxed);
        Invocation {
            f: "write".into(),
            key: rng.pick(&self.keys).clone(),
            value: json!(format!("w{}-{n}", state.process)),
        }
    }

    fn invoke<'a>(
        &'a self,
        http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion> {
        Box::pin(
            async move { put_acked(http, &format!("{base}/kv/{}", inv.key), &inv.value).await },
        )
    }

    /// Outside the prefix: the recovery probes are not part of what
    /// watchers must see.
    fn keys(&self) -> Vec<String> {
        vec!["probe_watch".into()]
    }

    fn start_background(&self, bases: &[(u32, String)], sink: Sink, end: Instant) {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .build()
            .expect("http client");
        let (target, target_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let hard_stop = end + HARD_STOP_AFTER_END;
        let mut tasks = Vec::new();
        let count = bases.len() * self.watchers_per_node as usize;
        for i in 0..count {
            let w = Watcher {
                process: WATCHER_PROCESS_BASE + i as u64,
                bases: bases.to_vec(),
                first: i % bases.len(),
                prefix: self.prefix.clone(),
                client: client.clone(),
                sink: sink.clone(),
                target: target_rx.clone(),
                stop: stop_rx.clone(),
                hard_stop,
            };
            tasks.push(tokio::spawn(w.run()));
        }
        *self.running.lock().expect("watchers") = Some(Running {
            target,
            stop,
            tasks,
        });
    }

    /// Writes the fences, lets the watchers catch up (bounded), stops them
    /// and returns the fence writes for the history.
    fn final_reads<'a>(
        &'a self,
        http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>> {
        Box::pin(async move {
            let Some(running) = self.running.lock().expect("watchers").take() else {
                return Vec::new();
            };
            let mut out = Vec::new();
            let mut acked = Vec::new();
            let t0 = Instant::now();
            for attempt in 0..FENCE_TRIES {
                if acked.len() == 2 || t0.elapsed() > FENCE_TIME || bases.is_empty() {
                    break;
                }
                let (id, base) = &bases[attempt % bases.len()];
                let inv = Invocation {
                    f: F_FENCE.into(),
                    key: self.fence_key(),
                    value: json!(format!("fence-{attempt}")),
                };
                let c = put_acked(http, &format!("{base}/kv/{}", inv.key), &inv.value).await;
                if c.kind == OpType::Ok {
                    acked.extend(c.value["revision"].as_u64());
                } else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                out.push((*id, inv, c));
            }
            if let [_, second] = acked[..] {
                let _ = running.target.send(Some(second));
            } else {
                tracing::warn!("watch: fences not written; watchers cannot be told they caught up");
            }
            let ends = join_watchers(running.tasks, &running.stop, CATCH_UP).await;
            for e in &ends {
                let state = if e.caught_up {
                    "caught up"
                } else {
                    "NOT caught up"
                };
                tracing::info!(
                    "watcher {}: {state}, complete through {} after {} streams",
                    e.process - WATCHER_PROCESS_BASE,
                    e.complete_through,
                    e.sessions
                );
            }
            out
        })
    }

    fn check(&self, history: &[Op], _budget: Duration) -> Vec<CheckResult> {
        vec![crate::checker::watch::check_watch(history)]
    }
}

/// One watcher: streams from revision 1 and resumes after every ending.
struct Watcher {
    process: u64,
    bases: Vec<(u32, String)>,
    /// Index into `bases` of the first node it watches.
    first: usize,
    prefix: String,
    client: reqwest::Client,
    sink: Sink,
    target: watch::Receiver<Option<u64>>,
    stop: watch::Receiver<bool>,
    hard_stop: Instant,
}

/// Why a stream ended, as recorded in the op's `error`.
enum Ending {
    /// The server's final line.
    ServerEnded(String),
    Eof,
    Io(String),
    Idle,
    Malformed,
    /// Received a line at or after the target: done.
    CaughtUp,
    /// Told to stop, or the hard stop.
    Stopped,
    LineBudget,
}

impl Ending {
    fn describe(&self) -> String {
        match self {
            Ending::ServerEnded(why) => format!("server ended the stream: {why}"),
            Ending::Eof => "connection closed without a final line".into(),
            Ending::Io(e) => format!("connection broke: {e}"),
            Ending::Idle => format!("nothing for {} s", IDLE.as_secs()),
            Ending::Malformed => "line too long".into(),
            Ending::CaughtUp => "caught up".into(),
            Ending::Stopped => "stopped".into(),
            Ending::LineBudget => "line budget exhausted".into(),
        }
    }
}

/// One stream's outcome.
struct Session {
    kind: OpType,
    record: SessionRecord,
    error: Option<String>,
    ending: Option<Ending>,
}

impl Watcher {
    fn stopping(&self) -> bool {
        *self.stop.borrow() || Instant::now() >= self.hard_stop
    }

    fn record(&self, kind: OpType, node: u32, value: Value, error: Option<String>) {
        (self.sink)(Op {
            process: self.process,
            kind,
            f: F_WATCH.into(),
            key: self.prefix.clone(),
            value,
            node,
            time: 0,
            error,
        });
    }

    async fn run(self) -> WatcherEnd {
        let mut from = 1u64;
        let mut lines_total = 0usize;
        let mut backoff = Duration::from_millis(100);
        let mut sessions = 0usize;
        let mut caught_up = false;
        while sessions < MAX_SESSIONS && !caught_up && !self.stopping() {
            let (node, base) = &self.bases[(self.first + sessions) % self.bases.len()];
            sessions += 1;
            self.record(OpType::Invoke, *node, json!({ "from": from }), None);
            let s = self.session(base, from, MAX_LINES - lines_total).await;
            lines_total += s.record.lines.len();
            let next = match (s.kind, s.record.status, s.record.oldest) {
                (OpType::Ok, ..) => s.record.complete() + 1,
                // History before `oldest` is gone: go on from there.
                (_, Some(410), Some(oldest)) => oldest.max(from),
                _ => from,
            };
            let value = serde_json::to_value(&s.record).unwrap_or(Value::Null);
            self.record(s.kind, *node, value, s.error);
            from = next;
            match s.ending {
                Some(Ending::CaughtUp) => caught_up = true,
                Some(Ending::LineBudget) => break,
                _ => {}
            }
            if s.kind == OpType::Ok {
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
            complete_through: from - 1,
            caught_up,
        }
    }

    /// One stream from `from`, until it ends, the watcher caught up, or it
    /// must stop.
    async fn session(&self, base: &str, from: u64, line_budget: usize) -> Session {
        let url = format!("{base}/watch/kv?prefix={}&from={from}", self.prefix);
        let mut record = SessionRecord {
            from,
            ..SessionRecord::default()
        };
        let fail = |record: SessionRecord, why: String| Session {
            kind: OpType::Fail,
            record,
            error: Some(why),
            ending: None,
        };
        let mut resp = match tokio::time::timeout(HEADERS, self.client.get(&url).send()).await {
            Err(_) => return fail(record, "no response headers in time".into()),
            // The node and `from` are in the op; the URL would make every
            // refusal a distinct error in the report.
            Ok(Err(e)) => return fail(record, e.without_url().to_string()),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        if status != 200 {
            let body = tokio::time::timeout(HEADERS, resp.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            record.status = Some(status);
            record.oldest = body.get("oldest").and_then(Value::as_u64);
            return fail(record, format!("{status} {body}"));
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut highest: Option<u64> = None;
        let mut last_data = Instant::now();
        let mut tick = tokio::time::interval(TICK);
        let ending = 'stream: loop {
            if self.stopping() {
                break Ending::Stopped;
            }
            let target = *self.target.borrow();
            if let (Some(t), Some(h)) = (target, highest) {
                if h >= t {
                    break Ending::CaughtUp;
                }
            }
            if last_data.elapsed() >= IDLE {
                break Ending::Idle;
            }
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = tick.tick() => continue,
            };
            let bytes = match chunk {
                Ok(Some(b)) => b,
                Ok(None) => break Ending::Eof,
                Err(e) => break Ending::Io(e.to_string()),
            };
            last_data = Instant::now();
            buf.extend_from_slice(&bytes);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = buf.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&raw[..nl]);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                // An unparseable line is kept as text for the checker.
                let line: Value =
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()));
                if line.get("error").is_some() {
                    let why = line["error"].as_str().unwrap_or("?").to_string();
                    record.end = Some(line);
                    break 'stream Ending::ServerEnded(why);
                }
                if let Some(r) = line_revision(&line) {
                    highest = Some(highest.map_or(r, |h| h.max(r)));
                }
                record.lines.push(line);
                if record.lines.len() >= line_budget {
                    break 'stream Ending::LineBudget;
                }
            }
            if buf.len() > MAX_LINE_BYTES {
                break Ending::Malformed;
            }
        };
        Session {
            kind: OpType::Ok,
            record,
            error: Some(ending.describe()),
            ending: Some(ending),
        }
    }
}
