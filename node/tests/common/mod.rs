//! Test harness: runs nodes on loopback — in this process by default (the
//! library's `testing::TestCluster`: real Raft, RocksDB, gRPC and HTTP), or
//! as `raftmesh serve` child processes with log files where a test must see
//! a real process (kill -9, SIGSTOP, the binary's own logging) — and talks
//! to them over the HTTP gateway either way.
//!
//! Every wait loop is bounded in time and in iterations. On a panic, the
//! cluster's `Drop` prints the tail of every node's log before killing it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_raftmesh");

/// Per-request timeout of every HTTP call the harness makes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster gets to agree on a leader (start, restart).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a write may keep being retried on 503 (no leader).
pub const WRITE_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

pub type NodeId = u64;

/// Log lines longer than this are cut in failure output.
const MAX_LOG_LINE: usize = 400;
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Cluster tests start several processes each with tight Raft timings; on
/// a 2-core CI box running them in parallel invites spurious elections. One
/// cluster at a time per test binary.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial_guard() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ports handed out by this process, never handed out twice.
static USED_PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();

/// A free loopback port: bind `127.0.0.1:0`, read the port, drop the socket.
pub fn free_port() -> u16 {
    let used = USED_PORTS.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut used = used.lock().unwrap_or_else(PoisonError::into_inner);
        if used.insert(port) {
            return port;
        }
    }
    panic!("could not find a free port in 100 tries");
}

/// Default Raft timings for tests (small, to keep tests fast).
pub fn timing_args() -> Vec<String> {
    [
        "--heartbeat-ms",
        "50",
        "--election-timeout-min-ms",
        "300",
        "--election-timeout-max-ms",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub struct Node {
    pub id: NodeId,
    /// Runs in this process rather than as a child process.
    pub in_process: bool,
    /// An in-process node that is started.
    pub in_process_running: bool,
    /// Where its data lives (the in-process cluster owns its own temp dir).
    data: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    pub rstmdb_port: u16,
    /// Node ids listed as `--peer` (their addresses come from the cluster).
    pub peer_ids: Vec<NodeId>,
    pub extra_args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub starts: u32,
}

impl Node {
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }
    pub fn rstmdb_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rstmdb_port)
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    pub fn is_running(&mut self) -> bool {
        if self.in_process {
            return self.in_process_running;
        }
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The last `lines` lines of this node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        if self.in_process {
            return "<in-process node: its log is this test's output>".into();
        }
        let mut f = match File::open(self.log_path()) {
            Ok(f) => f,
            Err(e) => return format!("<no log: {e}>"),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(64 * 1024);
        let _ = f.seek(SeekFrom::Start(start));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        all[from..]
            .iter()
            .map(|l| {
                if l.len() > MAX_LOG_LINE {
                    let mut end = MAX_LOG_LINE;
                    while !l.is_char_boundary(end) {
                        end -= 1;
                    }
                    format!("{}…", &l[..end])
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What happened to a write, from the client's point of view.
#[derive(Clone, Debug)]
pub enum WriteOutcome {
    /// Acknowledged; the revision (log index) the server returned.
    Ok(u64),
    /// Sent, but the outcome is unknown (504, or a transport error after
    /// the request may have been sent). Never retried.
    Unknown(String),
    /// Definitely rejected (4xx, or 503 retried until the deadline).
    Rejected(u16, String),
}

impl WriteOutcome {
    pub fn revision(&self) -> Option<u64> {
        match self {
            WriteOutcome::Ok(r) => Some(*r),
            _ => None,
        }
    }
}

/// One HTTP response, fully read.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON (`Value::Null` if it is not JSON).
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_string())
    }
    /// `X-Raft-Leader` as a bool (panics if missing or malformed).
    pub fn raft_leader(&self) -> bool {
        match self.header("x-raft-leader").as_deref() {
            Some("true") => true,
            Some("false") => false,
            other => panic!("bad X-Raft-Leader header {other:?} on {self:?}"),
        }
    }
    /// `X-Served-By` as a node id (panics if missing or malformed).
    pub fn served_by(&self) -> NodeId {
        self.header("x-served-by")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad X-Served-By header on {self:?}"))
    }
    /// `X-Raft-Leader-Id` (None when empty).
    pub fn leader_id(&self) -> Option<NodeId> {
        let h = self
            .header("x-raft-leader-id")
            .unwrap_or_else(|| panic!("missing X-Raft-Leader-Id on {self:?}"));
        let h = h.trim();
        if h.is_empty() {
            None
        } else {
            Some(
                h.parse()
                    .unwrap_or_else(|_| panic!("bad X-Raft-Leader-Id {h:?} on {self:?}")),
            )
        }
    }
    pub fn raft_term(&self) -> u64 {
        self.header("x-raft-term")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad X-Raft-Term header on {self:?}"))
    }
    pub fn raft_index(&self) -> u64 {
        self.header("x-raft-index")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad X-Raft-Index header on {self:?}"))
    }
    /// The `error` message of an error body (panics if absent or empty).
    pub fn error_message(&self) -> String {
        match self.body.get("error").and_then(|e| e.as_str()) {
            Some(s) if !s.trim().is_empty() => s.to_string(),
            _ => panic!("expected a {{\"error\": \"...\"}} body, got {self:?}"),
        }
    }
}

/// A read of one key: `{"revision": N, "value": V}`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvRead {
    pub revision: u64,
    pub value: Value,
}

/// A JSON request failure classified by whether the request may have
/// reached the server.
#[derive(Debug)]
pub enum SendError {
    /// The connection was never established: nothing was sent.
    NotSent(String),
    /// Anything else (timeout, reset mid-way): it may have been applied.
    MaybeSent(String),
}

/// Percent-encode a key as one path segment. Keys in the valid alphabet
/// only need `/` escaped; everything else outside unreserved is escaped too.
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'=' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

/// Send one request and read the whole response.
pub async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> Result<Resp, SendError> {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(SendError::NotSent(format!("{url}: {e:?}"))),
        Err(e) => return Err(SendError::MaybeSent(format!("{url}: {e:?}"))),
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp
        .text()
        .await
        .map_err(|e| SendError::MaybeSent(format!("{url}: reading body: {e:?}")))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Resp {
        status,
        headers,
        text,
        body,
    })
}

pub struct ClusterOpts {
    /// Nodes started (ids 1..=n, each with `--peer` for all of 1..=n).
    pub nodes: u64,
    /// Extra `serve` args for every node (after the timing args).
    pub extra_args: Vec<String>,
    /// Child processes instead of in-process nodes.
    pub processes: bool,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            nodes: 3,
            extra_args: Vec::new(),
            processes: false,
        }
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub client: reqwest::Client,
    pub extra_args: Vec<String>,
    /// Nodes added later run the same way as the first ones.
    processes: bool,
    /// The in-process nodes (real servers in this process).
    inproc: raftmesh_node::testing::TestCluster,
    _serial: MutexGuard<'static, ()>,
}

