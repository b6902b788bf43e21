//! The DriftDB room checker ([`check_room`]).
//!
//! History format (op `key` is `<room>/<key>` for appends and reads, the
//! room for sessions):
//! * `append`: invoke value the unique string pushed; ok value
//!   `{"value": V}` (HTTP 200) or `{"value": V, "seq": S, "socket": id,
//!   "sent": i}` (a socket that saw its own push delivered at `S`; `i` is
//!   the push's place in what that socket sent, also on an unknown
//!   outcome's value). Each process has one append in flight.
//! * `room-read`: final `get` from seq 0 after heal, ok value the `init`
//!   data as `[[value, seq], …]`.
//! * `room-watch`: one socket session; ok value `{"pushes": [[key, value,
//!   seq], …], "inits": [[key, [[value, seq], …]], …], "resync": bool,
//!   "end": why}`; `end` is `stopped` when the harness closed it after the
//!   final reads.
//!
//! The workload pushes only appends, and a refused push takes no seq, so a
//! room's final stream must hold seqs `1..=N` with no hole, and a socket
//! that sees every push of its room in seq order sees consecutive seqs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use super::pairs::{pair, Outcome};
use super::{capped, CheckResult, Verdict};
use crate::history::Op;

pub const F_APPEND: &str = "append";
pub const F_ROOM_READ: &str = "room-read";
pub const F_ROOM_WATCH: &str = "room-watch";

/// Listed problems per kind in the report.
const LIMIT: usize = 20;

/// A key's values with their seqs, in stream order.
type Stream = Vec<(String, u64)>;

/// `[[value, seq], …]` as pairs; None when malformed.
fn pairs_of(v: &Value) -> Option<Stream> {
    v.as_array()?
        .iter()
        .map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_u64()?)))
        .collect()
}

fn split_key(k: &str) -> (&str, &str) {
    k.split_once('/').unwrap_or((k, ""))
}

#[derive(Default)]
struct Problems {
    by_kind: BTreeMap<&'static str, Vec<Value>>,
}

impl Problems {
    fn add(&mut self, kind: &'static str, v: Value) {
        self.by_kind.entry(kind).or_default().push(v);
    }
    fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }
    fn report(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.by_kind {
            m.insert(
                k.to_string(),
                json!({"count": v.len(), "first": capped(v, LIMIT)}),
            );
        }
        Value::Object(m)
    }
}

