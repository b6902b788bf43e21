//! `index.html`: verdicts first, then the charts, the nemesis timeline, op
//! counts, latency percentiles, errors and links to the raw files.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use super::{esc, fault_color, fmt_dur_ns, kind_name, percentile, Analysis, KINDS};
use crate::history::{NemesisEvent, OpType};

/// `*.log` files in `dir` with their sizes, in natural order (n2 < n10).
pub(crate) fn log_files(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            (meta.is_file() && name.ends_with(".log")).then_some((name, meta.len()))
        })
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    out
}

/// Compares strings with runs of digits compared as numbers.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut v = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                v.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        v
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len()).then_with(|| a.cmp(b))
}

fn fmt_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// A verdict from whatever a checker wrote: `"valid"`, `true`, `"invalid"`…
fn verdict(v: Option<&Value>) -> (&'static str, String) {
    let text = match v {
        None | Some(Value::Null) => return ("none", "no verdict".into()),
        Some(Value::Bool(true)) => "valid".to_string(),
        Some(Value::Bool(false)) => "invalid".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let class = match text.to_ascii_lowercase().as_str() {
        "valid" | "true" | "ok" | "pass" | "passed" => "valid",
        "invalid" | "false" | "fail" | "failed" => "invalid",
        "unknown" | "aborted" | "error" => "unknown",
        _ => "none",
    };
    (class, text)
}

fn badge(v: Option<&Value>, big: bool) -> String {
    let (class, text) = verdict(v);
    format!(
        "<span class=\"badge {class}{}\">{}</span>",
        if big { " big" } else { "" },
        esc(&text)
    )
}

/// Any JSON value as compact HTML: scalars inline, small structures as
/// code, big ones folded.
fn json_html(v: &Value) -> String {
    match v {
        Value::Null => "<span class=\"muted\">—</span>".into(),
        Value::String(s) if s.contains('\n') || s.chars().count() > 200 => {
            let first: String = s.lines().next().unwrap_or("").chars().take(100).collect();
            format!(
                "<details><summary>{}…</summary><pre>{}</pre></details>",
                esc(&first),
                esc(s)
            )
        }
        Value::String(s) => esc(s),
        Value::Bool(_) | Value::Number(_) => esc(&v.to_string()),
        _ => {
            let compact = v.to_string();
            if compact.chars().count() <= 120 {
                format!("<code>{}</code>", esc(&compact))
            } else {
                let preview: String = compact.chars().take(100).collect();
                let pretty = serde_json::to_string_pretty(v).unwrap_or(compact);
                format!(
                    "<details><summary><code>{}…</code></summary><pre>{}</pre></details>",
                    esc(&preview),
                    esc(&pretty)
                )
            }
        }
    }
}

const CSS: &str = r#"
:root { --ok:#2ca02c; --fail:#d62728; --info:#ff7f0e; --muted:#777; }
* { box-sizing: border-box; }
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color:#222;
       background:#f6f7f9; margin:0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 20px 60px; }
header.top { display:flex; align-items:center; gap:20px; flex-wrap:wrap; margin-bottom: 8px; }
h1 { margin: 0; font-size: 26px; }
h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.summary { color: var(--muted); margin: 4px 0 16px; }
.summary b { color:#222; }
.card { background:#fff; border:1px solid #e2e4e8; border-radius:8px; padding:14px 16px; margin: 12px 0; }
.badge { display:inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 700;
         font-size: 13px; color:#fff; background:#888; text-transform: uppercase; letter-spacing:.03em; }
.badge.big { font-size: 20px; padding: 6px 18px; }
.badge.valid { background: #1e8e3e; }
.badge.invalid { background: #c5221f; }
.badge.unknown { background: #e37400; }
.badge.none { background: #80868b; }
.pill { display:inline-block; padding: 0 8px; border-radius: 4px; font-size: 12px; font-weight:600; }
.pill.start { background:#fde7e7; color:#a31515; }
.pill.stop { background:#e6f4ea; color:#1e6e34; }
.swatch { display:inline-block; width:11px; height:11px; border-radius:2px; margin-right:6px; vertical-align:-1px; }
table { border-collapse: collapse; width: 100%; background:#fff; font-size: 14px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eceef1; vertical-align: top; }
th { background:#f0f2f5; font-weight:600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 700; border-top: 2px solid #d5d8dc; }
.card table th { width: 220px; }
.scroll { max-height: 420px; overflow: auto; border:1px solid #e2e4e8; border-radius:8px; }
.scroll table th { position: sticky; top: 0; }
.charts img { width: 100%; height: auto; display:block; background:#fff; border:1px solid #e2e4e8;
              border-radius:8px; margin: 12px 0; }
.muted { color: var(--muted); }
.ok { color: var(--ok); } .fail { color: var(--fail); } .info { color: var(--info); }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; background:#f6f8fa; padding:8px; border-radius:6px;
      max-height: 400px; overflow:auto; }
details summary { cursor: pointer; }
ul.files { list-style: none; padding: 0; display:flex; flex-wrap: wrap; gap: 8px; }
ul.files li a { display:inline-block; padding: 6px 12px; background:#fff; border:1px solid #d5d8dc;
                border-radius:6px; text-decoration:none; color:#1a56b0; }
ul.files li a:hover { background:#eef3fb; }
"#;

pub(crate) fn page(
    title: &str,
    a: &Analysis,
    nemesis: &[NemesisEvent],
    results: &Value,
    logs: &[(String, u64)],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        t = esc(title)
    );

    // Headline: title and overall verdict.
    let _ = writeln!(
        s,
        "<header class=\"top\"><h1>{}</h1>{}</header>",
        esc(title),
        badge(results.get("valid"), true)
    );
    let invokes = a.completed.len() + a.pending.len();
    let _ = writeln!(
        s,
        "<p class=\"summary\"><b>{}</b> run · <b>{invokes}</b> operations by <b>{}</b> processes on <b>{}</b> nodes · \
         <b>{}</b> fault windows</p>",
        esc(&fmt_dur_ns(a.end_ns)),
        a.processes,
        a.nodes.len(),
        a.windows.len()
    );

    checks_section(&mut s, results);

    s.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n");
    s.push_str("<a href=\"latency.svg\"><img src=\"latency.svg\" alt=\"latency over time\"></a>\n");
    s.push_str(
        "<a href=\"throughput.svg\"><img src=\"throughput.svg\" alt=\"throughput over time\"></a>\n",
    );
    s.push_str("</div>\n");

    faults_section(&mut s, a, nemesis);
    ops_section(&mut s, a);
    latency_section(&mut s, a);
    errors_section(&mut s, a);

    s.push_str("<h2>Files</h2>\n<ul class=\"files\">\n");
    for (name, what) in [
        ("history.jsonl", "history"),
        ("nemesis.jsonl", "nemesis"),
        ("results.json", "results"),
        ("latency.svg", "latency chart"),
        ("throughput.svg", "throughput chart"),
    ] {
        let _ = writeln!(
            s,
            "<li><a href=\"{n}\">{n}</a> <span class=\"muted\">{what}</span></li>",
            n = esc(name)
        );
    }
    for (name, size) in logs {
        let _ = writeln!(
            s,
            "<li><a href=\"{n}\">{n}</a> <span class=\"muted\">{}</span></li>",
            fmt_bytes(*size),
            n = esc(name)
        );
    }
    s.push_str("</ul>\n");
    if logs.is_empty() {
        s.push_str("<p class=\"muted\">No node logs (*.log) were present when this report was written.</p>\n");
    }
    s.push_str("</main>\n</body>\n</html>\n");
    s
}

fn checks_section(s: &mut String, results: &Value) {
    s.push_str("<h2>Verdicts</h2>\n");
    let Some(obj) = results.as_object() else {
        if results.is_null() {
            s.push_str("<p class=\"muted\">No results.</p>\n");
        } else {
            let _ = writeln!(s, "<div class=\"card\">{}</div>", json_html(results));
        }
        return;
    };

    // `checks` as an array of {name, verdict|valid, details} or as a map
    // name -> {...}.
    let checks: Vec<(String, &Value)> = match obj.get("checks") {
        Some(Value::Array(v)) => v
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = c
                    .get("name")
                    .and_then(|n| n.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("check {}", i + 1));
                (name, c)
            })
            .collect(),
        Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        _ => Vec::new(),
    };
    if !checks.is_empty() {
        s.push_str("<table>\n<tr><th>check</th><th>verdict</th><th>details</th></tr>\n");
        for (name, c) in &checks {
            let v = c.get("verdict").or_else(|| c.get("valid"));
            let details = match c {
                Value::Object(m) => {
                    let rest: Vec<_> = m
                        .iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "name" | "verdict" | "valid"))
                        .collect();
                    match rest.as_slice() {
                        [] => String::new(),
                        [(k, v)] if k.as_str() == "details" => json_html(v),
                        _ => rest
                            .iter()
                            .map(|(k, v)| {
                                if k.as_str() == "details" {
                                    json_html(v)
                                } else {
                                    format!("<b>{}</b>: {}", esc(k), json_html(v))
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("<br>"),
                    }
                }
                other => json_html(other),
            };
            let _ = writeln!(
                s,
                "<tr><td><b>{}</b></td><td>{}</td><td>{details}</td></tr>",
                esc(name),
                badge(v, false)
            );
        }
        s.push_str("</table>\n");
    } else if obj.get("checks").is_none() {
        s.push_str("<p class=\"muted\">No individual checks reported.</p>\n");
    }

    let others: Vec<_> = obj
        .iter()
        .filter(|(k, v)| {
            k.as_str() != "valid"
                && !(k.as_str() == "checks"
                    && (v.is_array() || v.is_object())
                    && !checks.is_empty())
        })
        .collect();
    if !others.is_empty() {
        s.push_str("<div class=\"card\"><table>\n");
        for (k, v) in others {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), json_html(v));
        }
        s.push_str("</table></div>\n");
    }
}

fn faults_section(s: &mut String, a: &Analysis, nemesis: &[NemesisEvent]) {
    s.push_str("<h2>Faults</h2>\n");
    if nemesis.is_empty() {
        s.push_str("<p class=\"muted\">No nemesis events: this run injected no faults.</p>\n");
        return;
    }
    // Per fault: how many windows and how long in total.
    s.push_str("<table>\n<tr><th>fault</th><th class=\"num\">windows</th><th class=\"num\">total time (s)</th><th class=\"num\">share of run</th></tr>\n");
    for (i, name) in a.faults.iter().enumerate() {
        let ws: Vec<_> = a.windows.iter().filter(|w| &w.fault == name).collect();
        let total: u64 = ws
            .iter()
            .map(|w| w.end_ns.unwrap_or(a.end_ns).saturating_sub(w.start_ns))
            .sum();
        let share = if a.end_ns > 0 {
            format!("{:.0}%", 100.0 * total as f64 / a.end_ns as f64)
        } else {
            "—".into()
        };
        let _ = writeln!(
            s,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{share}</td></tr>",
            fault_color(i),
            esc(name),
            ws.len(),
            secs(total)
        );
    }
    s.push_str("</table>\n");

    let mut events: Vec<&NemesisEvent> = nemesis.iter().collect();
    events.sort_by_key(|e| e.time);
    let _ = writeln!(s, "<h3>Nemesis events ({})</h3>", events.len());
    s.push_str("<div class=\"scroll\"><table>\n<tr><th class=\"num\">time (s)</th><th>phase</th><th>fault</th><th>detail</th></tr>\n");
    for e in events {
        let phase = e.phase.to_ascii_lowercase();
        let class = match phase.as_str() {
            "start" | "stop" => phase.as_str(),
            _ => "",
        };
        let _ = writeln!(
            s,
            "<tr><td class=\"num\">{}</td><td><span class=\"pill {class}\">{}</span></td>\
             <td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td></tr>",
            secs(e.time),
            esc(&e.phase),
            fault_color(a.fault_index(&e.fault)),
            esc(&e.fault),
            esc(&e.detail)
        );
    }
    s.push_str("</table></div>\n");
}

fn ops_section(s: &mut String, a: &Analysis) {
    s.push_str("<h2>Operations</h2>\n");
    if a.fs.is_empty() {
        s.push_str("<p class=\"muted\">The history is empty.</p>\n");
        return;
    }
    // f -> [ok, fail, info, never completed]
    let mut counts: BTreeMap<&str, [usize; 4]> =
        a.fs.iter().map(|f| (f.as_str(), [0; 4])).collect();
    for c in &a.completed {
        if let (Some(row), Some(k)) = (
            counts.get_mut(c.f),
            KINDS.iter().position(|(k, _)| *k == c.kind),
        ) {
            row[k] += 1;
        }
    }
    for op in &a.pending {
        if let Some(row) = counts.get_mut(op.f.as_str()) {
            row[3] += 1;
        }
    }
    s.push_str(
        "<table>\n<tr><th>f</th><th class=\"num\">invoked</th><th class=\"num ok\">ok</th>\
                <th class=\"num fail\">fail</th><th class=\"num info\">info</th>\
                <th class=\"num\">never completed</th><th class=\"num\">ok rate</th></tr>\n",
    );
    let row = |s: &mut String, name: &str, r: &[usize; 4], class: &str| {
        let invoked: usize = r.iter().sum();
        let rate = if invoked > 0 {
            format!("{:.1}%", 100.0 * r[0] as f64 / invoked as f64)
        } else {
            "—".into()
        };
        let _ = writeln!(
            s,
            "<tr class=\"{class}\"><td>{}</td><td class=\"num\">{invoked}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{rate}</td></tr>",
            esc(name),
            r[0],
            r[1],
            r[2],
            r[3]
        );
    };
    let mut total = [0usize; 4];
    for (f, r) in &counts {
        row(s, f, r, "");
        for i in 0..4 {
            total[i] += r[i];
        }
    }
    if counts.len() > 1 {
        row(s, "all", &total, "total");
    }
    s.push_str("</table>\n");
}

fn latency_section(s: &mut String, a: &Analysis) {
    s.push_str("<h2>Latency of ok operations</h2>\n");
    let lat = a.ok_latencies();
    if lat.is_empty() {
        s.push_str("<p class=\"muted\">No operation completed ok.</p>\n");
        return;
    }
    s.push_str("<table>\n<tr><th>f</th><th class=\"num\">count</th><th class=\"num\">p50</th>\
                <th class=\"num\">p90</th><th class=\"num\">p99</th><th class=\"num\">max</th></tr>\n");
    let row = |s: &mut String, name: &str, v: &[u64], class: &str| {
        let p = |q: f64| {
            percentile(v, q)
                .map(fmt_dur_ns)
                .unwrap_or_else(|| "—".into())
        };
        let _ = writeln!(
            s,
            "<tr class=\"{class}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(name),
            v.len(),
            p(50.0),
            p(90.0),
            p(99.0),
            p(100.0)
        );
    };
    for (f, v) in &lat {
        row(s, f, v, "");
    }
    if lat.len() > 1 {
        let mut all: Vec<u64> = lat.values().flatten().copied().collect();
        all.sort_unstable();
        row(s, "all", &all, "total");
    }
    s.push_str("</table>\n");
}

fn errors_section(s: &mut String, a: &Analysis) {
    let mut errs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in &a.completed {
        if c.kind == OpType::Ok {
            continue;
        }
        *errs
            .entry((kind_name(c.kind), c.error.unwrap_or("(no error given)")))
            .or_default() += 1;
    }
    if errs.is_empty() {
        return;
    }
    let mut v: Vec<_> = errs.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let shown = v.len().min(25);
    s.push_str("<h2>Errors</h2>\n<table>\n<tr><th>kind</th><th>error</th><th class=\"num\">count</th></tr>\n");
    for ((kind, err), n) in &v[..shown] {
        let _ = writeln!(
            s,
            "<tr><td class=\"{kind}\"><b>{kind}</b></td><td><code>{}</code></td><td class=\"num\">{n}</td></tr>",
            esc(err)
        );
    }
    s.push_str("</table>\n");
    if v.len() > shown {
        let _ = writeln!(
            s,
            "<p class=\"muted\">… and {} rarer errors.</p>",
            v.len() - shown
        );
    }
}
