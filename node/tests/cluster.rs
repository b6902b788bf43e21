//! End-to-end tests of a raftmesh cluster: real `raftmesh serve` processes
//! on loopback, driven over the HTTP gateway and the `cluster` CLI.
//!
//! Tests run one at a time (the harness serialises clusters) because they
//! use tight Raft timings.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use raftmesh_raft_store::{SNAPSHOT_DIR, SNAPSHOT_MAGIC};
use serde_json::{json, Value};

fn followers(c: &Cluster, leader: NodeId) -> Vec<NodeId> {
    c.ids().into_iter().filter(|&id| id != leader).collect()
}

/// 1. One leader; writes on a follower are visible on the leader and vice
///    versa, immediately (linearizable default read); revisions increase.
#[tokio::test(flavor = "multi_thread")]
async fn one_leader_and_reads_see_writes_from_any_node() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;

    // Exactly one node calls itself Leader, everyone names it, same term.
    let mut leaders = Vec::new();
    let mut terms = BTreeSet::new();
    for id in c.ids() {
        let s = c.cluster_status_ok(id).await;
        assert_eq!(s["id"].as_u64(), Some(id), "/cluster id on node {id}: {s}");
        if s["role"] == "Leader" {
            leaders.push(id);
        }
        assert_eq!(s["leader"].as_u64(), Some(leader), "node {id}: {s}");
        terms.insert(s["term"].as_u64());
    }
    assert_eq!(leaders, vec![leader], "exactly one leader expected");
    assert_eq!(terms.len(), 1, "all nodes in one term: {terms:?}");
    let fs = followers(&c, leader);
    assert_eq!(fs.len(), 2);

    // A missing key reads as revision 0, value null.
    let (r, _) = c.get(fs[0], "t1/missing", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: 0,
            value: Value::Null
        }
    );

    // Write on a follower, read on the leader.
    let (out, resp) = c.put(fs[0], "t1/from-follower", json!({"n": 1})).await;
    let rev1 = out
        .revision()
        .unwrap_or_else(|| panic!("write on follower failed: {out:?} {resp:?}"));
    let resp = resp.unwrap();
    assert!(
        !resp.raft_leader(),
        "follower's write response must say X-Raft-Leader: false: {resp:?}"
    );
    assert_eq!(resp.served_by(), fs[0]);
    assert_eq!(resp.leader_id(), Some(leader), "{resp:?}");

    let (r, resp) = c.get(leader, "t1/from-follower", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: rev1,
            value: json!({"n": 1})
        }
    );
    assert!(
        resp.raft_leader(),
        "leader's read must say X-Raft-Leader: true"
    );
    assert_eq!(resp.served_by(), leader);
    assert_eq!(resp.leader_id(), Some(leader));

    // Write on the leader, then immediately read on each follower.
    let rev2 = c.put_ok(leader, "t1/from-leader", json!("hello")).await;
    assert!(rev2 > rev1, "revisions must increase: {rev1} then {rev2}");
    for &f in &fs {
        let (r, resp) = c.get(f, "t1/from-leader", false).await;
        assert_eq!(
            r,
            KvRead {
                revision: rev2,
                value: json!("hello")
            },
            "linearizable read on follower {f} right after the write"
        );
        assert!(!resp.raft_leader(), "read on follower {f}: {resp:?}");
        assert_eq!(resp.served_by(), f, "X-Served-By on follower {f}");
        assert_eq!(resp.leader_id(), Some(leader), "X-Raft-Leader-Id on {f}");
        assert!(
            resp.raft_index() >= rev2,
            "X-Raft-Index {} on follower {f} is behind the revision {rev2} it returned",
            resp.raft_index()
        );
        let _ = resp.raft_term();
    }

    // Revisions strictly increase across writes on every node, including
    // overwrites of one key; each read returns the last write.
    let mut last = rev2;
    for i in 0..9u64 {
        let node = c.ids()[(i % 3) as usize];
        let key = if i % 2 == 0 { "t1/same" } else { "t1/other" };
        let rev = c.put_ok(node, key, json!(i)).await;
        assert!(
            rev > last,
            "write {i} on node {node}: revision {rev} after {last}"
        );
        last = rev;
        let reader = c.ids()[((i + 1) % 3) as usize];
        let (r, _) = c.get(reader, key, false).await;
        assert_eq!(
            r,
            KvRead {
                revision: rev,
                value: json!(i)
            },
            "read on node {reader} after write {i} on node {node}"
        );
    }
}

