//! A cluster upgraded from release 0.1 in place: today's nodes start on the
//! three data dirs of `raft-store/tests/fixtures/v0.1-3node.tar.gz` (see the
//! README beside it) and serve every key as 0.1 served it, then take writes.
//!
//! The nodes run in this process on the fixture's fixed ports: the Raft
//! membership stored in the data names them, so nodes on other ports could
//! not reach each other.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use raftmesh_node::testing::test_config;
use raftmesh_node::{Listeners, RunningNode};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../raft-store/tests/fixtures/v0.1-3node.tar.gz"
);

#[derive(Deserialize)]
struct Expected {
    peers: String,
    snapshot_logs: u64,
    keep_logs: u64,
    nodes: BTreeMap<u64, ExpectedNode>,
    keys: Vec<String>,
    kv: BTreeMap<String, ExpectedKv>,
    deleted: Vec<String>,
}

#[derive(Deserialize)]
struct ExpectedNode {
    data_dir: String,
    grpc_addr: String,
    http_addr: String,
    cluster: ClusterView,
}

#[derive(Deserialize)]
struct ClusterView {
    last_applied_index: u64,
    last_snapshot_index: u64,
    last_purged_index: u64,
}

#[derive(Deserialize)]
struct ExpectedKv {
    revision: u64,
    /// The stored compact JSON text.
    value: String,
}

/// Unpacks with the system `tar`, as the raft-store fixture test does: it
/// made the archive and needs no new dependency.
fn unpack(into: &Path) -> Expected {
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(FIXTURE)
        .arg("-C")
        .arg(into)
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tar -xzf {FIXTURE}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read(into.join("expected.json")).unwrap();
    serde_json::from_slice(&text).expect("expected.json parses")
}

/// Binds one of the fixture's fixed ports. They lie below Linux's ephemeral
/// range, so only a process that chose the same port holds one; a short
/// retry still covers the previous test run's sockets closing.
async fn bind(addr: &str, what: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() > deadline => panic!(
                "cannot bind {what} address {addr} ({e}): this test needs the fixture's fixed \
                 ports 127.0.0.1:29601-29603 and 29611-29613 free (see `ss -tanp | grep {addr}`)"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// GET `path` on the node at `http_addr`; the status must be 200.
async fn get(http: &reqwest::Client, http_addr: &str, path: &str) -> String {
    let url = format!("http://{http_addr}{path}");
    let resp = http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

fn kv_path(key: &str) -> String {
    format!("/kv/{}", key.replace('/', "%2F"))
}

#[tokio::test(flavor = "multi_thread")]
async fn todays_nodes_serve_the_data_v0_1_wrote_and_take_new_writes() {
    let dir = tempfile::tempdir().unwrap();
    let fx = unpack(dir.path());
    let peers: Vec<String> = fx.peers.split(',').map(str::to_owned).collect();
    for n in fx.nodes.values() {
        assert!(!dir.path().join(&n.data_dir).join("identity.json").exists());
    }

    let mut nodes = BTreeMap::new();
    for (&id, n) in &fx.nodes {
        let listeners = Listeners {
            grpc: bind(&n.grpc_addr, "gRPC").await,
            http: bind(&n.http_addr, "HTTP").await,
            rstmdb: bind("127.0.0.1:0", "rstmdb").await,
        };
        let mut cfg = test_config(id);
        cfg.data_dir = dir.path().join(&n.data_dir);
        cfg.grpc_addr = n.grpc_addr.clone();
        cfg.http_addr = n.http_addr.clone();
        cfg.peers = peers.clone();
        cfg.snapshot_logs = fx.snapshot_logs;
        cfg.keep_logs = fx.keep_logs;
        let node = RunningNode::start(cfg, listeners)
            .await
            .unwrap_or_else(|e| panic!("node {id} does not start on 0.1's data dir: {e}"));
        nodes.insert(id, node);
    }

    // One leader that every node follows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let views: Vec<_> = nodes.values().map(|n| n.raft_view()).collect();
        if let Some(leader) = views[0].leader_id {
            if views.iter().all(|v| v.leader_id == Some(leader))
                && views.iter().any(|v| v.is_leader)
            {
                break leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader within 20 s: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (id, n) in &fx.nodes {
        // The snapshot and purge point 0.1 left are today's starting point.
        let c: Value = serde_json::from_str(&get(&http, &n.http_addr, "/cluster").await).unwrap();
        assert!(
            c["last_snapshot_index"].as_u64() >= Some(n.cluster.last_snapshot_index),
            "node {id}: {c}"
        );
        assert_eq!(
            c["last_purged_index"].as_u64(),
            Some(n.cluster.last_purged_index),
            "node {id}: {c}"
        );
        assert!(
            c["last_applied_index"].as_u64() >= Some(n.cluster.last_applied_index),
            "node {id}: {c}"
        );
        for (key, e) in &fx.kv {
            // Byte for byte what 0.1 answered, linearizable and local.
            let want = format!(r#"{{"revision":{},"value":{}}}"#, e.revision, e.value);
            for q in ["", "?stale"] {
                let body = get(&http, &n.http_addr, &format!("{}{q}", kv_path(key))).await;
                assert_eq!(body, want, "node {id}: GET {key}{q}");
            }
        }
        for key in &fx.deleted {
            let body = get(&http, &n.http_addr, &kv_path(key)).await;
            assert_eq!(
                body, r#"{"revision":0,"value":null}"#,
                "node {id}: deleted {key}"
            );
        }
        let keys: Vec<String> =
            serde_json::from_str(&get(&http, &n.http_addr, "/kv").await).unwrap();
        assert_eq!(keys, fx.keys, "node {id}: GET /kv");
    }

    // A write after the upgrade, through a follower: its revision is above
    // every revision 0.1 handed out.
    let follower = fx.nodes.keys().copied().find(|&id| id != leader).unwrap();
    let url = format!(
        "http://{}{}",
        fx.nodes[&follower].http_addr,
        kv_path("fx/after-upgrade")
    );
    let resp = http
        .put(&url)
        .json(&serde_json::json!({"value": {"written_by": "today"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "PUT {url}");
    let revision: u64 = resp.text().await.unwrap().parse().unwrap();
    let highest = fx.kv.values().map(|e| e.revision).max().unwrap();
    assert!(
        revision > highest,
        "new revision {revision} <= fixture's {highest}"
    );
    let want = format!(r#"{{"revision":{revision},"value":{{"written_by":"today"}}}}"#);
    for (id, n) in &fx.nodes {
        let body = get(&http, &n.http_addr, &kv_path("fx/after-upgrade")).await;
        assert_eq!(body, want, "node {id}");
    }

    // 0.1 wrote no identity file; each data dir now has one, for its node.
    for (&id, n) in &fx.nodes {
        let path = dir.path().join(&n.data_dir).join("identity.json");
        let text =
            std::fs::read(&path).unwrap_or_else(|e| panic!("node {id}: {}: {e}", path.display()));
        let identity: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(identity["node_id"], id, "{}", path.display());
    }

    for (_, n) in nodes {
        n.shutdown().await;
    }
}
