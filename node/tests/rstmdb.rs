//! The rstmdb wire against a real 3-node cluster, driven by the real client
//! (crates.io `rstmdb-client` 0.3.0, unmodified): machines and instances
//! written through a follower and read on every node, a watch on node 3 that
//! sees every event in order and resumes with `from_offset` after the leader
//! is killed, an atomic BATCH rolled back whole, an idempotent APPLY_EVENT
//! retried across a leader change applied once, and auth.

use std::time::{Duration, Instant};

use raftmesh_node::testing::{start_cluster, start_cluster_with, TestCluster};
use rstmdb_client::{Client, ClientError, ConnectionConfig};
use rstmdb_protocol::{ErrorCode, Operation};
use serde_json::{json, Value};

const ORDER: &str = r#"{"states":["pending","paid","shipped"],"initial":"pending",
  "transitions":[{"from":"pending","event":"PAY","to":"paid","guard":"ctx.amount > 0"},
                 {"from":"paid","event":"SHIP","to":"shipped"},
                 {"from":["pending","paid"],"event":"NOTE","to":"pending"}]}"#;

async fn client(c: &TestCluster, id: u64, token: Option<&str>) -> Client {
    let mut cfg =
        ConnectionConfig::new(c.node(id).rstmdb_addr).with_request_timeout(Duration::from_secs(10));
    if let Some(t) = token {
        cfg = cfg.with_auth_token(t);
    }
    let client = Client::new(cfg);
    client.connect().await.expect("connect");
    // The client does not read responses until its read loop runs.
    let conn = client.connection();
    tokio::spawn(async move {
        let _ = conn.read_loop().await;
    });
    client
}

async fn leader(c: &TestCluster, among: &[u64]) -> u64 {
    c.wait_for_leader(among, Duration::from_secs(10))
        .await
        .expect("a leader")
}

type Events = tokio::sync::broadcast::Receiver<rstmdb_protocol::message::StreamEvent>;

/// The next pushed event, waiting at most until `deadline`.
async fn recv(
    events: &mut Events,
    deadline: Instant,
) -> Result<
    Result<rstmdb_protocol::message::StreamEvent, tokio::sync::broadcast::error::RecvError>,
    tokio::time::error::Elapsed,
> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, events.recv()).await
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::ServerError { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_and_instances_through_a_follower_are_read_on_every_node() {
    let c = start_cluster(3).await.unwrap();
    let l = leader(&c, &[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&i| i != l).unwrap();
    let cf = client(&c, f, None).await;
    let def: Value = serde_json::from_str(ORDER).unwrap();
    let put = cf.put_machine("order", 1, def.clone()).await.unwrap();
    assert!(put.created);
    assert_eq!(put.stored_checksum.len(), 8);
    let again = cf.put_machine("order", 1, def.clone()).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.stored_checksum, put.stored_checksum);
    let other = cf
        .put_machine(
            "order",
            1,
            json!({"states":["a"],"initial":"a","transitions":[]}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        code(&other),
        Some(ErrorCode::MachineVersionExists),
        "{other}"
    );

    let created = cf
        .create_instance(
            "order",
            1,
            Some("o-1"),
            Some(json!({"customer": "alice"})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(created.state, "pending");
    let guard = cf
        .apply_event("o-1", "PAY", None, None, None)
        .await
        .unwrap_err();
    assert_eq!(code(&guard), Some(ErrorCode::GuardFailed), "{guard}");
    let paid = cf
        .apply_event("o-1", "NOTE", Some(json!({"amount": 5})), None, None)
        .await
        .unwrap();
    assert_eq!(
        (paid.from_state.as_str(), paid.to_state.as_str()),
        ("pending", "pending")
    );
    let paid = cf
        .apply_event("o-1", "PAY", None, Some("pending"), None)
        .await
        .unwrap();
    assert_eq!(paid.to_state, "paid");
    assert!(paid.wal_offset > created.wal_offset);
    let conflict = cf
        .apply_event("o-1", "SHIP", None, Some("pending"), None)
        .await
        .unwrap_err();
    assert_eq!(code(&conflict), Some(ErrorCode::Conflict), "{conflict}");

    // Every node answers the same, linearizably.
    for id in [1, 2, 3] {
        let ci = client(&c, id, None).await;
        let inst = ci.get_instance("o-1").await.unwrap();
        assert_eq!(inst.state, "paid", "node {id}");
        assert_eq!(
            inst.ctx,
            json!({"customer": "alice", "amount": 5}),
            "node {id}"
        );
        assert_eq!(inst.last_wal_offset, paid.wal_offset, "node {id}");
        let m = ci.get_machine("order", 1).await.unwrap();
        assert_eq!(m.checksum, put.stored_checksum);
        assert_eq!(m.definition["initial"], "pending");
        let list = ci
            .list_instances(Some("order"), Some("paid"), None, None)
            .await
            .unwrap();
        assert_eq!(list.total, 1, "node {id}");
        assert_eq!(list.instances[0].id, "o-1");
        let machines = ci.list_machines().await.unwrap();
        assert_eq!(machines["items"][0]["versions"], json!([1]));
        let info = ci.info().await.unwrap();
        assert_eq!(info["node_id"], id);
        assert_eq!(info["leader_id"], l);
        // Every member's rstmdb address, as its membership entry records it.
        for m in 1..=3u64 {
            let entry = info["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["node_id"] == m)
                .unwrap_or_else(|| panic!("node {m} in INFO of node {id}: {info}"));
            assert_eq!(entry["rstmdb_addr"], c.node(m).rstmdb_addr.to_string());
            assert_eq!(entry["leader"], m == l);
        }
    }
    let peers: Value = reqwest::get(format!("{}/peers", c.url(3)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in peers.as_array().unwrap() {
        let m = p["node_id"].as_u64().unwrap();
        assert_eq!(
            p["rstmdb_addr"],
            c.node(m).rstmdb_addr.to_string(),
            "{peers}"
        );
    }
    let missing = cf.get_instance("nope").await.unwrap_err();
    assert_eq!(code(&missing), Some(ErrorCode::InstanceNotFound));
    let deleted = cf.delete_instance("o-1", None).await.unwrap();
    assert_eq!(deleted["deleted"], true);
    let gone = cf.get_instance("o-1").await.unwrap_err();
    assert_eq!(code(&gone), Some(ErrorCode::InstanceNotFound));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_atomic_batch_is_rolled_back_whole_and_best_effort_reports_each() {
    let c = start_cluster(3).await.unwrap();
    let cl = client(&c, 2, None).await;
    cl.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    let ops = |second_event: &str| {
        vec![
            json!({"op": "CREATE_INSTANCE", "params": {"machine": "order", "version": 1, "instance_id": "b-1"}}),
            json!({"op": "APPLY_EVENT", "params": {"instance_id": "b-1", "event": second_event}}),
        ]
    };
    let refused = cl.batch(ops("SHIP"), true).await.unwrap_err();
    assert_eq!(
        code(&refused),
        Some(ErrorCode::InvalidTransition),
        "{refused}"
    );
    assert!(refused.to_string().contains("batch op 1"), "{refused}");
    let none = cl.get_instance("b-1").await.unwrap_err();
    assert_eq!(
        code(&none),
        Some(ErrorCode::InstanceNotFound),
        "nothing of the batch stays"
    );

    let r = cl.batch(ops("NOTE"), true).await.unwrap();
    assert_eq!(r["results"][1]["status"], "ok", "{r}");
    let r = cl.batch(ops("SHIP"), false).await.unwrap();
    assert_eq!(r["results"][0]["error"]["code"], "INSTANCE_EXISTS", "{r}");
    assert_eq!(
        r["results"][1]["error"]["code"], "INVALID_TRANSITION",
        "{r}"
    );
}

/// A watch opened on node 3 with `from_offset` replays, follows live, and
/// resumes after the leader is killed, with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_node_3_sees_every_event_in_order_across_a_leader_kill() {
    let mut c = start_cluster(3).await.unwrap();
    let mut l = leader(&c, &[1, 2, 3]).await;
    if l == 3 {
        // The watcher's node stays up; make another node lead.
        c.stop(3).await;
        l = leader(&c, &[1, 2]).await;
        c.start(3).await.unwrap();
    }
    let writer_node = [1, 2].into_iter().find(|&i| i != l).unwrap();
    let w = client(&c, writer_node, None).await;
    w.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    w.create_instance("order", 1, Some("w-1"), Some(json!({"amount": 1})), None)
        .await
        .unwrap();
    let mut offsets = Vec::new();
    for n in 0..20 {
        let r = w
            .apply_event("w-1", "NOTE", Some(json!({ "n": n })), None, None)
            .await
            .unwrap();
        offsets.push(r.wal_offset);
    }

    let watcher = client(&c, 3, None).await;
    let mut events = watcher.connection().subscribe_stream_events();
    let from = offsets[5];
    let resp = watcher
        .connection()
        .request(
            Operation::WatchAll,
            json!({"machines": ["order"], "from_offset": from}),
        )
        .await
        .unwrap();
    assert!(!resp.is_error(), "{resp:?}");
    let mut seen: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 15 {
        let e = recv(&mut events, deadline)
            .await
            .expect("replayed events")
            .unwrap();
        seen.push(e.wal_offset);
    }
    assert_eq!(
        seen,
        offsets[5..],
        "replay from the offset, inclusive, in order"
    );

    // Live, then the leader dies mid-stream: writes go on through the other node.
    c.stop(l).await;
    let survivor = [1, 2].into_iter().find(|&i| i != l).unwrap();
    leader(&c, &[survivor, 3]).await;
    let w2 = client(&c, survivor, None).await;
    for n in 20..30 {
        let r = w2
            .apply_event("w-1", "NOTE", Some(json!({ "n": n })), None, None)
            .await
            .unwrap();
        offsets.push(r.wal_offset);
    }
    while seen.len() < 25 {
        let e = recv(&mut events, deadline)
            .await
            .expect("live events after the kill")
            .unwrap();
        seen.push(e.wal_offset);
    }
    assert_eq!(
        seen,
        offsets[5..],
        "no gap, no duplicate across the leader change"
    );

    // Resuming on a new connection from the last offset seen + 1.
    let again = client(&c, 3, None).await;
    let mut ev2 = again.connection().subscribe_stream_events();
    let resp = again
        .connection()
        .request(Operation::WatchAll, json!({"from_offset": offsets[20] + 1}))
        .await
        .unwrap();
    assert!(!resp.is_error(), "{resp:?}");
    let mut resumed = Vec::new();
    while resumed.len() < 9 {
        let e = recv(&mut ev2, deadline)
            .await
            .expect("resumed events")
            .unwrap();
        resumed.push(e.wal_offset);
    }
    assert_eq!(resumed, offsets[21..]);
}

/// An idempotent APPLY_EVENT retried on another node after a leader change
/// returns the first result, applied once.
#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_event_retried_across_a_leader_change_applies_once() {
    let mut c = start_cluster(3).await.unwrap();
    let l = leader(&c, &[1, 2, 3]).await;
    let cl = client(&c, l, None).await;
    cl.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    cl.create_instance("order", 1, Some("i-1"), Some(json!({"amount": 1})), None)
        .await
        .unwrap();
    let first = cl
        .apply_event("i-1", "NOTE", Some(json!({"n": 1})), None, Some("key-1"))
        .await
        .unwrap();
    c.stop(l).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l).collect();
    leader(&c, &others).await;
    let c2 = client(&c, others[0], None).await;
    let retried = c2
        .apply_event("i-1", "NOTE", Some(json!({"n": 1})), None, Some("key-1"))
        .await
        .unwrap();
    assert_eq!(
        retried.wal_offset, first.wal_offset,
        "the first result, unchanged"
    );
    assert_eq!(retried.ctx, first.ctx);
    let inst = c2.get_instance("i-1").await.unwrap();
    assert_eq!(inst.last_wal_offset, first.wal_offset, "applied once");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_is_required_when_tokens_are_configured() {
    let hash = raftmesh_gateway::rstmdb::token_hash("s3cret");
    let c = start_cluster_with(1, |cfg| cfg.rstmdb_token_hashes = vec![hash.clone()])
        .await
        .unwrap();
    let ok = client(&c, 1, Some("s3cret")).await;
    ok.ping().await.unwrap();
    ok.list_machines().await.unwrap();
    // Without AUTH, PING passes and everything else (watches too) is refused.
    let anon = client(&c, 1, None).await;
    anon.ping().await.unwrap();
    let e = anon.list_machines().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    let e = anon
        .watch_all(None, None, None, None, true)
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unauthorized), "{e}");
    // A wrong token fails the client's connect.
    let cfg = ConnectionConfig::new(c.node(1).rstmdb_addr).with_auth_token("wrong");
    let bad = Client::new(cfg);
    let e = bad.connect().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::AuthFailed), "{e}");
}

/// FLUSH_ALL is refused until the cluster-wide setting allows it; then it
/// is one replicated entry that clears every node alike.
#[tokio::test(flavor = "multi_thread")]
async fn flush_all_waits_for_the_cluster_setting() {
    let c = start_cluster(3).await.unwrap();
    let cl = client(&c, 1, None).await;
    cl.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    cl.create_instance("order", 1, Some("f-1"), None, None)
        .await
        .unwrap();
    let e = cl.flush_all().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::BadRequest), "{e}");
    assert!(e.to_string().contains("allow_flush_all"), "{e}");
    let r = reqwest::Client::new()
        .put(format!("{}/cluster/settings/allow-flush-all", c.url(2)))
        .body(r#"{"allow": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = cl.flush_all().await.unwrap();
    assert_eq!(r["flushed"], true, "{r}");
    assert_eq!(
        (
            r["instances_removed"].as_u64(),
            r["machines_removed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    for id in [1, 2, 3] {
        let ci = client(&c, id, None).await;
        let e = ci.get_instance("f-1").await.unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::InstanceNotFound), "node {id}");
    }
}

/// WAL_STATS reports the node's Raft log in the shape the clients parse;
/// COMPACT snapshots and purges every member, reports each, and leaves
/// reads, writes and watch replay (the journal is kept apart) working.
#[tokio::test(flavor = "multi_thread")]
async fn compact_snapshots_and_purges_every_member_and_wal_stats_shows_it() {
    let c = start_cluster(3).await.unwrap();
    let l = leader(&c, &[1, 2, 3]).await;
    let f = [1, 2, 3].into_iter().find(|&i| i != l).unwrap();
    let cf = client(&c, f, None).await;
    cf.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    cf.create_instance("order", 1, Some("c-1"), Some(json!({"amount": 5})), None)
        .await
        .unwrap();
    let mut last = 0;
    for n in 0..200 {
        last = cf
            .apply_event("c-1", "NOTE", Some(json!({ "n": n })), None, None)
            .await
            .unwrap()
            .wal_offset;
    }
    let stats = cf.wal_stats().await.unwrap();
    for k in [
        "entry_count",
        "segment_count",
        "total_size_bytes",
        "latest_offset",
    ] {
        assert!(stats[k].is_u64(), "{k} in {stats}");
    }
    assert!(stats["entry_count"].as_u64().unwrap() >= 200, "{stats}");
    assert!(stats["latest_offset"].as_u64().unwrap() >= last, "{stats}");
    let io = &stats["io_stats"];
    assert!(io["fsyncs"].as_u64().unwrap() > 0, "{stats}");
    assert!(io["writes"].as_u64().unwrap() > 0, "{stats}");
    assert!(io["bytes_written"].as_u64().unwrap() > 0, "{stats}");
    for k in ["bytes_read", "reads"] {
        assert!(io[k].is_u64(), "{k} in {stats}");
    }

    let r = cf.compact(true).await.unwrap();
    assert_eq!(r["snapshots_created"], 3, "{r}");
    assert_eq!(r["total_snapshots"], 3, "{r}");
    for k in ["segments_deleted", "bytes_reclaimed", "wal_segments"] {
        assert!(r[k].is_u64(), "{k} in {r}");
    }
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{r}");
    for n in nodes {
        assert!(n.get("error").is_none(), "{r}");
        let snap = n["snapshot_index"].as_u64().unwrap();
        assert!(snap >= last, "{r}");
        assert_eq!(n["purged_index"].as_u64(), Some(snap), "{r}");
    }
    for id in [1, 2, 3] {
        let ci = client(&c, id, None).await;
        let s = ci.wal_stats().await.unwrap();
        assert!(
            s["entry_count"].as_u64().unwrap() < 20,
            "node {id} kept its log: {s}"
        );
        let inst = ci.get_instance("c-1").await.unwrap();
        assert_eq!(inst.ctx["n"], 199, "node {id}");
    }
    // Writes go on; a watch still replays from the start: the journal is
    // not the log.
    let next = cf
        .apply_event("c-1", "NOTE", Some(json!({"n": 200})), None, None)
        .await
        .unwrap();
    assert!(next.wal_offset > last);
    let watcher = client(&c, 3, None).await;
    let mut events = watcher.connection().subscribe_stream_events();
    let r = watcher
        .connection()
        .request(
            Operation::WatchInstance,
            json!({"instance_id": "c-1", "from_offset": 1}),
        )
        .await
        .unwrap();
    assert!(!r.is_error(), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 201 {
        let e = recv(&mut events, deadline)
            .await
            .expect("replayed events")
            .unwrap();
        seen.push(e.wal_offset);
    }
    assert_eq!(seen.last(), Some(&next.wal_offset));
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame's JSON, within 10 s.
async fn next_text(ws: &mut Ws) -> Value {
    use futures::StreamExt;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame")
            .expect("open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// `POST /rstmdb` answers one envelope with rstmdb's tokens (not the pm3
/// internal rule) and an HTTP status from the error code; `GET /rstmdb` is a
/// WebSocket with the TCP wire's dispatch: AUTH, pipelining, and a watch
/// on node 3 seeing events written through node 1.
#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_rstmdb_over_post_and_websocket() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let hash = raftmesh_gateway::rstmdb::token_hash("s3cret");
    let c = start_cluster_with(3, |cfg| cfg.rstmdb_token_hashes = vec![hash.clone()])
        .await
        .unwrap();
    leader(&c, &[1, 2, 3]).await;
    let http = reqwest::Client::new();
    // A read answered 503 (nothing happened, e.g. leadership not yet
    // confirmed on a loaded machine) is asked again, bounded; writes never.
    let post = |node: u64, token: Option<&'static str>, body: Value| {
        let (http, url) = (http.clone(), format!("{}/rstmdb", c.url(node)));
        async move {
            let read = body["op"].as_str().is_some_and(|op| op.starts_with("GET_"));
            let mut answer = None;
            for _ in 0..20 {
                let mut r = http.post(&url).body(body.to_string());
                if let Some(t) = token {
                    r = r.header("authorization", format!("Bearer {t}"));
                }
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                let v = r.json::<Value>().await.unwrap();
                if !(read && status == 503) {
                    return (status, v);
                }
                answer = Some((status, v));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer.unwrap()
        }
    };
    let req = |id: &str, op: &str, params: Value| json!({"type": "request", "id": id, "op": op, "params": params});

    let (s, v) = post(2, None, req("1", "PING", json!({}))).await;
    assert_eq!((s, &v["status"]), (200, &json!("ok")), "{v}");
    let (s, v) = post(2, None, req("2", "LIST_MACHINES", json!({}))).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (401, &json!("UNAUTHORIZED")),
        "{v}"
    );
    let (s, v) = post(2, Some("wrong"), req("3", "LIST_MACHINES", json!({}))).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (401, &json!("AUTH_FAILED")),
        "{v}"
    );
    let def: Value = serde_json::from_str(ORDER).unwrap();
    let put = json!({"machine": "order", "version": 1, "definition": def});
    let (s, v) = post(2, Some("s3cret"), req("4", "PUT_MACHINE", put)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "4");
    assert!(v["meta"]["wal_offset"].as_u64().unwrap() > 0, "{v}");
    let get = json!({"machine": "order", "version": 1});
    let (s, v) = post(3, Some("s3cret"), req("5", "GET_MACHINE", get)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["definition"]["initial"], "pending");
    let (s, v) = post(
        3,
        Some("s3cret"),
        req("6", "GET_INSTANCE", json!({"instance_id": "x"})),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (404, &json!("INSTANCE_NOT_FOUND")),
        "{v}"
    );
    let (s, v) = post(1, Some("s3cret"), req("7", "WATCH_ALL", json!({}))).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket"),
        "{v}"
    );
    let (s, v) = post(1, Some("s3cret"), json!("not an envelope")).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (400, &json!("BAD_REQUEST")),
        "{v}"
    );

    // A WebSocket on node 3: AUTH in band, then pipelined requests.
    let url = format!("ws://{}/rstmdb", c.node(3).http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(req("a", "WATCH_ALL", json!({}))))
        .await
        .unwrap();
    ws.send(send(req(
        "b",
        "AUTH",
        json!({"method": "bearer", "token": "s3cret"}),
    )))
    .await
    .unwrap();
    ws.send(send(req("c", "WATCH_ALL", json!({"machines": ["order"]}))))
        .await
        .unwrap();
    ws.send(send(req("d", "PING", json!({})))).await.unwrap();
    let a = next_text(&mut ws).await;
    assert_eq!(
        (&a["id"], &a["error"]["code"]),
        (&json!("a"), &json!("UNAUTHORIZED")),
        "{a}"
    );
    let b = next_text(&mut ws).await;
    assert_eq!((&b["id"], &b["status"]), (&json!("b"), &json!("ok")), "{b}");
    let w = next_text(&mut ws).await;
    assert_eq!(w["id"], "c", "{w}");
    assert!(w["result"]["subscription_id"].is_string(), "{w}");
    let d = next_text(&mut ws).await;
    assert_eq!(d["id"], "d", "{d}");

    let create = json!({"machine": "order", "version": 1, "instance_id": "ws-1",
                        "initial_ctx": {"amount": 3}});
    let (s, v) = post(1, Some("s3cret"), req("8", "CREATE_INSTANCE", create)).await;
    assert_eq!(s, 200, "{v}");
    let mut offsets = Vec::new();
    for (i, ev) in ["PAY", "SHIP"].iter().enumerate() {
        let p = json!({"instance_id": "ws-1", "event": ev});
        let (s, v) = post(1, Some("s3cret"), req(&format!("e{i}"), "APPLY_EVENT", p)).await;
        assert_eq!(s, 200, "{v}");
        offsets.push(v["result"]["wal_offset"].as_u64().unwrap());
    }
    for (i, want) in offsets.iter().enumerate() {
        let e = next_text(&mut ws).await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["instance_id"], "ws-1");
        assert_eq!(e["wal_offset"].as_u64(), Some(*want), "event {i}: {e}");
    }
    assert!(offsets[0] < offsets[1], "applied in the order sent");
    ws.close(None).await.unwrap();
}

