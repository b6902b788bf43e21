//! The rstmdb workload's checks. Each instance is a CAS register over tags:
//! an APPLY_EVENT with `expected_wal_offset` = the offset of the write that
//! stored tag T, carrying new tag U, is `cas(T → U)` (the instance's initial
//! tag is null, stored at its creation offset); a GET_INSTANCE is a read of
//! (tag, `last_wal_offset`). Four checks:
//!
//! * linearizability per instance ([`super::linearizable::check_register`]
//!   on the history as recorded: `cas` and `read` ops in its format);
//! * monotonic reads per process and instance (offsets as revisions);
//! * offsets ([`check_offsets`]): the cas model compares tags while the
//!   server compares offsets, which is the same only if every tag has one
//!   offset and, per instance, every offset one tag, across acks, reads and
//!   watch events;
//! * watches ([`super::watch::check_watch`] on a translation, [`to_watch`]):
//!   every acknowledged write (of the watched instance, for WATCH_INSTANCE)
//!   exactly once per watcher at its acked offset, in offset order, nothing
//!   never written or refused, watchers of the same scope agree.
//!
//! # History
//!
//! * `cas`, key = instance: invoke `[T, U]` (T null for the initial tag);
//!   completion `{"tag": U, "expected_offset": O, "wal_offset": N?}` (N on
//!   ok). `fail` = nothing was applied (CONFLICT, refused before sending,
//!   no leader with `retryable`); `info` = may have been applied.
//! * `read`, key = instance: ok `{"revision": last_wal_offset, "value": T}`.
//! * `fence`, key = the fence instance: invoke U; ok `{"tag": U, "wal_offset": N}`.
//! * `rstmdb-watch`: one watch connection; invoke `{"from": F}` (WATCH_ALL)
//!   or `{"from": F, "instance": X}` (WATCH_INSTANCE of X); ok
//!   [`RstmdbSession`]; a refusal fails with `{"from", "status"?, "oldest"?}`
//!   (`status` 410 when `from_offset` was compacted, `oldest` the oldest
//!   retained offset).
//!
//! Offsets are Raft log indexes, and the leader puts concurrent writes of
//! several connections into one entry, so several events (of different
//! instances: an instance is an exclusive conflict key) may share an offset.
//! A cut WATCH_ALL stream may thus have delivered only part of its last
//! offset: the watch checker's completeness rule applies
//! ([`super::watch::complete_through`]: an offset is complete once a higher
//! one arrived), the partial tail is dropped and the next session asks for
//! that offset again (the watcher resumes at the last complete offset + 1).
//! A WATCH_INSTANCE stream's events each have an offset of their own, so
//! all it delivered is complete and it resumes at the last offset + 1.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pairs::{self, Outcome};
use super::watch::{SessionRecord, F_FENCE, F_WATCH, F_WRITE};
use super::{capped, CheckResult, Verdict};
use crate::history::{Op, OpType};

pub const F_CAS: &str = "cas";
pub const F_READ: &str = "read";
pub const F_RSTMDB_WATCH: &str = "rstmdb-watch";

/// Violations listed in the details (counts are exact).
const MAX_LISTED: usize = 20;

/// One delivered event as recorded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RecordedEvent {
    pub wal_offset: u64,
    pub instance_id: String,
    /// The event payload's tag; null if absent.
    pub tag: Value,
    /// Only when it is not the session's own subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
}

/// What one watch connection delivered (ok `rstmdb-watch` completion).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct RstmdbSession {
    pub from: u64,
    /// WATCH_INSTANCE of this instance; none: WATCH_ALL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub subscription_id: String,
    #[serde(default)]
    pub events: Vec<RecordedEvent>,
    /// Why it ended.
    #[serde(default)]
    pub ending: String,
}

/// The watch checker's value for a tag.
fn tag_value(tag: &Value) -> Value {
    match tag.as_i64() {
        Some(t) => json!(format!("t{t}")),
        None => tag.clone(),
    }
}

/// Which watch each watcher process held: `Some(X)` WATCH_INSTANCE of X,
/// `None` WATCH_ALL (from the sessions' invokes).
fn scopes(history: &[Op]) -> HashMap<u64, Option<String>> {
    history
        .iter()
        .filter(|o| o.f == F_RSTMDB_WATCH && o.kind == OpType::Invoke)
        .map(|o| {
            let i = o.value.get("instance").and_then(Value::as_str);
            (o.process, i.map(str::to_string))
        })
        .collect()
}

