//! The human-facing report of a run: `latency.svg`, `throughput.svg` and an
//! `index.html` that embeds them next to the verdicts, the nemesis
//! timeline, op counts, latency percentiles and links to the raw files.
//!
//! Everything is hand-written SVG/HTML: no plotting dependency, no
//! JavaScript, and the files render standalone in a browser or `rsvg`.

mod html;
mod svg;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::Context;

use crate::history::{NemesisEvent, Op, OpType};

/// Writes `latency.svg`, `throughput.svg` and `index.html` into `dir`
/// (which must exist). `results` is the content of `results.json`; any
/// shape is rendered, `{"valid": .., "checks": [..]}` best. Node logs are
/// linked if `*.log` files are in `dir` when this is called.
pub fn write_report(
    dir: &Path,
    title: &str,
    history: &[Op],
    nemesis: &[NemesisEvent],
    results: &serde_json::Value,
) -> anyhow::Result<()> {
    let a = Analysis::new(history, nemesis);
    let write = |name: &str, body: String| -> anyhow::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))
    };
    write("latency.svg", svg::latency(title, &a))?;
    write("throughput.svg", svg::throughput(title, &a))?;
    let logs = html::log_files(dir);
    write("index.html", html::page(title, &a, nemesis, results, &logs))?;
    Ok(())
}

/// An operation that completed: its invoke paired with its completion.
pub(crate) struct Completed<'a> {
    pub f: &'a str,
    pub kind: OpType,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub error: Option<&'a str>,
}

impl Completed<'_> {
    pub fn latency_ns(&self) -> u64 {
        self.complete_ns.saturating_sub(self.invoke_ns)
    }
}

/// A fault from its `start` to its `stop` (`None`: never healed, or healed
/// after the end of the record).
pub(crate) struct FaultWindow {
    pub fault: String,
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    pub detail: String,
}

/// What the charts and tables need, computed once.
pub(crate) struct Analysis<'a> {
    pub completed: Vec<Completed<'a>>,
    /// Invokes that never got a completion.
    pub pending: Vec<&'a Op>,
    /// Distinct `f`s, sorted.
    pub fs: Vec<String>,
    /// Distinct fault names, sorted.
    pub faults: Vec<String>,
    pub windows: Vec<FaultWindow>,
    /// Time of the last event of history or nemesis.
    pub end_ns: u64,
    /// Right end of the time axes, whole seconds, at least 1.
    pub t_max_s: f64,
    pub processes: usize,
    pub nodes: BTreeSet<u32>,
}

impl<'a> Analysis<'a> {
    pub fn new(history: &'a [Op], nemesis: &[NemesisEvent]) -> Self {
        let mut open: HashMap<u64, &'a Op> = HashMap::new();
        let mut completed = Vec::new();
        let mut fs = BTreeSet::new();
        let mut processes = BTreeSet::new();
        let mut nodes = BTreeSet::new();
        for op in history {
            fs.insert(op.f.clone());
            processes.insert(op.process);
            nodes.insert(op.node);
            if op.kind == OpType::Invoke {
                open.insert(op.process, op);
            } else if let Some(inv) = open.remove(&op.process) {
                completed.push(Completed {
                    f: &inv.f,
                    kind: op.kind,
                    invoke_ns: inv.time,
                    complete_ns: op.time.max(inv.time),
                    error: op.error.as_deref(),
                });
            }
        }
        let mut pending: Vec<&Op> = open.into_values().collect();
        pending.sort_by_key(|op| (op.time, op.process));

        let end_ns = history
            .iter()
            .map(|o| o.time)
            .chain(nemesis.iter().map(|e| e.time))
            .max()
            .unwrap_or(0);
        let t_max_s = ((end_ns as f64) / 1e9).ceil().max(1.0);

        let windows = fault_windows(nemesis);
        let faults: BTreeSet<String> = nemesis.iter().map(|e| e.fault.clone()).collect();
        Analysis {
            completed,
            pending,
            fs: fs.into_iter().collect(),
            faults: faults.into_iter().collect(),
            windows,
            end_ns,
            t_max_s,
            processes: processes.len(),
            nodes,
        }
    }

    pub fn fault_index(&self, fault: &str) -> usize {
        self.faults.iter().position(|x| x == fault).unwrap_or(0)
    }

    /// Latencies (ns, sorted) of `ok` ops per `f`.
    pub fn ok_latencies(&self) -> BTreeMap<&str, Vec<u64>> {
        let mut m: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for c in self.completed.iter().filter(|c| c.kind == OpType::Ok) {
            m.entry(c.f).or_default().push(c.latency_ns());
        }
        for v in m.values_mut() {
            v.sort_unstable();
        }
        m
    }
}

/// Pairs each `start` with the next `stop` of the same fault name (FIFO).
/// A `start` never stopped runs to the end; a `stop` never started is
/// taken to have started at time 0.
fn fault_windows(nemesis: &[NemesisEvent]) -> Vec<FaultWindow> {
    let mut events: Vec<&NemesisEvent> = nemesis.iter().collect();
    events.sort_by_key(|e| e.time);
    let mut open: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut out: Vec<FaultWindow> = Vec::new();
    for e in events {
        match e.phase.to_ascii_lowercase().as_str() {
            "start" => {
                open.entry(&e.fault).or_default().push(out.len());
                out.push(FaultWindow {
                    fault: e.fault.clone(),
                    start_ns: e.time,
                    end_ns: None,
                    detail: e.detail.clone(),
                });
            }
            "stop" => {
                let q = open.entry(&e.fault).or_default();
                if q.is_empty() {
                    out.push(FaultWindow {
                        fault: e.fault.clone(),
                        start_ns: 0,
                        end_ns: Some(e.time),
                        detail: e.detail.clone(),
                    });
                } else {
                    let i = q.remove(0);
                    out[i].end_ns = Some(e.time);
                }
            }
            _ => {}
        }
    }
    out
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Escapes text for XML/HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A duration in nanoseconds for humans: `850 µs`, `12.3 ms`, `1.52 s`.
pub(crate) fn fmt_dur_ns(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms < 1.0 {
        format!("{:.0} µs", ns as f64 / 1e3)
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

pub(crate) fn kind_name(k: OpType) -> &'static str {
    match k {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    }
}

/// Completion kinds in legend order, with their colours.
pub(crate) const KINDS: [(OpType, &str); 3] = [
    (OpType::Ok, "#2ca02c"),
    (OpType::Fail, "#d62728"),
    (OpType::Info, "#ff7f0e"),
];

/// Fault band colours, by index of the fault name.
pub(crate) const FAULT_COLORS: [&str; 8] = [
    "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#393b79",
];

pub(crate) fn fault_color(i: usize) -> &'static str {
    FAULT_COLORS[i % FAULT_COLORS.len()]
}

#[cfg(test)]
mod tests;
