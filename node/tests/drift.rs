//! DriftDB rooms against a real 3-node cluster over real sockets: clients
//! on different nodes share one room and one sequence, HTTP sends reach
//! sockets on every node, every action behaves as the spec says, and bad
//! input is an `error` message on a socket that stays open.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raftmesh_node::testing::{start_cluster, TestCluster};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn new_room(c: &TestCluster, node: u64) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/new", c.url(node)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn connect(c: &TestCluster, node: u64, room: &str, query: &str) -> Ws {
    let url = format!("ws://{}/room/{room}/connect{query}", c.node(node).http_addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (text frame), within 10 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

fn push(key: &str, value: Value, action: Value) -> Value {
    json!({"type": "push", "key": key, "value": value, "action": action})
}

/// `POST /room/:id/send`; a 503 (nothing was applied: safe to repeat, e.g.
/// no leader confirmed yet on a loaded machine) is sent again, bounded. A
/// 504 (outcome unknown) is returned as it is.
async fn http_send(c: &TestCluster, node: u64, room: &str, v: Value) -> (u16, String) {
    let mut last = (0, String::new());
    for _ in 0..20 {
        let r = reqwest::Client::new()
            .post(format!("{}/room/{room}/send", c.url(node)))
            .header("content-type", "application/json")
            .body(v.to_string())
            .send()
            .await
            .unwrap();
        last = (r.status().as_u16(), r.text().await.unwrap());
        if last.0 != 503 {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_different_nodes_share_one_room_and_one_sequence() {
    let c = start_cluster(3).await.unwrap();
    c.wait_for_leader(&[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap();
    let r = new_room(&c, 1).await;
    let room = r["room"].as_str().unwrap().to_string();
    let host1 = c.node(1).http_addr.to_string();
    assert_eq!(
        r["socket_url"],
        format!("ws://{host1}/room/{room}/connect"),
        "{r}"
    );
    assert_eq!(r["http_url"], format!("http://{host1}/room/{room}/send"));
    // The room is known on every node at once (read after a barrier).
    let got: Value = reqwest::get(format!("{}/room/{room}", c.url(3)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["room"], room);

    let mut a = connect(&c, 1, &room, "").await;
    let mut b = connect(&c, 3, &room, "?cbor=false").await;
    send(
        &mut a,
        push("k", json!({"n": 1}), json!({"type": "append"})),
    )
    .await;
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next(ws).await,
            json!({"type":"push","key":"k","value":{"n":1},"seq":1})
        );
    }
    send(&mut b, push("k", json!(2), json!({"type": "append"}))).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(next(ws).await["seq"], 2);
    }
    // The sender of a push that left more than one value hears the size.
    assert_eq!(
        next(&mut b).await,
        json!({"type":"stream_size","key":"k","size":2})
    );
    // A relay takes a seq and is delivered, but is not stored.
    send(
        &mut a,
        push("cursor", json!([3, 4]), json!({"type": "relay"})),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let m = next(ws).await;
        assert_eq!(
            (m["key"].clone(), m["seq"].clone()),
            (json!("cursor"), json!(3))
        );
    }
    // HTTP send through node 2 reaches the sockets on nodes 1 and 3.
    let (s, body) = http_send(&c, 2, &room, push("k", json!(3), json!({"type": "append"}))).await;
    assert_eq!(
        (s, body.as_str()),
        (200, r#"{"type":"stream_size","key":"k","size":3}"#)
    );
    for ws in [&mut a, &mut b] {
        assert_eq!(next(ws).await["seq"], 4);
    }
    // get answers every retained value after a seq, from any node.
    send(&mut b, json!({"type": "get", "key": "k", "seq": 1})).await;
    assert_eq!(
        next(&mut b).await,
        json!({"type":"init","key":"k","data":[{"value":2,"seq":2},{"value":3,"seq":4}]})
    );
    let (s, body) = http_send(&c, 3, &room, json!({"type":"get","key":"cursor"})).await;
    assert_eq!(
        (s, body.as_str()),
        (200, r#"{"type":"init","key":"cursor","data":[]}"#)
    );
    // compact: no seq, no delivery; the stream starts with the compacted value.
    send(
        &mut a,
        push("k", json!({"sum": 5}), json!({"type": "compact", "seq": 2})),
    )
    .await;
    assert_eq!(
        next(&mut a).await,
        json!({"type":"stream_size","key":"k","size":2})
    );
    send(&mut a, json!({"type": "get", "key": "k"})).await;
    assert_eq!(
        next(&mut a).await["data"],
        json!([{"value":{"sum":5},"seq":2},{"value":3,"seq":4}])
    );
    // replace: one value left, delivered like any push.
    send(&mut b, push("k", json!("only"), json!({"type": "replace"}))).await;
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next(ws).await,
            json!({"type":"push","key":"k","value":"only","seq":5})
        );
    }
    // A WebSocket ping frame is answered by exactly one pong frame.
    a.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    send(&mut a, json!({"type": "ping", "nonce": 0})).await;
    let mut pongs = 0;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), a.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                pongs += 1;
            }
            Message::Text(t) => {
                assert!(t.as_str().contains("pong"), "{t}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(pongs, 1);
    // ping with and without a nonce.
    send(&mut a, json!({"type": "ping", "nonce": 42})).await;
    assert_eq!(next(&mut a).await, json!({"type":"pong","nonce":42}));
    send(&mut a, json!({"type": "ping"})).await;
    assert_eq!(next(&mut a).await, json!({"type":"pong","nonce":null}));
    // Bad input is an error message; the socket stays open.
    send(&mut a, json!({"type": "push", "key": "k"})).await;
    let e = next(&mut a).await;
    assert_eq!(e["type"], "error");
    assert!(e["message"].as_str().unwrap().contains("value"), "{e}");
    send(
        &mut a,
        push("k", json!(1), json!({"type": "compact", "seq": 99})),
    )
    .await;
    let e = next(&mut a).await;
    assert!(e["message"].as_str().unwrap().contains("seq 99"), "{e}");
    send(&mut a, json!({"type": "ping", "nonce": 1})).await;
    assert_eq!(next(&mut a).await["type"], "pong");
    // A CBOR frame is read as the JSON it stands for.
    let mut cbor = Vec::new();
    ciborium::ser::into_writer(
        &ciborium::value::Value::Map(vec![
            ("type".into(), "ping".into()),
            ("nonce".into(), 7.into()),
        ]),
        &mut cbor,
    )
    .unwrap();
    a.send(Message::Binary(cbor.into())).await.unwrap();
    assert_eq!(next(&mut a).await, json!({"type":"pong","nonce":7}));

    // HTTP: the schema and content-type errors, and an unknown room.
    let (s, _) = http_send(&c, 1, &room, json!({"type": "push", "key": "k"})).await;
    assert_eq!(s, 422);
    let r = reqwest::Client::new()
        .post(format!("{}/room/{room}/send", c.url(1)))
        .body(r#"{"type":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let (s, _) = http_send(&c, 1, "nosuchroom", json!({"type": "ping"})).await;
    assert_eq!(s, 404);
    let r = reqwest::get(format!("{}/room/nosuchroom", c.url(2)))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let url = format!("ws://{}/room/nosuchroom/connect", c.node(2).http_addr);
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "404 before the upgrade"
    );

    // Deleting the room (internal) closes its sockets with a reason.
    let r = reqwest::Client::new()
        .delete(format!("{}/room/{room}", c.url(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for ws in [&mut a, &mut b] {
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(f))) => break f,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        let f = closed.expect("a close frame");
        assert_eq!(u16::from(f.code), 4404);
        assert!(f.reason.contains("deleted"), "{f:?}");
    }
}

/// Pushes of one socket, many in flight through a follower, apply in the
/// order sent; a debug socket starts with every key's stream and then sees
/// each stored key's whole stream.
#[tokio::test(flavor = "multi_thread")]
async fn one_sockets_pushes_keep_their_order_and_debug_sockets_see_streams() {
    let c = start_cluster(3).await.unwrap();
    let l = c
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap();
    let f = [1, 2, 3].into_iter().find(|&i| i != l).unwrap();
    let room = new_room(&c, f).await["room"].as_str().unwrap().to_string();
    let mut w = connect(&c, f, &room, "").await;
    for i in 0..200 {
        send(&mut w, push("n", json!(i), json!({"type": "append"}))).await;
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let m = next(&mut w).await;
        if m["type"] == "push" {
            got.push((m["seq"].as_u64().unwrap(), m["value"].as_u64().unwrap()));
        }
    }
    let want: Vec<(u64, u64)> = (0..200).map(|i| (i + 1, i)).collect();
    assert_eq!(got, want, "applied and delivered in the order sent");

    let mut d = connect(&c, l, &room, "?debug=true").await;
    let first = next(&mut d).await;
    assert_eq!(first["type"], "init");
    assert_eq!(first["data"].as_array().unwrap().len(), 200);
    send(&mut w, push("n", json!("x"), json!({"type": "replace"}))).await;
    let m = next(&mut d).await;
    assert_eq!(
        m,
        json!({"type":"init","key":"n","data":[{"value":"x","seq":201}]})
    );
    send(&mut w, push("c", json!(1), json!({"type": "relay"}))).await;
    assert_eq!(next(&mut d).await["type"], "push");
}

/// Limits are a cluster-wide setting: a push over one is refused with an
/// `error` naming it, on a socket that stays open; idle retention deletes a
/// room with no push for the TTL (the leader proposes it), and its sockets
/// are closed.
#[tokio::test(flavor = "multi_thread")]
async fn limits_are_cluster_settings_and_idle_rooms_expire() {
    let c = start_cluster(3).await.unwrap();
    c.wait_for_leader(&[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap();
    let set = |body: Value| {
        let url = format!("{}/cluster/settings/room-limits", c.url(2));
        async move {
            reqwest::Client::new()
                .put(url)
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(set(json!({"max_message_bytes": 0})).await, 400);
    assert_eq!(
        set(json!({"max_keys": 1, "max_message_bytes": 64})).await,
        200
    );
    let room = new_room(&c, 1).await["room"].as_str().unwrap().to_string();
    let mut a = connect(&c, 3, &room, "").await;
    send(
        &mut a,
        push("k", json!("x".repeat(100)), json!({"type": "append"})),
    )
    .await;
    let e = next(&mut a).await;
    assert_eq!(e["type"], "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes = 64"),
        "{e}"
    );
    send(&mut a, push("k", json!(1), json!({"type": "append"}))).await;
    assert_eq!(next(&mut a).await["seq"], 1);
    send(&mut a, push("other", json!(1), json!({"type": "append"}))).await;
    let e = next(&mut a).await;
    assert!(e["message"].as_str().unwrap().contains("max_keys"), "{e}");
    let (s, body) = http_send(
        &c,
        1,
        &room,
        push("other", json!(1), json!({"type": "append"})),
    )
    .await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("max_keys"), "{body}");

    assert_eq!(set(json!({"idle_ttl_ms": 1})).await, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = reqwest::get(format!("{}/room/{room}", c.url(1)))
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle room was never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), a.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(u16::from(closed.unwrap().code), 4404);
}

/// A socket that stops reading while its room is busy is closed with 4408
/// and a reason once its queue is full — never skipped silently — and the
/// other sockets of the room get every push.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_too_slow_for_its_queue_is_closed_with_a_reason() {
    let c = raftmesh_node::testing::start_cluster_with(1, |cfg| cfg.drift_socket_queue = 4)
        .await
        .unwrap();
    let room = new_room(&c, 1).await["room"].as_str().unwrap().to_string();
    // The slow one reads nothing until the end.
    let mut slow = connect(&c, 1, &room, "").await;
    let mut fast = connect(&c, 1, &room, "").await;
    let fat = "x".repeat(60_000);
    let mut seen = 0;
    for i in 0..200 {
        let (s, _) = http_send(
            &c,
            1,
            &room,
            push("k", json!({"i": i, "fat": fat}), json!({"type": "relay"})),
        )
        .await;
        assert_eq!(s, 200);
        // The fast socket keeps up.
        let m = next(&mut fast).await;
        assert_eq!(m["value"]["i"], i);
        seen += 1;
    }
    assert_eq!(seen, 200);
    let mut got = 0;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .expect("the slow socket ends")
        {
            Some(Ok(Message::Text(_))) => got += 1,
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    let f = closed.expect("a close frame");
    assert_eq!(u16::from(f.code), 4408, "{f:?}");
    assert!(f.reason.contains("fell behind"), "{f:?}");
    assert!(
        got < 200,
        "it was closed before the end, after {got} messages"
    );
}