/// Translates the history for [`super::watch::check_watch`], for the
/// WATCH_ALL watchers (`scope` none) or those of one instance: cas → write
/// of `"t<U>"` (ok names the acked offset as its revision; of that instance
/// only, for an instance), fence likewise (WATCH_ALL only), watch sessions
/// → [`SessionRecord`]s whose lines are `{revision, key, value}`. A
/// WATCH_ALL session has no final line (the client is never told where a
/// stream ended); an instance's session gets one naming its last offset,
/// since each of its offsets is one whole event. Reads are left out.
pub fn to_watch(history: &[Op], scope: Option<&str>) -> Vec<Op> {
    let scopes = scopes(history);
    let mut out = Vec::with_capacity(history.len());
    for op in history {
        let (f, value) = match op.f.as_str() {
            F_CAS | F_FENCE => {
                if scope.is_some_and(|i| op.f == F_FENCE || op.key != i) {
                    continue;
                }
                let f = if op.f == F_CAS { F_WRITE } else { F_FENCE };
                let tag = match op.kind {
                    OpType::Invoke if op.f == F_CAS => op.value.get(1).cloned(),
                    OpType::Invoke => Some(op.value.clone()),
                    _ => op.value.get("tag").cloned(),
                };
                let v = tag_value(&tag.unwrap_or(Value::Null));
                let value = if op.kind == OpType::Ok {
                    json!({"value": v, "revision": op.value.get("wal_offset")})
                } else {
                    v
                };
                (f, value)
            }
            F_RSTMDB_WATCH => {
                if scopes.get(&op.process).map(Option::as_deref) != Some(scope) {
                    continue;
                }
                let value = match op.kind {
                    OpType::Ok => match serde_json::from_value::<RstmdbSession>(op.value.clone()) {
                        Ok(s) => serde_json::to_value(session_record(&s)).unwrap_or(Value::Null),
                        // Unreadable: the watch checker reports it.
                        Err(_) => Value::Null,
                    },
                    _ => op.value.clone(),
                };
                (F_WATCH, value)
            }
            _ => continue,
        };
        out.push(Op {
            f: f.to_string(),
            value,
            ..op.clone()
        });
    }
    out
}

fn session_record(s: &RstmdbSession) -> SessionRecord {
    let lines: Vec<Value> = s
        .events
        .iter()
        .map(|e| match &e.subscription_id {
            // Not a change line: the watch checker calls it malformed.
            Some(other) => json!(format!(
                "event at {} of subscription {other} on {}'s connection",
                e.wal_offset, s.subscription_id
            )),
            None => json!({"revision": e.wal_offset, "key": e.instance_id,
                           "value": tag_value(&e.tag)}),
        })
        .collect();
    let last = s.events.iter().map(|e| e.wal_offset).max();
    SessionRecord {
        from: s.from,
        lines,
        end: last
            .filter(|_| s.instance.is_some())
            .map(|r| json!({"error": s.ending, "revision": r})),
        ..SessionRecord::default()
    }
}

/// Where a (instance, tag) ↔ offset fact came from.
struct Fact {
    instance: String,
    tag: Value,
    offset: u64,
    source: Value,
}