/// 2. Crash the leader: a new one is elected, acknowledged writes survive,
///    writes continue, and the old leader catches up after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn leader_crash_keeps_acknowledged_writes() {
    let mut c = Cluster::start3_processes().await;
    let old = c.wait_for_leader().await;
    let ids = c.ids();

    let mut acked: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for i in 0..50usize {
        let key = format!("t2/k{i:02}");
        let value = json!({ "i": i, "s": format!("v{i}") });
        let node = ids[i % ids.len()];
        let (out, resp) = c.put(node, &key, value.clone()).await;
        match out {
            WriteOutcome::Ok(rev) => {
                acked.insert(key, (rev, value));
            }
            // No fault injected yet: every write must be acknowledged.
            other => panic!("write {key} on node {node} before the crash: {other:?} {resp:?}"),
        }
    }
    let max_before = acked.values().map(|(r, _)| *r).max().unwrap();

    c.kill(old).await;
    let survivors: Vec<NodeId> = ids.iter().copied().filter(|&id| id != old).collect();
    let t0 = Instant::now();
    let new = c
        .wait_for_leader_among(&survivors, Duration::from_secs(10))
        .await;
    assert_ne!(new, old);
    eprintln!("new leader {new} after {:?}", t0.elapsed());

    for &s in &survivors {
        for (key, (rev, value)) in &acked {
            let (r, _) = c.get(s, key, false).await;
            assert_eq!(
                r,
                KvRead {
                    revision: *rev,
                    value: value.clone()
                },
                "acknowledged write {key} read on survivor {s} after leader {old} crashed"
            );
        }
    }

    // Writes continue on the new leader (and via the other survivor).
    let mut last = max_before;
    for i in 0..10usize {
        let key = format!("t2/after{i}");
        let node = survivors[i % survivors.len()];
        let (out, resp) = c.put(node, &key, json!(i)).await;
        let rev = match out {
            WriteOutcome::Ok(rev) => rev,
            other => panic!("write {key} on node {node} after the new leader: {other:?} {resp:?}"),
        };
        assert!(rev > last, "revision {rev} after {last}");
        last = rev;
        acked.insert(key, (rev, json!(i)));
    }

    // The old leader comes back with its data dir and catches up.
    c.spawn(old).await;
    let res = c.wait_caught_up(old, &acked, Duration::from_secs(20)).await;
    if let Err(e) = res {
        panic!("restarted old leader {old} did not catch up within 20 s: {e}");
    }
    let l = c.wait_for_leader().await;
    // And it takes part in the cluster again: a fresh write reads back there.
    let rev = c.put_ok(l, "t2/final", json!("done")).await;
    let (r, _) = c.get(old, "t2/final", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: rev,
            value: json!("done")
        }
    );
}

/// Expected state of a key: `None` = deleted/missing.
type Expect = BTreeMap<String, Option<(u64, Value)>>;

async fn check_all(c: &Cluster, expect: &Expect, what: &str) {
    for id in c.ids() {
        for (key, e) in expect {
            let (r, _) = c.get(id, key, false).await;
            let want = match e {
                Some((rev, v)) => KvRead {
                    revision: *rev,
                    value: v.clone(),
                },
                None => KvRead {
                    revision: 0,
                    value: Value::Null,
                },
            };
            assert_eq!(r, want, "{what}: key {key} on node {id}");
        }
    }
    let live: Vec<String> = expect
        .iter()
        .filter_map(|(k, e)| e.as_ref().map(|_| k.clone()))
        .collect();
    for id in c.ids() {
        assert_eq!(c.list(id).await, live, "{what}: GET /kv on node {id}");
    }
}

