//! The KV watch (`GET /watch/kv`) against a real 3-node cluster: every
//! acknowledged write, in revision order, exactly once, also across a
//! leader kill with the watcher resuming by `from`; history older than
//! retained answers 410; a watch on a node without a leader is ended.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What one watcher received, across reconnects.
#[derive(Default, Debug)]
struct Seen {
    /// (revision, key, value) in arrival order.
    events: Vec<(u64, String, Value)>,
    /// Every revision up to this one was received whole.
    complete: u64,
    /// Final lines and cut connections, for diagnosis.
    ends: Vec<String>,
    /// Which node served each connection.
    served_by: Vec<u64>,
}

/// Follows `prefix` on the first node of `order` that answers, resuming
/// with `from = complete + 1` whenever a stream ends, until `stop`.
async fn watcher(
    urls: Vec<(u64, String)>,
    prefix: &'static str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut turn = 0usize;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
        let (id, base) = &urls[turn % urls.len()];
        turn += 1;
        let from = seen.lock().unwrap().complete + 1;
        let url = format!("{base}/watch/kv?prefix={prefix}&from={from}");
        let Ok(mut resp) = client.get(&url).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if resp.status() != 200 {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            seen.lock()
                .unwrap()
                .ends
                .push(format!("node {id}: {status} {text}"));
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        seen.lock().unwrap().served_by.push(*id);
        let mut buf = Vec::new();
        let mut current = 0u64;
        let mut finished = false;
        loop {
            let chunk = tokio::select! {
                c = resp.chunk() => c,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) { break } else { continue }
                }
            };
            let Ok(Some(chunk)) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad line {:?}: {e}", String::from_utf8_lossy(&line))
                });
                let mut s = seen.lock().unwrap();
                if let Some(why) = v["error"].as_str() {
                    let r = v["revision"].as_u64().expect("final line names a revision");
                    s.complete = s.complete.max(r);
                    s.ends.push(format!("node {id}: {why} at {r}"));
                    finished = true;
                    break;
                }
                let r = v["revision"].as_u64().expect("revision");
                assert!(
                    r >= current,
                    "revisions went backwards: {r} after {current}"
                );
                if r > current && current > 0 {
                    // A later revision proves the earlier one whole.
                    s.complete = s.complete.max(current);
                }
                current = r;
                let key = v["key"].as_str().expect("key").to_string();
                s.events.push((r, key, v["value"].clone()));
            }
            if finished {
                break;
            }
        }
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let mut s = seen.lock().unwrap();
        if !finished {
            s.ends.push(format!("node {id}: connection ended"));
        }
        // A revision cut mid-way is received again from the start.
        let complete = s.complete;
        s.events.retain(|(r, ..)| *r <= complete);
    }
}