/// Every tag at one offset and, per instance, every offset holding one tag
/// (several instances may share an entry): across cas and fence acks, reads
/// and watch events. Unknown when nothing names one.
pub fn check_offsets(history: &[Op]) -> CheckResult {
    let paired = pairs::pair(history);
    let mut facts: Vec<Fact> = Vec::new();
    for p in &paired.pairs {
        if p.outcome() != Outcome::Ok {
            continue;
        }
        let Some(r) = p.result() else { continue };
        let key = p.invoke.key.clone();
        match p.invoke.f.as_str() {
            F_CAS | F_FENCE => {
                if let Some(o) = r.get("wal_offset").and_then(Value::as_u64) {
                    facts.push(Fact {
                        instance: key,
                        tag: r.get("tag").cloned().unwrap_or(Value::Null),
                        offset: o,
                        source: p.describe(),
                    });
                }
            }
            F_READ => {
                if let Some(o) = r.get("revision").and_then(Value::as_u64) {
                    facts.push(Fact {
                        instance: key,
                        tag: r.get("value").cloned().unwrap_or(Value::Null),
                        offset: o,
                        source: p.describe(),
                    });
                }
            }
            F_RSTMDB_WATCH => {
                let Ok(s) = serde_json::from_value::<RstmdbSession>(r.clone()) else {
                    continue;
                };
                for e in s.events.iter().filter(|e| e.subscription_id.is_none()) {
                    facts.push(Fact {
                        instance: e.instance_id.clone(),
                        tag: e.tag.clone(),
                        offset: e.wal_offset,
                        source: json!({"watcher": p.invoke.process, "invoke_index": p.invoke_index,
                                       "event": e}),
                    });
                }
            }
            _ => {}
        }
    }
    let name = |instance: &str, tag: &Value| format!("{instance}/{tag}");
    let mut offsets_of: BTreeMap<String, BTreeMap<u64, &Fact>> = BTreeMap::new();
    let mut tags_at: BTreeMap<(&str, u64), BTreeMap<String, &Fact>> = BTreeMap::new();
    for f in &facts {
        let n = name(&f.instance, &f.tag);
        offsets_of
            .entry(n.clone())
            .or_default()
            .entry(f.offset)
            .or_insert(f);
        tags_at
            .entry((&f.instance, f.offset))
            .or_default()
            .entry(n)
            .or_insert(f);
    }
    let mut violations = Vec::new();
    for (tag, by_offset) in &offsets_of {
        if by_offset.len() > 1 {
            violations.push(json!({"kind": "tag_at_two_offsets", "tag": tag,
                "seen": by_offset.values().map(|f| &f.source).collect::<Vec<_>>()}));
        }
    }
    for ((instance, offset), by_tag) in &tags_at {
        if by_tag.len() > 1 {
            violations.push(
                json!({"kind": "two_tags_at_one_offset", "instance": instance,
                "offset": offset,
                "seen": by_tag.values().map(|f| &f.source).collect::<Vec<_>>()}),
            );
        }
    }
    let verdict = if !violations.is_empty() {
        Verdict::Invalid
    } else if facts.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let instances: BTreeSet<&str> = facts.iter().map(|f| f.instance.as_str()).collect();
    CheckResult::new(
        "rstmdb-offsets",
        verdict,
        json!({
            "facts": facts.len(),
            "tags": offsets_of.len(),
            "instances": instances,
            "violation_count": violations.len(),
            "violations": capped(&violations, MAX_LISTED),
        }),
    )
}

/// Counts for the report: writes by outcome, reads, events per watcher.
pub fn summary(history: &[Op]) -> CheckResult {
    let paired = pairs::pair(history);
    let mut cas = BTreeMap::<&str, usize>::new();
    let mut reads = BTreeMap::<&str, usize>::new();
    let mut watchers: BTreeMap<u64, (usize, usize, usize)> = BTreeMap::new();
    for p in &paired.pairs {
        let o = match p.outcome() {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info | Outcome::Pending => "info",
        };
        match p.invoke.f.as_str() {
            F_CAS => *cas.entry(o).or_default() += 1,
            F_READ => *reads.entry(o).or_default() += 1,
            F_RSTMDB_WATCH => {
                let w = watchers.entry(p.invoke.process).or_default();
                w.0 += 1;
                if let Some(s) = p
                    .result()
                    .filter(|_| o == "ok")
                    .and_then(|r| serde_json::from_value::<RstmdbSession>(r.clone()).ok())
                {
                    w.1 += 1;
                    w.2 += s.events.len();
                }
            }
            _ => {}
        }
    }
    let watchers: Vec<Value> = watchers
        .iter()
        .map(|(p, (sessions, streams, events))| {
            json!({"watcher": p, "sessions": sessions, "streams": streams, "events": events})
        })
        .collect();
    let verdict = if cas.get("ok").copied().unwrap_or(0) > 0 {
        Verdict::Valid
    } else {
        Verdict::Unknown
    };
    CheckResult::new(
        "rstmdb-summary",
        verdict,
        json!({"apply_event": cas, "get_instance": reads, "watchers": watchers}),
    )
}

