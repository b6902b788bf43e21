//! Workloads: what clients do and how each HTTP outcome maps to ok / fail /
//! info. A workload is a generator of invocations plus an executor; room and
//! rstmdb workloads plug in by implementing [`Workload`]. The watch workload
//! lives in [`crate::watch`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{json, Value};

use crate::checker::CheckResult;
use crate::history::{Op, OpType};
use crate::rng::Rng;

/// What a client is about to do.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub f: String,
    pub key: String,
    pub value: Value,
}

/// How it ended.
#[derive(Clone, Debug)]
pub struct Completion {
    pub kind: OpType,
    pub value: Value,
    pub error: Option<String>,
}

impl Completion {
    pub(crate) fn ok(value: Value) -> Self {
        Self {
            kind: OpType::Ok,
            value,
            error: None,
        }
    }
    pub(crate) fn fail(value: Value, error: impl Into<String>) -> Self {
        Self {
            kind: OpType::Fail,
            value,
            error: Some(error.into()),
        }
    }
    pub(crate) fn info(value: Value, error: impl Into<String>) -> Self {
        Self {
            kind: OpType::Info,
            value,
            error: Some(error.into()),
        }
    }
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Per-process state a generator may keep (e.g. the last value seen).
#[derive(Default, Clone, Debug)]
pub struct ProcessState {
    pub last_seen: std::collections::HashMap<String, Value>,
    /// The process the next invocation runs as (set by the runner), so a
    /// generator can make values that name their writer.
    pub process: u64,
}

/// Where a workload's background tasks record their operations: the run's
/// history, stamped with the run's clock on arrival.
pub type Sink = std::sync::Arc<dyn Fn(Op) + Send + Sync>;

pub trait Workload: Send + Sync {
    fn name(&self) -> &'static str;
    /// The name with the variant that changes what a run means, for run
    /// folders and reports (e.g. `register-stale`).
    fn label(&self) -> String {
        self.name().to_string()
    }
    /// The next operation of one process.
    fn next(&self, rng: &mut Rng, state: &mut ProcessState) -> Invocation;
    /// Performs it against a node's gateway.
    fn invoke<'a>(
        &'a self,
        http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion>;
    /// Keys the recovery check writes and reads after heal.
    fn keys(&self) -> Vec<String>;
    /// Before the clients start, once a leader is up (the room workload
    /// creates its rooms). Default: nothing.
    fn setup<'a>(
        &'a self,
        _http: &'a Http,
        _bases: &'a [(u32, String)],
    ) -> BoxFut<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Starts tasks that run beside the clients from their start until
    /// `final_reads` ends them (the watch workload's streams), recording
    /// into `sink`; `end` is when the clients stop. Default: none.
    fn start_background(&self, _bases: &[(u32, String)], _sink: Sink, _end: std::time::Instant) {}
    /// Operations after heal, e.g. final reads on every node.
    fn final_reads<'a>(
        &'a self,
        http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>>;
    /// Checks the history.
    fn check(&self, history: &[Op], budget: Duration) -> Vec<CheckResult>;
}

/// HTTP access with the classification every workload shares.
pub struct Http {
    pub client: reqwest::Client,
}

/// A response or how the request failed.
pub enum Reply {
    Status(u16, Value),
    /// Never reached the server: nothing happened.
    NotSent(String),
    /// Sent; outcome unknown (timeout, reset).
    Lost(String),
}

impl Http {
    pub fn new(timeout: Duration) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_millis(500))
                .build()
                .expect("http client"),
        }
    }

    pub async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Reply::Status(status, v)
            }
            Err(e) if e.is_connect() => Reply::NotSent(e.to_string()),
            Err(e) => Reply::Lost(e.to_string()),
        }
    }
}

/// Maps a write's reply: 2xx ok; 503 and 4xx certainly did nothing; 504,
/// other 5xx and lost requests are unknown.
pub(crate) fn write_outcome(
    reply: Reply,
    ok: impl FnOnce(Value) -> Completion,
    value: Value,
) -> Completion {
    match reply {
        Reply::Status(200, body) => ok(body),
        Reply::Status(503, body) => Completion::fail(value, format!("503 {body}")),
        Reply::Status(s, body) if (400..500).contains(&s) => {
            Completion::fail(value, format!("{s} {body}"))
        }
        Reply::Status(s, body) => Completion::info(value, format!("{s} {body}")),
        Reply::NotSent(e) => Completion::fail(value, format!("not sent: {e}")),
        Reply::Lost(e) => Completion::info(value, format!("lost: {e}")),
    }
}

/// `PUT {"value": value}` to `url`: ok with the value written, or the
/// outcome [`write_outcome`] gives.
async fn put_value(http: &Http, url: &str, value: &Value) -> Completion {
    let reply = http
        .call(reqwest::Method::PUT, url, Some(json!({ "value": value })))
        .await;
    write_outcome(reply, |_| Completion::ok(value.clone()), value.clone())
}

/// Register workload: reads, writes of unique integers and CAS on a handful
/// of keys through the pm3 KV API.
pub struct Register {
    pub keys: Vec<String>,
    /// Read with `?stale`: a deliberately non-linearizable mode the checker
    /// must catch under partitions.
    pub stale_reads: bool,
    next_value: std::sync::atomic::AtomicI64,
}

impl Register {
    pub fn new(key_count: usize, stale_reads: bool) -> Self {
        Self {
            keys: (0..key_count).map(|i| format!("r{i}")).collect(),
            stale_reads,
            next_value: std::sync::atomic::AtomicI64::new(1),
        }
    }
}

