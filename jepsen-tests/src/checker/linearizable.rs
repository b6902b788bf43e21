//! Linearizability of the register workload: for each key (keys are
//! independent, so checking them separately is exact and much cheaper), a
//! Wing & Gong search with Lowe's memoization, as in Porcupine and Knossos.
//!
//! Ops enter the search as call/return events sorted by time. An op that
//! ended in `info` (or never ended) returns at +infinity: its effect may
//! land anywhere after its invoke, and placing it last is the same as it
//! never happening. Failed ops and uncertain reads are dropped: they had no
//! effect, or none that anything observed.
//!
//! Uncertain ops are what makes such searches blow up, so before searching
//! each key's ops are reduced in ways that cannot change the verdict (each
//! is argued where it is done): uncertain writes nobody observed are
//! dropped ([`drop_unobserved`]), observed ones get the return time of
//! their first observer ([`tighten`]), and values nobody observes are
//! merged into one ([`collapse`]). The search itself never retries
//! alternatives to a read (see [`search`]). A randomized test checks the
//! whole against brute force.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::pairs::{self, Malformed, Outcome, Pair};
use super::{capped, combine_verdicts, CheckResult, Verdict};
use crate::history::Op;

/// The register's content: null (absent) or an integer.
type State = Option<i64>;

/// How many invalid keys get a full explanation in the details.
const MAX_FAILURES: usize = 5;
/// How many ops of the linearizable prefix an explanation shows (its end).
const PREFIX_TAIL: usize = 20;
/// How many not-yet-linearized ops an explanation lists.
const MAX_CANDIDATES: usize = 10;
/// Key lists in the details are cut here (totals are reported separately).
const MAX_KEYS_LISTED: usize = 100;
/// Bound on the memo cache: past this a key is `unknown`, not an OOM kill.
const CACHE_BYTES_LIMIT: usize = 1 << 30;
/// How often (in search steps) the deadline is looked at.
const DEADLINE_CHECK_EVERY: u64 = 1024;

/// Checks that, for every key, the register ops of `history` are
/// linearizable. `budget` is shared by all keys: a key whose search has not
/// finished when it runs out is `unknown`, never `valid`.
pub fn check_register(history: &[Op], budget: Duration) -> CheckResult {
    let started = Instant::now();
    // An unrepresentable deadline (huge budget) means no deadline.
    let deadline = started.checked_add(budget);
    let paired = pairs::pair(history);

    #[derive(Default)]
    struct KeyInput<'m> {
        pairs: Vec<usize>,
        malformed: Vec<&'m Malformed>,
    }
    let mut by_key: BTreeMap<&str, KeyInput<'_>> = BTreeMap::new();
    for (i, p) in paired.pairs.iter().enumerate() {
        by_key.entry(&p.invoke.key).or_default().pairs.push(i);
    }
    for m in &paired.malformed {
        by_key.entry(&m.key).or_default().malformed.push(m);
    }
    // Small keys first: a budget that runs out then leaves as few keys
    // undecided as possible.
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by_key(|(_, input)| input.pairs.len());

    let mut stats = Stats::default();
    let mut valid = 0usize;
    let mut invalid: Vec<&str> = Vec::new();
    let mut failures: Vec<Value> = Vec::new();
    let mut unknown: Vec<Value> = Vec::new();
    let mut verdicts = Vec::with_capacity(keys.len());
    for (key, input) in &keys {
        let verdict = if !input.malformed.is_empty() {
            let reason = format!(
                "malformed history for this key ({} events, first at line {}: {})",
                input.malformed.len(),
                input.malformed[0].index,
                input.malformed[0].reason
            );
            unknown.push(json!({"key": key, "reason": reason}));
            Verdict::Unknown
        } else {
            match prepare(&paired.pairs, &input.pairs, &mut stats) {
                Err(reason) => {
                    unknown.push(json!({"key": key, "reason": reason}));
                    Verdict::Unknown
                }
                Ok(prep) => {
                    stats.checked += prep.ops.len();
                    match search(&prep.ops, prep.initial, deadline) {
                        Search::Linearizable => {
                            valid += 1;
                            Verdict::Valid
                        }
                        Search::Violation(v) => {
                            invalid.push(key);
                            if failures.len() < MAX_FAILURES {
                                failures.push(explain(key, &paired.pairs, &prep, &v));
                            }
                            Verdict::Invalid
                        }
                        Search::GaveUp(reason) => {
                            unknown.push(json!({"key": key, "reason": reason}));
                            Verdict::Unknown
                        }
                    }
                }
            }
        };
        verdicts.push(verdict);
    }

    let malformed: Vec<Value> = paired.malformed.iter().map(Malformed::describe).collect();
    let details = json!({
        "keys": keys.len(),
        "valid_keys": valid,
        "invalid_count": invalid.len(),
        "invalid_keys": capped(&invalid, MAX_KEYS_LISTED),
        "unknown_count": unknown.len(),
        "unknown_keys": capped(&unknown, MAX_KEYS_LISTED),
        "failures": failures,
        "ops": {
            "checked": stats.checked,
            "failed_dropped": stats.failed,
            "uncertain_reads_dropped": stats.uncertain_reads,
            "unobserved_uncertain_dropped": stats.unobserved,
            "other_f_ignored": stats.ignored,
        },
        "malformed_count": malformed.len(),
        "malformed": capped(&malformed, 20),
        "budget_ms": budget.as_millis() as u64,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    CheckResult::new("linearizable-register", combine_verdicts(verdicts), details)
}

/// What an op does to the register, given how it completed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    /// An ok read: legal only where the register holds this value.
    Read(State),
    /// A write, ok or uncertain: always legal.
    Write(State),
    /// An ok cas: legal only where the register holds `expected`.
    Cas { expected: State, desired: State },
    /// An uncertain cas: where the comparison fails it is a no-op, which is
    /// what "did not happen" looks like, so it is always legal.
    CasMaybe { expected: State, desired: State },
}

