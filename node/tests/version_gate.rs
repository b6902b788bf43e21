//! Rolling upgrades: the leader refuses writes a member is too old to
//! decode, learns when that member was upgraded, and records it in the
//! membership; a node that meets an entry it cannot decode stops, naming it.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, ClusterOpts};
use openraft::storage::RaftLogStorage as _;
use raftmesh_node::testing::{start_cluster_with, TestCluster};
use raftmesh_proto::NodeId;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// PUT `key` through node `via`, retrying (bounded) while no leader is
/// known: (status, body).
async fn put(c: &TestCluster, via: NodeId, key: &str, value: Value) -> (u16, Value) {
    let url = format!("{}/kv/{key}", c.url(via));
    let deadline = Instant::now() + TIMEOUT;
    for _ in 0..400 {
        let r = client()
            .put(&url)
            .json(&json!({ "value": value }))
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            if status != 503 || Instant::now() > deadline {
                return (status, body);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("PUT {url} kept answering 503");
}

async fn get_json(c: &TestCluster, id: NodeId, path: &str) -> Value {
    let url = format!("{}{path}", c.url(id));
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// Each member's version as `/cluster` on node `id` shows it.
async fn versions(c: &TestCluster, id: NodeId) -> Vec<(u64, u64)> {
    let s = get_json(c, id, "/cluster").await;
    s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["node_id"].as_u64().unwrap(),
                m["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// This build's feature version.
const V: u64 = raftmesh_proto::FEATURE_VERSION as u64;

async fn wait_versions(c: &TestCluster, id: NodeId, want: &[(u64, u64)]) {
    let deadline = Instant::now() + TIMEOUT;
    for _ in 0..200 {
        let got = versions(c, id).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: member versions {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {id}: member versions never became {want:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_wait_for_the_oldest_member_then_its_upgrade_is_recorded() {
    // Node 3 poses as release 0.1 (version 1).
    let mut c = start_cluster_with(3, |cfg| {
        if cfg.node_id == 3 {
            cfg.advertised_version = 1;
        }
    })
    .await
    .unwrap();
    let leader = c.wait_for_leader(&[1, 2, 3], TIMEOUT).await.unwrap();
    for id in 1..=3 {
        wait_versions(&c, id, &[(1, V), (2, V), (3, 1)]).await;
    }
    let peers = get_json(&c, 1, "/peers").await;
    assert_eq!(peers[2]["version"], 1, "{peers}");

    // Refused on the leader, whether sent there or forwarded to it, and
    // nothing is proposed.
    let want = "node 3 supports version 1; this write needs version 2 — upgrade node 3 first";
    let before = get_json(&c, leader, "/cluster").await["last_log_index"].clone();
    for via in 1..=3 {
        let (status, body) = put(&c, via, "gate-a", json!(via)).await;
        assert_eq!(status, 400, "via node {via}: {body}");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(want), "via node {via}: {msg}");
    }
    let now = get_json(&c, leader, "/cluster").await["last_log_index"].clone();
    assert_eq!(now, before, "a refused write must not reach the log");
    let read = get_json(&c, 1, "/kv/gate-a").await;
    assert_eq!(read, json!({"revision": 0, "value": null}));

    // Node 3 is upgraded: restarted on the same data dir with this build's
    // version. The leader learns it and records it in the membership, which
    // every node then shows; writes go through.
    c.nodes.get_mut(&3).unwrap().cfg.advertised_version = raftmesh_proto::FEATURE_VERSION;
    c.restart(3).await.unwrap();
    assert_eq!(get_json(&c, 3, "/cluster").await["version"], V);
    for id in 1..=3 {
        wait_versions(&c, id, &[(1, V), (2, V), (3, V)]).await;
    }
    for via in 1..=3 {
        let (status, body) = put(&c, via, "gate-a", json!(via)).await;
        assert_eq!(status, 200, "via node {via}: {body}");
    }
    let leader = c.wait_for_leader(&[1, 2, 3], TIMEOUT).await.unwrap();

    // Learners count: an old learner blocks writes too.
    let tweak = |cfg: &mut raftmesh_node::Config| cfg.advertised_version = 1;
    c.prepare(4, &tweak).await.unwrap();
    let peers: Vec<String> = (1..=4)
        .map(|id| format!("{id}={}", c.node(id).grpc_addr))
        .collect();
    c.nodes.get_mut(&4).unwrap().cfg.peers = peers;
    c.start(4).await.unwrap();
    let r = client()
        .post(format!("{}/cluster/add-learner", c.url(leader)))
        .json(&json!({
            "node_id": 4,
            "grpc_addr": c.node(4).grpc_addr.to_string(),
            "http_addr": c.node(4).http_addr.to_string(),
            "timeout_ms": 20_000,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Recorded as what it advertises, not what the request said.
    wait_versions(&c, leader, &[(1, V), (2, V), (3, V), (4, 1)]).await;
    let (status, body) = put(&c, 1, "gate-b", json!(1)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("upgrade node 4 first"),
        "{body}"
    );
    c.shutdown().await;
}

/// A node whose log holds an entry of a newer format (as a newer release
/// would have written it) does not start: the process exits non-zero and
/// says which entry, which version this build supports, and what to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_meeting_a_newer_entry_exits_naming_it() {
    let mut c = Cluster::start(ClusterOpts {
        nodes: 1,
        processes: true,
        ..Default::default()
    })
    .await;
    c.put_ok(1, "gate-x", json!(1)).await;
    let status = c.terminate(1).await;
    assert!(status.success(), "clean stop: {status}");

    let db = c.node(1).data_dir().join("db");
    let next = {
        let (mut log, _sm, _reader) = raftmesh_raft_store::open(&db).unwrap();
        let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
        let next = last.index + 1;
        log.put_raw_entry(next, &[0x03, 0x0a, 0x00]).unwrap();
        next
    };

    c.spawn(1).await;
    let deadline = Instant::now() + TIMEOUT;
    let exit = loop {
        let child = c.node_mut(1).child.as_mut().unwrap();
        if let Some(st) = child.try_wait().unwrap() {
            c.node_mut(1).child = None;
            break st;
        }
        assert!(Instant::now() < deadline, "node 1 kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!exit.success(), "{exit}");
    // The whole log: the lines that matter are long.
    let log = std::fs::read_to_string(c.node(1).log_path()).unwrap();
    for want in [
        format!("log entry {next}: entry format version 3"),
        format!("supports up to version {}", raftmesh_proto::FEATURE_VERSION),
        "upgrade this node".to_string(),
    ] {
        assert!(log.contains(&want), "log lacks {want:?}:\n{log}");
    }
}
