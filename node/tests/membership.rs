//! Membership changes as an operator makes them, through the `raftmesh
//! cluster` CLI against real node processes: what add-learner and
//! change-membership refuse, what they wait for, and what a removed node
//! does afterwards. Also the data dir's identity (node id, cluster id).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const CLI_TIMEOUT: Duration = Duration::from_secs(60);

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn add_learner(
    c: &Cluster,
    via: NodeId,
    id: NodeId,
    grpc: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut a = args(&[
        "cluster",
        "add-learner",
        "--endpoint",
        &c.node(via).http_addr(), // no scheme: HOST:PORT must work
        "--node-id",
        &id.to_string(),
        "--grpc-addr",
        grpc,
    ]);
    a.extend(args(extra));
    run_cli(&a, CLI_TIMEOUT).await
}

async fn change_membership(
    c: &Cluster,
    via: NodeId,
    voters: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut a = args(&[
        "cluster",
        "change-membership",
        "--endpoint",
        &c.url(via),
        "--voters",
        voters,
    ]);
    a.extend(args(extra));
    run_cli(&a, CLI_TIMEOUT).await
}

/// add-learner of a node just started, retried (bounded) until the node
/// answers its probe; returns the CLI's stdout.
async fn add_learner_until_ok(c: &Cluster, via: NodeId, id: NodeId) -> String {
    let grpc = c.node(id).grpc_addr();
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let grpc = grpc.clone();
        async move {
            let (ok, out, err) = add_learner(c, via, id, &grpc, &[]).await;
            if ok {
                Ok(out)
            } else {
                Err(format!("{out}\n{err}"))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("add-learner of node {id} failed: {e}"))
}

fn term_of(status: &Value) -> u64 {
    status["term"]
        .as_u64()
        .unwrap_or_else(|| panic!("no term in {status}"))
}

/// 1. An unreachable learner is refused, naming its address, and nothing
///    changes; a reachable one is waited for until it holds every entry
///    committed before the call.
#[tokio::test(flavor = "multi_thread")]
async fn add_learner_refuses_the_unreachable_and_waits_for_the_reachable() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let before = members(&c.cluster_status_ok(leader).await);

    let nobody = format!("127.0.0.1:{}", free_port());
    let (ok, out, err) = add_learner(&c, leader, 5, &nobody, &[]).await;
    assert!(!ok, "add-learner of a node nobody runs succeeded:\n{out}");
    assert!(
        out.contains(&nobody),
        "the refusal does not name the address {nobody}:\nstdout: {out}\nstderr: {err}"
    );
    assert_eq!(
        members(&c.cluster_status_ok(leader).await),
        before,
        "membership changed"
    );

    // Promoting a node that is not even a learner is refused too.
    let (ok, out, _) = change_membership(&c, leader, "1,2,3,5", &[]).await;
    assert!(!ok, "change-membership to a non-member succeeded: {out}");
    assert!(out.contains("add-learner"), "{out}");
    assert_eq!(members(&c.cluster_status_ok(leader).await), before);

    // Something to catch up on, then a real fourth node.
    for i in 0..300 {
        c.put_ok(leader, &format!("m1/k{i}"), json!(i)).await;
    }
    c.add_node(4, vec![1, 2, 3, 4], Vec::new()).await;
    c.spawn(4).await;
    let out = add_learner_until_ok(&c, leader, 4).await;
    let reply: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("add-learner printed no JSON ({e}): {out}"));
    let target = reply["target"]
        .as_u64()
        .unwrap_or_else(|| panic!("no target: {reply}"));
    let matched = reply["matched"]
        .as_u64()
        .unwrap_or_else(|| panic!("no matched: {reply}"));
    assert!(
        target >= 300,
        "target {target} is below the 300 writes made before"
    );
    assert!(matched >= target, "returned before catching up: {reply}");
    // Node 4 holds what was committed before the call.
    let s4 = c.cluster_status_ok(4).await;
    assert!(
        opt_index(&s4, "last_applied_index").unwrap_or(0) >= target,
        "{s4}"
    );
    let (r, _) = c.get(4, "m1/k299", true).await;
    assert_eq!(r.value, json!(299));
    assert_eq!(
        members(&c.cluster_status_ok(leader).await).get(&4),
        Some(&false)
    );
}