impl Step {
    /// The value this op may store, if it stores one.
    fn written(self) -> Option<State> {
        match self {
            Step::Read(_) => None,
            Step::Write(v) | Step::Cas { desired: v, .. } | Step::CasMaybe { desired: v, .. } => {
                Some(v)
            }
        }
    }

    /// The value this op's outcome depends on the register holding.
    fn observes(self) -> Option<State> {
        match self {
            Step::Read(v) => Some(v),
            Step::Cas { expected, .. } | Step::CasMaybe { expected, .. } => Some(expected),
            Step::Write(_) => None,
        }
    }

    /// The same op storing `v` instead.
    fn writing(self, v: State) -> Step {
        match self {
            Step::Read(_) => self,
            Step::Write(_) => Step::Write(v),
            Step::Cas { expected, .. } => Step::Cas {
                expected,
                desired: v,
            },
            Step::CasMaybe { expected, .. } => Step::CasMaybe {
                expected,
                desired: v,
            },
        }
    }

    fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(v) => (s == v).then_some(s),
            Step::Write(v) => Some(v),
            Step::Cas { expected, desired } => (s == expected).then_some(desired),
            Step::CasMaybe { expected, desired } => Some(if s == expected { desired } else { s }),
        }
    }
}

/// An op as the search sees it.
#[derive(Clone, Copy, Debug)]
struct LinOp {
    /// Index into the paired ops, for reports.
    pair: usize,
    call: u64,
    /// `u64::MAX` for ops that never returned (info or pending).
    ret: u64,
    step: Step,
    /// `step` before unobserved values were collapsed, for reports.
    original: Step,
}

#[derive(Default)]
struct Stats {
    checked: usize,
    failed: usize,
    uncertain_reads: usize,
    unobserved: usize,
    ignored: usize,
}

fn parse_state(v: &Value) -> Option<State> {
    match v {
        Value::Null => Some(None),
        v => v.as_i64().map(Some),
    }
}

/// A read's result: a plain value, or `{"revision": N, "value": V}`.
fn read_value(v: &Value) -> Option<State> {
    match v {
        Value::Object(m) if m.contains_key("revision") && m.contains_key("value") => {
            parse_state(&m["value"])
        }
        v => parse_state(v),
    }
}

