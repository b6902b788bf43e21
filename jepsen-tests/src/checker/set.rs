//! The set workload: acknowledged adds must survive, refused adds must not
//! appear, and nothing that was never added may appear.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::pairs::{self, Outcome, Pair};
use super::{capped, CheckResult, Verdict};
use crate::history::Op;

/// Element lists in the details are cut here (counts are exact).
const MAX_LISTED: usize = 100;

/// An element, ordered numerically when it is an integer so reports read
/// naturally; other JSON values compare by their text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
enum Elem {
    Int(i64),
    Other(String),
}

impl Elem {
    fn of(v: &Value) -> Elem {
        v.as_i64()
            .map_or_else(|| Elem::Other(v.to_string()), Elem::Int)
    }
}

/// What is known about an element's adds (a re-added element takes the
/// strongest: ok over info over fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Added {
    Fail,
    Info,
    Ok,
}

struct Read<'a> {
    pair: Pair<'a>,
    elems: BTreeSet<Elem>,
}

/// Checks the set workload. Each ok read must contain every add that was
/// acknowledged before the read was invoked (for final reads: all of them),
/// no refused add, and no element that was never added. Adds still in doubt
/// (`info`, or never completed) may be present or not. Without any ok read
/// the verdict is `unknown`.
pub fn check_set(history: &[Op]) -> CheckResult {
    let paired = pairs::pair(history);
    let mut adds: BTreeMap<Elem, Added> = BTreeMap::new();
    // Completion time of the first ok add of each element.
    let mut acked_at: BTreeMap<Elem, u64> = BTreeMap::new();
    let mut reads: Vec<Read<'_>> = Vec::new();
    let mut bad_reads = 0usize;
    let (mut ok, mut fail, mut info) = (0usize, 0usize, 0usize);
    for p in &paired.pairs {
        match (p.invoke.f.as_str(), p.outcome()) {
            ("add", outcome) => {
                let e = Elem::of(&p.invoke.value);
                let added = match outcome {
                    Outcome::Ok => {
                        ok += 1;
                        let t = p.complete_time().unwrap_or(u64::MAX);
                        let at = acked_at.entry(e.clone()).or_insert(t);
                        *at = (*at).min(t);
                        Added::Ok
                    }
                    Outcome::Fail => {
                        fail += 1;
                        Added::Fail
                    }
                    Outcome::Info | Outcome::Pending => {
                        info += 1;
                        Added::Info
                    }
                };
                let slot = adds.entry(e).or_insert(added);
                *slot = (*slot).max(added);
            }
            ("read", Outcome::Ok) => match p.result().and_then(Value::as_array) {
                Some(a) => reads.push(Read {
                    pair: *p,
                    elems: a.iter().map(Elem::of).collect(),
                }),
                None => bad_reads += 1,
            },
            _ => {}
        }
    }

    // Per element, the reads (by history line of their invoke) that break it.
    let mut lost: BTreeMap<Elem, Vec<usize>> = BTreeMap::new();
    let mut unexpected: BTreeMap<Elem, Vec<usize>> = BTreeMap::new();
    let mut never_added: BTreeMap<Elem, Vec<usize>> = BTreeMap::new();
    let mut not_yet_required = 0usize;
    for r in &reads {
        let line = r.pair.invoke_index;
        for (e, &t) in &acked_at {
            if r.elems.contains(e) {
                continue;
            }
            // An add acknowledged after the read began may be missed by it.
            if t < r.pair.invoke.time {
                lost.entry(e.clone()).or_default().push(line);
            } else {
                not_yet_required += 1;
            }
        }
        for e in &r.elems {
            match adds.get(e) {
                Some(Added::Fail) => unexpected.entry(e.clone()).or_default().push(line),
                None => never_added.entry(e.clone()).or_default().push(line),
                Some(_) => {}
            }
        }
    }

    let verdict = if !lost.is_empty() || !unexpected.is_empty() || !never_added.is_empty() {
        Verdict::Invalid
    } else if reads.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let listing = |m: &BTreeMap<Elem, Vec<usize>>| {
        let items: Vec<Value> = m
            .iter()
            .map(|(e, lines)| json!({"element": e, "read_lines": capped(lines, 10)}))
            .collect();
        capped(&items, MAX_LISTED)
    };
    let details = json!({
        "adds": {"ok": ok, "fail": fail, "info": info},
        "elements": adds.len(),
        "ok_reads": reads.len(),
        "read_nodes": reads.iter().map(|r| r.pair.invoke.node).collect::<BTreeSet<_>>(),
        "unparseable_reads": bad_reads,
        "lost_count": lost.len(),
        "lost": listing(&lost),
        "unexpected_count": unexpected.len(),
        "unexpected": listing(&unexpected),
        "never_added_count": never_added.len(),
        "never_added": listing(&never_added),
        "acked_after_read_started": not_yet_required,
        "malformed_count": paired.malformed.len(),
    });
    CheckResult::new("set", verdict, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::Hist;

    fn adds() -> Hist {
        let mut h = Hist::new();
        h.add(1, 1, 0, 1).add(2, 2, 0, 2).add_fail(3, 3, 0, 3);
        h
    }

    #[test]
    fn all_acknowledged_adds_present_is_valid() {
        let mut h = adds();
        h.node(1).read_set(10, &[1, 2], 100, 101);
        h.node(2).read_set(11, &[2, 1], 100, 102);
        let r = check_set(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        assert_eq!(r.details["adds"], json!({"ok": 2, "fail": 1, "info": 0}));
    }

    #[test]
    fn lost_acknowledged_add_is_invalid() {
        let mut h = adds();
        h.node(1).read_set(10, &[1, 2], 100, 101);
        h.node(2).read_set(11, &[1], 100, 101);
        let r = check_set(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["lost_count"], 1);
        assert_eq!(r.details["lost"][0]["element"], 2);
    }

    #[test]
    fn info_add_may_be_present_or_absent() {
        for present in [true, false] {
            let mut h = adds();
            h.add_info(4, 4, 0, 5);
            let seen: &[i64] = if present { &[1, 2, 4] } else { &[1, 2] };
            h.read_set(10, seen, 100, 101);
            let r = check_set(&h.build());
            assert_eq!(r.verdict, Verdict::Valid, "present={present}");
            assert_eq!(r.details["adds"]["info"], 1);
        }
    }

    #[test]
    fn failed_add_present_is_invalid() {
        let mut h = adds();
        h.read_set(10, &[1, 2, 3], 100, 101);
        let r = check_set(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["unexpected"][0]["element"], 3);
    }

    #[test]
    fn element_never_added_is_invalid() {
        let mut h = adds();
        h.read_set(10, &[1, 2, 77], 100, 101);
        let r = check_set(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["never_added"][0]["element"], 77);
    }

    #[test]
    fn no_successful_read_is_unknown() {
        let r = check_set(&adds().build());
        assert_eq!(r.verdict, Verdict::Unknown);
    }

    #[test]
    fn add_acknowledged_after_read_began_is_not_required() {
        let mut h = Hist::new();
        h.add(1, 1, 0, 1).read_set(2, &[1], 5, 20).add(1, 2, 6, 10);
        let r = check_set(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        assert_eq!(r.details["acked_after_read_started"], 1);
    }
}
