//! Unit tests of the gateway's HTTP mapping: requests → `Backend` calls and
//! `Backend` results → statuses, bodies and headers. The backend is an
//! in-memory fake, so these say nothing about replication; the node crate's
//! integration tests cover a real cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use std::time::Duration;

use raftmesh_gateway::{
    router, run, Backend, ClusterStatus, GatewayConfig, MemberStatus, MembershipOutcome, RaftView,
    WriteOutcome,
};
use raftmesh_proto::{ApplyResult, ClusterError, ClusterProgress, Cmd, KvEntry, NodeId, NodeInfo};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Offset between the fake's applied index and what its read barrier
/// returns, so tests can tell which one `X-Raft-Index` shows.
const BARRIER_OFFSET: u64 = 1000;

#[derive(Default)]
struct Fake {
    state: Mutex<State>,
    /// Returned (once) by the next write or barrier instead of succeeding.
    fail_next: Mutex<Option<ClusterError>>,
    not_ready: AtomicBool,
}

#[derive(Default)]
struct State {
    index: u64,
    kv: BTreeMap<String, KvEntry>,
    writes: Vec<Cmd>,
    barriers: u64,
    membership: Vec<String>,
}

impl Fake {
    fn take_failure(&self) -> Result<(), ClusterError> {
        match self.fail_next.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn writes(&self) -> Vec<Cmd> {
        self.state.lock().unwrap().writes.clone()
    }
    fn barriers(&self) -> u64 {
        self.state.lock().unwrap().barriers
    }
}

impl Backend for Fake {
    fn raft_view(&self) -> RaftView {
        RaftView {
            node_id: 1,
            is_leader: true,
            leader_id: Some(1),
            term: 3,
            applied_index: self.state.lock().unwrap().index,
        }
    }

