//! Pairs each invoke with its completion (same process, next event of that
//! process), which every checker needs before it can reason about ops.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::history::{Op, OpType};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Fail,
    Info,
    /// No completion by the end of the history: as uncertain as `Info`.
    Pending,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
            Outcome::Pending => "pending",
        }
    }
}

/// One operation: its invoke and, if any, its completion.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pair<'a> {
    pub invoke: &'a Op,
    pub invoke_index: usize,
    pub completion: Option<(&'a Op, usize)>,
}

impl<'a> Pair<'a> {
    pub fn outcome(&self) -> Outcome {
        match self.completion {
            None => Outcome::Pending,
            Some((c, _)) => match c.kind {
                OpType::Ok => Outcome::Ok,
                OpType::Fail => Outcome::Fail,
                // An `invoke` never completes another invoke (see `pair`).
                OpType::Info | OpType::Invoke => Outcome::Info,
            },
        }
    }

    /// The completion's value, for ok/fail/info completions.
    pub fn result(&self) -> Option<&'a Value> {
        self.completion.map(|(c, _)| &c.value)
    }

    pub fn complete_time(&self) -> Option<u64> {
        self.completion.map(|(c, _)| c.time)
    }

    /// A self-contained description for reports: enough to find the op in
    /// `history.jsonl` (the indexes are 0-based line numbers).
    pub fn describe(&self) -> Value {
        let inv = self.invoke;
        let mut d = json!({
            "process": inv.process,
            "f": inv.f,
            "key": inv.key,
            "value": inv.value,
            "type": self.outcome().as_str(),
            "node": inv.node,
            "invoke_time": inv.time,
            "invoke_index": self.invoke_index,
        });
        if let Some((c, idx)) = self.completion {
            d["result"] = c.value.clone();
            d["complete_time"] = json!(c.time);
            d["complete_index"] = json!(idx);
            if let Some(e) = &c.error {
                d["error"] = json!(e);
            }
        }
        d
    }
}

/// An event that breaks the one-op-in-flight-per-process contract.
#[derive(Clone, Debug)]
pub(crate) struct Malformed {
    pub index: usize,
    /// The key the event concerns (the invoke's key when there is one).
    pub key: String,
    pub reason: &'static str,
}

impl Malformed {
    pub fn describe(&self) -> Value {
        json!({"index": self.index, "key": self.key, "reason": self.reason})
    }
}

pub(crate) struct Paired<'a> {
    /// In invoke order.
    pub pairs: Vec<Pair<'a>>,
    pub malformed: Vec<Malformed>,
}

/// Pairs invokes with completions in history order.
///
/// Contract violations are recorded, not fatal: a second invoke while one is
/// in flight leaves the first pending (uncertain, hence safe), and a
/// completion with no invoke in flight is dropped.
pub(crate) fn pair(history: &[Op]) -> Paired<'_> {
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    let mut malformed = Vec::new();
    let mut in_flight: HashMap<u64, usize> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if op.kind == OpType::Invoke {
            if in_flight.insert(op.process, pairs.len()).is_some() {
                malformed.push(Malformed {
                    index: i,
                    key: op.key.clone(),
                    reason: "invoke while the process already has an op in flight",
                });
            }
            pairs.push(Pair {
                invoke: op,
                invoke_index: i,
                completion: None,
            });
            continue;
        }
        match in_flight.remove(&op.process) {
            Some(p) => {
                let inv = pairs[p].invoke;
                if inv.f != op.f || inv.key != op.key {
                    malformed.push(Malformed {
                        index: i,
                        key: inv.key.clone(),
                        reason: "completion's f or key differs from its invoke",
                    });
                }
                pairs[p].completion = Some((op, i));
            }
            None => malformed.push(Malformed {
                index: i,
                key: op.key.clone(),
                reason: "completion without an invoke in flight",
            }),
        }
    }
    Paired { pairs, malformed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::Hist;

    #[test]
    fn pairs_by_process_and_keeps_unfinished_pending() {
        let mut h = Hist::new();
        h.write(1, 10, 0, 5);
        h.write_info(2, 20, 1, 6);
        h.write_pending(3, 30, 2);
        let hist = h.build();
        let p = pair(&hist);
        assert!(p.malformed.is_empty());
        let outcomes: Vec<_> = p.pairs.iter().map(|p| p.outcome()).collect();
        assert_eq!(outcomes, vec![Outcome::Ok, Outcome::Info, Outcome::Pending]);
    }

    #[test]
    fn reports_contract_violations() {
        let mut h = Hist::new();
        h.write(1, 10, 0, 5);
        let mut hist = h.build();
        // A stray completion for a process with nothing in flight.
        let mut stray = hist[1].clone();
        stray.process = 9;
        hist.push(stray);
        let p = pair(&hist);
        assert_eq!(p.pairs.len(), 1);
        assert_eq!(p.malformed.len(), 1);
        assert_eq!(p.malformed[0].index, 2);
    }
}
