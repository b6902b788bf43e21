//! raftmesh node processes, one per network namespace, started with the
//! binary's documented flags.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::topology::Topology;

/// gRPC, HTTP and rstmdb ports inside each namespace (each node has its
/// own address).
pub const GRPC_PORT: u16 = 7080;
pub const HTTP_PORT: u16 = 8080;
pub const RSTMDB_PORT: u16 = 7401;

/// Settings passed to every node.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// Small so snapshots are built, purged and installed during runs.
    pub snapshot_logs: u64,
    pub keep_logs: u64,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            snapshot_logs: 200,
            keep_logs: 50,
            heartbeat_ms: 100,
            election_min_ms: 600,
            election_max_ms: 1200,
        }
    }
}

pub struct Cluster {
    pub topo: Topology,
    bin: PathBuf,
    data_dir: PathBuf,
    log_dir: PathBuf,
    opts: NodeOpts,
    procs: Vec<Option<Child>>,
    paused: Vec<bool>,
}

/// libfaketime's preload library, for clock-skewed restarts.
pub fn faketime_lib() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Cluster {
    pub fn new(
        topo: Topology,
        bin: &Path,
        data_dir: &Path,
        log_dir: &Path,
        opts: NodeOpts,
    ) -> Self {
        let n = topo.nodes.len();
        Self {
            topo,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            opts,
            procs: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
        }
    }

    pub fn ids(&self) -> Vec<u32> {
        self.topo.nodes.iter().map(|n| n.id).collect()
    }

    pub fn url(&self, id: u32) -> String {
        format!("http://{}:{HTTP_PORT}", self.topo.node(id).ip)
    }

    pub fn grpc_addr(&self, id: u32) -> String {
        format!("{}:{GRPC_PORT}", self.topo.node(id).ip)
    }

    pub fn http_addr(&self, id: u32) -> String {
        format!("{}:{HTTP_PORT}", self.topo.node(id).ip)
    }

    pub fn rstmdb_addr(&self, id: u32) -> String {
        format!("{}:{RSTMDB_PORT}", self.topo.node(id).ip)
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.procs[(id - 1) as usize].is_some()
    }

    pub fn is_paused(&self, id: u32) -> bool {
        self.paused[(id - 1) as usize]
    }

    /// Starts node `id`; with `skew_secs`, under libfaketime shifted by that
    /// many seconds.
    pub fn start(&mut self, id: u32, skew_secs: Option<i64>) -> anyhow::Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let net = self.topo.node(id);
        let peers: Vec<String> = self
            .topo
            .nodes
            .iter()
            .map(|n| format!("{}={}:{GRPC_PORT}", n.id, n.ip))
            .collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("n{id}.log")))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.netns])
            .arg(&self.bin)
            .args(["serve", "--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir.join(format!("n{id}")))
            .args(["--http-addr", &self.http_addr(id)])
            .args(["--grpc-addr", &self.grpc_addr(id)])
            .args(["--rstmdb-addr", &self.rstmdb_addr(id)])
            .args(["--peer", &peers.join(",")])
            .args(["--snapshot-logs", &self.opts.snapshot_logs.to_string()])
            .args(["--keep-logs", &self.opts.keep_logs.to_string()])
            .args(["--heartbeat-ms", &self.opts.heartbeat_ms.to_string()])
            .args([
                "--election-timeout-min-ms",
                &self.opts.election_min_ms.to_string(),
            ])
            .args([
                "--election-timeout-max-ms",
                &self.opts.election_max_ms.to_string(),
            ])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(s) = skew_secs {
            let lib =
                faketime_lib().context("libfaketime not installed (apt-get install faketime)")?;
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{s:+}s"));
        }
        let child = cmd.spawn().context("spawning raftmesh in its namespace")?;
        self.procs[(id - 1) as usize] = Some(child);
        self.paused[(id - 1) as usize] = false;
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.procs[(id - 1) as usize].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused[(id - 1) as usize] = false;
    }

    fn signal(&self, id: u32, sig: &str) {
        if let Some(child) = &self.procs[(id - 1) as usize] {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    pub fn pause(&mut self, id: u32) {
        self.signal(id, "-STOP");
        self.paused[(id - 1) as usize] = true;
    }

    pub fn resume(&mut self, id: u32) {
        self.signal(id, "-CONT");
        self.paused[(id - 1) as usize] = false;
    }

    /// Resumes paused nodes and starts stopped ones (without skew).
    pub fn restore_all(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            if self.is_paused(id) {
                self.resume(id);
            }
            if !self.is_running(id) {
                self.start(id, None)?;
            }
        }
        Ok(())
    }

    /// Stops every node with SIGTERM, then SIGKILL after a grace period.
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            if self.is_paused(id) {
                self.resume(id);
            }
            self.signal(id, "-TERM");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for slot in self.procs.iter_mut() {
            if let Some(child) = slot.as_mut() {
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            *slot = None;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
