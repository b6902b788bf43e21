//! The gateway's HTTP behaviour on a real node: requests go through the
//! router built over an in-process node (real Raft, RocksDB, apply), with the
//! peer address set per request so the internal/external gate can be driven.
//! Revisions are log indexes, so expectations are relative to the index the
//! node had applied when the test began.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use raftmesh_gateway::GatewayConfig;
use raftmesh_node::testing::{start_cluster_with, TestCluster};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .expect("error field")
            .to_owned()
    }
    fn index(&self) -> u64 {
        self.header("x-raft-index").parse().unwrap()
    }
}

const INTERNAL_PEER: [u8; 4] = [10, 0, 0, 5];

/// The limits these tests use (small, to hit them cheaply).
fn small_cfg() -> GatewayConfig {
    GatewayConfig {
        max_key_bytes: 16,
        max_value_bytes: 100,
        max_list_keys: 10_000,
        watch_leaderless: std::time::Duration::from_secs(1),
        ..GatewayConfig::default()
    }
}

/// One real node (or three) and its router.
struct Gw {
    cluster: TestCluster,
    app: Router,
    /// Applied index when the test began: the next write is `base + 1`.
    base: u64,
    /// The node `app` serves (the leader at start).
    leader: u64,
}

impl Gw {
    async fn start(nodes: u64, tweak: impl Fn(&mut raftmesh_node::Config)) -> Gw {
        let cluster = start_cluster_with(nodes, |c| {
            c.max_key_bytes = 16;
            c.max_value_bytes = 100;
            tweak(c);
        })
        .await
        .expect("cluster starts");
        let leader = cluster
            .wait_for_leader(
                &cluster.nodes.keys().copied().collect::<Vec<_>>(),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let app = cluster.node(leader).running().unwrap().router();
        let mut gw = Gw {
            cluster,
            app,
            base: 0,
            leader,
        };
        // Wait until the leader's first entry of its term is applied, so
        // the next write's index is known.
        let r = gw.send("GET", "/kv/warmup", "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        gw.base = r.index();
        gw
    }

    async fn one() -> Gw {
        Gw::start(1, |_| {}).await
    }

    async fn send_from(
        &self,
        peer: [u8; 4],
        method: &str,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_to(&self.app, peer, method, uri, body, headers).await
    }

    async fn send(&self, method: &str, uri: &str, body: &str) -> Reply {
        self.send_from(INTERNAL_PEER, method, uri, body, &[]).await
    }

    /// The current applied index (nothing written since `base` → `base`).
    async fn applied(&self) -> u64 {
        self.send("GET", "/kv/probe?stale", "").await.index()
    }
}

async fn send_to(
    app: &Router,
    peer: [u8; 4],
    method: &str,
    uri: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Body::from(body.to_owned())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 40000))));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_reads_as_revision_zero_null() {
    let gw = Gw::one().await;
    let r = gw.send("GET", "/kv/nothing", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, r#"{"revision":0,"value":null}"#);
    assert_eq!(r.header("content-type"), "application/json");
}

#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_embeds_compacted_value_in_order() {
    let gw = Gw::one().await;
    let r = gw
        .send(
            "PUT",
            "/kv/cfg",
            r#"{ "value" : {"z": [1, 2.50], "a": "x y"} }"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let rev = gw.base + 1;
    assert_eq!(r.text, rev.to_string(), "PUT answers the bare revision");
    assert_eq!(r.index(), rev);
    let r = gw.send("GET", "/kv/cfg", "").await;
    assert_eq!(
        r.text,
        format!(r#"{{"revision":{rev},"value":{{"z":[1,2.50],"a":"x y"}}}}"#)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_null_value_is_stored() {
    let gw = Gw::one().await;
    let r = gw.send("PUT", "/kv/n", r#"{"value":null}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = gw.send("GET", "/kv/n", "").await;
    assert_eq!(
        r.text,
        format!(r#"{{"revision":{},"value":null}}"#, gw.base + 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_validation_names_the_rule() {
    let gw = Gw::one().await;
    let cases = [
        ("/kv/.hidden", "start or end with '.'"),
        ("/kv/trailing.", "start or end with '.'"),
        ("/kv/a%20b", "[-/_=.a-zA-Z0-9]"),
        ("/kv/caf%C3%A9", "[-/_=.a-zA-Z0-9]"),
        ("/kv/", "must not be empty"),
        ("/kv/a/b", "single path segment"),
        ("/kv/abcdefghijklmnopq", "at most 16 bytes"),
    ];
    for (uri, rule) in cases {
        for method in ["GET", "PUT"] {
            let r = gw.send(method, uri, r#"{"value":1}"#).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{method} {uri}: {}",
                r.text
            );
            assert!(r.error().contains(rule), "{method} {uri}: {}", r.text);
        }
    }
    assert_eq!(
        gw.applied().await,
        gw.base,
        "a refused request wrote nothing"
    );
    // A percent-encoded slash decodes into a valid one-segment key.
    let r = gw.send("PUT", "/kv/a%2Fb", r#"{"value":1}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(gw.send("GET", "/kv", "").await.json(), json!(["a/b"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_value_is_413_and_not_written() {
    let gw = Gw::one().await;
    let big = "x".repeat(200);
    let r = gw
        .send("PUT", "/kv/big", &format!(r#"{{"value":"{big}"}}"#))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("at most 100 bytes"), "{}", r.text);
    assert_eq!(gw.applied().await, gw.base);
    // Whitespace does not count: the compact form is what is stored.
    let padded = format!(r#"{{"value": [{}1]}}"#, " ".repeat(500));
    let r = gw.send("PUT", "/kv/small", &padded).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        gw.send("GET", "/kv/small", "").await.json()["value"],
        json!([1])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn body_over_the_limit_is_413_json() {
    let gw = Gw::one().await;
    for uri in ["/kv/k", "/kv/k/cas"] {
        let (method, huge) = if uri.ends_with("cas") {
            (
                "POST",
                format!(
                    r#"{{"expected":null,"desired":"{}"}}"#,
                    "y".repeat(small_cfg().cas_body_limit() + 10)
                ),
            )
        } else {
            (
                "PUT",
                format!(
                    r#"{{"value":"{}"}}"#,
                    "y".repeat(small_cfg().body_limit() + 10)
                ),
            )
        };
        let r = gw.send(method, uri, &huge).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.error().contains("too large"), "{}", r.text);
        assert_eq!(r.header("x-served-by"), "1");
    }
    assert_eq!(gw.applied().await, gw.base);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_is_400_naming_the_problem() {
    let gw = Gw::one().await;
    let r = gw.send("PUT", "/kv/k", r#"{"value": }"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("invalid JSON body"), "{}", r.text);
    let r = gw.send("PUT", "/kv/k", "").await;
    assert!(r.error().starts_with("invalid JSON body"), "{}", r.text);
    let r = gw.send("PUT", "/kv/k", r#"{"val": 1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains(r#"{"value": V}"#), "{}", r.text);
    let r = gw
        .send("PUT", "/kv/k", r#"{"value": 1, "revision": -2}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("invalid request body"), "{}", r.text);
    // An array must not be read as the struct's fields in order.
    for body in ["[1]", "[1, 2]", " 5"] {
        let r = gw.send("PUT", "/kv/k", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains("JSON object"), "{}", r.text);
    }
    // The CAS route's errors show the CAS body, not the PUT one.
    for body in [
        "[1, 2]",
        r#"{"expected": }"#,
        r#"{"expected": 1, "desired": 2, "x": []"#,
    ] {
        let r = gw.send("POST", "/kv/k/cas", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let e = r.error();
        assert!(
            e.contains(r#"{"expected": E, "desired": D}"#),
            "{body}: {e}"
        );
        assert!(!e.contains(r#""value""#), "{body}: {e}");
    }
    assert_eq!(gw.applied().await, gw.base);
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_put_mismatch_is_409_with_current_revision() {
    let gw = Gw::one().await;
    let b = gw.base;
    let r = gw
        .send("PUT", "/kv/c", r#"{"value":"a","revision":0}"#)
        .await;
    assert_eq!(
        (r.status, r.text.clone()),
        (StatusCode::OK, (b + 1).to_string())
    );

    let r = gw
        .send("PUT", "/kv/c", r#"{"value":"b","revision":0}"#)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let body = r.json();
    assert_eq!(body["revision"], b + 1);
    assert!(body["error"].as_str().unwrap().contains("revision"));
    assert_eq!(r.index(), b + 2, "the refused write still took a log entry");

    let r = gw
        .send(
            "PUT",
            "/kv/c",
            &format!(r#"{{"value":"b","revision":{}}}"#, b + 1),
        )
        .await;
    assert_eq!(
        (r.status, r.text.clone()),
        (StatusCode::OK, (b + 3).to_string())
    );
    // `"revision": null` is unconditional.
    let r = gw
        .send("PUT", "/kv/c", r#"{"value":"c","revision":null}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(gw.send("GET", "/kv/c", "").await.json()["value"], "c");
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_success_and_failure_shapes() {
    let gw = Gw::one().await;
    let rev = gw.base + 1;
    let r = gw
        .send(
            "POST",
            "/kv/s/cas",
            r#"{"expected":null,"desired":{"n":1}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text,
        format!(r#"{{"ok":true,"diff":"","revision":{rev},"value":{{"n":1}}}}"#)
    );
    let r = gw
        .send(
            "POST",
            "/kv/s/cas",
            r#"{"expected":{"n":0},"desired":{"n":2}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["revision"], rev);
    assert_eq!(body["value"], json!({"n":1}));
    assert_eq!(
        body["diff"],
        json!([{"op":"replace","path":"/n","value":1}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_requires_expected_and_desired() {
    let gw = Gw::one().await;
    for (body, field) in [
        (r#"{"desired":1}"#, "expected"),
        (r#"{"expected":1}"#, "desired"),
    ] {
        let r = gw.send("POST", "/kv/s/cas", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error().contains(&format!("\"{field}\" is missing")),
            "{}",
            r.text
        );
    }
    assert_eq!(gw.applied().await, gw.base);
}

#[tokio::test(flavor = "multi_thread")]
async fn pretty_indents_success_and_error() {
    let gw = Gw::one().await;
    gw.send("PUT", "/kv/p", r#"{"value":{"b":1,"a":[]}}"#).await;
    let r = gw.send("GET", "/kv/p?pretty", "").await;
    assert_eq!(
        r.text,
        format!(
            "{{\n  \"revision\": {},\n  \"value\": {{\n    \"b\": 1,\n    \"a\": []\n  }}\n}}",
            gw.base + 1
        )
    );
    let r = gw.send("GET", "/kv/.bad?pretty", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.starts_with("{\n  \"error\": "), "{}", r.text);
    let r = gw.send("GET", "/kv/p", "").await;
    assert!(!r.text.contains('\n'));
}

/// A linearizable read reflects the leader's read index; a stale read the
/// local applied index, and it works where no leader can be reached.
#[tokio::test(flavor = "multi_thread")]
async fn reads_are_linearizable_unless_stale() {
    let gw = Gw::start(3, |_| {}).await;
    gw.send("PUT", "/kv/r", r#"{"value":1}"#).await;
    let rev = gw.base + 1;
    let r = gw.send("GET", "/kv/r", "").await;
    assert!(r.index() >= rev, "a linearizable read reflects the write");
    for q in ["stale", "consistency=stale"] {
        let r = gw.send("GET", &format!("/kv/r?{q}"), "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.index() >= rev);
    }
    let r = gw.send("GET", "/kv/r?consistency=maybe", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Cut the leader off: a stale read still answers from its state, a
    // linearizable one cannot confirm leadership and says so (503).
    let leader = gw.leader;
    gw.cluster.isolate(leader, true);
    let r = gw.send("GET", "/kv/r?stale", "").await;
    assert_eq!(
        (r.status, r.json()["value"].clone()),
        (StatusCode::OK, json!(1))
    );
    let r = gw.send("GET", "/kv/r", "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.error().contains("retrying is safe"), "{}", r.text);
    gw.cluster.isolate(leader, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_sorted_filtered_and_bounded() {
    let gw = Gw::one().await;
    for k in ["b/2", "a", "b/1", "c"] {
        gw.send(
            "PUT",
            &format!("/kv/{}", k.replace('/', "%2F")),
            r#"{"value":0}"#,
        )
        .await;
    }
    let r = gw.send("GET", "/kv", "").await;
    assert_eq!(r.text, r#"["a","b/1","b/2","c"]"#);
    assert!(r.headers.get("x-kv-next-after").is_none());
    let r = gw.send("GET", "/kv?prefix=b%2F", "").await;
    assert_eq!(r.text, r#"["b/1","b/2"]"#);
    // A bounded listing says where to continue.
    let r = gw.send("GET", "/kv?limit=2", "").await;
    assert_eq!(r.text, r#"["a","b/1"]"#);
    assert_eq!(r.header("x-kv-next-after"), "b/1");
    let r = gw.send("GET", "/kv?limit=2&after=b%2F1", "").await;
    assert_eq!(r.text, r#"["b/2","c"]"#);
    assert!(r.headers.get("x-kv-next-after").is_none());
    for bad in ["0", "x", "10001"] {
        let r = gw.send("GET", &format!("/kv?limit={bad}"), "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.error().contains("limit"), "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_answers_empty_object() {
    let gw = Gw::one().await;
    gw.send("PUT", "/kv/d", r#"{"value":1}"#).await;
    let r = gw.send("DELETE", "/kv/d", "").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "{}"));
    assert_eq!(r.index(), gw.base + 2);
    let r = gw.send("GET", "/kv/d", "").await;
    assert_eq!(r.text, r#"{"revision":0,"value":null}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn raft_headers_on_success_and_errors() {
    let gw = Gw::one().await;
    let replies = [
        gw.send("GET", "/kv/x", "").await,
        gw.send("GET", "/kv/.x", "").await,
        gw.send("GET", "/no/such/route", "").await,
        gw.send("PATCH", "/kv/x", "").await,
        gw.send_from([8, 8, 8, 8], "GET", "/kv/x", "", &[]).await,
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 400, 404, 405, 403]);
    let term = replies[0].header("x-raft-term").to_string();
    assert!(term.parse::<u64>().unwrap() >= 1);
    for r in &replies {
        assert_eq!(r.header("x-raft-leader"), "true");
        assert_eq!(r.header("x-raft-leader-id"), "1");
        assert_eq!(r.header("x-raft-term"), term);
        assert!(r.header("x-raft-index").parse::<u64>().is_ok());
        assert_eq!(r.header("x-served-by"), "1");
        assert!(r.json().is_object(), "{}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn external_connections_get_403_except_public_routes() {
    let gw = Gw::one().await;
    let public_peer = [203, 0, 113, 9];
    for (m, uri) in [
        ("GET", "/kv/x"),
        ("PUT", "/kv/x"),
        ("GET", "/cluster"),
        ("GET", "/metrics"),
    ] {
        let r = gw
            .send_from(public_peer, m, uri, r#"{"value":1}"#, &[])
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}");
        assert!(r.error().contains("internal"), "{}", r.text);
    }
    // A private proxy relaying a public client is external.
    let xff = [("x-forwarded-for", "10.1.1.1, 198.51.100.4")];
    let r = gw
        .send_from(INTERNAL_PEER, "PUT", "/kv/x", r#"{"value":1}"#, &xff)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(gw.applied().await, gw.base, "nothing was written");
    // Relaying a private client is internal.
    let xff = [("x-forwarded-for", "192.168.3.4")];
    let r = gw.send_from(INTERNAL_PEER, "GET", "/kv/x", "", &xff).await;
    assert_eq!(r.status, StatusCode::OK);
    // Liveness routes are public.
    for uri in ["/health", "/ready", "/ping", "/version"] {
        let r = gw.send_from(public_peer, "GET", uri, "", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
}

/// `/rstmdb` follows rstmdb's tokens when the node has some (a public peer
/// with the token is served); without tokens it is internal-only, so an
/// HTTP port exposed for public APIs does not open rstmdb unasked.
#[tokio::test(flavor = "multi_thread")]
async fn rstmdb_over_http_is_internal_only_unless_tokens_are_configured() {
    let public_peer = [203, 0, 113, 9];
    let ping = r#"{"type":"request","id":"1","op":"PING","params":{}}"#;
    let gw = Gw::one().await;
    let r = gw
        .send_from(public_peer, "POST", "/rstmdb", ping, &[])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = gw
        .send_from(INTERNAL_PEER, "POST", "/rstmdb", ping, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let hash = raftmesh_gateway::rstmdb::token_hash("s3cret");
    let gw = Gw::start(1, |c| c.rstmdb_token_hashes = vec![hash.clone()]).await;
    let list = r#"{"type":"request","id":"2","op":"LIST_MACHINES","params":{}}"#;
    let bearer = [("authorization", "Bearer s3cret")];
    let r = gw
        .send_from(public_peer, "POST", "/rstmdb", list, &bearer)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = gw
        .send_from(public_peer, "POST", "/rstmdb", list, &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
}

/// The statuses of real cluster failures: a write whose commit cannot be
/// learned is 504 "outcome unknown"; no reachable leader is 503 with
/// Retry-After; a membership request the cluster refuses is 400.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_errors_map_to_503_and_504() {
    let gw = Gw::start(3, |c| {
        c.write_timeout_ms = 1_000;
        c.leader_wait_ms = 700;
    })
    .await;
    let leader = gw.leader;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();

    // The leader appends, but no follower hears of it.
    for f in &followers {
        gw.cluster.isolate(*f, true);
    }
    let r = gw.send("PUT", "/kv/u", r#"{"value":1}"#).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text);
    assert!(r.error().contains("unknown"), "{}", r.text);
    assert!(
        r.error().contains("may or may not have been applied"),
        "{}",
        r.text
    );
    assert!(r.header("x-raft-term").parse::<u64>().is_ok());

    // An isolated follower finds no leader: 503, safe to retry.
    let f = followers[0];
    let app = gw.cluster.node(f).running().unwrap().router();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = send_to(&app, INTERNAL_PEER, "PUT", "/kv/v", r#"{"value":1}"#, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.error().contains("retrying is safe"), "{}", r.text);
    assert_eq!(r.header("retry-after"), "1");
    let r = send_to(&app, INTERNAL_PEER, "GET", "/ready", "", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("not ready"));
    for f in &followers {
        gw.cluster.isolate(*f, false);
    }

    let r = gw
        .send("POST", "/cluster/change-membership", r#"{"voters":[9]}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.error().contains("add-learner"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_by_route_template() {
    let gw = Gw::one().await;
    gw.send("GET", "/kv/one", "").await;
    gw.send("GET", "/kv/two", "").await;
    gw.send("GET", "/kv/.bad", "").await;
    let r = gw.send("GET", "/metrics", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    assert!(
        r.text.starts_with("# HELP raftmesh_raft_term "),
        "{}",
        r.text
    );
    // Setup made one GET of /kv/{key} too.
    assert!(
        r.text.contains(
            "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"200\"} 3\n"
        ),
        "{}",
        r.text
    );
    assert!(r.text.contains(
        "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"400\"} 1\n"
    ));
    assert!(r.text.contains(
        "raftmesh_http_request_duration_seconds_count{route=\"/kv/{key}\",method=\"GET\"} 4\n"
    ));
    assert!(
        !r.text.contains("/kv/one"),
        "raw paths must not become labels"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_routes() {
    let gw = Gw::one().await;
    assert_eq!(
        gw.send("GET", "/health", "").await.json(),
        json!({"status":"ok"})
    );
    assert_eq!(gw.send("GET", "/ping", "").await.json(), json!("pong"));
    assert_eq!(
        gw.send("GET", "/version", "").await.json(),
        json!({"version": env!("CARGO_PKG_VERSION")})
    );
    let cluster = gw.send("GET", "/cluster", "").await.json();
    assert_eq!(cluster["role"], "Leader");
    assert_eq!(cluster["members"].as_array().unwrap().len(), 1);
    assert!(cluster["cluster_id"].is_string(), "{cluster}");
    let peers = gw.send("GET", "/peers", "").await.json();
    assert_eq!(
        peers[0]["http_addr"],
        gw.cluster.node(1).http_addr.to_string()
    );
    assert_eq!(peers[0]["leader"], true);
    assert_eq!(peers[0]["voter"], true);
    assert_eq!(gw.send("GET", "/ready", "").await.status, StatusCode::OK);
    let p = gw.send("GET", "/cluster/progress", "").await.json();
    assert_eq!(p["leader"], 1, "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_membership_routes_refuse_bad_requests() {
    let gw = Gw::one().await;
    let r = gw
        .send("POST", "/cluster/change-membership", r#"{"voters":[]}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = gw
        .send("POST", "/cluster/add-learner", r#"{"node_id":4}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("grpc_addr"), "{}", r.text);
    // Nobody listens there: refused up front, membership unchanged.
    let r = gw
        .send(
            "POST",
            "/cluster/add-learner",
            r#"{"node_id":4,"grpc_addr":"127.0.0.1:9","timeout_ms":2000}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.error().contains("127.0.0.1:9"), "{}", r.text);
    let cluster = gw.send("GET", "/cluster", "").await.json();
    assert_eq!(cluster["members"].as_array().unwrap().len(), 1);
    let r = gw
        .send("POST", "/cluster/change-membership", r#"{"voters":[1]}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json()["index"].as_u64().unwrap() > gw.base);
}

/// CAS carries two values, so its route allows a larger body than PUT.
#[tokio::test(flavor = "multi_thread")]
async fn cas_body_limit_exceeds_put_body_limit() {
    let gw = Gw::one().await;
    let pad = " ".repeat(small_cfg().body_limit() + 10);
    let r = gw
        .send("PUT", "/kv/k", &format!(r#"{{"value":{pad}1}}"#))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = format!(r#"{{"expected":{pad}null,"desired":1}}"#);
    assert!(body.len() < small_cfg().cas_body_limit());
    let r = gw.send("POST", "/kv/k/cas", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(gw.send("GET", "/kv/k", "").await.json()["value"], 1);
}

/// The real server over TCP: loopback is internal, an unparsable request
/// still gets a JSON error, and a request the limits refuse is 413 before
/// anything is proposed.
#[tokio::test(flavor = "multi_thread")]
async fn over_real_sockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gw::start(1, |c| c.max_entry_bytes = 100).await;
    let addr = gw.cluster.node(1).http_addr;
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /kv/x HTTP/1.1\r\nHost: pm3\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-served-by: 1"), "{raw}");
    assert!(raw.ends_with(r#"{"revision":0,"value":null}"#), "{raw}");

    // hyper refuses a URI over 64 KiB before any route runs; the answer is
    // still this API's JSON error.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let long = format!(
        "GET /kv/{} HTTP/1.1\r\nHost: pm3\r\n\r\n",
        "a".repeat(70_000)
    );
    conn.write_all(long.as_bytes()).await.unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 414"), "{raw}");
    assert!(raw.contains("content-type: application/json"), "{raw}");
    let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too long"),
        "{raw}"
    );

    // A CAS of two 60-byte values is within the value limit but over the
    // 100-byte entry limit: 413, and nothing was written.
    let v = format!("\"{}\"", "z".repeat(58));
    let r = gw
        .send(
            "POST",
            "/kv/k/cas",
            &format!(r#"{{"expected":{v},"desired":{v}}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert!(r.error().contains("max-entry-bytes"), "{}", r.text);
    assert_eq!(gw.applied().await, gw.base);
}

/// The leader's write queue is bounded: with the commit path stalled, the
/// write past `max_pending_writes` is refused at once (503, nothing
/// applied); the others end "outcome unknown" (504) within the write
/// timeout of their own arrival — time spent queued counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_write_queue_is_503_and_queued_time_counts() {
    let gw = Gw::start(3, |c| {
        c.write_timeout_ms = 1_000;
        c.max_pending_writes = 1;
    })
    .await;
    let leader = gw.leader;
    for f in [1, 2, 3].into_iter().filter(|&i| i != leader) {
        gw.cluster.isolate(f, true);
    }
    // Two batches go in flight (each waits for a commit that cannot come),
    // the third write waits in the queue, the fourth finds it full.
    let mut inflight = Vec::new();
    for i in 0..3 {
        let app = gw.app.clone();
        inflight.push(tokio::spawn(async move {
            let t = std::time::Instant::now();
            let r = send_to(
                &app,
                INTERNAL_PEER,
                "PUT",
                &format!("/kv/q{i}"),
                r#"{"value":1}"#,
                &[],
            )
            .await;
            (r, t.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = gw.send("PUT", "/kv/q3", r#"{"value":1}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(r.error().contains("max-pending-writes"), "{}", r.text);
    for (i, t) in inflight.into_iter().enumerate() {
        let (r, took) = t.await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::GATEWAY_TIMEOUT,
            "write {i}: {}",
            r.text
        );
        // The queued write waited ~300 ms for a driver; had its timeout
        // started only when it was proposed, it would answer after ~1.3 s.
        assert!(
            took < Duration::from_millis(1_250),
            "write {i} answered after {took:?}"
        );
    }
}