/// 3. Full-cluster restart (SIGTERM all, then kill -9 all): every
///    acknowledged write reads back with its revision.
#[tokio::test(flavor = "multi_thread")]
async fn full_cluster_restart_preserves_data_and_revisions() {
    let mut c = Cluster::start3_processes().await;
    let ids = c.ids();
    let mut expect: Expect = BTreeMap::new();
    let mut max_rev = 0;

    for i in 0..30usize {
        let key = format!("t3/k{i:02}");
        let v = json!([i, "first"]);
        let rev = c.put_ok(ids[i % 3], &key, v.clone()).await;
        max_rev = max_rev.max(rev);
        expect.insert(key, Some((rev, v)));
    }
    // Overwrite some, so revisions differ from first-write order.
    for i in (0..30usize).step_by(3) {
        let key = format!("t3/k{i:02}");
        let v = json!({ "second": i });
        let rev = c.put_ok(ids[(i + 1) % 3], &key, v.clone()).await;
        assert!(rev > max_rev);
        max_rev = rev;
        expect.insert(key, Some((rev, v)));
    }
    // Delete a few.
    for i in [1usize, 4, 29] {
        let key = format!("t3/k{i:02}");
        let (out, resp) = c.delete(ids[i % 3], &key).await;
        assert!(
            matches!(out, WriteOutcome::Ok(_)),
            "DELETE {key}: {out:?} {resp:?}"
        );
        let resp = resp.unwrap();
        assert_eq!(resp.body, json!({}), "DELETE answers {{}}");
        expect.insert(key, None);
    }
    check_all(&c, &expect, "before restart").await;

    // Round 1: clean stop of every node, restart on the same data dirs.
    for &id in &ids {
        let st = c.terminate(id).await;
        eprintln!("node {id} exited after SIGTERM: {st}");
    }
    for &id in &ids {
        c.spawn(id).await;
    }
    c.wait_for_leader().await;
    check_all(&c, &expect, "after SIGTERM + restart of all nodes").await;

    // More writes, then round 2: crash every node.
    for i in 0..5usize {
        let key = format!("t3/late{i}");
        let rev = c.put_ok(ids[i % 3], &key, json!(i)).await;
        assert!(
            rev > max_rev,
            "revision {rev} after restart must exceed pre-restart {max_rev}"
        );
        max_rev = rev;
        expect.insert(key, Some((rev, json!(i))));
    }
    for &id in &ids {
        c.kill(id).await;
    }
    for &id in &ids {
        c.spawn(id).await;
    }
    c.wait_for_leader().await;
    check_all(&c, &expect, "after kill -9 + restart of all nodes").await;

    let rev = c.put_ok(ids[0], "t3/after-crash", json!(true)).await;
    assert!(
        rev > max_rev,
        "revision {rev} after crash-restart must exceed {max_rev}"
    );
}