/// 1. A learner that stopped answering (or fell behind) is not promoted
///    without --force; with --force it is.
#[tokio::test(flavor = "multi_thread")]
async fn promotion_of_a_silent_or_lagging_learner_is_refused() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    c.add_node(4, vec![1, 2, 3, 4], Vec::new()).await;
    c.spawn(4).await;
    add_learner_until_ok(&c, leader, 4).await;

    // Cut node 4 off (it neither answers nor applies), and move on without it.
    c.freeze(4, true);
    for i in 0..50 {
        c.put_ok(leader, &format!("m2/k{i}"), json!(i)).await;
    }
    // Past the silence bound (4 × the 600 ms election timeout of the tests).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out, err) = change_membership(&c, leader, "1,2,3,4", &["--timeout", "3"]).await;
    c.freeze(4, false);
    assert!(!ok, "a frozen learner was promoted: {out}");
    assert!(
        out.contains("node 4 matched"),
        "refusal does not say how far node 4 is: {out}"
    );
    assert!(
        out.contains("last accepted an append"),
        "refusal does not say node 4 is silent: {out}"
    );
    assert!(
        err.contains("waiting: node 4"),
        "no progress was printed while waiting: {err}"
    );
    assert_eq!(
        members(&c.cluster_status_ok(leader).await).get(&4),
        Some(&false),
        "node 4 must still be a learner"
    );

    // Resumed, it catches up and is promoted without --force.
    let (ok, out, err) = change_membership(&c, leader, "1,2,3,4", &[]).await;
    assert!(ok, "a caught-up learner was not promoted:\n{out}\n{err}");
    let l = c
        .wait_for_leader_among(&[1, 2, 3, 4], Duration::from_secs(10))
        .await;
    let want: BTreeMap<NodeId, bool> = (1..=4).map(|i| (i, true)).collect();
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let c = &c;
        let want = want.clone();
        async move {
            let m = members(&c.cluster_status_ok(l).await);
            if m == want {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        }
    })
    .await
    .unwrap();

    // --force promotes a dead learner (the operator's explicit choice).
    c.add_node(5, vec![1, 2, 3, 4, 5], Vec::new()).await;
    c.spawn(5).await;
    add_learner_until_ok(&c, l, 5).await;
    c.kill(5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, _, _) = change_membership(&c, l, "1,2,3,4,5", &["--timeout", "2"]).await;
    assert!(!ok, "a dead learner was promoted without --force");
    let (ok, out, err) = change_membership(&c, l, "1,2,3,4,5", &["--force"]).await;
    assert!(ok, "--force did not promote:\n{out}\n{err}");
}

