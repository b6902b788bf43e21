//! Monotonic reads: a client that has seen revision N of a key must never
//! later be served an older revision of it (e.g. after its node lost
//! leadership or it failed over to a lagging follower).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::pairs::{self, Outcome, Pair};
use super::{capped, CheckResult, Verdict};
use crate::history::Op;

/// Violations listed in the details (the count is exact).
const MAX_LISTED: usize = 50;

/// The revision of an ok read whose value is `{"revision": N, "value": V}`.
fn revision(p: &Pair<'_>) -> Option<u64> {
    if p.invoke.f != "read" || p.outcome() != Outcome::Ok {
        return None;
    }
    match p.result()? {
        Value::Object(m) if m.contains_key("value") => m.get("revision")?.as_u64(),
        _ => None,
    }
}

/// Checks that, per process and key, successive ok reads never observe a
/// decreasing revision. Only reads carrying a revision count; if there are
/// none the verdict is `unknown` (nothing was checked).
pub fn check_monotonic_reads(history: &[Op]) -> CheckResult {
    let paired = pairs::pair(history);
    // Reads are in invoke order, and a process's reads are sequential, so
    // this is each process's own order.
    let mut last: HashMap<(u64, &str), Pair<'_>> = HashMap::new();
    let mut checked = 0usize;
    let mut violations: Vec<Value> = Vec::new();
    for p in &paired.pairs {
        let Some(rev) = revision(p) else { continue };
        checked += 1;
        let slot = (p.invoke.process, p.invoke.key.as_str());
        if let Some(prev) = last.get(&slot) {
            let prev_rev = revision(prev).unwrap_or(0);
            if rev < prev_rev {
                violations.push(json!({
                    "process": p.invoke.process,
                    "key": p.invoke.key,
                    "revision": rev,
                    "previous_revision": prev_rev,
                    "read": p.describe(),
                    "previous_read": prev.describe(),
                }));
                // The highest revision seen stays the bar.
                continue;
            }
        }
        last.insert(slot, *p);
    }
    let verdict = if !violations.is_empty() {
        Verdict::Invalid
    } else if checked == 0 {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    let details = json!({
        "reads_checked": checked,
        "process_keys": last.len(),
        "violation_count": violations.len(),
        "violations": capped(&violations, MAX_LISTED),
    });
    CheckResult::new("monotonic-reads", verdict, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::Hist;

    #[test]
    fn non_decreasing_revisions_are_valid() {
        let mut h = Hist::new();
        h.read_rev(1, 3, Some(1), 0, 1)
            .read_rev(1, 3, Some(1), 2, 3)
            .read_rev(1, 5, Some(2), 4, 5)
            // Another process may lag behind process 1.
            .read_rev(2, 1, None, 6, 7);
        let r = check_monotonic_reads(&h.build());
        assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
        assert_eq!(r.details["reads_checked"], 4);
    }

    #[test]
    fn decreasing_revision_is_invalid() {
        let mut h = Hist::new();
        h.node(1).read_rev(1, 5, Some(2), 0, 1);
        h.node(2).read_rev(1, 4, Some(1), 2, 3);
        let r = check_monotonic_reads(&h.build());
        assert_eq!(r.verdict, Verdict::Invalid);
        let v = &r.details["violations"][0];
        assert_eq!(v["revision"], 4);
        assert_eq!(v["previous_revision"], 5);
        assert_eq!(v["read"]["node"], 2);
    }

    #[test]
    fn keys_are_separate_and_plain_reads_skipped() {
        let mut h = Hist::new();
        h.key("a").read_rev(1, 9, Some(1), 0, 1);
        h.key("b").read_rev(1, 2, Some(1), 2, 3);
        h.key("a").read(1, Some(1), 4, 5);
        let r = check_monotonic_reads(&h.build());
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.details["reads_checked"], 2);
    }

    #[test]
    fn nothing_to_check_is_unknown() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1).read(1, Some(1), 2, 3);
        assert_eq!(check_monotonic_reads(&h.build()).verdict, Verdict::Unknown);
    }
}