/// 4. A follower that missed purged logs catches up through a snapshot,
///    streamed from the leader's snapshot file in many small chunks into a
///    file of its own.
#[tokio::test(flavor = "multi_thread")]
async fn stopped_follower_catches_up_from_snapshot() {
    const CHUNK: u64 = 1024;
    let mut c = Cluster::start(ClusterOpts {
        nodes: 3,
        extra_args: [
            "--snapshot-logs",
            "20",
            "--keep-logs",
            "5",
            "--snapshot-chunk-bytes",
            &CHUNK.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..Default::default()
    })
    .await;
    let leader = c.wait_for_leader().await;
    let victim = followers(&c, leader)[0];

    let rev0 = c.put_ok(leader, "t4/start", json!(0)).await;
    let (r, _) = c.get(victim, "t4/start", false).await;
    assert_eq!(r.revision, rev0);
    let vs = c.cluster_status_ok(victim).await;
    let victim_last = opt_index(&vs, "last_log_index")
        .unwrap_or_else(|| panic!("victim has no last_log_index: {vs}"));
    assert!(victim_last >= rev0, "{vs}");

    let st = c.terminate(victim).await;
    eprintln!("victim {victim} stopped at log index {victim_last}: {st}");

    let mut expect = BTreeMap::new();
    for i in 0..200usize {
        let key = format!("t4/k{i:03}");
        let v = json!({ "i": i });
        let (out, resp) = c.put(leader, &key, v.clone()).await;
        match out {
            WriteOutcome::Ok(rev) => {
                expect.insert(key, (rev, v));
            }
            other => panic!("write {key} with one follower down: {other:?} {resp:?}"),
        }
    }

    // The leader snapshots and purges past what the victim has.
    let purged = eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let c = &c;
        async move {
            let s = c.cluster_status_ok(leader).await;
            match opt_index(&s, "last_purged_index") {
                Some(p) if p > victim_last => Ok((p, s)),
                _ => Err(format!("leader /cluster: {s}")),
            }
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "leader {leader} never purged past index {victim_last} (where node {victim} \
             stopped) with --snapshot-logs 20 --keep-logs 5: {e}"
        )
    });
    let (purged_idx, ls) = purged;
    assert!(
        opt_index(&ls, "last_snapshot_index").is_some_and(|s| s >= purged_idx),
        "leader purged to {purged_idx} but its snapshot index is not at least that: {ls}"
    );

    c.spawn(victim).await;
    let res = c
        .wait_caught_up(victim, &expect, Duration::from_secs(30))
        .await;
    if let Err(e) = res {
        panic!("restarted follower {victim} did not catch up within 30 s: {e}");
    }
    let vs = c.cluster_status_ok(victim).await;
    match opt_index(&vs, "last_snapshot_index") {
        Some(s) if s >= purged_idx => {}
        other => panic!(
            "follower {victim} caught up past purged logs (leader purged to {purged_idx}) \
             but reports last_snapshot_index {other:?}: {vs}"
        ),
    }
    // The installed snapshot is one version 2 file, several chunks long.
    let dir = c.node(victim).data_dir().join("db").join(SNAPSHOT_DIR);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one stored snapshot file: {files:?}");
    let body = std::fs::read(&files[0]).unwrap();
    assert!(body.starts_with(&SNAPSHOT_MAGIC), "{}", files[0].display());
    assert!(
        body.len() as u64 > 4 * CHUNK,
        "snapshot of {} bytes fits in few {CHUNK}-byte chunks",
        body.len()
    );
    // It is a working member again: a linearizable read through it.
    let rev = c.put_ok(leader, "t4/end", json!("end")).await;
    let (r, _) = c.get(victim, "t4/end", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: rev,
            value: json!("end")
        }
    );
}

#[derive(Debug)]
enum CasEnd {
    /// Incremented: the expected value and the new revision.
    Done {
        expected: i64,
        revision: u64,
    },
    /// A CAS was sent and its outcome is unknown (504 / transport error).
    Unknown(String),
    Failed(String),
}

