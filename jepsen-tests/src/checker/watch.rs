//! The watch workload: every watcher must be delivered each acknowledged
//! write exactly once, in revision order, at the revision its writer was
//! told, nothing that was never written, and the same changes as every
//! other watcher for the revisions both cover.
//!
//! # Sessions and the completeness rule
//!
//! A watcher's history is a sequence of sessions (one `watch` op per
//! connection): `from`, the raw lines the stream delivered, in arrival
//! order, and the final `{"error", "revision"}` line if the server sent one.
//! Several lines may share a revision, so when a stream is cut the lines of
//! its last revision may be only part of that revision. Hence the rule,
//! used alike by the watcher (to pick the next `from`) and here (to decide
//! what a session delivered), in [`complete_through`]:
//!
//! * a revision is complete once a line with a higher revision arrived, or
//!   the server's final error line names it (or a later revision);
//! * a session delivers exactly its lines with revision ≤ its last complete
//!   revision `C`; lines after `C` are dropped (not deduplicated), and the
//!   next session asks for `from = C + 1`, so the server must send that
//!   revision again, whole.
//!
//! Dropping rather than deduplicating is the stricter choice: a server that
//! replays a revision partly is caught as a missing write instead of being
//! patched up by the lines of the earlier, cut stream.
//!
//! A `410 Gone` (`from` older than the retained journal, with `oldest`)
//! lets the watcher go on at `oldest`; revisions in between are then not
//! covered by that watcher and not required of it (reported as such).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::pairs::{self, Outcome, Pair};
use super::{capped, CheckResult, Verdict};
use crate::history::Op;

/// Violations listed in the details (counts per kind are exact).
const MAX_LISTED: usize = 20;

/// `f` of a watch session, a workload write, and a post-heal fence write.
pub const F_WATCH: &str = "watch";
pub const F_WRITE: &str = "write";
pub const F_FENCE: &str = "fence";

/// What one watch connection recorded: the completion value of an ok
/// `watch` op (a failed one carries only `from`, `status` and `oldest`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SessionRecord {
    pub from: u64,
    /// Change lines as received, in arrival order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<Value>,
    /// The server's final `{"error": …, "revision": …}` line, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Value>,
    /// HTTP status of a refused watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A 410's oldest retained revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
}

impl SessionRecord {
    /// The revision the final error line names.
    pub fn end_revision(&self) -> Option<u64> {
        self.end.as_ref()?.get("revision")?.as_u64()
    }

    /// This session's last complete revision ([`complete_through`]).
    pub fn complete(&self) -> u64 {
        let revs: Vec<u64> = self.lines.iter().filter_map(line_revision).collect();
        complete_through(self.from, &revs, self.end_revision())
    }
}

/// The revision of a change line, if it has one.
pub fn line_revision(line: &Value) -> Option<u64> {
    line.get("revision")?.as_u64()
}

/// The last revision a stream started at `from` delivered completely, given
/// the revisions of its lines in arrival order and the revision its final
/// error line named: the highest revision some later line exceeded, or the
/// final line's, and never below `from - 1` (nothing new is complete).
pub fn complete_through(from: u64, revisions: &[u64], end_revision: Option<u64>) -> u64 {
    let mut complete = from.saturating_sub(1);
    let mut highest: Option<u64> = None;
    for &r in revisions {
        if let Some(h) = highest {
            if r > h {
                complete = complete.max(h);
            }
        }
        highest = Some(highest.map_or(r, |h| h.max(r)));
    }
    if let Some(e) = end_revision {
        complete = complete.max(e);
    }
    complete
}

/// A change line, parsed.
#[derive(Clone, Debug, PartialEq)]
struct Change {
    revision: u64,
    key: String,
    /// `None`: a delete.
    value: Option<Value>,
}

impl Change {
    fn parse(line: &Value) -> Option<Change> {
        let revision = line_revision(line)?;
        let key = line.get("key")?.as_str()?.to_string();
        let value = if line.get("deleted") == Some(&Value::Bool(true)) {
            None
        } else {
            Some(line.get("value")?.clone())
        };
        Some(Change {
            revision,
            key,
            value,
        })
    }

    /// Comparable text of what changed, for comparing watchers.
    fn content(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}", self.key),
            None => format!("{} deleted", self.key),
        }
    }
}

/// What is known about one written value.
struct Write<'a> {
    pair: Pair<'a>,
    outcome: Outcome,
    /// The revision the ack named.
    revision: Option<u64>,
}

