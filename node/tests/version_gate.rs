//! Rolling upgrades: the leader refuses writes a member is too old to
//! decode, learns when that member was upgraded, and records it in the
//! membership.

use std::time::{Duration, Instant};

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
        wait_versions(&c, id, &[(1, 2), (2, 2), (3, 1)]).await;
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
    assert_eq!(get_json(&c, 3, "/cluster").await["version"], 2);
    for id in 1..=3 {
        wait_versions(&c, id, &[(1, 2), (2, 2), (3, 2)]).await;
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
    wait_versions(&c, leader, &[(1, 2), (2, 2), (3, 2), (4, 1)]).await;
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