async fn cas_increment(
    client: reqwest::Client,
    base: String,
    key: String,
) -> (CasEnd, Vec<String>) {
    let mut problems = Vec::new();
    let url = format!("{base}/kv/{}", encode_key(&key));
    let (r, _) = get_retrying(&client, &url).await;
    let mut expected = match r.value.as_i64() {
        Some(v) => v,
        None => {
            return (
                CasEnd::Failed(format!("counter is not an integer: {r:?}")),
                problems,
            )
        }
    };
    let start = Instant::now();
    for _ in 0..3000 {
        if start.elapsed() > Duration::from_secs(50) {
            break;
        }
        let body = json!({ "expected": expected, "desired": expected + 1 });
        match cas_once(&client, &base, &key, &body).await {
            Ok(r) if r.status == 200 => match r.body["ok"].as_bool() {
                Some(true) => {
                    if r.body["value"] != json!(expected + 1) {
                        problems.push(format!("ok CAS answered value {}", r.body["value"]));
                    }
                    let Some(revision) = r.body["revision"].as_u64() else {
                        return (
                            CasEnd::Failed(format!("ok CAS without revision: {r:?}")),
                            problems,
                        );
                    };
                    return (CasEnd::Done { expected, revision }, problems);
                }
                Some(false) => {
                    let Some(cur) = r.body["value"].as_i64() else {
                        return (
                            CasEnd::Failed(format!("failed CAS without integer value: {r:?}")),
                            problems,
                        );
                    };
                    if cur == expected {
                        problems.push(format!(
                            "CAS failed although current value {cur} equals expected: {}",
                            r.text
                        ));
                    }
                    if r.body["diff"].as_array().is_none_or(|d| d.is_empty()) {
                        problems.push(format!(
                            "failed CAS without a non-empty patch diff: {}",
                            r.text
                        ));
                    }
                    expected = cur;
                }
                None => {
                    return (
                        CasEnd::Failed(format!("CAS answer without ok: {r:?}")),
                        problems,
                    )
                }
            },
            Ok(r) if r.status == 503 => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(r) if r.status == 504 => return (CasEnd::Unknown(r.text), problems),
            Ok(r) => {
                return (
                    CasEnd::Failed(format!("CAS status {}: {}", r.status, r.text)),
                    problems,
                )
            }
            Err(SendError::NotSent(e)) => {
                problems.push(format!("connect failed (retried): {e}"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(SendError::MaybeSent(e)) => return (CasEnd::Unknown(e), problems),
        }
    }
    (
        CasEnd::Failed("gave up after bounded attempts".into()),
        problems,
    )
}

/// 5. 64 concurrent CAS increments spread over all nodes: no lost or
///    duplicated increment.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cas_increments_are_atomic() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let key = "t5/counter".to_string();
    let rev0 = c.put_ok(leader, &key, json!(0)).await;

    let bases: Vec<String> = c.ids().iter().map(|&id| c.url(id)).collect();
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let client = c.client.clone();
        let base = bases[t % bases.len()].clone();
        let key = key.clone();
        tasks.push(tokio::spawn(cas_increment(client, base, key)));
    }
    let mut done = Vec::new();
    let mut unknown = Vec::new();
    let mut failed = Vec::new();
    let mut problems = Vec::new();
    for t in tasks {
        let (end, p) = t.await.expect("CAS task panicked");
        problems.extend(p.into_iter().filter(|p| !p.starts_with("connect failed")));
        match end {
            CasEnd::Done { expected, revision } => done.push((expected, revision)),
            CasEnd::Unknown(e) => unknown.push(e),
            CasEnd::Failed(e) => failed.push(e),
        }
    }
    assert!(failed.is_empty(), "CAS tasks failed: {failed:?}");
    assert!(
        unknown.is_empty(),
        "no fault was injected, yet {} CAS outcomes are unknown: {unknown:?}",
        unknown.len()
    );

    let (r, _) = c.get(leader, &key, false).await;
    assert_eq!(r.value, json!(64), "final counter: {r:?}");

    done.sort();
    let expecteds: Vec<i64> = done.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        expecteds,
        (0..64).collect::<Vec<i64>>(),
        "every successful CAS must come from a distinct expected value"
    );
    let mut prev = rev0;
    for (e, rev) in &done {
        assert!(
            *rev > prev,
            "CAS from {e} has revision {rev}, not after the previous increment's {prev}"
        );
        prev = *rev;
    }
    assert_eq!(r.revision, prev, "counter revision is the last CAS's");
    assert!(problems.is_empty(), "CAS answer problems: {problems:?}");
}

/// Waits (bounded) until `node`'s /cluster lists exactly `want` (id → voter).
async fn wait_members(
    c: &Cluster,
    node: NodeId,
    want: &BTreeMap<NodeId, bool>,
) -> Result<(), String> {
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async move {
            let s = c.cluster_status_ok(node).await;
            if &members(&s) == want {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        },
    )
    .await
}