/// The revision an ok write's completion names (`{"value", "revision"}`).
fn acked_revision(p: &Pair<'_>) -> Option<u64> {
    p.result()?.get("revision")?.as_u64()
}

/// A violation: its kind and what to look at.
struct Violation {
    kind: &'static str,
    detail: Value,
}

/// One watcher's sessions, as its history has them.
struct Watcher<'a> {
    process: u64,
    sessions: Vec<(Pair<'a>, SessionRecord)>,
}

/// Covered revisions as inclusive ranges, in order.
#[derive(Default)]
struct Coverage(Vec<(u64, u64)>);

impl Coverage {
    fn add(&mut self, lo: u64, hi: u64) {
        if lo <= hi {
            self.0.push((lo, hi));
        }
    }
    fn covers(&self, r: u64) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= r && r <= hi)
    }
    fn frontier(&self) -> u64 {
        self.0.iter().map(|&(_, hi)| hi).max().unwrap_or(0)
    }
}

/// What one watcher was delivered, after the completeness rule.
struct Delivered {
    process: u64,
    coverage: Coverage,
    /// Per revision, the contents delivered (sorted).
    by_revision: BTreeMap<u64, Vec<String>>,
}

/// Checks the watch workload (see the module doc for the rules). Unknown
/// when there is no acknowledged write or no watcher got a stream.
pub fn check_watch(history: &[Op]) -> CheckResult {
    let paired = pairs::pair(history);
    let mut writes: HashMap<String, Write<'_>> = HashMap::new();
    let mut watchers: BTreeMap<u64, Watcher<'_>> = BTreeMap::new();
    let mut violations: Vec<Violation> = Vec::new();
    let (mut ok, mut fail, mut info) = (0usize, 0usize, 0usize);
    // The highest revision acknowledged to a workload write: every watcher
    // must have caught up to it.
    let mut target = 0u64;
    for p in &paired.pairs {
        match p.invoke.f.as_str() {
            F_WRITE | F_FENCE => {
                let outcome = p.outcome();
                let revision = if outcome == Outcome::Ok {
                    acked_revision(p)
                } else {
                    None
                };
                match outcome {
                    Outcome::Ok => ok += 1,
                    Outcome::Fail => fail += 1,
                    Outcome::Info | Outcome::Pending => info += 1,
                }
                if outcome == Outcome::Ok && revision.is_none() {
                    violations.push(Violation {
                        kind: "ack_without_revision",
                        detail: p.describe(),
                    });
                }
                if p.invoke.f == F_WRITE {
                    target = target.max(revision.unwrap_or(0));
                }
                let Some(value) = p.invoke.value.as_str() else {
                    continue;
                };
                let w = Write {
                    pair: *p,
                    outcome,
                    revision,
                };
                if let Some(prev) = writes.insert(value.to_string(), w) {
                    violations.push(Violation {
                        kind: "value_written_twice",
                        detail: json!({"value": value, "first": prev.pair.describe(),
                                       "second": p.describe()}),
                    });
                }
            }
            F_WATCH => {
                let from = p.invoke.value.get("from").and_then(Value::as_u64);
                let rec = match p.outcome() {
                    Outcome::Ok => p
                        .result()
                        .and_then(|v| serde_json::from_value::<SessionRecord>(v.clone()).ok()),
                    _ => from.map(|from| SessionRecord {
                        from,
                        status: p
                            .result()
                            .and_then(|v| u16::try_from(v.get("status")?.as_u64()?).ok()),
                        oldest: p.result().and_then(|v| v.get("oldest")?.as_u64()),
                        ..SessionRecord::default()
                    }),
                };
                match rec {
                    Some(rec) => watchers
                        .entry(p.invoke.process)
                        .or_insert_with(|| Watcher {
                            process: p.invoke.process,
                            sessions: Vec::new(),
                        })
                        .sessions
                        .push((*p, rec)),
                    None => violations.push(Violation {
                        kind: "unreadable_session",
                        detail: p.describe(),
                    }),
                }
            }
            _ => {}
        }
    }

    let mut summaries = Vec::new();
    let mut delivered_all = Vec::new();
    for w in watchers.values() {
        let (d, summary) = check_watcher(w, &writes, target, &mut violations);
        summaries.push(summary);
        delivered_all.push(d);
    }
    compare_watchers(&delivered_all, &mut violations);

    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        *by_kind.entry(v.kind).or_default() += 1;
    }
    let streamed = delivered_all.iter().any(|d| !d.coverage.0.is_empty());
    let verdict = if !violations.is_empty() {
        Verdict::Invalid
    } else if ok == 0 || !streamed {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let listed: Vec<Value> = violations
        .iter()
        .map(|v| json!({"kind": v.kind, "detail": v.detail}))
        .collect();
    let details = json!({
        "writes": {"ok": ok, "fail": fail, "info": info},
        "target_revision": target,
        "watchers": summaries,
        "violation_count": violations.len(),
        "violations_by_kind": by_kind,
        "violations": capped(&listed, MAX_LISTED),
        "malformed_count": paired.malformed.len(),
        "malformed": capped(
            &paired.malformed.iter().map(|m| m.describe()).collect::<Vec<_>>(),
            MAX_LISTED
        ),
    });
    CheckResult::new("watch", verdict, details)
}