/// `serve` arguments as the binary would read them.
#[derive(clap::Parser)]
struct ServeOnly {
    #[command(flatten)]
    args: raftmesh_node::ServeArgs,
}

fn config_from_args(args: &[String]) -> raftmesh_node::Config {
    use clap::Parser as _;
    let w = ServeOnly::try_parse_from(args.iter().map(String::as_str))
        .unwrap_or_else(|e| panic!("bad serve args {args:?}: {e}"));
    w.args
        .resolve()
        .unwrap_or_else(|e| panic!("bad serve args {args:?}: {e}"))
}

impl Cluster {
    /// Start a 3-node in-process cluster with default options.
    pub async fn start3() -> Cluster {
        Cluster::start(ClusterOpts::default()).await
    }

    /// Start a 3-node cluster of child processes.
    pub async fn start3_processes() -> Cluster {
        Cluster::start(ClusterOpts {
            processes: true,
            ..Default::default()
        })
        .await
    }

    /// Start `opts.nodes` nodes and wait until they agree on a leader.
    pub async fn start(opts: ClusterOpts) -> Cluster {
        let guard = serial_guard();
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            client: client(),
            extra_args: opts.extra_args.clone(),
            processes: opts.processes,
            inproc: raftmesh_node::testing::TestCluster {
                nodes: BTreeMap::new(),
            },
            _serial: guard,
        };
        let ids: Vec<NodeId> = (1..=opts.nodes).collect();
        for &id in &ids {
            c.add_node(id, ids.clone(), opts.extra_args.clone()).await;
        }
        for &id in &ids {
            c.spawn(id).await;
        }
        c.wait_for_leader().await;
        c
    }

    /// Register a node (fresh ports and data dir) without starting it.
    pub async fn add_node(&mut self, id: NodeId, peer_ids: Vec<NodeId>, extra_args: Vec<String>) {
        assert!(!self.nodes.contains_key(&id), "node {id} already exists");
        let dir = tempfile::Builder::new()
            .prefix(&format!("raftmesh-n{id}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data")).expect("create data dir");
        let (data, http_port, grpc_port, rstmdb_port) = if self.processes {
            (
                dir.path().join("data"),
                free_port(),
                free_port(),
                free_port(),
            )
        } else {
            // Ports bound now (port 0) and kept across restarts.
            let t = self
                .inproc
                .prepare(id, &|_| {})
                .await
                .expect("prepare node");
            (
                t.data_dir().clone(),
                t.http_addr.port(),
                t.grpc_addr.port(),
                t.rstmdb_addr.port(),
            )
        };
        self.nodes.insert(
            id,
            Node {
                id,
                in_process: !self.processes,
                in_process_running: false,
                data,
                http_port,
                grpc_port,
                rstmdb_port,
                peer_ids,
                extra_args,
                dir,
                child: None,
                starts: 0,
            },
        );
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
    pub fn url(&self, id: NodeId) -> String {
        self.node(id).url()
    }
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
    /// Ids of nodes whose process is alive.
    pub fn running(&mut self) -> Vec<NodeId> {
        self.nodes
            .iter_mut()
            .filter_map(|(id, n)| n.is_running().then_some(*id))
            .collect()
    }

    /// The `serve` command line of a node.
    pub fn serve_args(&self, id: NodeId) -> Vec<String> {
        let n = self.node(id);
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            n.data_dir().display().to_string(),
            "--http-addr".into(),
            n.http_addr(),
            "--grpc-addr".into(),
            n.grpc_addr(),
            "--rstmdb-addr".into(),
            n.rstmdb_addr(),
        ];
        for p in &n.peer_ids {
            args.push("--peer".into());
            args.push(format!("{p}={}", self.node(*p).grpc_addr()));
        }
        args.extend(timing_args());
        args.extend(n.extra_args.iter().cloned());
        args
    }

    /// Start (or restart: same command, same data dir) a node.
    pub async fn spawn(&mut self, id: NodeId) {
        let args = self.serve_args(id);
        let n = self.node_mut(id);
        if n.is_running() {
            panic!("node {id} is already running");
        }
        n.starts += 1;
        if n.in_process {
            let mut full = vec!["serve".to_string()];
            full.extend(args.into_iter().skip(1));
            let cfg = config_from_args(&full);
            self.inproc.nodes.get_mut(&id).expect("prepared").cfg = cfg;
            self.inproc
                .start(id)
                .await
                .unwrap_or_else(|e| panic!("starting node {id}: {e}"));
            self.node_mut(id).in_process_running = true;
            return;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.log_path())
            .expect("open node log");
        {
            use std::io::Write;
            let mut l = &log;
            let _ = writeln!(
                l,
                "===== harness: start #{} of node {id}: {BIN} {} =====",
                n.starts,
                args.join(" ")
            );
        }
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        n.child = Some(child);
    }

    /// Crash a node: SIGKILL, then reap it (in process: stop it).
    pub async fn kill(&mut self, id: NodeId) {
        if self.node(id).in_process {
            self.inproc.stop(id).await;
            self.node_mut(id).in_process_running = false;
            return;
        }
        let n = self.node_mut(id);
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Clean stop: SIGTERM, then wait (bounded) for the process to exit.
    /// Returns its exit status. Panics (after a SIGKILL) if it did not exit.
    pub async fn terminate(&mut self, id: NodeId) -> ExitStatus {
        if self.node(id).in_process {
            self.inproc.stop(id).await;
            self.node_mut(id).in_process_running = false;
            use std::os::unix::process::ExitStatusExt as _;
            return ExitStatus::from_raw(0);
        }
        let pid = self
            .node(id)
            .pid()
            .unwrap_or_else(|| panic!("node {id} not running"));
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed: {st}");
        let deadline = Instant::now() + Duration::from_secs(15);
        let n = self.node_mut(id);
        let child = n.child.as_mut().unwrap();
        for _ in 0..1500 {
            if let Some(status) = child.try_wait().expect("try_wait") {
                n.child = None;
                return status;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("node {id} (pid {pid}) did not exit within 15 s of SIGTERM");
    }

    /// Stops a node from talking to its peers: SIGSTOP for a process (it
    /// freezes), isolation in process (it runs but its RPCs fail both ways).
    pub fn freeze(&mut self, id: NodeId, on: bool) {
        if self.node(id).in_process {
            self.inproc.isolate(id, on);
            return;
        }
        let pid = self.node(id).pid().expect("running").to_string();
        let sig = if on { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill {sig} {pid} failed");
    }

    /// Panic with a clear message if a node we expect to run has exited.
    pub fn assert_alive(&mut self, ids: &[NodeId]) {
        for &id in ids {
            let n = self.node_mut(id);
            if n.in_process {
                assert!(n.in_process_running, "node {id} is not running");
                continue;
            }
            if let Some(c) = n.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("node {id} exited unexpectedly: {st}");
                }
            } else {
                panic!("node {id} is not running");
            }
        }
    }

    // ----- Raft view -----

    /// `GET /cluster` on a node (one attempt).
    pub async fn cluster_status(&self, id: NodeId) -> Result<Value, String> {
        let url = format!("{}/cluster", self.url(id));
        match send(&self.client, reqwest::Method::GET, &url, None).await {
            Ok(r) if r.status == 200 => Ok(r.body),
            Ok(r) => Err(format!("GET {url}: {} {}", r.status, r.text)),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// `GET /cluster`, retried until it answers 200 (bounded).
    pub async fn cluster_status_ok(&self, id: NodeId) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        for _ in 0..100 {
            match self.cluster_status(id).await {
                Ok(v) => return v,
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("GET /cluster on node {id} kept failing: {last}");
    }

    /// Wait until every running node agrees on one leader.
    pub async fn wait_for_leader(&mut self) -> NodeId {
        let ids = self.running();
        self.wait_for_leader_among(&ids, LEADER_TIMEOUT).await
    }

    /// Wait until all of `ids` report the same leader, that leader is one
    /// of `ids`, and it reports itself as `Leader` in the same term.
    pub async fn wait_for_leader_among(&mut self, ids: &[NodeId], timeout: Duration) -> NodeId {
        assert!(!ids.is_empty());
        let start = Instant::now();
        let mut last_view = String::new();
        for _ in 0..2000 {
            self.assert_alive(ids);
            let mut views = Vec::new();
            for &id in ids {
                views.push((id, self.cluster_status(id).await));
            }
            last_view = format!("{views:?}");
            if let Some(l) = agreed_leader(&views, ids) {
                return l;
            }
            if start.elapsed() > timeout {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "nodes {ids:?} did not agree on a leader within {timeout:?}; last views: {last_view}"
        );
    }

    // ----- KV helpers -----

    pub fn kv_url(&self, id: NodeId, key: &str) -> String {
        format!("{}/kv/{}", self.url(id), encode_key(key))
    }

    /// One raw request to a node (path starts with `/`).
    pub async fn raw(
        &self,
        id: NodeId,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Resp, SendError> {
        let url = format!("{}{}", self.url(id), path);
        send(&self.client, method, &url, body).await
    }

    /// One `PUT /kv/:key` attempt with the given JSON body.
    pub async fn put_once(&self, id: NodeId, key: &str, body: &Value) -> Result<Resp, SendError> {
        send(
            &self.client,
            reqwest::Method::PUT,
            &self.kv_url(id, key),
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// Unconditional PUT, retried only when that is safe (503, or the
    /// connection was never made). Returns the outcome and the last response.
    pub async fn put(&self, id: NodeId, key: &str, value: Value) -> (WriteOutcome, Option<Resp>) {
        let body = json!({ "value": value });
        let out = self.write_retrying(|| self.put_once(id, key, &body)).await;
        if let (WriteOutcome::Ok(_), Some(r)) = &out {
            assert!(
                r.body.as_u64().is_some_and(|n| n > 0),
                "PUT {key} on node {id}: 200 but the body is not a bare positive revision: {r:?}"
            );
        }
        out
    }

    /// Unconditional PUT that must be acknowledged; returns the revision.
    pub async fn put_ok(&self, id: NodeId, key: &str, value: Value) -> u64 {
        match self.put(id, key, value.clone()).await {
            (WriteOutcome::Ok(r), _) => r,
            (other, resp) => panic!(
                "PUT {key}={value} on node {id} was not acknowledged: {other:?}; response: {resp:?}"
            ),
        }
    }

    /// `DELETE /kv/:key`, retried only when safe.
    pub async fn delete(&self, id: NodeId, key: &str) -> (WriteOutcome, Option<Resp>) {
        let url = self.kv_url(id, key);
        self.write_retrying(|| send(&self.client, reqwest::Method::DELETE, &url, None))
            .await
    }

    /// One `POST /kv/:key/cas` attempt with the given JSON body.
    pub async fn cas_once(&self, id: NodeId, key: &str, body: &Value) -> Result<Resp, SendError> {
        cas_once(&self.client, &self.url(id), key, body).await
    }

    /// Shared retry policy for writes: retry on 503 and on connection
    /// failures (nothing was sent), never after 504 or a possibly-sent
    /// transport error.
    pub async fn write_retrying<F, Fut>(&self, f: F) -> (WriteOutcome, Option<Resp>)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Resp, SendError>>,
    {
        write_retrying(f).await
    }

    /// Read one key (linearizable unless `stale`). Reads have no side
    /// effects, so any failure is retried (bounded). Panics on a non-200.
    /// Waits (bounded) until node `id` serves every key of `expect` with
    /// that revision and value from its own state machine (`?stale`).
    pub async fn wait_caught_up(
        &self,
        id: NodeId,
        expect: &BTreeMap<String, (u64, Value)>,
        timeout: Duration,
    ) -> Result<(), String> {
        eventually(timeout, Duration::from_millis(250), || async move {
            for (key, (rev, value)) in expect.iter().rev() {
                let (r, _) = self.get(id, key, true).await;
                if r.revision != *rev || r.value != *value {
                    return Err(format!(
                        "stale read of {key} on node {id}: {r:?}, want rev {rev} {value}"
                    ));
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn get(&self, id: NodeId, key: &str, stale: bool) -> (KvRead, Resp) {
        let url = if stale {
            format!("{}?stale", self.kv_url(id, key))
        } else {
            self.kv_url(id, key)
        };
        get_retrying(&self.client, &url).await
    }

    /// `GET /kv` (sorted key list), linearizable, retried on failure.
    pub async fn list(&self, id: NodeId) -> Vec<String> {
        let url = format!("{}/kv", self.url(id));
        let deadline = Instant::now() + WRITE_RETRY_TIMEOUT;
        let mut last = String::new();
        for _ in 0..200 {
            match send(&self.client, reqwest::Method::GET, &url, None).await {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_value(r.body.clone())
                        .unwrap_or_else(|e| panic!("GET /kv body not a string list: {e}: {r:?}"))
                }
                Ok(r) => last = format!("{} {}", r.status, r.text),
                Err(e) => last = format!("{e:?}"),
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("GET {url} kept failing: {last}");
    }

    /// The tail of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            out.push_str(&format!(
                "\n----- node {id} log ({}) last {lines} lines -----\n{}\n",
                n.log_path().display(),
                n.log_tail(lines)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== raftmesh test failed; node logs follow =====");
            eprintln!("{}", self.log_tails(LOG_TAIL_LINES));
        }
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The leader all of `ids` agree on, if any (it must be one of `ids`,
/// report role `Leader`, and everyone must report the same term).
fn agreed_leader(views: &[(NodeId, Result<Value, String>)], ids: &[NodeId]) -> Option<NodeId> {
    let mut leader = None;
    let mut term = None;
    for (_, v) in views {
        let v = v.as_ref().ok()?;
        let l = v.get("leader")?.as_u64()?;
        let t = v.get("term")?.as_u64()?;
        if *leader.get_or_insert(l) != l || *term.get_or_insert(t) != t {
            return None;
        }
    }
    let l = leader?;
    if !ids.contains(&l) {
        return None;
    }
    let (_, lv) = views.iter().find(|(id, _)| *id == l)?;
    let lv = lv.as_ref().ok()?;
    (lv.get("role")?.as_str()? == "Leader").then_some(l)
}

/// One CAS attempt against a node's base URL.
pub async fn cas_once(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
) -> Result<Resp, SendError> {
    let url = format!("{base}/kv/{}/cas", encode_key(key));
    send(
        client,
        reqwest::Method::POST,
        &url,
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

/// Retry policy for writes (see `Cluster::write_retrying`). For a PUT the
/// `Ok` revision is the bare-number body; for other writes (DELETE, CAS)
/// the outcome is `Ok(0)` and the caller inspects the response.
pub async fn write_retrying<F, Fut>(f: F) -> (WriteOutcome, Option<Resp>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Resp, SendError>>,
{
    let deadline = Instant::now() + WRITE_RETRY_TIMEOUT;
    let mut last: Option<Resp> = None;
    let mut not_sent: Option<String> = None;
    for _ in 0..400u32 {
        match f().await {
            Ok(r) if r.status == 200 => {
                let rev = r.body.as_u64().unwrap_or(0);
                return (WriteOutcome::Ok(rev), Some(r));
            }
            Ok(r) if r.status == 503 => last = Some(r),
            Ok(r) if r.status == 504 => {
                return (WriteOutcome::Unknown(format!("504: {}", r.text)), Some(r))
            }
            Ok(r) => return (WriteOutcome::Rejected(r.status, r.text.clone()), Some(r)),
            Err(SendError::NotSent(e)) => {
                // Nothing reached the server: safe to try again.
                last = None;
                not_sent = Some(e);
            }
            Err(SendError::MaybeSent(e)) => return (WriteOutcome::Unknown(e), None),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match (&last, not_sent) {
        (Some(r), _) => (
            WriteOutcome::Rejected(503, format!("still 503 after retries: {}", r.text)),
            last,
        ),
        (None, e) => (
            WriteOutcome::Rejected(0, format!("could not connect: {e:?}")),
            None,
        ),
    }
}

/// GET a `{"revision","value"}` document, retrying any failure (bounded).
pub async fn get_retrying(client: &reqwest::Client, url: &str) -> (KvRead, Resp) {
    let deadline = Instant::now() + WRITE_RETRY_TIMEOUT;
    let mut last = String::new();
    for _ in 0..400 {
        match send(client, reqwest::Method::GET, url, None).await {
            Ok(r) if r.status == 200 => {
                let revision = r
                    .body
                    .get("revision")
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(|| panic!("GET {url}: no numeric revision in {r:?}"));
                let value = r
                    .body
                    .get("value")
                    .cloned()
                    .unwrap_or_else(|| panic!("GET {url}: no value field in {r:?}"));
                return (KvRead { revision, value }, r);
            }
            Ok(r) if r.status >= 500 => last = format!("{} {}", r.status, r.text),
            Ok(r) => panic!("GET {url}: unexpected status {}: {}", r.status, r.text),
            Err(e) => last = format!("{e:?}"),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("GET {url} kept failing for {WRITE_RETRY_TIMEOUT:?}: {last}");
}

/// Run the `raftmesh` binary with `args` (e.g. the `cluster` CLI), bounded
/// to `timeout`. Returns (success, stdout, stderr).
pub async fn run_cli(args: &[String], timeout: Duration) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("waiting for `raftmesh {}`: {e}", args.join(" ")),
        Err(_) => panic!(
            "`raftmesh {}` did not finish within {timeout:?}",
            args.join(" ")
        ),
    }
}

/// Poll `f` until it returns `Some`, at most `timeout` (checked every
/// `every`). Returns the last `Err` description on timeout.
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let max_iters = (timeout.as_millis() / every.as_millis().max(1)) as usize + 2;
    let mut last = String::from("never tried");
    for _ in 0..max_iters {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(every).await;
    }
    Err(last)
}

/// Member ids of a `/cluster` document, with their voter flag.
pub fn members(status: &Value) -> BTreeMap<NodeId, bool> {
    status
        .get("members")
        .and_then(|m| m.as_array())
        .unwrap_or_else(|| panic!("/cluster has no members array: {status}"))
        .iter()
        .map(|m| {
            (
                m.get("node_id")
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(|| panic!("member without node_id: {m}")),
                m.get("voter")
                    .and_then(|v| v.as_bool())
                    .unwrap_or_else(|| panic!("member without voter flag: {m}")),
            )
        })
        .collect()
}

/// An optional index field of a `/cluster` document.
pub fn opt_index(status: &Value, field: &str) -> Option<u64> {
    match status.get(field) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::Null) | None => None,
        Some(other) => panic!("/cluster field {field} is not a number or null: {other}"),
    }
}
