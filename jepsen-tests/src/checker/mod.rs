//! Checkers: turn a recorded history into verdicts.
//!
//! Every checker returns a [`CheckResult`] whose verdict is `valid`,
//! `invalid` or `unknown`. `unknown` means the checker could not decide
//! (budget exhausted, nothing to check, malformed input) and is never
//! silently reported as `valid`.
//!
//! # History contract
//!
//! Completions: `ok` happened with that result; `fail` certainly did not
//! happen; `info` may or may not have happened, at any time after its
//! invoke. An invoke with no completion by the end of the history is treated
//! as `info`.
//!
//! * Register workload ([`linearizable::check_register`]), per key: `write`
//!   (value: integer or null), `read` (invoke value null; ok value is what
//!   was read, null = absent), `cas` (value `[expected, desired]`; `fail`
//!   means the comparison failed, so nothing was applied). A read's ok value
//!   may instead be an object `{"revision": N, "value": V}`: the value read
//!   is `V`; the revision is only used by the monotonic-reads checker.
//! * Monotonic reads ([`monotonic::check_monotonic_reads`]): only ok `read`s
//!   whose value is such a `{"revision", "value"}` object are checked; reads
//!   with plain values are skipped.
//! * Set workload ([`set::check_set`]): `add` (value: the element) and final
//!   `read`s whose ok value is the array of all elements present.
//! * Watch workload ([`watch::check_watch`]): `write`s and post-heal
//!   `fence`s (value: a unique string; ok value `{"value", "revision"}`) and
//!   `watch` sessions, one per stream (invoke value `{"from": R}`; ok value a
//!   [`watch::SessionRecord`] of the lines received; a refused stream fails
//!   with `{"from", "status", "oldest"}`).
//! * rstmdb workload ([`rstmdb::check_rstmdb`]): per-instance `cas` and
//!   `read` in the register format above (tags as values, offsets as
//!   revisions), `fence`s and `rstmdb-watch` sessions; see [`rstmdb`].
//! * Room workload ([`room::check_room`]): `append`s, final `room-read`s
//!   and `room-watch` socket sessions of DriftDB rooms; see [`room`].
//! * Recovery ([`recovery::check_recovery`]) does not read the history but
//!   [`recovery::RecoveryProbe`]s the harness records after healing (a
//!   run's `recovery.jsonl`).

use serde::{Deserialize, Serialize};

pub mod linearizable;
pub mod monotonic;
pub mod recovery;
pub mod room;
pub mod rstmdb;
pub mod set;
pub mod watch;

mod pairs;

#[cfg(test)]
pub(crate) mod testkit;

/// A checker's conclusion.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    /// Could not decide; must not be read as a pass.
    Unknown,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        })
    }
}

/// One checker's output: its name, verdict and checker-specific details
/// (bounded in size so that results stay readable).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    pub details: serde_json::Value,
}

impl CheckResult {
    pub fn new(name: &str, verdict: Verdict, details: serde_json::Value) -> Self {
        CheckResult {
            name: name.to_string(),
            verdict,
            details,
        }
    }
}

/// Overall verdict: any invalid → invalid; else any unknown → unknown; else
/// valid (also for an empty list: nothing was contradicted).
pub fn combine(results: &[CheckResult]) -> Verdict {
    combine_verdicts(results.iter().map(|r| r.verdict))
}

pub(crate) fn combine_verdicts(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut out = Verdict::Valid;
    for v in verdicts {
        match v {
            Verdict::Invalid => return Verdict::Invalid,
            Verdict::Unknown => out = Verdict::Unknown,
            Verdict::Valid => {}
        }
    }
    out
}

/// Keeps at most `limit` items of a report list; the caller reports the
/// total separately so truncation is visible.
pub(crate) fn capped<T: Serialize>(items: &[T], limit: usize) -> serde_json::Value {
    serde_json::to_value(&items[..items.len().min(limit)]).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(v: Verdict) -> CheckResult {
        CheckResult::new("t", v, json!({}))
    }

    #[test]
    fn combine_orders_invalid_over_unknown_over_valid() {
        use Verdict::*;
        assert_eq!(combine(&[]), Valid);
        assert_eq!(combine(&[r(Valid), r(Valid)]), Valid);
        assert_eq!(combine(&[r(Valid), r(Unknown)]), Unknown);
        assert_eq!(combine(&[r(Unknown), r(Invalid), r(Valid)]), Invalid);
    }

    #[test]
    fn verdict_serializes_lowercase() {
        assert_eq!(
            serde_json::to_value(Verdict::Unknown).unwrap(),
            json!("unknown")
        );
        let back: Verdict = serde_json::from_value(json!("invalid")).unwrap();
        assert_eq!(back, Verdict::Invalid);
    }
}