    async fn write(&self, cmd: Cmd) -> Result<WriteOutcome, ClusterError> {
        self.take_failure()?;
        let mut st = self.state.lock().unwrap();
        st.index += 1;
        let index = st.index;
        st.writes.push(cmd.clone());
        let current = |st: &State, k: &str| st.kv.get(k).map_or(0, |e| e.revision);
        let result = match cmd {
            Cmd::KvPut {
                key,
                value,
                if_revision,
            } => match if_revision {
                Some(r) if r != current(&st, &key) => ApplyResult::RevisionMismatch {
                    current: current(&st, &key),
                },
                _ => {
                    st.kv.insert(
                        key,
                        KvEntry {
                            revision: index,
                            value,
                        },
                    );
                    ApplyResult::Written { revision: index }
                }
            },
            Cmd::KvDelete { key } => {
                st.kv.remove(&key);
                ApplyResult::Deleted
            }
            // The gateway sends single commands; batching happens on the leader.
            Cmd::Batch { .. } => unreachable!("the gateway never sends batches"),
            Cmd::KvCas {
                key,
                expected,
                desired,
            } => {
                let (rev, cur) = st
                    .kv
                    .get(&key)
                    .map_or((0, "null".to_owned()), |e| (e.revision, e.value.clone()));
                let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
                if parse(&expected) == parse(&cur) {
                    st.kv.insert(
                        key,
                        KvEntry {
                            revision: index,
                            value: desired.clone(),
                        },
                    );
                    ApplyResult::Cas {
                        ok: true,
                        revision: index,
                        value: desired,
                        diff: String::new(),
                    }
                } else {
                    ApplyResult::Cas {
                        ok: false,
                        revision: rev,
                        diff: format!(r#"[{{"op":"replace","path":"","value":{cur}}}]"#),
                        value: cur,
                    }
                }
            }
        };
        Ok(WriteOutcome { index, result })
    }

    async fn read_barrier(&self) -> Result<u64, ClusterError> {
        self.take_failure()?;
        let mut st = self.state.lock().unwrap();
        st.barriers += 1;
        Ok(st.index + BARRIER_OFFSET)
    }

    fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, ClusterError> {
        Ok(self.state.lock().unwrap().kv.get(key).cloned())
    }

    fn kv_list(&self, prefix: &str) -> Result<Vec<String>, ClusterError> {
        let st = self.state.lock().unwrap();
        Ok(st
            .kv
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn cluster_status(&self) -> ClusterStatus {
        let index = self.state.lock().unwrap().index;
        ClusterStatus {
            id: 1,
            role: "Leader".into(),
            term: 3,
            leader: Some(1),
            last_log_index: Some(index),
            last_applied_index: Some(index),
            last_snapshot_index: None,
            last_purged_index: None,
            committed_index: Some(index),
            members: vec![
                MemberStatus {
                    node_id: 1,
                    grpc_addr: "10.0.0.1:7000".into(),
                    http_addr: "10.0.0.1:8080".into(),
                    voter: true,
                    matched_index: Some(5),
                },
                MemberStatus {
                    node_id: 2,
                    grpc_addr: "10.0.0.2:7000".into(),
                    http_addr: "10.0.0.2:8080".into(),
                    voter: false,
                    matched_index: None,
                },
            ],
            leader_changes: 1,
            cluster_id: Some("c1".into()),
            removed: None,
        }
    }

    fn is_ready(&self) -> bool {
        !self.not_ready.load(Ordering::SeqCst)
    }

    fn raft_metrics_text(&self) -> String {
        "# TYPE raftmesh_raft_term gauge\nraftmesh_raft_term 3\n".into()
    }

    async fn add_learner(
        &self,
        node_id: NodeId,
        node: NodeInfo,
        _timeout: Duration,
    ) -> Result<MembershipOutcome, ClusterError> {
        self.take_failure()?;
        let mut st = self.state.lock().unwrap();
        st.index += 1;
        st.membership.push(format!("learner {node_id} {node}"));
        Ok(MembershipOutcome {
            index: st.index,
            target: Some(st.index - 1),
            matched: Some(st.index),
            not_demoted: Vec::new(),
        })
    }

    async fn change_membership(
        &self,
        voters: Vec<NodeId>,
        force: bool,
        _timeout: Duration,
    ) -> Result<MembershipOutcome, ClusterError> {
        self.take_failure()?;
        let mut st = self.state.lock().unwrap();
        st.index += 1;
        st.membership
            .push(format!("voters {voters:?} force={force}"));
        Ok(MembershipOutcome {
            index: st.index,
            target: None,
            matched: None,
            not_demoted: Vec::new(),
        })
    }

    async fn cluster_progress(&self) -> Result<ClusterProgress, ClusterError> {
        self.take_failure()?;
        Ok(ClusterProgress {
            leader: 1,
            committed_index: self.state.lock().unwrap().index,
            membership_index: 1,
            members: Vec::new(),
        })
    }
}

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
}

fn small_cfg() -> GatewayConfig {
    GatewayConfig {
        max_key_bytes: 16,
        max_value_bytes: 100,
    }
}

fn setup() -> (Arc<Fake>, Router) {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone(), small_cfg());
    (fake, app)
}

const INTERNAL_PEER: [u8; 4] = [10, 0, 0, 5];

async fn send_from(
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

async fn send(app: &Router, method: &str, uri: &str, body: &str) -> Reply {
    send_from(app, INTERNAL_PEER, method, uri, body, &[]).await
}

#[tokio::test]
async fn missing_key_reads_as_revision_zero_null() {
    let (_, app) = setup();
    let r = send(&app, "GET", "/kv/nothing", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, r#"{"revision":0,"value":null}"#);
    assert_eq!(r.header("content-type"), "application/json");
}

#[tokio::test]
async fn put_then_get_embeds_compacted_value_in_order() {
    let (fake, app) = setup();
    let r = send(
        &app,
        "PUT",
        "/kv/cfg",
        r#"{ "value" : {"z": [1, 2.50], "a": "x y"} }"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.text, "1", "PUT answers the bare revision");
    assert_eq!(r.header("x-raft-index"), "1");
    assert_eq!(
        fake.writes(),
        vec![Cmd::KvPut {
            key: "cfg".into(),
            value: r#"{"z":[1,2.50],"a":"x y"}"#.into(),
            if_revision: None
        }]
    );
    let r = send(&app, "GET", "/kv/cfg", "").await;
    assert_eq!(r.text, r#"{"revision":1,"value":{"z":[1,2.50],"a":"x y"}}"#);
}

#[tokio::test]
async fn explicit_null_value_is_stored() {
    let (fake, app) = setup();
    let r = send(&app, "PUT", "/kv/n", r#"{"value":null}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(matches!(&fake.writes()[0], Cmd::KvPut { value, .. } if value == "null"));
}

#[tokio::test]
async fn key_validation_names_the_rule() {
    let (fake, app) = setup();
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
            let r = send(&app, method, uri, r#"{"value":1}"#).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{method} {uri}: {}",
                r.text
            );
            assert!(r.error().contains(rule), "{method} {uri}: {}", r.text);
        }
    }
    assert!(fake.writes().is_empty());
    // A percent-encoded slash decodes into a valid one-segment key.
    let r = send(&app, "PUT", "/kv/a%2Fb", r#"{"value":1}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(matches!(&fake.writes()[0], Cmd::KvPut { key, .. } if key == "a/b"));
}

#[tokio::test]
async fn oversize_value_is_413_and_not_written() {
    let (fake, app) = setup();
    let big = "x".repeat(200);
    let r = send(&app, "PUT", "/kv/big", &format!(r#"{{"value":"{big}"}}"#)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("at most 100 bytes"), "{}", r.text);
    // Whitespace does not count: the compact form is what is stored.
    let padded = format!(r#"{{"value": [{}1]}}"#, " ".repeat(500));
    let r = send(&app, "PUT", "/kv/small", &padded).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(fake.writes().len(), 1);
}

#[tokio::test]
async fn body_over_the_limit_is_413_json() {
    let (fake, app) = setup();
    let huge = format!(
        r#"{{"value":"{}"}}"#,
        "y".repeat(small_cfg().body_limit() + 10)
    );
    for uri in ["/kv/k", "/kv/k/cas"] {
        let method = if uri.ends_with("cas") { "POST" } else { "PUT" };
        let huge = if method == "POST" {
            format!(
                r#"{{"expected":null,"desired":"{}"}}"#,
                "y".repeat(small_cfg().cas_body_limit() + 10)
            )
        } else {
            huge.clone()
        };
        let r = send(&app, method, uri, &huge).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.error().contains("too large"), "{}", r.text);
        assert_eq!(r.header("x-served-by"), "1");
    }
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn invalid_json_is_400_naming_the_problem() {
    let (fake, app) = setup();
    let r = send(&app, "PUT", "/kv/k", r#"{"value": }"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("invalid JSON body"), "{}", r.text);
    let r = send(&app, "PUT", "/kv/k", "").await;
    assert!(r.error().starts_with("invalid JSON body"), "{}", r.text);
    let r = send(&app, "PUT", "/kv/k", r#"{"val": 1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains(r#"{"value": V}"#), "{}", r.text);
    let r = send(&app, "PUT", "/kv/k", r#"{"value": 1, "revision": -2}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("invalid request body"), "{}", r.text);
    // An array must not be read as the struct's fields in order.
    for body in ["[1]", "[1, 2]", " 5"] {
        let r = send(&app, "PUT", "/kv/k", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains("JSON object"), "{}", r.text);
    }
    let r = send(&app, "POST", "/kv/k/cas", "[1, 2]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // The CAS route's errors show the CAS body, not the PUT one.
    for body in [
        "[1, 2]",
        r#"{"expected": }"#,
        r#"{"expected": 1, "desired": 2, "x": []"#,
    ] {
        let r = send(&app, "POST", "/kv/k/cas", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let e = r.error();
        assert!(
            e.contains(r#"{"expected": E, "desired": D}"#),
            "{body}: {e}"
        );
        assert!(!e.contains(r#""value""#), "{body}: {e}");
    }
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn conditional_put_mismatch_is_409_with_current_revision() {
    let (fake, app) = setup();
    let r = send(&app, "PUT", "/kv/c", r#"{"value":"a","revision":0}"#).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "1"));
    assert!(matches!(
        &fake.writes()[0],
        Cmd::KvPut {
            if_revision: Some(0),
            ..
        }
    ));

    let r = send(&app, "PUT", "/kv/c", r#"{"value":"b","revision":0}"#).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let body = r.json();
    assert_eq!(body["revision"], 1);
    assert!(body["error"].as_str().unwrap().contains("revision"));
    assert_eq!(r.header("x-raft-index"), "2");

    let r = send(&app, "PUT", "/kv/c", r#"{"value":"b","revision":1}"#).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "3"));
    // `"revision": null` is unconditional.
    let r = send(&app, "PUT", "/kv/c", r#"{"value":"c","revision":null}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(matches!(
        &fake.writes()[3],
        Cmd::KvPut {
            if_revision: None,
            ..
        }
    ));
}

#[tokio::test]
async fn cas_success_and_failure_shapes() {
    let (fake, app) = setup();
    let r = send(
        &app,
        "POST",
        "/kv/s/cas",
        r#"{"expected":null,"desired":{"n":1}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.text,
        r#"{"ok":true,"diff":"","revision":1,"value":{"n":1}}"#
    );
    assert_eq!(
        fake.writes()[0],
        Cmd::KvCas {
            key: "s".into(),
            expected: "null".into(),
            desired: r#"{"n":1}"#.into()
        }
    );

    let r = send(
        &app,
        "POST",
        "/kv/s/cas",
        r#"{"expected":{"n":0},"desired":{"n":2}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["revision"], 1);
    assert_eq!(body["value"], json!({"n":1}));
    assert_eq!(
        body["diff"],
        json!([{"op":"replace","path":"","value":{"n":1}}])
    );
}

#[tokio::test]
async fn cas_requires_expected_and_desired() {
    let (fake, app) = setup();
    for (body, field) in [
        (r#"{"desired":1}"#, "expected"),
        (r#"{"expected":1}"#, "desired"),
    ] {
        let r = send(&app, "POST", "/kv/s/cas", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(
            r.error().contains(&format!("\"{field}\" is missing")),
            "{}",
            r.text
        );
    }
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn pretty_indents_success_and_error() {
    let (_, app) = setup();
    send(&app, "PUT", "/kv/p", r#"{"value":{"b":1,"a":[]}}"#).await;
    let r = send(&app, "GET", "/kv/p?pretty", "").await;
    assert_eq!(
        r.text,
        "{\n  \"revision\": 1,\n  \"value\": {\n    \"b\": 1,\n    \"a\": []\n  }\n}"
    );
    let r = send(&app, "GET", "/kv/.bad?pretty", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text.starts_with("{\n  \"error\": "), "{}", r.text);
    let r = send(&app, "GET", "/kv/p", "").await;
    assert!(!r.text.contains('\n'));
}

#[tokio::test]
async fn reads_are_linearizable_unless_stale() {
    let (fake, app) = setup();
    send(&app, "PUT", "/kv/r", r#"{"value":1}"#).await;
    let r = send(&app, "GET", "/kv/r", "").await;
    assert_eq!(fake.barriers(), 1);
    assert_eq!(r.header("x-raft-index"), (1 + BARRIER_OFFSET).to_string());

    for q in ["stale", "consistency=stale"] {
        let r = send(&app, "GET", &format!("/kv/r?{q}"), "").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("x-raft-index"),
            "1",
            "stale shows the applied index"
        );
    }
    send(&app, "GET", "/kv?stale", "").await;
    assert_eq!(fake.barriers(), 1);

    let r = send(&app, "GET", "/kv/r?consistency=maybe", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn list_is_sorted_and_filtered() {
    let (_, app) = setup();
    for k in ["b/2", "a", "b/1", "c"] {
        send(
            &app,
            "PUT",
            &format!("/kv/{}", k.replace('/', "%2F")),
            r#"{"value":0}"#,
        )
        .await;
    }
    let r = send(&app, "GET", "/kv", "").await;
    assert_eq!(r.text, r#"["a","b/1","b/2","c"]"#);
    let r = send(&app, "GET", "/kv?prefix=b%2F", "").await;
    assert_eq!(r.text, r#"["b/1","b/2"]"#);
}

#[tokio::test]
async fn delete_answers_empty_object() {
    let (fake, app) = setup();
    send(&app, "PUT", "/kv/d", r#"{"value":1}"#).await;
    let r = send(&app, "DELETE", "/kv/d", "").await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "{}"));
    assert_eq!(r.header("x-raft-index"), "2");
    assert_eq!(fake.writes()[1], Cmd::KvDelete { key: "d".into() });
    let r = send(&app, "GET", "/kv/d", "").await;
    assert_eq!(r.text, r#"{"revision":0,"value":null}"#);
}

#[tokio::test]
async fn raft_headers_on_success_and_errors() {
    let (_, app) = setup();
    let replies = [
        send(&app, "GET", "/kv/x", "").await,
        send(&app, "GET", "/kv/.x", "").await,
        send(&app, "GET", "/no/such/route", "").await,
        send(&app, "PATCH", "/kv/x", "").await,
        send_from(&app, [8, 8, 8, 8], "GET", "/kv/x", "", &[]).await,
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 400, 404, 405, 403]);
    for r in &replies {
        assert_eq!(r.header("x-raft-leader"), "true");
        assert_eq!(r.header("x-raft-leader-id"), "1");
        assert_eq!(r.header("x-raft-term"), "3");
        assert!(r.header("x-raft-index").parse::<u64>().is_ok());
        assert_eq!(r.header("x-served-by"), "1");
        assert!(r.json().is_object(), "{}", r.text);
    }
}

#[tokio::test]
async fn external_connections_get_403_except_public_routes() {
    let (fake, app) = setup();
    let public_peer = [203, 0, 113, 9];
    for (m, uri) in [
        ("GET", "/kv/x"),
        ("PUT", "/kv/x"),
        ("GET", "/cluster"),
        ("GET", "/metrics"),
    ] {
        let r = send_from(&app, public_peer, m, uri, r#"{"value":1}"#, &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri}");
        assert!(r.error().contains("internal"), "{}", r.text);
    }
    // A private proxy relaying a public client is external.
    let xff = [("x-forwarded-for", "10.1.1.1, 198.51.100.4")];
    let r = send_from(&app, INTERNAL_PEER, "PUT", "/kv/x", r#"{"value":1}"#, &xff).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(fake.writes().is_empty());
    // Relaying a private client is internal.
    let xff = [("x-forwarded-for", "192.168.3.4")];
    let r = send_from(&app, INTERNAL_PEER, "GET", "/kv/x", "", &xff).await;
    assert_eq!(r.status, StatusCode::OK);
    // Liveness routes are public.
    for uri in ["/health", "/ready", "/ping", "/version"] {
        let r = send_from(&app, public_peer, "GET", uri, "", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
}

#[tokio::test]
async fn cluster_errors_map_to_503_and_504() {
    let (fake, app) = setup();
    *fake.fail_next.lock().unwrap() = Some(ClusterError::Unknown("timed out".into()));
    let r = send(&app, "PUT", "/kv/u", r#"{"value":1}"#).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.error().contains("unknown"), "{}", r.text);
    assert!(
        r.error().contains("may or may not have been applied"),
        "{}",
        r.text
    );
    assert_eq!(r.header("x-raft-term"), "3");

    *fake.fail_next.lock().unwrap() = Some(ClusterError::NoLeader("election".into()));
    let r = send(&app, "GET", "/kv/u", "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("retrying is safe"), "{}", r.text);
    assert_eq!(r.header("retry-after"), "1");

    *fake.fail_next.lock().unwrap() = Some(ClusterError::Rejected("bad voters".into()));
    let r = send(
        &app,
        "POST",
        "/cluster/change-membership",
        r#"{"voters":[9]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("bad voters"));
}

#[tokio::test]
async fn metrics_count_by_route_template() {
    let (_, app) = setup();
    send(&app, "GET", "/kv/one", "").await;
    send(&app, "GET", "/kv/two", "").await;
    send(&app, "GET", "/kv/.bad", "").await;
    let r = send(&app, "GET", "/metrics", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .starts_with("text/plain; version=0.0.4"));
    assert!(r
        .text
        .starts_with("# TYPE raftmesh_raft_term gauge\nraftmesh_raft_term 3\n"));
    assert!(
        r.text.contains(
            "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"200\"} 2\n"
        ),
        "{}",
        r.text
    );
    assert!(r.text.contains(
        "raftmesh_http_requests_total{route=\"/kv/{key}\",method=\"GET\",status=\"400\"} 1\n"
    ));
    assert!(r.text.contains(
        "raftmesh_http_request_duration_seconds_count{route=\"/kv/{key}\",method=\"GET\"} 3\n"
    ));
    assert!(
        !r.text.contains("/kv/one"),
        "raw paths must not become labels"
    );
}

#[tokio::test]
async fn ops_routes() {
    let (fake, app) = setup();
    assert_eq!(
        send(&app, "GET", "/health", "").await.json(),
        json!({"status":"ok"})
    );
    assert_eq!(send(&app, "GET", "/ping", "").await.json(), json!("pong"));
    assert_eq!(
        send(&app, "GET", "/version", "").await.json(),
        json!({"version": env!("CARGO_PKG_VERSION")})
    );
    let cluster = send(&app, "GET", "/cluster", "").await.json();
    assert_eq!(cluster["role"], "Leader");
    assert_eq!(cluster["members"].as_array().unwrap().len(), 2);
    let peers = send(&app, "GET", "/peers", "").await.json();
    assert_eq!(peers[0]["http_addr"], "10.0.0.1:8080");
    assert_eq!(peers[0]["leader"], true);
    assert_eq!(peers[1]["voter"], false);

    fake.not_ready.store(true, Ordering::SeqCst);
    let r = send(&app, "GET", "/ready", "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("not ready"));
}

#[tokio::test]
async fn admin_membership_routes() {
    let (fake, app) = setup();
    let r = send(
        &app,
        "POST",
        "/cluster/add-learner",
        r#"{"node_id":4,"grpc_addr":"10.0.0.4:7000","http_addr":"10.0.0.4:8080"}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.text.as_str()),
        (StatusCode::OK, r#"{"index":1,"target":0,"matched":1}"#)
    );
    assert_eq!(r.header("x-raft-index"), "1");
    let r = send(
        &app,
        "POST",
        "/cluster/change-membership",
        r#"{"voters":[1,2,3]}"#,
    )
    .await;
    assert_eq!(r.text, r#"{"index":2}"#);
    assert_eq!(
        fake.state.lock().unwrap().membership,
        [
            "learner 4 grpc=10.0.0.4:7000 http=10.0.0.4:8080",
            "voters [1, 2, 3] force=false"
        ]
    );
    let r = send(
        &app,
        "POST",
        "/cluster/change-membership",
        r#"{"voters":[]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(&app, "POST", "/cluster/add-learner", r#"{"node_id":4}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("grpc_addr"), "{}", r.text);
}

/// `run` over real TCP: connect info comes from the socket (loopback is
/// internal), and the shutdown future stops the server.
#[tokio::test]
async fn run_serves_on_port_zero_and_shuts_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(
        listener,
        Arc::new(Fake::default()),
        GatewayConfig::default(),
        async {
            let _ = stop_rx.await;
        },
    ));

    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /kv/x HTTP/1.1\r\nHost: pm3\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("x-served-by: 1"), "{raw}");
    assert!(raw.ends_with(r#"{"revision":0,"value":null}"#), "{raw}");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .unwrap();
}

/// CAS carries two values, so its route allows a larger body than PUT.
#[tokio::test]
async fn cas_body_limit_exceeds_put_body_limit() {
    let (fake, app) = setup();
    let pad = " ".repeat(small_cfg().body_limit() + 10);
    let r = send(&app, "PUT", "/kv/k", &format!(r#"{{"value":{pad}1}}"#)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let body = format!(r#"{{"expected":{pad}null,"desired":1}}"#);
    assert!(body.len() < small_cfg().cas_body_limit());
    let r = send(&app, "POST", "/kv/k/cas", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(fake.writes().len(), 1);
}