/// Applies the completeness rule to one watcher's sessions and checks its
/// delivered sequence; returns what it was delivered and a summary.
fn check_watcher(
    w: &Watcher<'_>,
    writes: &HashMap<String, Write<'_>>,
    target: u64,
    violations: &mut Vec<Violation>,
) -> (Delivered, Value) {
    let mut coverage = Coverage::default();
    let mut by_revision: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    // Where the next session must start, and why if not just after the
    // last complete revision.
    let mut expected_from: Option<u64> = None;
    let mut gone: Vec<Value> = Vec::new();
    // value → (revision, session index) of its first delivery.
    let mut seen: HashMap<String, (u64, usize)> = HashMap::new();
    let mut last: Option<(u64, BTreeSet<String>)> = None;
    let (mut received, mut delivered, mut dropped, mut ok_sessions) = (0usize, 0, 0, 0);
    let mut nodes = BTreeSet::new();
    let where_ = |i: usize, pair: &Pair<'_>| {
        json!({"watcher": w.process, "session": i, "node": pair.invoke.node,
               "from": pair.invoke.value.get("from"), "invoke_index": pair.invoke_index})
    };
    for (i, (pair, rec)) in w.sessions.iter().enumerate() {
        if let Some(want) = expected_from {
            if rec.from != want {
                violations.push(Violation {
                    kind: "resumed_at_wrong_revision",
                    detail: json!({"at": where_(i, pair), "expected_from": want}),
                });
            }
        }
        if pair.outcome() != Outcome::Ok {
            if let (Some(410), Some(oldest)) = (rec.status, rec.oldest) {
                gone.push(json!({"from": rec.from, "oldest": oldest}));
                expected_from = Some(oldest.max(rec.from));
            } else {
                expected_from = Some(rec.from);
            }
            continue;
        }
        ok_sessions += 1;
        nodes.insert(pair.invoke.node);
        let complete = rec.complete();
        coverage.add(rec.from.max(1), complete);
        expected_from = Some(complete + 1);
        received += rec.lines.len();
        for (j, line) in rec.lines.iter().enumerate() {
            let Some(c) = Change::parse(line) else {
                violations.push(Violation {
                    kind: "malformed_line",
                    detail: json!({"at": where_(i, pair), "line_index": j, "line": line}),
                });
                continue;
            };
            if c.revision > complete {
                dropped += 1;
                continue;
            }
            delivered += 1;
            let at = || json!({"at": where_(i, pair), "line_index": j, "line": line});
            if c.revision < rec.from {
                violations.push(Violation {
                    kind: "before_from",
                    detail: at(),
                });
            }
            match &mut last {
                Some((r, _)) if c.revision < *r => violations.push(Violation {
                    kind: "out_of_order",
                    detail: json!({"line": at(), "previous_revision": *r}),
                }),
                Some((r, keys)) if c.revision == *r => {
                    if !keys.insert(c.key.clone()) {
                        violations.push(Violation {
                            kind: "key_twice_in_revision",
                            detail: at(),
                        });
                    }
                }
                _ => last = Some((c.revision, BTreeSet::from([c.key.clone()]))),
            }
            by_revision.entry(c.revision).or_default().push(c.content());
            check_change(&c, i, writes, &mut seen, violations, at);
        }
    }

    // Acknowledged writes this watcher covered must each have come once.
    let mut missing = 0usize;
    let mut acked: Vec<(&String, &Write<'_>)> = writes
        .iter()
        .filter(|(_, wr)| wr.outcome == Outcome::Ok)
        .collect();
    acked.sort_by_key(|(_, wr)| (wr.revision, wr.pair.invoke_index));
    for (value, wr) in acked {
        let Some(rev) = wr.revision else { continue };
        if coverage.covers(rev) && !seen.contains_key(value.as_str()) {
            missing += 1;
            violations.push(Violation {
                kind: "acked_write_missing",
                detail: json!({"watcher": w.process, "revision": rev, "write": wr.pair.describe()}),
            });
        }
    }
    let frontier = coverage.frontier();
    if frontier < target {
        violations.push(Violation {
            kind: "watcher_behind",
            detail: json!({"watcher": w.process, "complete_through": frontier,
                           "target_revision": target}),
        });
    }
    for c in &mut by_revision.values_mut() {
        c.sort();
    }
    let summary = json!({
        "watcher": w.process,
        "sessions": w.sessions.len(),
        "streams": ok_sessions,
        "nodes": nodes,
        "lines_received": received,
        "delivered": delivered,
        "dropped_partial": dropped,
        "complete_through": frontier,
        "missing": missing,
        "gone_410": gone,
    });
    let d = Delivered {
        process: w.process,
        coverage,
        by_revision,
    };
    (d, summary)
}