/// Spec "KV watch": a watcher on node 3 sees every write acknowledged
/// through nodes 1 and 2, in order, exactly once, also when the leader is
/// killed mid-stream (its stream ends and it resumes with `from`).
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_sees_every_acknowledged_write_in_order_across_a_leader_kill() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let mut order = vec![3, 1, 2];
    order.retain(|&id| id != leader);
    order.push(leader); // prefer nodes that stay up
    let urls: Vec<(u64, String)> = order.iter().map(|&id| (id, c.url(id))).collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A second watcher starts on the leader itself, so the kill cuts it.
    let mut on_leader: Vec<(u64, String)> = urls.clone();
    on_leader.rotate_right(1);
    let seen_l = Arc::new(Mutex::new(Seen::default()));
    let tasks = [
        tokio::spawn(watcher(urls, "w/", seen.clone(), stop.clone())),
        tokio::spawn(watcher(on_leader, "w/", seen_l.clone(), stop.clone())),
    ];

    // Acknowledged writes: revision -> (key, value); and ones of unknown
    // outcome, which may or may not appear.
    let mut acked: BTreeMap<u64, Vec<(String, Value)>> = BTreeMap::new();
    let mut unknown: Vec<(String, Value)> = Vec::new();
    let pick = |c: &Cluster, n: u64| {
        let writers: Vec<u64> = [1, 2]
            .into_iter()
            .filter(|id| c.node(*id).in_process_running)
            .collect();
        let id = writers[n as usize % writers.len()];
        (id, format!("w/k{}", n % 7), json!({ "n": n, "via": id }))
    };
    for n in 0..120u64 {
        let (id, key, value) = pick(&c, n);
        match c.put(id, &key, value.clone()).await {
            (WriteOutcome::Ok(r), _) => acked.entry(r).or_default().push((key, value)),
            (WriteOutcome::Unknown(_), _) => unknown.push((key, value)),
            (other, resp) => panic!("write {n} refused: {other:?} {resp:?}"),
        }
        // Writes outside the prefix must not show up.
        if n % 10 == 0 {
            c.put_ok(id, &format!("other/{n}"), json!(n)).await;
        }
        if n == 60 {
            c.kill(leader).await;
            c.wait_for_leader_among(
                &[1, 2, 3]
                    .into_iter()
                    .filter(|&i| i != leader)
                    .collect::<Vec<_>>(),
                Duration::from_secs(10),
            )
            .await;
        }
    }
    let last = *acked.keys().last().unwrap();

    // Both watchers catch up to the last acknowledged write.
    let deadline = Instant::now() + Duration::from_secs(20);
    for s in [&seen, &seen_l] {
        while s.lock().unwrap().events.last().map(|e| e.0) < Some(last) {
            assert!(
                Instant::now() < deadline,
                "watcher stalled: {:?}",
                s.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    for (name, s) in [("node-3 watcher", &seen), ("leader watcher", &seen_l)] {
        let s = s.lock().unwrap();
        let mut got: BTreeMap<u64, Vec<(String, Value)>> = BTreeMap::new();
        let mut prev = 0;
        for (r, k, v) in &s.events {
            assert!(*r >= prev, "{name}: out of order at {r}: {:?}", s.ends);
            prev = *r;
            got.entry(*r).or_default().push((k.clone(), v.clone()));
        }
        for (r, writes) in &acked {
            let mut want = writes.clone();
            let mut have = got.get(r).cloned().unwrap_or_default();
            want.sort_by(|a, b| a.0.cmp(&b.0));
            have.sort_by(|a, b| a.0.cmp(&b.0));
            // Writes packed with an acked one in the same entry may be of
            // unknown outcome to their writer; each acked one is there once.
            for w in &want {
                let n = have.iter().filter(|h| *h == w).count();
                assert_eq!(
                    n, 1,
                    "{name}: write {w:?} at {r} seen {n} times; ends {:?}",
                    s.ends
                );
            }
        }
        for (r, writes) in &got {
            for w in writes {
                assert!(
                    w.0.starts_with("w/"),
                    "{name}: key outside the prefix: {w:?}"
                );
                let known = acked.get(r).is_some_and(|a| a.contains(w)) || unknown.contains(w);
                assert!(known, "{name}: {w:?} at {r} was never written");
            }
        }
        if name == "leader watcher" {
            assert!(
                s.served_by.len() >= 2,
                "the leader kill should have moved this watcher: {:?}",
                s.ends
            );
        }
    }
}

/// A `from` older than the retained journal is 410 with the oldest kept;
/// the journal's retention is a cluster-wide setting.
#[tokio::test(flavor = "multi_thread")]
async fn a_from_older_than_retained_is_gone_with_the_oldest() {
    let mut c = Cluster::start3().await;
    let leader = c.wait_for_leader().await;
    let url = format!("{}/cluster/settings/retention/kv", c.url(leader));
    let r = send(
        &c.client,
        reqwest::Method::PUT,
        &url,
        Some(br#"{"max_events": 5, "max_bytes": 1000000}"#.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let mut revs = Vec::new();
    for n in 0..12 {
        revs.push(c.put_ok(2, &format!("g/{n}"), json!(n)).await);
    }
    let oldest = revs[revs.len() - 5];
    // Every node trims alike; a follower may still be applying the last write.
    for id in [1, 2, 3] {
        let url = format!("{}/cluster/journal", c.url(id));
        let mut j = Value::Null;
        for _ in 0..50 {
            j = send(&c.client, reqwest::Method::GET, &url, None)
                .await
                .unwrap()
                .body;
            if j["kv"]["oldest"].as_u64() == Some(oldest) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(j["kv"]["oldest"].as_u64(), Some(oldest), "node {id}: {j}");
        assert_eq!(j["kv"]["events"].as_u64(), Some(5), "node {id}: {j}");
        assert_eq!(
            j["kv"]["retention"]["max_events"].as_u64(),
            Some(5),
            "node {id}: {j}"
        );
    }
    for id in [1, 3] {
        let r = send(
            &c.client,
            reqwest::Method::GET,
            &format!("{}/watch/kv?from={}", c.url(id), revs[0]),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 410, "node {id}: {}", r.text);
        assert_eq!(
            r.body["oldest"].as_u64(),
            Some(oldest),
            "node {id}: {}",
            r.text
        );
        assert!(
            r.error_message().contains("older than the retained"),
            "{}",
            r.text
        );
    }
    let bad = send(
        &c.client,
        reqwest::Method::GET,
        &format!("{}/watch/kv?from=x", c.url(3)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text);
    let bad = send(
        &c.client,
        reqwest::Method::PUT,
        &format!("{}/cluster/settings/retention/kv", c.url(1)),
        Some(br#"{"max_events": 0, "max_bytes": 1}"#.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text);
}

/// etcd's require-leader: a watch on a node that lost its leader for longer
/// than the election timeout is ended, saying so, so its client moves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_a_node_without_a_leader_is_ended_with_the_reason() {
    let mut c = Cluster::start3().await;
    c.wait_for_leader().await;
    let rev = c.put_ok(3, "n/a", json!(1)).await;
    let client = reqwest::Client::new();
    let mut resp = client
        .get(format!("{}/watch/kv?from={rev}", c.url(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    c.kill(1).await;
    c.kill(2).await;
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("\"error\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the watch was not ended: {text}");
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(b))) => text.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("stream ended without a final line ({other:?}): {text}"),
        }
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["revision"].as_u64(), Some(rev));
    assert_eq!(lines[0]["key"], "n/a");
    let last = lines.last().unwrap();
    assert_eq!(last["error"], "no leader", "{text}");
    assert_eq!(last["revision"].as_u64(), Some(rev), "{text}");
}