/// Turns one key's ops into search ops, dropping those without effect.
/// Fails (→ `unknown`) on a value that is neither null nor an integer.
fn prepare(all: &[Pair<'_>], idxs: &[usize], stats: &mut Stats) -> Result<Prepared, String> {
    let mut ops = Vec::with_capacity(idxs.len());
    for &i in idxs {
        let p = &all[i];
        let outcome = p.outcome();
        let bad = |what: &str, v: &Value| {
            format!(
                "unparseable {what} {v} in op at history line {}",
                p.invoke_index
            )
        };
        let call = p.invoke.time;
        let ret = match outcome {
            // Clamped so a skewed completion never sorts before its call.
            Outcome::Ok => p.complete_time().unwrap_or(u64::MAX).max(call),
            _ => u64::MAX,
        };
        let step = match (p.invoke.f.as_str(), outcome) {
            ("read" | "write" | "cas", Outcome::Fail) => {
                stats.failed += 1;
                continue;
            }
            ("read", Outcome::Ok) => {
                let got = p.result().unwrap_or(&Value::Null);
                Step::Read(read_value(got).ok_or_else(|| bad("read result", got))?)
            }
            ("read", _) => {
                stats.uncertain_reads += 1;
                continue;
            }
            ("write", _) => {
                let v = &p.invoke.value;
                Step::Write(parse_state(v).ok_or_else(|| bad("write value", v))?)
            }
            ("cas", _) => {
                let v = &p.invoke.value;
                let (expected, desired) = match v.as_array().map(Vec::as_slice) {
                    Some([e, d]) => (
                        parse_state(e).ok_or_else(|| bad("cas value", v))?,
                        parse_state(d).ok_or_else(|| bad("cas value", v))?,
                    ),
                    _ => return Err(bad("cas value", v)),
                };
                if outcome == Outcome::Ok {
                    Step::Cas { expected, desired }
                } else {
                    Step::CasMaybe { expected, desired }
                }
            }
            _ => {
                stats.ignored += 1;
                continue;
            }
        };
        ops.push(LinOp {
            pair: i,
            call,
            ret,
            step,
            original: step,
        });
    }

    drop_unobserved(&mut ops, stats);
    tighten(&mut ops);
    // Numbered in return order, cached sets stay compact (see `Cache`).
    ops.sort_by_key(|o| (o.ret, o.call));
    Ok(collapse(ops))
}

/// Drops uncertain ops whose written value nothing observes (no ok read
/// returns it, no remaining cas expects it), repeating since each drop can
/// unobserve more. Sound: in any linearization, only no-op uncertain cas
/// can follow such an op before the next write, and those can all move to
/// the end, so removing it keeps the linearization legal. Crash-heavy
/// histories stay tractable because each +infinity op doubles the search.
fn drop_unobserved(ops: &mut Vec<LinOp>, stats: &mut Stats) {
    loop {
        let observed: HashSet<State> = ops.iter().filter_map(|o| o.step.observes()).collect();
        let before = ops.len();
        ops.retain(|o| match o.step.written() {
            Some(w) if o.ret == u64::MAX => observed.contains(&w),
            _ => true,
        });
        stats.unobserved += before - ops.len();
        if ops.len() == before {
            return;
        }
    }
}

/// Values are unique per write: when only one op can have stored a value,
/// an ok op that saw it proves that writer took effect before the ok op
/// returned. Giving the writer that return time (instead of +infinity for an
/// uncertain one) changes no verdict but stops the search from trying to
/// place it anywhere later. Null, and values with several writers, prove
/// nothing and are left alone.
fn tighten(ops: &mut [LinOp]) {
    let mut writers: HashMap<i64, usize> = HashMap::new();
    let mut seen_by: HashMap<i64, u64> = HashMap::new();
    for o in ops.iter() {
        if let Some(Some(v)) = o.step.written() {
            *writers.entry(v).or_default() += 1;
        }
        // Only certain ops prove anything; an uncertain cas may not have run.
        if let Step::Read(Some(v))
        | Step::Cas {
            expected: Some(v), ..
        } = o.step
        {
            let t = seen_by.entry(v).or_insert(o.ret);
            *t = (*t).min(o.ret);
        }
    }
    for o in ops.iter_mut() {
        if let Some(Some(v)) = o.step.written() {
            if let (Some(1), Some(&t)) = (writers.get(&v), seen_by.get(&v)) {
                o.ret = o.ret.min(t).max(o.call);
            }
        }
    }
}

/// Values no op observes all behave alike (no read returns them, no cas
/// matches them), so they are collapsed into one stand-in value: orders of
/// concurrent overwritten writes then meet in the cache instead of being
/// explored once per last-written value.
fn collapse(mut ops: Vec<LinOp>) -> Prepared {
    let observed: HashSet<State> = ops.iter().filter_map(|o| o.step.observes()).collect();
    let unobserved = (i64::MIN..)
        .map(Some)
        .find(|s| !observed.contains(s))
        .expect("finitely many observed values");
    for o in &mut ops {
        if let Some(w) = o.step.written() {
            if !observed.contains(&w) {
                o.step = o.step.writing(unobserved);
            }
        }
    }
    let initial = if observed.contains(&None) {
        None
    } else {
        unobserved
    };
    Prepared { ops, initial }
}

/// One key's ops, ready for the search.
struct Prepared {
    ops: Vec<LinOp>,
    /// The register's initial content: null, or the stand-in if no op ever
    /// observes null.
    initial: State,
}

enum Search {
    Linearizable,
    Violation(Violation),
    GaveUp(String),
}

/// The deepest dead end of a failed search.
struct Violation {
    /// The longest linearizable prefix (op indexes).
    prefix: Vec<usize>,
    /// The register's state after the prefix.
    state: State,
    /// The op whose return was reached without being able to linearize it.
    blocked: usize,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// A node of the event list: a call or a return of one op.
#[derive(Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    is_call: bool,
    /// The matching return (for a call) or call (for a return).
    partner: usize,
}

/// The doubly linked event list: linearizing an op lifts its call and
/// return out, backtracking puts them back (in LIFO order) in O(1).
struct Events {
    nodes: Vec<Node>,
}

impl Events {
    fn new(ops: &[LinOp]) -> Self {
        // Calls sort before returns at equal times: touching ops count as
        // concurrent, which can only hide a violation, never invent one.
        let mut events: Vec<(u64, bool, usize)> = ops
            .iter()
            .enumerate()
            .flat_map(|(i, o)| [(o.call, false, i), (o.ret, true, i)])
            .collect();
        events.sort_unstable();
        let n = events.len();
        let mut nodes = Vec::with_capacity(n + 1);
        nodes.push(Node {
            prev: NIL,
            next: if n == 0 { NIL } else { 1 },
            op: NIL,
            is_call: false,
            partner: NIL,
        });
        let mut call_node = vec![NIL; ops.len()];
        for (j, &(_, is_ret, op)) in events.iter().enumerate() {
            let id = j + 1;
            nodes.push(Node {
                prev: j,
                next: if id == n { NIL } else { id + 1 },
                op,
                is_call: !is_ret,
                partner: NIL,
            });
            if is_ret {
                let c = call_node[op];
                nodes[c].partner = id;
                nodes[id].partner = c;
            } else {
                call_node[op] = id;
            }
        }
        Events { nodes }
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = i;
        if next != NIL {
            self.nodes[next].prev = i;
        }
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].partner);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].partner);
        self.relink(call);
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The set of linearized ops, with a Zobrist hash kept up to date on each
/// flip so the cache never rehashes the whole set.
struct Bitset {
    words: Vec<u64>,
    hash: u64,
}

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset {
            words: vec![0; n.div_ceil(64)],
            hash: 0,
        }
    }

    /// The canonical short form: how many leading words are all ones, and
    /// the words after them up to the last non-zero one.
    fn window(&self) -> (usize, &[u64]) {
        let skip = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |i| i + 1);
        (skip, &self.words[skip..end.max(skip)])
    }

    fn flip(&mut self, i: usize) {
        self.words[i / 64] ^= 1 << (i % 64);
        self.hash ^= splitmix64(i as u64);
    }
}