/// All checks of the rstmdb workload, in `results.json` order.
pub fn check_rstmdb(history: &[Op], budget: Duration) -> Vec<CheckResult> {
    let mut all = super::watch::check_watch(&to_watch(history, None));
    all.name = "rstmdb-watch-all".into();
    let mut out = vec![
        summary(history),
        super::linearizable::check_register(history, budget),
        super::monotonic::check_monotonic_reads(history),
        check_offsets(history),
        all,
    ];
    let instances: BTreeSet<String> = scopes(history).into_values().flatten().collect();
    if !instances.is_empty() {
        let mut details = serde_json::Map::new();
        let mut verdicts = Vec::new();
        for i in instances {
            let r = super::watch::check_watch(&to_watch(history, Some(&i)));
            verdicts.push(r.verdict);
            details.insert(i, r.details);
        }
        out.push(CheckResult::new(
            "rstmdb-watch-instance",
            super::combine_verdicts(verdicts),
            Value::Object(details),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{End, Hist};

    const W: u64 = 1 << 40;

    fn cas(h: &mut Hist, p: u64, from: Option<i64>, to: i64, offsets: (u64, u64), t: (u64, u64)) {
        let v = json!({"tag": to, "expected_offset": offsets.0, "wal_offset": offsets.1});
        h.op(p, F_CAS, json!([from, to]), t.0, End::Ok(v, t.1));
    }

    fn read(h: &mut Hist, p: u64, tag: Option<i64>, offset: u64, t: (u64, u64)) {
        let v = json!({"revision": offset, "value": tag});
        h.op(p, F_READ, Value::Null, t.0, End::Ok(v, t.1));
    }

    fn ev(offset: u64, instance: &str, tag: i64) -> RecordedEvent {
        RecordedEvent {
            wal_offset: offset,
            instance_id: instance.into(),
            tag: json!(tag),
            subscription_id: None,
        }
    }

    fn session(h: &mut Hist, p: u64, from: u64, events: Vec<RecordedEvent>, t: (u64, u64)) {
        let s = RstmdbSession {
            from,
            instance: None,
            subscription_id: format!("sub-{p}-{from}"),
            events,
            ending: "idle".into(),
        };
        let v = serde_json::to_value(s).unwrap();
        h.op(
            p,
            F_RSTMDB_WATCH,
            json!({ "from": from }),
            t.0,
            End::Ok(v, t.1),
        );
    }

    /// i0 created at 2, i1 at 3; i0's tag 1 at 5, then i0's tag 2 and
    /// i1's tag 3 in one entry at 8; the fence (tag 100) at 10.
    fn base() -> Hist {
        let mut h = Hist::new();
        h.key("i0");
        read(&mut h, 0, None, 2, (0, 1));
        cas(&mut h, 1, None, 1, (2, 5), (2, 3));
        cas(&mut h, 2, Some(1), 2, (5, 8), (4, 5));
        read(&mut h, 3, Some(2), 8, (6, 7));
        h.key("i1");
        read(&mut h, 4, None, 3, (0, 1));
        cas(&mut h, 5, None, 3, (3, 8), (4, 5));
        h.key("fence");
        let fence = json!({"tag": 100, "wal_offset": 10});
        h.op(6, F_FENCE, json!(100), 8, End::Ok(fence, 9));
        h.key("i0");
        h
    }

    /// Everything `base` acked, as one stream delivers it.
    fn all() -> Vec<RecordedEvent> {
        vec![
            ev(5, "i0", 1),
            ev(8, "i0", 2),
            ev(8, "i1", 3),
            ev(10, "fence", 100),
        ]
    }

    fn verdicts(h: &Hist) -> BTreeMap<String, Verdict> {
        check_rstmdb(&h.build(), Duration::from_secs(5))
            .into_iter()
            .map(|r| (r.name, r.verdict))
            .collect()
    }

    fn verdict_of(h: &Hist, name: &str) -> Verdict {
        verdicts(h)[name]
    }

    #[test]
    fn a_clean_history_is_valid_everywhere() {
        let mut h = base();
        // Cut inside offset 8: its part is dropped, 8 is asked for again.
        session(&mut h, W, 1, vec![ev(5, "i0", 1), ev(8, "i0", 2)], (0, 6));
        session(&mut h, W, 6, all()[1..].to_vec(), (6, 12));
        session(&mut h, W + 1, 1, all(), (0, 12));
        let v = verdicts(&h);
        assert!(v.values().all(|v| *v == Verdict::Valid), "{v:?}");
    }

    #[test]
    fn resuming_after_the_last_offset_seen_may_skip_the_rest_of_it() {
        let mut h = base();
        session(&mut h, W, 1, vec![ev(5, "i0", 1), ev(8, "i0", 2)], (0, 6));
        session(&mut h, W, 9, vec![ev(10, "fence", 100)], (6, 12));
        let r = check_rstmdb(&h.build(), Duration::from_secs(5));
        let w = r.iter().find(|r| r.name == "rstmdb-watch-all").unwrap();
        assert_eq!(w.verdict, Verdict::Invalid);
        assert_eq!(
            w.details["violations_by_kind"]["resumed_at_wrong_revision"],
            1
        );
        // Asked again from 8 but given only the part it had missed.
        let mut h = base();
        session(&mut h, W, 1, vec![ev(5, "i0", 1), ev(8, "i0", 2)], (0, 6));
        session(
            &mut h,
            W,
            6,
            vec![ev(8, "i1", 3), ev(10, "fence", 100)],
            (6, 12),
        );
        let r = check_rstmdb(&h.build(), Duration::from_secs(5));
        let w = r.iter().find(|r| r.name == "rstmdb-watch-all").unwrap();
        assert_eq!(w.verdict, Verdict::Invalid);
        assert_eq!(w.details["violations_by_kind"]["acked_write_missing"], 1);
    }

    #[test]
    fn two_successful_cas_from_one_tag_are_not_linearizable() {
        let mut h = base();
        // A second writer also went from tag 1, after tag 2 replaced it.
        cas(&mut h, 7, Some(1), 4, (5, 11), (8, 9));
        assert_eq!(
            verdict_of(&h, "linearizable-register"),
            Verdict::Invalid,
            "{:?}",
            verdicts(&h)
        );
    }

    #[test]
    fn a_conflict_is_a_definite_failure_and_an_unknown_write_may_land() {
        let mut h = base();
        // Refused: nothing applied, so no later read may see tag 4.
        h.op(7, F_CAS, json!([1, 4]), 8, End::Fail(9));
        // In doubt: a later read may see it.
        h.op(8, F_CAS, json!([2, 5]), 10, End::Info(11));
        read(&mut h, 9, Some(5), 12, (12, 13));
        assert_eq!(verdict_of(&h, "linearizable-register"), Verdict::Valid);
        read(&mut h, 10, Some(4), 12, (14, 15));
        assert_eq!(verdict_of(&h, "linearizable-register"), Verdict::Invalid);
    }

    fn watch_violations(h: &Hist) -> (Verdict, Value) {
        let r = check_rstmdb(&h.build(), Duration::from_secs(5));
        let w = r
            .into_iter()
            .find(|r| r.name == "rstmdb-watch-all")
            .unwrap();
        (w.verdict, w.details["violations_by_kind"].clone())
    }

    #[test]
    fn an_acked_write_missing_from_a_watcher_is_invalid() {
        let mut h = base();
        // The stream went past 5 without delivering it.
        session(&mut h, W, 1, all()[1..].to_vec(), (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["acked_write_missing"], 1, "{kinds}");
    }

    #[test]
    fn a_duplicate_delivery_is_invalid() {
        let mut h = base();
        session(&mut h, W, 1, all(), (0, 12));
        // Resumed at 9 but got i0's 8 again.
        session(
            &mut h,
            W,
            9,
            vec![ev(8, "i0", 2), ev(10, "fence", 100)],
            (12, 13),
        );
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["duplicate"], 1, "{kinds}");
    }

    #[test]
    fn out_of_order_delivery_is_invalid() {
        let mut h = base();
        let mut events = all();
        events.swap(0, 2);
        session(&mut h, W, 1, events, (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["out_of_order"], 1, "{kinds}");
    }

    #[test]
    fn phantoms_and_foreign_subscriptions_are_invalid() {
        let mut h = base();
        // Tag 9 was never written.
        let mut events = all();
        events.insert(3, ev(9, "i0", 9));
        session(&mut h, W, 1, events, (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["never_written"], 1, "{kinds}");
        let mut h = base();
        let mut events = all();
        events[1].subscription_id = Some("sub-other".into());
        session(&mut h, W, 1, events, (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["malformed_line"], 1, "{kinds}");
    }

    #[test]
    fn a_refused_write_delivered_is_invalid_and_one_in_doubt_is_not() {
        let mut h = base();
        h.op(7, F_CAS, json!([2, 4]), 8, End::Fail(9));
        h.op(8, F_CAS, json!([2, 5]), 8, End::Info(9));
        let mut events = all();
        events.insert(3, ev(9, "i0", 5));
        session(&mut h, W, 1, events.clone(), (0, 12));
        assert_eq!(watch_violations(&h).0, Verdict::Valid);
        events[3] = ev(9, "i0", 4);
        session(&mut h, W + 1, 1, events, (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["failed_write_delivered"], 1, "{kinds}");
    }

    #[test]
    fn watchers_must_agree() {
        let mut h = base();
        h.op(7, F_CAS, json!([2, 5]), 8, End::Info(9));
        let mut events = all();
        events.insert(3, ev(9, "i0", 5));
        session(&mut h, W, 1, events, (0, 12));
        // The other watcher covers 9 (it got 10 and then 12) without tag 5.
        let mut events = all();
        events.push(ev(12, "fence", 101));
        session(&mut h, W + 1, 1, events, (0, 13));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["watchers_disagree"], 1, "{kinds}");
    }

    #[test]
    fn an_event_at_another_offset_than_its_ack_is_invalid() {
        let mut h = base();
        let mut events = all();
        events[0].wal_offset = 6;
        session(&mut h, W, 1, events, (0, 12));
        let (v, kinds) = watch_violations(&h);
        assert_eq!(v, Verdict::Invalid);
        assert_eq!(kinds["revision_differs_from_ack"], 1, "{kinds}");
        assert_eq!(verdict_of(&h, "rstmdb-offsets"), Verdict::Invalid);
    }

    #[test]
    fn offsets_must_name_one_tag_and_tags_one_offset() {
        // Two instances sharing an entry is fine.
        assert_eq!(check_offsets(&base().build()).verdict, Verdict::Valid);
        assert_eq!(check_offsets(&[]).verdict, Verdict::Unknown);
        let mut h = base();
        // A read reporting tag 2 at another offset than its ack.
        read(&mut h, 7, Some(2), 9, (8, 9));
        let r = check_offsets(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["violations"][0]["kind"], "tag_at_two_offsets");
        let mut h = base();
        // i0's tag 2 offset reported for i0's initial (null) tag too.
        read(&mut h, 7, None, 8, (8, 9));
        let r = check_offsets(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        let kinds: Vec<&Value> = r.details["violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| &v["kind"])
            .collect();
        assert!(
            kinds.contains(&&json!("two_tags_at_one_offset")),
            "{kinds:?}"
        );
    }

    fn instance_session(
        h: &mut Hist,
        p: u64,
        from: u64,
        events: Vec<RecordedEvent>,
        t: (u64, u64),
    ) {
        let s = RstmdbSession {
            from,
            instance: Some("i0".into()),
            subscription_id: format!("sub-{p}-{from}"),
            events,
            ending: "idle".into(),
        };
        let v = serde_json::to_value(s).unwrap();
        let inv = json!({"from": from, "instance": "i0"});
        h.op(p, F_RSTMDB_WATCH, inv, t.0, End::Ok(v, t.1));
    }

    fn instance_check(h: &Hist) -> CheckResult {
        let r = check_rstmdb(&h.build(), Duration::from_secs(5));
        r.into_iter()
            .find(|r| r.name == "rstmdb-watch-instance")
            .unwrap()
    }

    #[test]
    fn an_instance_watcher_sees_its_instance_only_and_resumes_after_the_last() {
        let mut h = base();
        // Each of an instance's offsets is whole: resuming at last + 1.
        instance_session(&mut h, W + 2, 1, vec![ev(5, "i0", 1)], (0, 4));
        instance_session(&mut h, W + 2, 6, vec![ev(8, "i0", 2)], (4, 12));
        let r = instance_check(&h);
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        // WATCH_ALL watchers are judged apart (none here: nothing streamed).
        assert_eq!(verdict_of(&h, "rstmdb-watch-all"), Verdict::Unknown);
    }

    #[test]
    fn an_instance_watcher_missing_a_write_or_given_another_instance_is_invalid() {
        let mut h = base();
        instance_session(&mut h, W + 2, 1, vec![ev(8, "i0", 2)], (0, 12));
        let r = instance_check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(
            r.details["i0"]["violations_by_kind"]["acked_write_missing"],
            1
        );
        let mut h = base();
        instance_session(&mut h, W + 2, 1, all()[..3].to_vec(), (0, 12));
        let r = instance_check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["i0"]["violations_by_kind"]["never_written"], 1);
    }
}