/// 6. Membership: add a 4th node as learner then voter via the CLI, then
///    remove node 3.
#[tokio::test(flavor = "multi_thread")]
async fn membership_add_and_remove_via_cli() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let before_rev = c.put_ok(leader, "t6/before", json!("written by 3")).await;

    c.add_node(4, vec![1, 2, 3, 4], Vec::new()).await;
    c.spawn(4).await;
    // Node 4 is up but not a member: it must not start its own cluster.
    let n4_url = c.url(4);
    let res = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let client = c.client.clone();
        let url = format!("{n4_url}/health");
        async move {
            match send(&client, reqwest::Method::GET, &url, None).await {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    res.unwrap_or_else(|e| panic!("node 4 /health never answered 200: {e}"));

    let (ok, out, err) = run_cli(
        &[
            "cluster".into(),
            "add-learner".into(),
            "--endpoint".into(),
            c.url(leader),
            "--node-id".into(),
            "4".into(),
            "--grpc-addr".into(),
            c.node(4).grpc_addr(),
            "--http-addr".into(),
            c.node(4).http_addr(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        ok,
        "cluster add-learner failed:\nstdout: {out}\nstderr: {err}"
    );

    let ls = c.cluster_status_ok(leader).await;
    let m = members(&ls);
    assert_eq!(m.get(&4), Some(&false), "node 4 should be a learner: {ls}");

    // Change membership through a follower's endpoint (any node works).
    let via = followers(&c, leader)
        .into_iter()
        .find(|&id| id != 4)
        .unwrap();
    let (ok, out, err) = run_cli(
        &[
            "cluster".into(),
            "change-membership".into(),
            "--endpoint".into(),
            c.url(via),
            "--voters".into(),
            "1,2,3,4".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        ok,
        "cluster change-membership 1,2,3,4 failed:\nstdout: {out}\nstderr: {err}"
    );

    let leader = c
        .wait_for_leader_among(&[1, 2, 3, 4], Duration::from_secs(10))
        .await;
    let all_voters: BTreeMap<NodeId, bool> = (1..=4).map(|id| (id, true)).collect();
    wait_members(&c, leader, &all_voters)
        .await
        .unwrap_or_else(|e| panic!("leader /cluster does not show voters 1..4: {e}"));

    // Node 4 serves a linearizable read of the earlier write.
    let (r, resp) = c.get(4, "t6/before", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: before_rev,
            value: json!("written by 3")
        }
    );
    assert_eq!(resp.served_by(), 4);
    let (status_ok, out, err) = run_cli(
        &[
            "cluster".into(),
            "status".into(),
            "--endpoint".into(),
            c.url(4),
        ],
        Duration::from_secs(15),
    )
    .await;
    assert!(
        status_ok,
        "cluster status failed:\nstdout: {out}\nstderr: {err}"
    );

    // Remove node 3.
    let (ok, out, err) = run_cli(
        &[
            "cluster".into(),
            "change-membership".into(),
            "--endpoint".into(),
            c.url(4),
            "--voters".into(),
            "1,2,4".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        ok,
        "cluster change-membership 1,2,4 failed:\nstdout: {out}\nstderr: {err}"
    );

    let leader = c
        .wait_for_leader_among(&[1, 2, 4], Duration::from_secs(15))
        .await;
    let want: BTreeMap<NodeId, bool> = [(1, true), (2, true), (4, true)].into_iter().collect();
    wait_members(&c, leader, &want)
        .await
        .unwrap_or_else(|e| panic!("leader /cluster does not show exactly members 1,2,4: {e}"));

    let rev = c.put_ok(4, "t6/after-remove", json!(1)).await;
    let (r, _) = c.get(1, "t6/after-remove", false).await;
    assert_eq!(
        r,
        KvRead {
            revision: rev,
            value: json!(1)
        }
    );

    // Node 3 is really out: with 3 gone and one more of {1,2} down, the
    // remaining two of voters {1,2,4} are a majority (they would not be
    // of {1,2,3,4}).
    c.kill(3).await;
    let down = if leader == 1 { 2 } else { 1 };
    c.kill(down).await;
    let rest: Vec<NodeId> = [1, 2, 4].into_iter().filter(|&id| id != down).collect();
    let l = c
        .wait_for_leader_among(&rest, Duration::from_secs(10))
        .await;
    let (out, resp) = c.put(l, "t6/two-of-three", json!("quorum")).await;
    let rev = out.revision().unwrap_or_else(|| {
        panic!(
            "write with voters {rest:?} up (node 3 removed, node {down} down) failed: {out:?} {resp:?}"
        )
    });
    let other = rest.iter().copied().find(|&id| id != l).unwrap();
    let (r, _) = c.get(other, "t6/two-of-three", false).await;
    assert_eq!(r.revision, rev);
}

/// 7. Bad input is rejected with the right status and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_and_changes_nothing() {
    let mut c = Cluster::start(ClusterOpts {
        nodes: 3,
        extra_args: vec!["--max-value-bytes".into(), "1024".into()],
        ..Default::default()
    })
    .await;
    let leader = c.wait_for_leader().await;
    let follower = followers(&c, leader)[0];

    let long_ok = "k".repeat(1024);
    let mut good: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for (key, v) in [
        ("a", json!(1)),
        ("b/c", json!({"x": [1, 2, 3]})),
        ("x-y_z=1.2", json!("s")),
        ("medium", json!("m".repeat(500))),
        (long_ok.as_str(), json!("long key")),
    ] {
        let rev = c.put_ok(leader, key, v.clone()).await;
        good.insert(key.to_string(), (rev, v));
    }

    // Every violation is collected so one run reports all of them.
    let mut bad: Vec<String> = Vec::new();
    let put_body = serde_json::to_vec(&json!({"value": 1})).unwrap();
    let long_bad = "k".repeat(1025);
    for node in [leader, follower] {
        // Bad keys.
        for path in [
            "/kv/.hidden".to_string(),
            "/kv/trailing.".to_string(),
            "/kv/a%20b".to_string(),
            "/kv/sp%21ce".to_string(),
            format!("/kv/{long_bad}"),
        ] {
            let r = c
                .raw(node, reqwest::Method::PUT, &path, Some(put_body.clone()))
                .await;
            expect_error(&mut bad, node, &format!("PUT {path}"), r, 400);
            let r = c.raw(node, reqwest::Method::GET, &path, None).await;
            expect_error(&mut bad, node, &format!("GET {path}"), r, 400);
            let r = c.raw(node, reqwest::Method::DELETE, &path, None).await;
            expect_error(&mut bad, node, &format!("DELETE {path}"), r, 400);
        }

        // Too large a value, on a new and an existing key, and in a CAS.
        for key in ["big", "a"] {
            let r = c
                .put_once(node, key, &json!({ "value": "z".repeat(2000) }))
                .await;
            expect_error(&mut bad, node, &format!("oversized PUT {key}"), r, 413);
        }
        let r = c
            .cas_once(
                node,
                "big",
                &json!({"expected": null, "desired": "z".repeat(2000)}),
            )
            .await;
        expect_error(&mut bad, node, "oversized CAS big", r, 413);

        // Wrong revision → 409 with the current one (read fresh, so an
        // earlier violation does not cascade; the final check catches it).
        let cur = c.get(node, "a", false).await.0.revision;
        for wrong in [cur + 1000, cur - 1, 0] {
            let r = c
                .put_once(node, "a", &json!({"value": 99, "revision": wrong}))
                .await;
            let what = format!("PUT a with revision {wrong} (current {cur})");
            if let Some(r) = expect_error(&mut bad, node, &what, r, 409) {
                if r.body["revision"].as_u64() != Some(cur) {
                    bad.push(format!(
                        "node {node}: {what}: 409 body must carry revision {cur}: {}",
                        r.text
                    ));
                }
            }
        }
        // A conditional PUT of a missing key with a non-zero revision.
        let r = c
            .put_once(node, "nope", &json!({"value": 1, "revision": 5}))
            .await;
        let what = "PUT nope (missing) with revision 5";
        if let Some(r) = expect_error(&mut bad, node, what, r, 409) {
            if r.body["revision"].as_u64() != Some(0) {
                bad.push(format!(
                    "node {node}: {what}: 409 body must carry revision 0: {}",
                    r.text
                ));
            }
        }

        // Invalid JSON, and JSON that is not a `{"value": V}` object.
        for body in [
            &b"{\"value\":"[..],
            b"not json",
            b"",
            b"{\"valu\": 1}",
            b"[1,2]",
            b"[1]",
        ] {
            let r = c
                .raw(node, reqwest::Method::PUT, "/kv/a", Some(body.to_vec()))
                .await;
            let what = format!("PUT /kv/a body {:?}", String::from_utf8_lossy(body));
            expect_error(&mut bad, node, &what, r, 400);
        }

        // CAS with missing fields / bad JSON / bad key.
        for body in [json!({"expected": 1}), json!({"desired": 2}), json!({})] {
            let r = c.cas_once(node, "a", &body).await;
            expect_error(&mut bad, node, &format!("CAS a with {body}"), r, 400);
        }
        let r = c
            .raw(
                node,
                reqwest::Method::POST,
                "/kv/a/cas",
                Some(b"{oops".to_vec()),
            )
            .await;
        expect_error(&mut bad, node, "CAS a with invalid JSON", r, 400);
        let r = c
            .raw(
                node,
                reqwest::Method::POST,
                "/kv/.bad/cas",
                Some(serde_json::to_vec(&json!({"expected": null, "desired": 1})).unwrap()),
            )
            .await;
        expect_error(&mut bad, node, "CAS on key .bad", r, 400);
    }

    // Nothing changed, as seen from every node.
    let keys: Vec<String> = good.keys().cloned().collect();
    for id in c.ids() {
        let listed = c.list(id).await;
        if listed != keys {
            bad.push(format!("GET /kv on node {id}: {listed:?}, want {keys:?}"));
        }
        for (key, (rev, v)) in &good {
            let (r, _) = c.get(id, key, false).await;
            let want = KvRead {
                revision: *rev,
                value: v.clone(),
            };
            if r != want {
                bad.push(format!(
                    "key {key} on node {id} changed by rejected requests: {r:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} violations:\n{}",
        bad.len(),
        bad.join("\n")
    );

    // A correct conditional PUT still works afterwards.
    let (cur, _) = good["a"].clone();
    let cond = json!({"value": 2, "revision": cur});
    let (out, resp) = c.write_retrying(|| c.put_once(follower, "a", &cond)).await;
    let rev = out
        .revision()
        .unwrap_or_else(|| panic!("conditional PUT with the right revision: {out:?} {resp:?}"));
    assert!(rev > cur);
}

/// Check an error answer: the status, a `{"error": "<non-empty>"}` body and
/// the Raft headers naming the node. Violations go to `bad`. Returns the
/// response when the status matched.
fn expect_error(
    bad: &mut Vec<String>,
    node: NodeId,
    what: &str,
    r: Result<Resp, SendError>,
    status: u16,
) -> Option<Resp> {
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            bad.push(format!("node {node}: {what}: request failed: {e:?}"));
            return None;
        }
    };
    if r.status != status {
        bad.push(format!(
            "node {node}: {what}: status {} (want {status}), body {}",
            r.status, r.text
        ));
        return None;
    }
    if r.body["error"].as_str().is_none_or(|m| m.trim().is_empty()) {
        bad.push(format!(
            "node {node}: {what}: body is not {{\"error\": \"...\"}}: {}",
            r.text
        ));
    }
    if r.header("x-served-by").as_deref() != Some(node.to_string().as_str())
        || r.header("x-raft-leader").is_none()
        || r.header("x-raft-term").is_none()
    {
        bad.push(format!(
            "node {node}: {what}: missing X-Raft-*/X-Served-By headers: {:?}",
            r.headers
        ));
    }
    Some(r)
}