/// Passes the already well-mixed cache hash through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Lowe's memo: (linearized set, state) pairs already explored. Reaching one
/// again cannot lead anywhere new.
///
/// Ops are numbered in return order, and every op returning before the
/// earliest unlinearized one is linearized, so a set is a run of all-ones
/// words, a short window, then zeros: only the window is stored, which keeps
/// entries small however long the history.
#[derive(Default)]
struct Cache {
    buckets: HashMap<u64, Vec<Entry>, BuildHasherDefault<PassThrough>>,
    entries: usize,
    bytes: usize,
}

struct Entry {
    /// Leading all-ones words left out of `window`.
    skip: usize,
    window: Box<[u64]>,
    state: State,
}

impl Cache {
    /// Records the configuration; false if it was already there.
    fn insert(&mut self, set: &Bitset, state: State) -> bool {
        let h = set.hash ^ splitmix64(state.map_or(u64::MAX, |v| v as u64) ^ 0x5EED);
        let (skip, window) = set.window();
        let bucket = self.buckets.entry(h).or_default();
        if bucket
            .iter()
            .any(|e| e.state == state && e.skip == skip && *e.window == *window)
        {
            return false;
        }
        bucket.push(Entry {
            skip,
            window: window.into(),
            state,
        });
        self.entries += 1;
        self.bytes += window.len() * 8 + 64;
        true
    }
}

/// The WGL search over one key's ops.
fn search(ops: &[LinOp], initial: State, deadline: Option<Instant>) -> Search {
    let mut ev = Events::new(ops);
    let mut linearized = Bitset::new(ops.len());
    let mut cache = Cache::default();
    // Linearized calls, with the state before each.
    let mut stack: Vec<(usize, State)> = Vec::with_capacity(ops.len());
    let mut state = initial;
    let mut best: Option<Violation> = None;
    let mut entry = ev.nodes[HEAD].next;
    let mut steps: u64 = 0;
    let mut next_deadline_check = 0;
    while ev.nodes[HEAD].next != NIL {
        if steps == next_deadline_check {
            next_deadline_check += DEADLINE_CHECK_EVERY;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Search::GaveUp(format!(
                    "time budget exhausted after {steps} search steps ({} cached configurations)",
                    cache.entries
                ));
            }
        }
        steps += 1;
        let node = ev.nodes[entry];
        if node.is_call {
            if let Some(next) = ops[node.op].step.apply(state) {
                linearized.flip(node.op);
                if cache.insert(&linearized, next) {
                    if cache.bytes > CACHE_BYTES_LIMIT {
                        return Search::GaveUp(format!(
                            "search cache exceeded {} MiB after {steps} steps",
                            CACHE_BYTES_LIMIT >> 20
                        ));
                    }
                    stack.push((entry, state));
                    state = next;
                    ev.lift(entry);
                    entry = ev.nodes[HEAD].next;
                    continue;
                }
                linearized.flip(node.op);
            }
            // A call's return is still in the list, so `next` is not NIL.
            entry = node.next;
        } else {
            // This op's return came before it could be linearized: dead end.
            let deeper = match &best {
                None => true,
                Some(b) => stack.len() > b.prefix.len(),
            };
            if deeper {
                best = Some(snapshot(&ev, &stack, state, node.op));
            }
            // Undo the last choice and try the next alternative to it. A
            // read is never worth an alternative: it was legal where it was
            // placed and changes nothing, so any success without it there
            // would also succeed with it there, which just failed.
            loop {
                let Some((call, before)) = stack.pop() else {
                    return Search::Violation(best.expect("recorded above"));
                };
                state = before;
                let op = ev.nodes[call].op;
                linearized.flip(op);
                ev.unlift(call);
                entry = ev.nodes[call].next;
                if !matches!(ops[op].step, Step::Read(_)) {
                    break;
                }
            }
        }
    }
    Search::Linearizable
}