/// Checks a room history: final reads agree; each room's final stream has
/// one push per seq, seqs 1..=N, no duplicate and no phantom value; every
/// acknowledged append is in it exactly once (at its acknowledged seq, when
/// it has one); each sender's acknowledged appends keep their order, and
/// each socket's pushes in the stream the order sent; every
/// socket delivery and resync `init` agrees with it, each session's
/// deliveries come in consecutive seq order, and a session still open after
/// the final reads (ended `stopped`) has every later seq delivered and every
/// seq of each key it got an `init` of.
pub fn check_room(history: &[Op]) -> CheckResult {
    let paired = pair(history);
    let mut bad = Problems::default();
    for m in &paired.malformed {
        bad.add("malformed history", m.describe());
    }
    // Attempts: value → (room/key, outcome, ack seq).
    let mut attempts: HashMap<&str, (&str, Outcome, Option<u64>)> = HashMap::new();
    let mut acked_by_process: BTreeMap<u64, Vec<(&str, &str, usize)>> = BTreeMap::new();
    // Socket sends: socket → (send index, value), acked or unknown.
    let mut by_socket: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    // Final reads: room/key → node → data.
    let mut reads: BTreeMap<&str, BTreeMap<u32, Stream>> = BTreeMap::new();
    let mut read_nodes: HashSet<u32> = HashSet::new();
    let mut sessions = Vec::new();
    for p in &paired.pairs {
        let inv = p.invoke;
        match inv.f.as_str() {
            F_APPEND => {
                let Some(v) = inv.value.as_str() else {
                    bad.add("malformed history", p.describe());
                    continue;
                };
                let seq = p
                    .result()
                    .and_then(|r| r.get("seq"))
                    .and_then(Value::as_u64);
                if attempts
                    .insert(v, (inv.key.as_str(), p.outcome(), seq))
                    .is_some()
                {
                    bad.add("value attempted twice", p.describe());
                }
                if let Some(r) = p.result() {
                    if let (Some(sock), Some(at)) = (r["socket"].as_str(), r["sent"].as_u64()) {
                        by_socket.entry(sock).or_default().push((at, v));
                    }
                }
                if p.outcome() == Outcome::Ok {
                    let idx = p.completion.map_or(0, |(_, i)| i);
                    acked_by_process.entry(inv.process).or_default().push((
                        inv.key.as_str(),
                        v,
                        idx,
                    ));
                }
            }
            F_ROOM_READ => {
                read_nodes.insert(inv.node);
                if p.outcome() != Outcome::Ok {
                    continue;
                }
                match p.result().and_then(pairs_of) {
                    Some(d) => {
                        reads
                            .entry(inv.key.as_str())
                            .or_default()
                            .insert(inv.node, d);
                    }
                    None => bad.add("malformed history", p.describe()),
                }
            }
            F_ROOM_WATCH if p.outcome() == Outcome::Ok => sessions.push(*p),
            _ => {}
        }
    }

    // Final reads agree, and every node answered for every key.
    let mut missing_reads = Vec::new();
    // room → seq → (key, value), from the first node's reads.
    let mut stream: BTreeMap<&str, BTreeMap<u64, (&str, String)>> = BTreeMap::new();
    let mut position: HashMap<String, (&str, u64)> = HashMap::new();
    for (rk, by_node) in &reads {
        for n in &read_nodes {
            if !by_node.contains_key(n) {
                missing_reads.push(json!({"key": rk, "node": n}));
            }
        }
        let (ref_node, data) = by_node.iter().next().expect("one read at least");
        for (n, d) in by_node {
            if d != data {
                bad.add(
                    "final reads disagree",
                    json!({"key": rk, "nodes": [ref_node, n], "len": [data.len(), d.len()]}),
                );
            }
        }
        let (room, key) = split_key(rk);
        let mut last = 0;
        for (v, s) in data {
            if *s <= last {
                bad.add(
                    "stream not in seq order",
                    json!({"key": rk, "seq": s, "after": last}),
                );
            }
            last = *s;
            let slot = stream.entry(room).or_default();
            if let Some((k2, v2)) = slot.insert(*s, (key, v.clone())) {
                bad.add(
                    "two values at one seq",
                    json!({"room": room, "seq": s, "values": [[k2, v2], [key, v]]}),
                );
            }
            if position.insert(v.clone(), (rk, *s)).is_some() {
                bad.add("value twice in the stream", json!({"key": rk, "value": v}));
            }
            match attempts.get(v.as_str()) {
                None => bad.add("phantom value", json!({"key": rk, "value": v, "seq": s})),
                Some((k, ..)) if k != rk => bad.add(
                    "value under another key",
                    json!({"value": v, "appended_to": k, "found_in": rk}),
                ),
                Some((_, Outcome::Fail, _)) => bad.add(
                    "failed append applied",
                    json!({"key": rk, "value": v, "seq": s}),
                ),
                _ => {}
            }
        }
    }
    for (room, seqs) in &stream {
        let max = seqs.keys().next_back().copied().unwrap_or(0);
        if seqs.len() as u64 != max {
            let holes: Vec<u64> = (1..=max).filter(|s| !seqs.contains_key(s)).collect();
            bad.add(
                "seqs with no value",
                json!({"room": room, "max": max, "count": holes.len(), "first": capped(&holes, LIMIT)}),
            );
        }
    }

    // Acknowledged appends: present once (duplicates reported above), at
    // the acknowledged seq; in order per sender.
    let mut acked = 0usize;
    for (v, (rk, outcome, seq)) in &attempts {
        if *outcome != Outcome::Ok {
            continue;
        }
        acked += 1;
        if !reads.contains_key(rk) {
            continue; // reported as missing reads
        }
        match position.get(*v) {
            None => bad.add("acknowledged append lost", json!({"key": rk, "value": v})),
            Some((_, s)) if seq.is_some_and(|a| a != *s) => bad.add(
                "acknowledged at another seq",
                json!({"key": rk, "value": v, "acked": seq, "final": s}),
            ),
            _ => {}
        }
    }
    for (process, appends) in &acked_by_process {
        // Per room: a sender's later ack must be at a later seq.
        let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
        let mut sorted = appends.clone();
        sorted.sort_by_key(|a| a.2);
        for (rk, v, _) in sorted {
            let Some((_, s)) = position.get(v) else {
                continue;
            };
            let room = split_key(rk).0;
            if let Some((prev, pv)) = last.get(room) {
                if s <= prev {
                    bad.add(
                        "sender order broken",
                        json!({"process": process, "room": room, "earlier": [pv, prev], "later": [v, s]}),
                    );
                }
            }
            last.insert(room, (*s, v));
        }
    }

    // One socket's pushes are applied in the order sent: of those in the
    // stream (acked or not), a later send has a later seq.
    for (sock, sends) in &mut by_socket {
        sends.sort();
        let mut last: Option<(u64, &str)> = None;
        for (_, v) in sends.iter() {
            let Some((rk, s)) = position.get(*v) else {
                continue;
            };
            let room = split_key(rk).0;
            if let Some((prev, pv)) = last {
                if *s <= prev {
                    bad.add(
                        "socket order broken",
                        json!({"socket": sock, "room": room, "earlier": [pv, prev], "later": [v, s]}),
                    );
                }
            }
            last = Some((*s, v));
        }
    }

    // Socket sessions agree with the final stream.
    let mut deliveries = 0usize;
    let mut resyncs = 0usize;
    for p in &sessions {
        let room = p.invoke.key.as_str();
        let r = p.result().expect("ok has a result");
        if r["resync"] == true {
            resyncs += 1;
        }
        let Some(final_room) = stream.get(room) else {
            continue;
        };
        let agrees = |key: &str, v: &str, s: u64| {
            final_room
                .get(&s)
                .is_some_and(|(k, fv)| *k == key && fv == v)
        };
        let mut prev: Option<u64> = None;
        for d in r["pushes"].as_array().into_iter().flatten() {
            let (Some(k), Some(v), Some(s)) = (d[0].as_str(), d[1].as_str(), d[2].as_u64()) else {
                bad.add("malformed history", p.describe());
                break;
            };
            deliveries += 1;
            if !agrees(k, v, s) {
                bad.add(
                    "delivery disagrees with the final stream",
                    json!({"room": room, "delivered": [k, v, s], "final": final_room.get(&s), "session": p.invoke_index}),
                );
            }
            match prev {
                Some(q) if s <= q => bad.add(
                    "deliveries out of seq order",
                    json!({"room": room, "seq": s, "after": q, "session": p.invoke_index}),
                ),
                Some(q) if s != q + 1 => bad.add(
                    "delivery skipped seqs",
                    json!({"room": room, "from": q, "to": s, "session": p.invoke_index}),
                ),
                _ => {}
            }
            prev = Some(s);
        }
        let mut seen: HashSet<u64> = r["pushes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d[2].as_u64())
            .collect();
        let first_delivered = seen.iter().min().copied().unwrap_or(u64::MAX);
        let mut resynced: HashSet<&str> = HashSet::new();
        for i in r["inits"].as_array().into_iter().flatten() {
            let (Some(k), Some(data)) = (i[0].as_str(), pairs_of(&i[1])) else {
                bad.add("malformed history", p.describe());
                break;
            };
            resynced.insert(k);
            let mut last = 0;
            for (v, s) in data {
                if s <= last || !agrees(k, &v, s) {
                    bad.add(
                        "init disagrees with the final stream",
                        json!({"room": room, "key": k, "value": v, "seq": s, "session": p.invoke_index}),
                    );
                }
                last = s;
                seen.insert(s);
            }
        }
        // Stopped only after the final reads: by then its node had applied
        // everything, so its deliveries reach the last seq, and with a key's
        // `init` they hold every seq of that key.
        if r["end"] == "stopped" {
            let missed: Vec<u64> = final_room
                .iter()
                .filter(|(s, (k, _))| {
                    (resynced.contains(k) || **s > first_delivered) && !seen.contains(s)
                })
                .map(|(s, _)| *s)
                .collect();
            if !missed.is_empty() {
                bad.add(
                    "session missed pushes",
                    json!({"room": room, "node": p.invoke.node, "count": missed.len(), "first": capped(&missed, LIMIT), "session": p.invoke_index}),
                );
            }
        }
    }

    let mut details = json!({
        "acknowledged": acked,
        "attempted": attempts.len(),
        "final_values": position.len(),
        "rooms": stream.len(),
        "sessions": sessions.len(),
        "sockets_sending": by_socket.len(),
        "socket_sends": by_socket.values().map(Vec::len).sum::<usize>(),
        "resyncs": resyncs,
        "deliveries": deliveries,
        "missing_reads": capped(&missing_reads, LIMIT),
    });
    let verdict = if !bad.is_empty() {
        details["problems"] = bad.report();
        Verdict::Invalid
    } else if reads.is_empty() || !missing_reads.is_empty() || acked == 0 {
        details["why_unknown"] = json!("final reads missing, or nothing acknowledged");
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    CheckResult::new("room", verdict, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{End, Hist};

    fn append(h: &mut Hist, p: u64, key: &str, v: &str, t: u64, end: End) {
        h.key(key).op(p, F_APPEND, json!(v), t, end);
    }

    fn ok(v: &str, t: u64) -> End {
        End::Ok(json!({ "value": v }), t)
    }

    fn read(h: &mut Hist, node: u32, key: &str, data: Value, t: u64) {
        h.node(node).key(key).op(
            1000 + node as u64,
            F_ROOM_READ,
            Value::Null,
            t,
            End::Ok(data, t + 1),
        );
    }

    fn session(h: &mut Hist, p: u64, room: &str, pushes: Value, inits: Value, t: u64) {
        let r = json!({"pushes": pushes, "inits": inits, "resync": true});
        h.key(room)
            .op(p, F_ROOM_WATCH, json!({}), t, End::Ok(r, t + 50));
    }

    /// Two senders on room r (keys a, b), one unknown append that landed,
    /// one failed that did not, both nodes agree, a watcher saw it all.
    fn valid() -> Hist {
        let mut h = Hist::new();
        append(&mut h, 1, "r/a", "x1", 0, ok("x1", 5));
        append(
            &mut h,
            2,
            "r/b",
            "y1",
            1,
            End::Ok(json!({"value": "y1", "seq": 2}), 6),
        );
        append(&mut h, 1, "r/a", "x2", 10, ok("x2", 15));
        append(&mut h, 2, "r/b", "y2", 11, End::Info(16));
        append(&mut h, 3, "r/a", "z1", 12, End::Fail(17));
        for n in [1, 2] {
            read(&mut h, n, "r/a", json!([["x1", 1], ["x2", 3]]), 100);
            read(&mut h, n, "r/b", json!([["y1", 2], ["y2", 4]]), 102);
        }
        session(
            &mut h,
            500,
            "r",
            json!([["a", "x1", 1], ["b", "y1", 2], ["a", "x2", 3]]),
            json!([["a", [["x1", 1]]]]),
            0,
        );
        h
    }

    fn verdict(h: &Hist) -> (Verdict, Value) {
        let r = check_room(&h.build());
        (r.verdict, r.details)
    }

    fn problem(h: &Hist, kind: &str) {
        let (v, d) = verdict(h);
        assert_eq!(v, Verdict::Invalid, "{d}");
        assert!(d["problems"].get(kind).is_some(), "{kind} not in {d}");
    }

    #[test]
    fn a_consistent_history_is_valid() {
        let (v, d) = verdict(&valid());
        assert_eq!(v, Verdict::Valid, "{d}");
        assert_eq!(d["acknowledged"], 3);
        assert_eq!(d["deliveries"], 3);
    }

    #[test]
    fn a_lost_acknowledged_append_is_invalid() {
        let mut h = valid();
        append(&mut h, 1, "r/a", "x3", 20, ok("x3", 25));
        problem(&h, "acknowledged append lost");
    }

    #[test]
    fn a_failed_append_in_the_stream_and_a_phantom_are_invalid() {
        let mut h = Hist::new();
        append(&mut h, 1, "r/a", "x1", 0, End::Fail(5));
        read(&mut h, 1, "r/a", json!([["x1", 1], ["ghost", 2]]), 100);
        problem(&h, "failed append applied");
        problem(&h, "phantom value");
    }

    #[test]
    fn shared_seqs_holes_duplicates_and_disorder_are_invalid() {
        let mut h = Hist::new();
        append(&mut h, 1, "r/a", "x1", 0, ok("x1", 5));
        append(&mut h, 2, "r/b", "y1", 1, ok("y1", 6));
        read(&mut h, 1, "r/a", json!([["x1", 1]]), 100);
        read(&mut h, 1, "r/b", json!([["y1", 1]]), 102);
        problem(&h, "two values at one seq");

        let mut h = Hist::new();
        append(&mut h, 1, "r/a", "x1", 0, ok("x1", 5));
        read(&mut h, 1, "r/a", json!([["x1", 2], ["x1", 3]]), 100);
        problem(&h, "seqs with no value");
        problem(&h, "value twice in the stream");
    }

    #[test]
    fn sender_order_and_ack_seq_are_checked() {
        let mut h = Hist::new();
        append(&mut h, 1, "r/a", "x1", 0, ok("x1", 5));
        append(
            &mut h,
            1,
            "r/b",
            "x2",
            10,
            End::Ok(json!({"value": "x2", "seq": 2}), 15),
        );
        read(&mut h, 1, "r/a", json!([["x1", 2]]), 100);
        read(&mut h, 1, "r/b", json!([["x2", 1]]), 102);
        problem(&h, "sender order broken");
        problem(&h, "acknowledged at another seq");
    }

    /// s2 was sent after s1 on one socket and its outcome is unknown; if it
    /// landed, it must be after s1.
    #[test]
    fn one_sockets_pushes_keep_the_order_sent() {
        let check = |first_seq: u64, second_seq: u64| {
            let mut h = Hist::new();
            let ack = json!({"value": "s1", "seq": first_seq, "socket": "0-0", "sent": 0});
            append(&mut h, 10, "r/a", "s1", 0, End::Ok(ack, 20));
            let unknown = json!({"value": "s2", "socket": "0-0", "sent": 1});
            append(&mut h, 11, "r/a", "s2", 1, End::Ok(unknown, 20));
            let mut data = vec![json!(["s1", first_seq]), json!(["s2", second_seq])];
            data.sort_by_key(|d| d[1].as_u64());
            read(&mut h, 1, "r/a", Value::Array(data), 100);
            let mut ops = h.build();
            for o in &mut ops {
                if o.process == 11 && o.kind == crate::history::OpType::Ok {
                    o.kind = crate::history::OpType::Info;
                }
            }
            check_room(&ops)
        };
        let r = check(1, 2);
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        let r = check(2, 1);
        assert_eq!(r.verdict, Verdict::Invalid, "{}", r.details);
        assert!(r.details["problems"].get("socket order broken").is_some());
    }

    #[test]
    fn final_reads_must_agree_and_be_complete() {
        let mut h = valid();
        read(&mut h, 3, "r/a", json!([["x1", 1]]), 200);
        problem(&h, "final reads disagree");

        let mut h = valid();
        h.node(3)
            .key("r/a")
            .op(1003, F_ROOM_READ, Value::Null, 200, End::Fail(201));
        assert_eq!(verdict(&h).0, Verdict::Unknown);
    }

    #[test]
    fn watcher_deliveries_must_agree_in_order_without_gaps() {
        let mut h = valid();
        session(
            &mut h,
            501,
            "r",
            json!([["a", "x2", 3], ["b", "y1", 2]]),
            json!([]),
            1,
        );
        problem(&h, "deliveries out of seq order");

        let mut h = valid();
        session(
            &mut h,
            501,
            "r",
            json!([["a", "x1", 1], ["a", "x2", 3]]),
            json!([]),
            1,
        );
        problem(&h, "delivery skipped seqs");

        let mut h = valid();
        session(&mut h, 501, "r", json!([["a", "y1", 2]]), json!([]), 1);
        problem(&h, "delivery disagrees with the final stream");

        let mut h = valid();
        session(&mut h, 501, "r", json!([]), json!([["b", [["y2", 3]]]]), 1);
        problem(&h, "init disagrees with the final stream");

        // Open until after the final reads: must have had all of 1..=4.
        let stopped = |pushes: Value, inits: Value| {
            let mut h = valid();
            let r = json!({"pushes": pushes, "inits": inits, "resync": false, "end": "stopped"});
            h.key("r")
                .op(502, F_ROOM_WATCH, json!({}), 1, End::Ok(r, 300));
            h
        };
        let h = stopped(
            json!([["b", "y1", 2], ["a", "x2", 3], ["b", "y2", 4]]),
            json!([["a", [["x1", 1]]], ["b", []]]),
        );
        assert_eq!(verdict(&h).0, Verdict::Valid, "{}", verdict(&h).1);
        let h = stopped(
            json!([["a", "x2", 3], ["b", "y2", 4]]),
            json!([["a", [["x1", 1]]]]),
        );
        assert_eq!(
            verdict(&h).0,
            Verdict::Valid,
            "no init of b: y1 not required"
        );
        let h = stopped(json!([["a", "x2", 3], ["b", "y2", 4]]), json!([["b", []]]));
        problem(&h, "session missed pushes");
        let h = stopped(
            json!([["b", "y1", 2], ["a", "x2", 3]]),
            json!([["a", [["x1", 1]]]]),
        );
        problem(&h, "session missed pushes");
    }
}