/// 2. A removed node stops campaigning and says it was removed — also when
///    it was down while it was removed and never received that config.
///    Processes, to read what the binary logs (and that it has no colour).
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_stops_campaigning() {
    let mut c = Cluster::start3_processes().await;
    let leader = c.wait_for_leader().await;
    c.put_ok(leader, "m3/a", json!(1)).await;

    // Remove a live follower.
    let gone = if leader == 3 { 2 } else { 3 };
    let keep: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&i| i != gone).collect();
    let voters = format!("{},{}", keep[0], keep[1]);
    let (ok, out, err) = change_membership(&c, leader, &voters, &[]).await;
    assert!(ok, "removing node {gone} failed:\n{out}\n{err}");
    let removed = eventually(Duration::from_secs(15), Duration::from_millis(200), || {
        let c = &c;
        async move {
            let s = c.cluster_status_ok(gone).await;
            if s["removed"].is_object() {
                Ok(s)
            } else {
                Err(format!("{s}"))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("node {gone} never said it was removed: {e}"));
    let t0 = term_of(&removed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = c.cluster_status_ok(gone).await;
    assert_eq!(term_of(&s), t0, "removed node {gone} kept campaigning: {s}");
    let r = c
        .raw(gone, reqwest::Method::GET, "/kv/m3%2Fa", None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(r.status >= 400, "{r:?}");
    assert!(
        r.text.len() < 700,
        "error body is not short ({} bytes): {}",
        r.text.len(),
        r.text
    );
    assert!(c.node(gone).log_tail(200).contains("stop this node"));
    for id in [1, 2, 3] {
        let log = std::fs::read_to_string(c.node(id).log_path()).unwrap();
        assert!(
            !log.contains('\u{1b}'),
            "node {id}'s log has terminal escape codes"
        );
    }

    // Remove a voter that is down: it never receives the config that
    // removes it, and must learn it from its peers once it is back.
    drop(c);
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let gone = if leader == 3 { 2 } else { 3 };
    let keep: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&i| i != gone).collect();
    c.kill(gone).await;
    let (ok, out, err) =
        change_membership(&c, leader, &format!("{},{}", keep[0], keep[1]), &[]).await;
    assert!(ok, "removing a down node failed:\n{out}\n{err}");
    assert!(
        out.contains("not_demoted"),
        "the reply does not say node {gone} never confirmed: {out}"
    );
    c.spawn(gone).await;
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let c = &c;
        async move {
            let s = c.cluster_status_ok(gone).await;
            if s["removed"].is_object() {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("restarted removed node {gone} never noticed: {e}"));
    let t0 = term_of(&c.cluster_status_ok(gone).await);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t1 = term_of(&c.cluster_status_ok(gone).await);
    assert_eq!(t0, t1, "removed node {gone} kept campaigning");
    // The survivors were not disturbed.
    let l = c
        .wait_for_leader_among(&keep, Duration::from_secs(10))
        .await;
    c.put_ok(l, "m3/after", json!(2)).await;
}

/// 3. A data dir belongs to one node and one cluster.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_belongs_to_one_node_and_one_cluster() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    c.put_ok(leader, "m4/a", json!(1)).await;
    let cluster_id = c.cluster_status_ok(leader).await["cluster_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster id on the leader"))
        .to_string();
    for id in [1, 2, 3] {
        let s = c.cluster_status_ok(id).await;
        assert_eq!(s["cluster_id"], json!(cluster_id), "node {id}: {s}");
    }

    // Node 3's data dir started as node 4 is refused, naming both and the path.
    let other = if leader == 3 { 2 } else { 3 };
    c.terminate(other).await;
    let dir = c.node(other).data_dir();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--node-id", "4", "--data-dir"])
        .arg(&dir)
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--rstmdb-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "node {other}'s data dir started as node 4"
    );
    assert!(
        err.contains(&format!("node {other}")) && err.contains("node 4"),
        "{err}"
    );
    assert!(err.contains(&dir.display().to_string()), "{err}");

    // A data dir from before identities existed is adopted.
    std::fs::remove_file(dir.join("identity.json")).unwrap();
    c.spawn(other).await;
    c.wait_for_leader().await;
    let s = eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let c = &c;
        let cluster_id = cluster_id.clone();
        async move {
            let s = c.cluster_status_ok(other).await;
            if s["cluster_id"] == json!(cluster_id) {
                Ok(s)
            } else {
                Err(format!("{s}"))
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("old data dir did not relearn its cluster: {e}"));
    assert_eq!(s["id"], json!(other));
    let stored = std::fs::read_to_string(dir.join("identity.json")).unwrap();
    assert!(
        stored.contains(&cluster_id) && stored.contains(&format!("\"node_id\": {other}")),
        "{stored}"
    );

    // A node of another cluster is refused as a learner.
    c.add_node(4, Vec::new(), Vec::new()).await; // no peers: its own one-node cluster
    c.spawn(4).await;
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let c = &c;
        async move {
            let s = c.cluster_status(4).await?;
            if s["cluster_id"].is_string() {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        }
    })
    .await
    .unwrap();
    let (ok, out, _) = add_learner(&c, leader, 4, &c.node(4).grpc_addr(), &[]).await;
    assert!(!ok, "a node of another cluster was added");
    assert!(out.contains("belongs to cluster"), "{out}");

    // Data-dir errors name the path.
    let bad = "/proc/raftmesh-cannot-be-here";
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            bad,
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--rstmdb-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(bad),
        "the error does not name the data dir: {err}"
    );
}

/// 6. `/cluster`'s committed index is never behind its applied index, even
///    while writes stream in.
#[tokio::test(flavor = "multi_thread")]
async fn committed_index_is_never_behind_applied() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let writer = {
        let client = client();
        let url = c.kv_url(leader, "m6/k");
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(4);
            for i in 0..2000 {
                if Instant::now() > deadline {
                    break;
                }
                let _ = client
                    .put(&url)
                    .body(format!(r#"{{"value":{i}}}"#))
                    .send()
                    .await;
            }
        })
    };
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && checked < 400 {
        for id in [1, 2, 3] {
            let s = c.cluster_status_ok(id).await;
            let applied = opt_index(&s, "last_applied_index");
            let committed = opt_index(&s, "committed_index");
            assert!(
                committed >= applied,
                "node {id}: committed {committed:?} < applied {applied:?}: {s}"
            );
            checked += 1;
        }
    }
    writer.await.unwrap();
    assert!(checked > 30, "only {checked} checks ran");
}