fn snapshot(ev: &Events, stack: &[(usize, State)], state: State, blocked: usize) -> Violation {
    let prefix = stack.iter().map(|&(call, _)| ev.nodes[call].op).collect();
    Violation {
        prefix,
        state,
        blocked,
    }
}

fn state_json(s: State) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn short(p: &Pair<'_>) -> String {
    let what = match (p.invoke.f.as_str(), p.outcome()) {
        ("read", Outcome::Ok) => format!("read -> {}", p.result().unwrap_or(&Value::Null)),
        (f, _) => format!("{f} {}", p.invoke.value),
    };
    let end = p
        .complete_time()
        .filter(|_| p.outcome() == Outcome::Ok)
        .map_or("never (uncertain)".to_string(), |t| t.to_string());
    format!(
        "process {} {what} via node {} (invoked at {}, returned at {end})",
        p.invoke.process, p.invoke.node, p.invoke.time
    )
}

/// A bounded, human-oriented account of why a key is not linearizable.
fn explain(key: &str, pairs: &[Pair<'_>], prep: &Prepared, v: &Violation) -> Value {
    let ops = &prep.ops;
    let blocked = &ops[v.blocked];
    let done: HashSet<usize> = v.prefix.iter().copied().collect();
    // The search ran on collapsed values; replaying the prefix with the
    // original ones recovers the states a person can match to the history.
    let mut state: State = None;
    let mut states = Vec::with_capacity(v.prefix.len());
    for &i in &v.prefix {
        state = ops[i].original.apply(state).unwrap_or(state);
        states.push(state);
    }
    let tail_from = v.prefix.len().saturating_sub(PREFIX_TAIL);
    let tail: Vec<Value> = (tail_from..v.prefix.len())
        .map(|j| {
            let op = pairs[ops[v.prefix[j]].pair].describe();
            json!({"op": op, "state_after": state_json(states[j])})
        })
        .collect();
    // Ops that could still have been linearized before the blocked op's
    // return (ops whose value was read later count as returning by then).
    let open: Vec<usize> = (0..ops.len())
        .filter(|&i| i != v.blocked && !done.contains(&i) && ops[i].call <= blocked.ret)
        .collect();
    let candidates: Vec<Value> = open
        .iter()
        .take(MAX_CANDIDATES)
        .map(|&i| {
            json!({
                "op": pairs[ops[i].pair].describe(),
                "legal_next": ops[i].step.apply(v.state).is_some(),
            })
        })
        .collect();
    json!({
        "key": key,
        "ops": ops.len(),
        "summary": format!(
            "{} cannot be linearized: the longest linearizable prefix ({} ops) leaves \
             the register at {}, and no order of the ops still open accommodates it",
            short(&pairs[blocked.pair]),
            v.prefix.len(),
            state_json(state)
        ),
        "op": pairs[blocked.pair].describe(),
        "state_before": state_json(state),
        "linearized_prefix_len": v.prefix.len(),
        "prefix_tail": tail,
        "open_ops_count": open.len(),
        "open_ops": candidates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::testkit::Hist;

    const BUDGET: Duration = Duration::from_secs(30);

    fn check(h: &Hist) -> CheckResult {
        check_register(&h.build(), BUDGET)
    }

    fn verdict(h: &Hist) -> Verdict {
        check(h).verdict
    }

    // ---- valid ----

    #[test]
    fn empty_history_is_valid() {
        assert_eq!(verdict(&Hist::new()), Verdict::Valid);
    }

    #[test]
    fn sequential_ops_are_valid() {
        let mut h = Hist::new();
        h.read(1, None, 0, 1)
            .write(1, 1, 2, 3)
            .read(2, Some(1), 4, 5)
            .write(2, 2, 6, 7)
            .read(1, Some(2), 8, 9);
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn read_overlapping_a_write_may_see_either_value() {
        for seen in [Some(1), Some(2)] {
            let mut h = Hist::new();
            h.write(1, 1, 0, 1)
                .write(1, 2, 10, 20)
                .read(2, seen, 12, 18);
            assert_eq!(verdict(&h), Verdict::Valid, "read saw {seen:?}");
        }
    }

    #[test]
    fn concurrent_writes_in_either_order() {
        // Both writes overlap; the reads that follow fix the order 2 then 1.
        let mut h = Hist::new();
        h.write(1, 1, 0, 10)
            .write(2, 2, 1, 11)
            .read(3, Some(1), 12, 13)
            .read(3, Some(1), 14, 15);
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn cas_chain_is_valid() {
        let mut h = Hist::new();
        h.cas(1, None, 1, 0, 1)
            .cas(2, Some(1), 2, 2, 3)
            .cas_fail(1, Some(1), 3, 4, 5)
            .cas(1, Some(2), 3, 6, 7)
            .read(2, Some(3), 8, 9);
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn read_revision_objects_are_understood() {
        let mut h = Hist::new();
        h.write(1, 7, 0, 1).read_rev(2, 5, Some(7), 2, 3);
        assert_eq!(verdict(&h), Verdict::Valid);
        let mut h = Hist::new();
        h.write(1, 7, 0, 1).read_rev(2, 5, None, 2, 3);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    // ---- invalid ----

    #[test]
    fn stale_read_after_completed_write_is_invalid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write(1, 2, 2, 3)
            .node(3)
            .read(2, Some(1), 4, 5);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        let f = &r.details["failures"][0];
        assert_eq!(f["key"], "k");
        // The report points at the stale read and the state it contradicts.
        assert_eq!(f["op"]["f"], "read");
        assert_eq!(f["op"]["result"], 1);
        assert_eq!(f["op"]["node"], 3);
        assert_eq!(f["op"]["invoke_time"], 4);
        assert_eq!(f["op"]["complete_time"], 5);
        assert_eq!(f["state_before"], 2);
        assert_eq!(f["linearized_prefix_len"], 2);
        assert_eq!(r.details["invalid_keys"], json!(["k"]));
    }

    #[test]
    fn read_of_never_written_value_is_invalid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1).read(2, Some(99), 2, 3);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["failures"][0]["op"]["result"], 99);
    }

    #[test]
    fn initial_read_of_a_value_is_invalid() {
        let mut h = Hist::new();
        h.read(1, Some(1), 0, 1).write(2, 1, 2, 3);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn reads_in_reverse_order_of_sequential_writes_are_invalid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write(1, 2, 2, 3)
            .read(2, Some(2), 4, 5)
            .read(3, Some(1), 6, 7);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        let f = &r.details["failures"][0];
        assert_eq!(f["op"]["process"], 3);
        assert_eq!(f["linearized_prefix_len"], 3);
    }

    #[test]
    fn cas_that_succeeded_against_wrong_value_is_invalid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1).cas(2, Some(5), 6, 2, 3);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    // ---- uncertain ops ----

    #[test]
    fn info_write_read_later_is_valid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write_info(2, 2, 2, 3)
            .read(3, Some(1), 4, 5)
            .read(3, Some(2), 100, 101)
            .read(3, Some(2), 102, 103);
        assert_eq!(verdict(&h), Verdict::Valid);
    }

    #[test]
    fn info_write_that_never_shows_is_valid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write_info(2, 2, 2, 3)
            .read(3, Some(1), 4, 5)
            .read(3, Some(1), 100, 101);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.details["ops"]["unobserved_uncertain_dropped"], 1);
    }

    #[test]
    fn info_write_read_before_its_invoke_is_invalid() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .read(3, Some(2), 4, 5)
            .write_info(2, 2, 10, 11);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["failures"][0]["op"]["result"], 2);
    }

    #[test]
    fn value_read_after_being_overwritten_is_invalid_even_if_info() {
        // Once the info write's value is seen and then overwritten, seeing it
        // again would need the write to take effect twice.
        let mut h = Hist::new();
        h.write_info(1, 1, 0, 1)
            .read(2, Some(1), 2, 3)
            .write(2, 2, 4, 5)
            .read(2, Some(1), 6, 7);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn info_cas_may_or_may_not_apply() {
        let base = |h: &mut Hist| {
            h.write(1, 1, 0, 1).cas_info(2, Some(1), 2, 2, 3);
        };
        for seen in [1, 2] {
            let mut h = Hist::new();
            base(&mut h);
            h.read(3, Some(seen), 10, 11);
            assert_eq!(verdict(&h), Verdict::Valid, "read saw {seen}");
        }
        // But it cannot apply once the value it expects is gone.
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write(1, 5, 2, 3)
            .cas_info(2, Some(1), 2, 4, 5)
            .read(3, Some(2), 10, 11);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn failed_write_is_excluded() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write_fail(2, 2, 2, 3)
            .read(3, Some(1), 4, 5);
        assert_eq!(verdict(&h), Verdict::Valid);
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write_fail(2, 2, 2, 3)
            .read(3, Some(2), 4, 5);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["ops"]["failed_dropped"], 1);
    }

    #[test]
    fn pending_invoke_at_end_counts_as_info() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .write_pending(2, 2, 2)
            .read(3, Some(2), 4, 5);
        assert_eq!(verdict(&h), Verdict::Valid);
        let mut h = Hist::new();
        h.write(1, 1, 0, 1)
            .read(3, Some(2), 2, 3)
            .write_pending(2, 2, 4);
        assert_eq!(verdict(&h), Verdict::Invalid);
    }

    #[test]
    fn uncertain_reads_are_ignored() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1).op(
            2,
            "read",
            Value::Null,
            2,
            crate::checker::testkit::End::Info(3),
        );
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.details["ops"]["uncertain_reads_dropped"], 1);
    }

    // ---- keys, budget, malformed ----

    #[test]
    fn keys_are_independent() {
        let mut h = Hist::new();
        h.key("a").write(1, 1, 0, 10);
        h.key("b").write(2, 2, 1, 11);
        h.key("a").read(3, Some(1), 12, 13);
        h.key("b").read(4, Some(2), 12, 13);
        assert_eq!(verdict(&h), Verdict::Valid);
        // Value 2 lives on key b: reading it on key a is a violation of a
        // only.
        h.key("a").read(3, Some(2), 14, 15);
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid);
        assert_eq!(r.details["invalid_keys"], json!(["a"]));
        assert_eq!(r.details["valid_keys"], 1);
    }

    #[test]
    fn exhausted_budget_is_unknown_never_valid() {
        let mut h = Hist::new();
        for i in 0..50u64 {
            h.write(i % 5, i as i64, 10 * i, 10 * i + 15).read(
                100 + i % 3,
                Some(i as i64),
                10 * i + 16,
                10 * i + 17,
            );
        }
        assert_eq!(verdict(&h), Verdict::Valid);
        let r = check_register(&h.build(), Duration::ZERO);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert_eq!(r.details["unknown_count"], 1);
        assert!(r.details["unknown_keys"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("budget"));
    }

    #[test]
    fn malformed_key_is_unknown() {
        let mut h = Hist::new();
        h.write(1, 1, 0, 1);
        let mut hist = h.build();
        let mut stray = hist[1].clone();
        stray.process = 42;
        hist.push(stray);
        let r = check_register(&hist, BUDGET);
        assert_eq!(r.verdict, Verdict::Unknown);
        assert_eq!(r.details["malformed_count"], 1);
    }

    #[test]
    fn non_integer_value_is_unknown() {
        let mut h = Hist::new();
        h.op(
            1,
            "write",
            json!("x"),
            0,
            crate::checker::testkit::End::Ok(json!("x"), 1),
        );
        assert_eq!(verdict(&h), Verdict::Unknown);
    }

    /// Reference semantics by exhaustion: some subset of the uncertain
    /// writes/cas happened, and some order of those plus the ok ops that
    /// respects real time (a before b if a returned before b was invoked)
    /// runs legally on a register.
    fn brute_force(hist: &[Op]) -> bool {
        let paired = pairs::pair(hist);
        let mut certain = Vec::new();
        let mut uncertain = Vec::new();
        for p in &paired.pairs {
            let v = &p.invoke.value;
            let step = match (p.invoke.f.as_str(), p.outcome()) {
                (_, Outcome::Fail) | ("read", Outcome::Info | Outcome::Pending) => continue,
                ("read", _) => Step::Read(read_value(p.result().unwrap()).unwrap()),
                ("write", _) => Step::Write(parse_state(v).unwrap()),
                _ => {
                    let (e, d) = (parse_state(&v[0]).unwrap(), parse_state(&v[1]).unwrap());
                    if p.outcome() == Outcome::Ok {
                        Step::Cas {
                            expected: e,
                            desired: d,
                        }
                    } else {
                        Step::CasMaybe {
                            expected: e,
                            desired: d,
                        }
                    }
                }
            };
            let ret = p.complete_time().filter(|_| p.outcome() == Outcome::Ok);
            let op = (p.invoke.time, ret.unwrap_or(u64::MAX), step);
            if ret.is_some() {
                certain.push(op);
            } else {
                uncertain.push(op);
            }
        }
        fn orders(ops: &[(u64, u64, Step)], used: &mut Vec<bool>, state: State) -> bool {
            if used.iter().all(|&u| u) {
                return true;
            }
            for i in 0..ops.len() {
                // `i` may go next if no unused op returned before it began.
                let blocked = (0..ops.len()).any(|j| !used[j] && j != i && ops[j].1 < ops[i].0);
                if used[i] || blocked {
                    continue;
                }
                if let Some(next) = ops[i].2.apply(state) {
                    used[i] = true;
                    let found = orders(ops, used, next);
                    used[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        (0..1u32 << uncertain.len()).any(|mask| {
            let mut ops = certain.clone();
            ops.extend(
                uncertain
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, o)| *o),
            );
            orders(&ops, &mut vec![false; ops.len()], None)
        })
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        use crate::checker::testkit::End;
        let mut rng = Rng(0x1234_5678);
        let (mut valid, mut invalid) = (0, 0);
        for round in 0..3000 {
            let mut h = Hist::new();
            let mut value = 0i64;
            let small = |rng: &mut Rng| match rng.below(4) {
                0 => None,
                n => Some(n as i64),
            };
            for process in 0..3u64 {
                let mut t = rng.below(4);
                for _ in 0..1 + rng.below(3) {
                    let t1 = t + 1 + rng.below(6);
                    let (f, arg) = match rng.below(3) {
                        0 => ("read", Value::Null),
                        1 => {
                            value += 1;
                            ("write", json!(value.min(3)))
                        }
                        _ => ("cas", json!([small(&mut rng), small(&mut rng)])),
                    };
                    let end = match rng.below(8) {
                        0 => End::Info(t1),
                        1 => End::Fail(t1),
                        2 => End::Pending,
                        _ if f == "read" => End::Ok(json!(small(&mut rng)), t1),
                        _ => End::Ok(arg.clone(), t1),
                    };
                    let last = matches!(end, End::Info(_) | End::Pending);
                    h.op(process, f, arg, t, end);
                    if last {
                        break;
                    }
                    t = t1 + rng.below(3);
                }
            }
            let hist = h.build();
            let expected = brute_force(&hist);
            let got = check_register(&hist, BUDGET).verdict;
            let want = if expected {
                Verdict::Valid
            } else {
                Verdict::Invalid
            };
            assert_eq!(
                got,
                want,
                "round {round}: {}",
                serde_json::to_string(&hist).unwrap()
            );
            if expected {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(
            valid > 300 && invalid > 300,
            "valid {valid}, invalid {invalid}"
        );
    }

    // ---- scale ----

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A linearizable history of `n` ops by `procs` concurrent clients: each
    /// op takes effect at a random instant inside its interval against a
    /// real register; some writes and cas end in `info` (some applied, some
    /// not) and their process is replaced, as the harness does.
    fn simulate(seed: u64, n: usize, procs: u64, info_one_in: u64) -> Hist {
        #[derive(Clone, Copy)]
        struct Flight {
            process: u64,
            start: u64,
            end: u64,
            kind: u8,
            arg: i64,
            expect: Option<i64>,
            info: bool,
        }
        let mut rng = Rng(seed);
        let mut h = Hist::new();
        let mut reg: Option<i64> = None;
        let mut next_process = procs;
        // Each process's next free time; ops are applied in effect order.
        let mut free: Vec<(u64, u64)> = (0..procs).map(|p| (p, rng.below(10))).collect();
        let mut effects: Vec<(u64, Flight)> = Vec::new();
        for arg in 1..=n as i64 {
            let slot = rng.below(procs) as usize;
            let (process, start) = free[slot];
            let end = start + 1 + rng.below(40);
            let kind = rng.below(3) as u8;
            let info = kind != 0 && rng.below(info_one_in) == 0;
            let expect = if rng.below(2) == 0 {
                Some(arg - 1 - rng.below(3) as i64)
            } else {
                None
            };
            let at = start + rng.below(end - start + 1);
            let f = Flight {
                process,
                start,
                end,
                kind,
                arg,
                expect,
                info,
            };
            // An info op may never take effect at all.
            if !(info && rng.below(2) == 0) {
                effects.push((at, f));
            } else {
                effects.push((u64::MAX, f));
            }
            free[slot] = if info {
                next_process += 1;
                (next_process, end + 1 + rng.below(5))
            } else {
                (process, end + 1 + rng.below(5))
            };
        }
        effects.sort_by_key(|&(at, _)| at);
        for (at, f) in effects {
            let applied = at != u64::MAX;
            match f.kind {
                0 => {
                    h.read(f.process, reg, f.start, f.end);
                }
                1 => {
                    if applied {
                        reg = Some(f.arg);
                    }
                    if f.info {
                        h.write_info(f.process, f.arg, f.start, f.end);
                    } else {
                        h.write(f.process, f.arg, f.start, f.end);
                    }
                }
                _ => {
                    let matched = applied && reg == f.expect;
                    if matched {
                        reg = Some(f.arg);
                    }
                    if f.info {
                        h.cas_info(f.process, f.expect, f.arg, f.start, f.end);
                    } else if matched {
                        h.cas(f.process, f.expect, f.arg, f.start, f.end);
                    } else {
                        h.cas_fail(f.process, f.expect, f.arg, f.start, f.end);
                    }
                }
            }
        }
        h
    }

    #[test]
    fn thousands_of_concurrent_ops_check_quickly() {
        for seed in [1, 2, 3] {
            let h = simulate(seed, 3000, 10, 50);
            let t = Instant::now();
            let r = check(&h);
            assert_eq!(r.verdict, Verdict::Valid, "seed {seed}: {}", r.details);
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "seed {seed}: {:?}",
                t.elapsed()
            );
        }
    }

    #[test]
    fn a_single_bad_read_in_thousands_of_ops_is_found() {
        let mut h = simulate(7, 3000, 10, 50);
        // Late in the run, a read returns the first acknowledged write's
        // value, long overwritten.
        let first = h
            .build()
            .into_iter()
            .find(|o| o.f == "write" && o.kind == crate::history::OpType::Ok)
            .and_then(|o| o.value.as_i64());
        h.read(999, first, 1_000_000, 1_000_001);
        let t = Instant::now();
        let r = check(&h);
        assert_eq!(r.verdict, Verdict::Invalid, "{}", r.details);
        assert_eq!(r.details["failures"][0]["op"]["process"], 999);
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