/// A raw rstmdb connection (our own framing), for a watcher that reads
/// only when the test says so.
struct Raw {
    s: tokio::net::TcpStream,
    buf: bytes::BytesMut,
}

impl Raw {
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        Raw {
            s: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: bytes::BytesMut::new(),
        }
    }

    async fn send(&mut self, id: &str, op: &str, params: Value) {
        use tokio::io::AsyncWriteExt;
        let v = json!({"type": "request", "id": id, "op": op, "params": params});
        let mut out = bytes::BytesMut::new();
        raftmesh_gateway::rstmdb::frame::encode_frame(&mut out, v.to_string().as_bytes());
        self.s.write_all(&out).await.unwrap();
    }

    async fn next(&mut self, within: Duration) -> Value {
        use tokio::io::AsyncReadExt;
        let deadline = Instant::now() + within;
        loop {
            if let Some(text) =
                raftmesh_gateway::rstmdb::frame::decode_frame(&mut self.buf, 32 << 20).unwrap()
            {
                return serde_json::from_str(&text).unwrap();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.s.read_buf(&mut self.buf))
                .await
                .expect("a message in time")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }
}

/// A watcher that stops reading falls behind the live buffer: it gets every
/// event up to a point, then a `subscription_end` naming that point, and a
/// new watch from the next offset gets the rest — nothing skipped silently,
/// nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_too_slow_for_its_buffer_is_told_and_resumes_without_gap() {
    let c = start_cluster_with(1, |cfg| cfg.feed_buffer = 2)
        .await
        .unwrap();
    let w = client(&c, 1, None).await;
    w.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    w.create_instance("order", 1, Some("s-1"), None, None)
        .await
        .unwrap();
    let mut raw = Raw::connect(c.node(1).rstmdb_addr).await;
    raw.send("h", "HELLO", json!({"protocol_version": 1})).await;
    raw.next(Duration::from_secs(5)).await;
    raw.send("w", "WATCH_ALL", json!({})).await;
    let r = raw.next(Duration::from_secs(5)).await;
    assert_eq!(r["status"], "ok", "{r}");
    // Fat events, many at once, while the watcher reads nothing: its socket,
    // then its queue fill, and the feed's 2-entry buffer overflows.
    let fat = "x".repeat(4096);
    let mut acked = Vec::new();
    for b in 0..40 {
        let ops: Vec<Value> = (0..50)
            .map(|i| {
                json!({"op": "APPLY_EVENT", "params": {"instance_id": "s-1", "event": "NOTE",
                       "payload": {"fat": fat, "n": b * 50 + i}}})
            })
            .collect();
        let r = w.batch(ops, false).await.unwrap();
        for item in r["results"].as_array().unwrap() {
            acked.push(item["result"]["wal_offset"].as_u64().unwrap());
        }
    }
    assert!(
        acked.windows(2).all(|w| w[0] < w[1]),
        "one connection's writes are applied in the order sent"
    );
    let mut seen = Vec::new();
    let last = loop {
        let m = raw.next(Duration::from_secs(10)).await;
        match m["type"].as_str() {
            Some("event") => seen.push(m["wal_offset"].as_u64().unwrap()),
            Some("subscription_end") => {
                assert_eq!(m["reason"], "lagged", "{m}");
                break m["last_wal_offset"].as_u64().unwrap();
            }
            _ => panic!("unexpected {m}"),
        }
    };
    assert!(seen.len() < acked.len(), "the watcher should have lagged");
    assert_eq!(
        seen,
        acked[..seen.len()],
        "everything up to the end, in order"
    );
    assert!(
        *seen.last().unwrap_or(&0) <= last && acked[seen.len()] > last,
        "the end names the last offset delivered"
    );
    raw.send("w2", "WATCH_ALL", json!({"from_offset": last + 1}))
        .await;
    let r = raw.next(Duration::from_secs(5)).await;
    assert_eq!(r["status"], "ok", "{r}");
    while seen.len() < acked.len() {
        let m = raw.next(Duration::from_secs(10)).await;
        assert_eq!(m["type"], "event", "{m}");
        seen.push(m["wal_offset"].as_u64().unwrap());
    }
    assert_eq!(
        seen, acked,
        "the resumed watch continues without gap or duplicate"
    );
}

/// A watch on a node cut off from its leader ends with `no_leader` once an
/// election timeout has passed, and the real client's read loop survives
/// the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_a_node_without_a_leader_ends_and_the_client_survives_it() {
    let mut c = start_cluster(3).await.unwrap();
    let l = leader(&c, &[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != l).collect();
    let (kept, stopped) = (others[0], others[1]);
    let w = client(&c, kept, None).await;
    w.put_machine("order", 1, serde_json::from_str(ORDER).unwrap())
        .await
        .unwrap();
    let mut raw = Raw::connect(c.node(kept).rstmdb_addr).await;
    raw.send("w", "WATCH_ALL", json!({})).await;
    assert_eq!(raw.next(Duration::from_secs(5)).await["status"], "ok");
    let sub = w.watch_all(None, None, None, None, true).await.unwrap();
    assert!(!sub.subscription_id.is_empty());
    c.stop(l).await;
    c.stop(stopped).await;
    let m = raw.next(Duration::from_secs(30)).await;
    assert_eq!(m["type"], "subscription_end", "{m}");
    assert_eq!(m["reason"], "no_leader", "{m}");
    // The real client got the same message on its connection and goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    w.ping()
        .await
        .expect("the client's read loop survived the end message");
}