/// One delivered change against the writes: written (and not refused), to
/// this key, at the acked revision, and delivered only once.
fn check_change(
    c: &Change,
    session: usize,
    writes: &HashMap<String, Write<'_>>,
    seen: &mut HashMap<String, (u64, usize)>,
    violations: &mut Vec<Violation>,
    at: impl Fn() -> Value,
) {
    let Some(value) = c.value.as_ref().and_then(Value::as_str) else {
        violations.push(Violation {
            kind: "never_written",
            detail: json!({"line": at(), "why": "no writer deletes or writes non-strings"}),
        });
        return;
    };
    let Some(wr) = writes.get(value) else {
        violations.push(Violation {
            kind: "never_written",
            detail: json!({"line": at(), "why": "no write of this value was invoked"}),
        });
        return;
    };
    if wr.pair.invoke.key != c.key {
        violations.push(Violation {
            kind: "never_written",
            detail: json!({"line": at(), "why": "the value was written to another key",
                           "write": wr.pair.describe()}),
        });
    }
    if wr.outcome == Outcome::Fail {
        violations.push(Violation {
            kind: "failed_write_delivered",
            detail: json!({"line": at(), "write": wr.pair.describe()}),
        });
    }
    if let Some(r) = wr.revision {
        if r != c.revision {
            violations.push(Violation {
                kind: "revision_differs_from_ack",
                detail: json!({"line": at(), "acked_revision": r, "write": wr.pair.describe()}),
            });
        }
    }
    if let Some(&(first_rev, first_session)) = seen.get(value) {
        violations.push(Violation {
            kind: "duplicate",
            detail: json!({"line": at(), "first_revision": first_rev,
                           "first_session": first_session}),
        });
    } else {
        seen.insert(value.to_string(), (c.revision, session));
    }
}