impl Workload for Register {
    fn name(&self) -> &'static str {
        "register"
    }

    fn label(&self) -> String {
        // Stale-read runs are expected to be invalid: never mix them up
        // with linearizable ones.
        if self.stale_reads {
            "register-stale".into()
        } else {
            "register".into()
        }
    }

    fn next(&self, rng: &mut Rng, state: &mut ProcessState) -> Invocation {
        let key = rng.pick(&self.keys).clone();
        let fresh = || {
            self.next_value
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
        match rng.below(10) {
            0..=4 => Invocation {
                f: "read".into(),
                key,
                value: Value::Null,
            },
            5..=7 => Invocation {
                f: "write".into(),
                key,
                value: json!(fresh()),
            },
            _ => {
                let expected = state.last_seen.get(&key).cloned().unwrap_or(Value::Null);
                Invocation {
                    f: "cas".into(),
                    key,
                    value: json!([expected, fresh()]),
                }
            }
        }
    }

    fn invoke<'a>(
        &'a self,
        http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion> {
        Box::pin(async move {
            let url = format!("{base}/kv/{}", inv.key);
            match inv.f.as_str() {
                "read" => {
                    let url = if self.stale_reads {
                        format!("{url}?stale")
                    } else {
                        url
                    };
                    match http.call(reqwest::Method::GET, &url, None).await {
                        Reply::Status(200, body) => Completion::ok(json!({
                            "revision": body["revision"],
                            "value": body["value"],
                        })),
                        Reply::Status(s, body) => {
                            Completion::fail(Value::Null, format!("{s} {body}"))
                        }
                        Reply::NotSent(e) | Reply::Lost(e) => Completion::fail(Value::Null, e),
                    }
                }
                "write" => put_value(http, &url, &inv.value).await,
                "cas" => {
                    let body = json!({"expected": inv.value[0], "desired": inv.value[1]});
                    let reply = http
                        .call(reqwest::Method::POST, &format!("{url}/cas"), Some(body))
                        .await;
                    let v = inv.value.clone();
                    write_outcome(
                        reply,
                        |b| {
                            if b["ok"] == Value::Bool(true) {
                                Completion::ok(v.clone())
                            } else {
                                Completion::fail(
                                    v.clone(),
                                    format!("cas mismatch: current {}", b["value"]),
                                )
                            }
                        },
                        inv.value.clone(),
                    )
                }
                other => Completion::fail(Value::Null, format!("unknown f {other}")),
            }
        })
    }

    fn keys(&self) -> Vec<String> {
        self.keys.clone()
    }

    fn final_reads<'a>(
        &'a self,
        _http: &'a Http,
        _bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>> {
        Box::pin(async { Vec::new() })
    }

    fn check(&self, history: &[Op], budget: Duration) -> Vec<CheckResult> {
        vec![
            crate::checker::linearizable::check_register(history, budget),
            crate::checker::monotonic::check_monotonic_reads(history),
        ]
    }
}

/// Set workload: each add writes a unique element as its own key under
/// `s/`; after heal, every node lists the prefix (linearizable read).
pub struct Set {
    next: std::sync::atomic::AtomicI64,
}

impl Set {
    pub fn new() -> Self {
        Self {
            next: std::sync::atomic::AtomicI64::new(1),
        }
    }
}

impl Default for Set {
    fn default() -> Self {
        Self::new()
    }
}

impl Workload for Set {
    fn name(&self) -> &'static str {
        "set"
    }

    fn next(&self, _rng: &mut Rng, _state: &mut ProcessState) -> Invocation {
        let e = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Invocation {
            f: "add".into(),
            key: "set".into(),
            value: json!(e),
        }
    }

    fn invoke<'a>(
        &'a self,
        http: &'a Http,
        base: &'a str,
        inv: &'a Invocation,
    ) -> BoxFut<'a, Completion> {
        Box::pin(
            async move { put_value(http, &format!("{base}/kv/s{}", inv.value), &inv.value).await },
        )
    }

    fn keys(&self) -> Vec<String> {
        vec!["s0".into()]
    }

    fn final_reads<'a>(
        &'a self,
        http: &'a Http,
        bases: &'a [(u32, String)],
    ) -> BoxFut<'a, Vec<(u32, Invocation, Completion)>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (id, base) in bases {
                let inv = Invocation {
                    f: "read".into(),
                    key: "set".into(),
                    value: Value::Null,
                };
                let mut done = None;
                // A final read must succeed to be useful; a few bounded tries.
                for _ in 0..10 {
                    match http
                        .call(reqwest::Method::GET, &format!("{base}/kv?prefix=s"), None)
                        .await
                    {
                        Reply::Status(200, Value::Array(keys)) => {
                            let elems: Vec<Value> = keys
                                .iter()
                                .filter_map(|k| k.as_str()?.strip_prefix('s')?.parse::<i64>().ok())
                                .filter(|e| *e > 0)
                                .map(Value::from)
                                .collect();
                            done = Some(Completion::ok(Value::Array(elems)));
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
                let c = done.unwrap_or_else(|| Completion::fail(Value::Null, "final read failed"));
                out.push((*id, inv, c));
            }
            out
        })
    }

    fn check(&self, history: &[Op], _budget: Duration) -> Vec<CheckResult> {
        vec![crate::checker::set::check_set(history)]
    }
}