/// Every revision covered by two watchers must hold the same changes for
/// both (as sets: the contract orders only by revision).
fn compare_watchers(all: &[Delivered], violations: &mut Vec<Violation>) {
    let revisions: BTreeSet<u64> = all
        .iter()
        .flat_map(|d| d.by_revision.keys().copied())
        .collect();
    let empty = Vec::new();
    for r in revisions {
        let views: Vec<(u64, &Vec<String>)> = all
            .iter()
            .filter(|d| d.coverage.covers(r))
            .map(|d| (d.process, d.by_revision.get(&r).unwrap_or(&empty)))
            .collect();
        if views.windows(2).any(|p| p[0].1 != p[1].1) {
            let seen: BTreeMap<String, &Vec<String>> =
                views.iter().map(|(p, c)| (p.to_string(), *c)).collect();
            violations.push(Violation {
                kind: "watchers_disagree",
                detail: json!({"revision": r, "by_watcher": seen}),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::{End, Hist};

    fn line(rev: u64, key: &str, value: &str) -> Value {
        json!({"revision": rev, "key": key, "value": value})
    }

    /// Acked writes a@3, b@5, c@5 (one entry), a@7; d is in doubt.
    fn writes() -> Hist {
        let mut h = Hist::new();
        h.key("w/a").watch_write(1, "a1", Some(3), 0, 1);
        h.key("w/b").watch_write(2, "b1", Some(5), 2, 3);
        h.key("w/c").watch_write(3, "c1", Some(5), 2, 3);
        h.key("w/a").watch_write(1, "a2", Some(7), 4, 5);
        h.key("w/d").op(4, F_WRITE, json!("d1"), 4, End::Info(9));
        h
    }

    fn all_lines() -> Vec<Value> {
        vec![
            line(3, "w/a", "a1"),
            line(5, "w/b", "b1"),
            line(5, "w/c", "c1"),
            line(7, "w/a", "a2"),
        ]
    }

    /// A watcher (process 100 + n) streaming once from 1, ended by the
    /// server at revision 7: everything complete.
    fn full_watch(h: &mut Hist, n: u64, lines: Vec<Value>) {
        h.node(n as u32).watch(100 + n, 1, lines, Some(7), 10, 20);
    }

    #[test]
    fn complete_through_rule() {
        assert_eq!(complete_through(1, &[], None), 0);
        assert_eq!(complete_through(6, &[], None), 5);
        assert_eq!(complete_through(1, &[3, 5, 5], None), 3);
        assert_eq!(complete_through(1, &[3, 5, 5, 7], None), 5);
        assert_eq!(complete_through(1, &[3, 5, 5], Some(5)), 5);
        // The final line may name a revision past the last line (no change
        // under the prefix in between), never lowers what lines proved.
        assert_eq!(complete_through(1, &[3], Some(9)), 9);
        assert_eq!(complete_through(1, &[3, 5, 7], Some(2)), 5);
    }

    #[test]
    fn every_write_once_in_order_is_valid() {
        let mut h = writes();
        full_watch(&mut h, 1, all_lines());
        full_watch(&mut h, 2, all_lines());
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        assert_eq!(r.details["writes"], json!({"ok": 4, "fail": 0, "info": 1}));
        assert_eq!(r.details["watchers"][0]["delivered"], 4);
        assert_eq!(r.details["watchers"][0]["complete_through"], 7);
    }

    #[test]
    fn info_write_may_appear_once_but_not_twice() {
        let mut lines = all_lines();
        lines.insert(3, line(6, "w/d", "d1"));
        let mut h = writes();
        full_watch(&mut h, 1, lines.clone());
        full_watch(&mut h, 2, lines.clone());
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);

        lines.insert(4, line(6, "w/d", "d1"));
        let mut h = writes();
        full_watch(&mut h, 1, lines);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["violations_by_kind"]["duplicate"], 1);
    }

    #[test]
    fn duplicate_delivery_is_invalid() {
        let mut h = writes();
        // Redelivered in a later session that should have started at 6.
        h.watch(101, 1, all_lines()[..3].to_vec(), Some(5), 10, 11);
        h.watch(
            101,
            6,
            vec![line(5, "w/c", "c1"), line(7, "w/a", "a2")],
            Some(7),
            12,
            13,
        );
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid, "{}", r.details);
        let kinds = &r.details["violations_by_kind"];
        assert_eq!(kinds["duplicate"], 1, "{}", r.details);
        assert_eq!(kinds["before_from"], 1, "{}", r.details);
        let v = &r.details["violations"];
        assert!(v.to_string().contains("\"c1\""), "{v}");
    }

    #[test]
    fn gap_acked_write_missing_is_invalid() {
        let mut lines = all_lines();
        lines.remove(2);
        let mut h = writes();
        full_watch(&mut h, 1, lines);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["violations_by_kind"]["acked_write_missing"], 1);
        let v = &r.details["violations"][0];
        assert_eq!(v["kind"], "acked_write_missing");
        assert_eq!(v["detail"]["revision"], 5);
        assert_eq!(v["detail"]["write"]["value"], "c1");
        assert_eq!(r.details["watchers"][0]["missing"], 1);
    }

    #[test]
    fn out_of_order_is_invalid() {
        let mut lines = all_lines();
        lines.swap(0, 1);
        let mut h = writes();
        full_watch(&mut h, 1, lines);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["violations_by_kind"]["out_of_order"], 1);

        // A key twice within one revision.
        let mut lines = all_lines();
        lines[2] = line(5, "w/b", "c1");
        let mut h = writes();
        full_watch(&mut h, 1, lines);
        let r = check_watch(&h.build());
        assert_eq!(r.details["violations_by_kind"]["key_twice_in_revision"], 1);
    }

    #[test]
    fn phantom_values_are_invalid() {
        let mut h = writes();
        h.key("w/e").op(6, F_WRITE, json!("e2"), 4, End::Fail(5));
        let mut lines = all_lines();
        lines.push(line(8, "w/x", "never"));
        lines.push(line(9, "w/e", "e2"));
        lines.push(json!({"revision": 10, "key": "w/a", "deleted": true}));
        lines.push(line(11, "w/z", "a1"));
        h.node(1).watch(101, 1, lines, Some(11), 10, 20);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        let kinds = &r.details["violations_by_kind"];
        // Unknown value, a delete, a value written to another key (which is
        // also its second delivery, at another revision than acked).
        assert_eq!(kinds["never_written"], 3, "{}", r.details);
        assert_eq!(kinds["failed_write_delivered"], 1, "{}", r.details);
        assert_eq!(kinds["duplicate"], 1, "{}", r.details);
        assert_eq!(kinds["revision_differs_from_ack"], 1, "{}", r.details);
    }

    #[test]
    fn revision_must_match_the_ack() {
        let mut lines = all_lines();
        lines[3] = line(8, "w/a", "a2");
        let mut h = writes();
        h.node(1).watch(101, 1, lines, Some(8), 10, 20);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(
            r.details["violations_by_kind"]["revision_differs_from_ack"],
            1
        );
    }

    #[test]
    fn partial_revision_is_dropped_and_must_be_replayed_whole() {
        // Cut after b1 of revision 5: only revision 3 is complete; the
        // watcher resumes at 4 and the whole of revision 5 is sent again.
        let cut = all_lines()[..2].to_vec();
        let mut h = writes();
        h.node(1).watch(101, 1, cut.clone(), None, 10, 11);
        h.node(2)
            .watch(101, 4, all_lines()[1..].to_vec(), Some(7), 12, 13);
        full_watch(&mut h, 2, all_lines());
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        let w = &r.details["watchers"][0];
        assert_eq!(w["dropped_partial"], 1);
        assert_eq!(w["delivered"], 4);
        assert_eq!(w["nodes"], json!([1, 2]));

        // A replay of revision 5 without b1: the earlier cut stream's b1
        // does not make up for it.
        let mut h = writes();
        h.node(1).watch(101, 1, cut.clone(), None, 10, 11);
        let replay = vec![line(5, "w/c", "c1"), line(7, "w/a", "a2")];
        h.node(2).watch(101, 4, replay, Some(7), 12, 13);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        let v = &r.details["violations"][0];
        assert_eq!(v["kind"], "acked_write_missing", "{}", r.details);
        assert_eq!(v["detail"]["write"]["value"], "b1");

        // Resuming past the cut revision skips it.
        let mut h = writes();
        h.node(1).watch(101, 1, cut, None, 10, 11);
        h.node(2)
            .watch(101, 6, all_lines()[3..].to_vec(), Some(7), 12, 13);
        let r = check_watch(&h.build());
        let kinds = &r.details["violations_by_kind"];
        assert_eq!(kinds["resumed_at_wrong_revision"], 1, "{}", r.details);
    }

    #[test]
    fn watchers_must_agree_and_catch_up() {
        let mut with_d = all_lines();
        with_d.insert(3, line(6, "w/d", "d1"));
        let mut h = writes();
        full_watch(&mut h, 1, with_d);
        full_watch(&mut h, 2, all_lines());
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        let v = &r.details["violations"][0];
        assert_eq!(v["kind"], "watchers_disagree");
        assert_eq!(v["detail"]["revision"], 6);

        // Stopped at revision 5 (7's line never proven complete).
        let mut h = writes();
        h.watch(101, 1, all_lines(), None, 10, 20);
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["violations"][0]["kind"], "watcher_behind");
    }

    #[test]
    fn gone_410_leaves_the_skipped_revisions_unchecked() {
        let mut h = writes();
        h.watch_gone(101, 1, 6, 10, 11);
        h.watch(101, 6, all_lines()[3..].to_vec(), Some(7), 12, 13);
        full_watch(&mut h, 2, all_lines());
        let r = check_watch(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        assert_eq!(
            r.details["watchers"][0]["gone_410"],
            json!([{"from": 1, "oldest": 6}])
        );
    }

    #[test]
    fn nothing_streamed_is_unknown() {
        let r = check_watch(&writes().build());
        assert_eq!(r.verdict, Verdict::Unknown);
    }
}
