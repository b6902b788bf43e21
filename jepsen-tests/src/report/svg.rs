//! Hand-written SVG charts: latency scatter (log y) and throughput steps,
//! both over run time with the nemesis windows shaded.

use std::collections::HashSet;
use std::fmt::Write;

use super::{esc, fault_color, kind_name, Analysis, KINDS};

const W: f64 = 1000.0;
const H: f64 = 500.0;
const ML: f64 = 76.0;
const MR: f64 = 190.0;
const MT: f64 = 58.0;
const MB: f64 = 52.0;
const GRID: &str = "#e3e3e3";
const GRID_MINOR: &str = "#f3f3f3";
const AXIS: &str = "#444";

/// Plot area geometry and the shared time axis.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    t_max: f64,
}

impl Frame {
    fn new(t_max: f64) -> Self {
        Frame {
            x0: ML,
            x1: W - MR,
            y0: MT,
            y1: H - MB,
            t_max,
        }
    }

    /// Seconds to x pixel.
    fn x(&self, t: f64) -> f64 {
        let r = if self.t_max > 0.0 {
            t / self.t_max
        } else {
            0.0
        };
        fin(self.x0 + r.clamp(0.0, 1.0) * (self.x1 - self.x0))
    }
}

/// Never let a NaN or infinity reach the output.
fn fin(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

fn header(s: &mut String, title: &str, f: &Frame) {
    let _ = write!(
        s,
        concat!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" ",
            "viewBox=\"0 0 {w} {h}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n",
            "<title>{t}</title>\n",
            "<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n",
            "<defs><clipPath id=\"plot\"><rect x=\"{x}\" y=\"{y}\" width=\"{pw}\" height=\"{ph}\"/></clipPath></defs>\n",
            "<text x=\"{cx}\" y=\"28\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\" fill=\"#222\">{t}</text>\n",
        ),
        w = W,
        h = H,
        t = esc(title),
        x = f.x0,
        y = f.y0,
        pw = f.x1 - f.x0,
        ph = f.y1 - f.y0,
        cx = (f.x0 + f.x1) / 2.0,
    );
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` ticks.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()).max(0.0) as usize
    };
    format!("{:.*}", decimals, v)
}

/// Vertical grid lines, x ticks and labels, and the x axis title.
fn time_axis(s: &mut String, f: &Frame) {
    let step = nice_step(f.t_max, 10.0);
    let mut t = 0.0;
    let mut i = 0;
    while t <= f.t_max + step * 1e-6 && i < 1000 {
        let x = f.x(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"{GRID}\"/>\
             <line x1=\"{x:.1}\" y1=\"{y1:.1}\" x2=\"{x:.1}\" y2=\"{y2:.1}\" stroke=\"{AXIS}\"/>\
             <text x=\"{x:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" fill=\"{AXIS}\">{l}</text>",
            y0 = f.y0,
            y1 = f.y1,
            y2 = f.y1 + 5.0,
            ty = f.y1 + 18.0,
            l = fmt_tick(t, step),
        );
        i += 1;
        t = step * i as f64;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222\">time since start (s)</text>",
        (f.x0 + f.x1) / 2.0,
        H - 12.0
    );
}

fn y_title(s: &mut String, f: &Frame, label: &str) {
    let cy = (f.y0 + f.y1) / 2.0;
    let _ = writeln!(
        s,
        "<text x=\"18\" y=\"{cy:.1}\" text-anchor=\"middle\" fill=\"#222\" transform=\"rotate(-90 18 {cy:.1})\">{}</text>",
        esc(label)
    );
}

fn plot_border(s: &mut String, f: &Frame) {
    let _ = writeln!(
        s,
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"{AXIS}\"/>",
        f.x0,
        f.y0,
        f.x1 - f.x0,
        f.y1 - f.y0
    );
}

/// Translucent bands for the fault windows, labeled with the fault name.
fn fault_bands(s: &mut String, f: &Frame, a: &Analysis) {
    if a.windows.is_empty() {
        return;
    }
    s.push_str("<g class=\"faults\">\n");
    for w in &a.windows {
        let color = fault_color(a.fault_index(&w.fault));
        let xa = f.x(w.start_ns as f64 / 1e9);
        let xb = match w.end_ns {
            Some(e) => f.x(e as f64 / 1e9),
            None => f.x1,
        };
        let width = (xb - xa).max(1.0);
        let end = match w.end_ns {
            Some(e) => format!("{:.3} s", e as f64 / 1e9),
            None => "end".to_string(),
        };
        let _ = writeln!(
            s,
            "<rect class=\"fault\" x=\"{xa:.1}\" y=\"{y0:.1}\" width=\"{width:.1}\" height=\"{h:.1}\" \
             fill=\"{color}\" fill-opacity=\"0.13\"><title>{name} {st:.3} s – {end}: {detail}</title></rect>\
             <line x1=\"{xa:.1}\" y1=\"{y0:.1}\" x2=\"{xa:.1}\" y2=\"{y1:.1}\" stroke=\"{color}\" stroke-opacity=\"0.5\"/>",
            y0 = f.y0,
            y1 = f.y1,
            h = f.y1 - f.y0,
            name = esc(&w.fault),
            st = w.start_ns as f64 / 1e9,
            detail = esc(&w.detail),
        );
        if w.end_ns.is_some() {
            let _ = writeln!(
                s,
                "<line x1=\"{xb:.1}\" y1=\"{:.1}\" x2=\"{xb:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-opacity=\"0.5\" stroke-dasharray=\"3 3\"/>",
                f.y0, f.y1
            );
        }
    }
    // Labels on top of the bands, one lane per fault name so that
    // overlapping windows of different faults stay readable.
    s.push_str("<g clip-path=\"url(#plot)\" font-size=\"11\" font-weight=\"bold\">\n");
    for w in &a.windows {
        let i = a.fault_index(&w.fault);
        let x = f.x(w.start_ns as f64 / 1e9) + 3.0;
        let y = f.y0 + 13.0 + (i % 6) as f64 * 13.0;
        let _ = writeln!(
            s,
            "<text class=\"fault-label\" x=\"{x:.1}\" y=\"{y:.1}\" fill=\"{}\" stroke=\"#ffffff\" stroke-width=\"3\" \
             stroke-opacity=\"0.8\" paint-order=\"stroke\">{}</text>",
            fault_color(i),
            esc(&w.fault)
        );
    }
    s.push_str("</g>\n</g>\n");
}

/// Marker shapes by index of `f`: filled, then hollow, circle / square /
/// triangle / diamond.
fn marker(shape: usize, cx: f64, cy: f64) -> String {
    match shape % 4 {
        0 => format!("<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"2.8\"/>"),
        1 => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"5\" height=\"5\"/>",
            cx - 2.5,
            cy - 2.5
        ),
        2 => format!("<path d=\"M{cx:.1} {:.1}l3.2 5.6h-6.4z\"/>", cy - 3.4),
        _ => format!(
            "<path d=\"M{cx:.1} {:.1}l3.4 3.4-3.4 3.4-3.4-3.4z\"/>",
            cy - 3.4
        ),
    }
}

fn marker_style(shape: usize, color: &str) -> String {
    if shape & 4 == 0 {
        format!("fill=\"{color}\" fill-opacity=\"0.7\"")
    } else {
        format!("fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\" stroke-opacity=\"0.85\"")
    }
}

/// Legend entries, drawn right of the plot.
enum Entry<'s> {
    Heading(&'s str),
    Marker {
        shape: usize,
        color: &'s str,
        label: String,
    },
    Line {
        color: &'s str,
        label: String,
    },
    Band {
        color: &'s str,
        label: String,
    },
}

fn legend(s: &mut String, f: &Frame, entries: &[Entry]) {
    let x = f.x1 + 18.0;
    let mut y = f.y0 + 4.0;
    s.push_str("<g class=\"legend\">\n");
    for e in entries {
        if y > H - 10.0 {
            break;
        }
        match e {
            Entry::Heading(h) => {
                y += 8.0;
                let _ = writeln!(
                    s,
                    "<text x=\"{x:.1}\" y=\"{y:.1}\" font-weight=\"bold\" fill=\"#222\">{}</text>",
                    esc(h)
                );
            }
            Entry::Marker {
                shape,
                color,
                label,
            } => {
                let _ = writeln!(
                    s,
                    "<g {}>{}</g><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{}</text>",
                    marker_style(*shape, color),
                    marker(*shape, x + 7.0, y - 4.0),
                    x + 20.0,
                    y,
                    esc(label)
                );
            }
            Entry::Line { color, label } => {
                let _ = writeln!(
                    s,
                    "<line x1=\"{x:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2.2\"/>\
                     <text x=\"{:.1}\" y=\"{y:.1}\" fill=\"#222\">{}</text>",
                    x + 14.0,
                    x + 20.0,
                    esc(label),
                    ly = y - 4.0,
                );
            }
            Entry::Band { color, label } => {
                let _ = writeln!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"11\" fill=\"{color}\" fill-opacity=\"0.22\" \
                     stroke=\"{color}\" stroke-opacity=\"0.6\"/><text x=\"{:.1}\" y=\"{y:.1}\" fill=\"#222\">{}</text>",
                    y - 10.0,
                    x + 20.0,
                    esc(label)
                );
            }
        }
        y += 17.0;
    }
    s.push_str("</g>\n");
}

fn fault_entries<'s>(a: &'s Analysis) -> Vec<Entry<'s>> {
    let mut v = Vec::new();
    if !a.faults.is_empty() {
        v.push(Entry::Heading("faults"));
        for (i, name) in a.faults.iter().enumerate() {
            let n = a.windows.iter().filter(|w| &w.fault == name).count();
            v.push(Entry::Band {
                color: fault_color(i),
                label: format!("{} ({n})", truncate(name, 18)),
            });
        }
    }
    v
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn empty_note(s: &mut String, f: &Frame, note: &str) {
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"15\" fill=\"#888\">{}</text>",
        (f.x0 + f.x1) / 2.0,
        (f.y0 + f.y1) / 2.0,
        esc(note)
    );
}

/// Latency label for a power of ten of milliseconds.
fn decade_label(k: i32) -> String {
    match k {
        k if k <= -4 => format!("1e{k} ms"),
        -3 => "1 µs".into(),
        -2 => "10 µs".into(),
        -1 => "100 µs".into(),
        0 => "1 ms".into(),
        1 => "10 ms".into(),
        2 => "100 ms".into(),
        3 => "1 s".into(),
        4 => "10 s".into(),
        5 => "100 s".into(),
        k => format!("1e{} s", k - 3),
    }
}

/// `latency.svg`: one point per completed op at its invoke time.
pub(crate) fn latency(title: &str, a: &Analysis) -> String {
    let f = Frame::new(a.t_max_s);
    let mut s = String::new();
    header(&mut s, &format!("{title} — latency"), &f);

    // Log-scale y in ms, whole decades; latencies under 1 µs sit on the floor.
    let ms: Vec<f64> = a
        .completed
        .iter()
        .map(|c| (c.latency_ns() as f64 / 1e6).max(1e-3))
        .collect();
    let (lo, hi) = if ms.is_empty() {
        (0, 3)
    } else {
        let mn = ms.iter().cloned().fold(f64::INFINITY, f64::min);
        let mx = ms.iter().cloned().fold(0.0, f64::max);
        let lo = mn.log10().floor() as i32;
        let hi = (mx.log10().ceil() as i32).max(lo + 1);
        (lo, hi)
    };
    let y_of = |v: f64| -> f64 {
        let r = (v.max(1e-3).log10() - lo as f64) / (hi - lo) as f64;
        fin(f.y1 - r.clamp(0.0, 1.0) * (f.y1 - f.y0))
    };

    // Grid: decades and their 2..9 multiples.
    for k in lo..=hi {
        let base = 10f64.powi(k);
        if k < hi {
            for m in 2..10 {
                let y = y_of(base * m as f64);
                let _ = write!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{GRID_MINOR}\"/>",
                    f.x0, f.x1
                );
            }
        }
        let y = y_of(base);
        let _ = writeln!(
            s,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"{GRID}\"/>\
             <line x1=\"{xt:.1}\" y1=\"{y:.1}\" x2=\"{x0:.1}\" y2=\"{y:.1}\" stroke=\"{AXIS}\"/>\
             <text x=\"{xl:.1}\" y=\"{yl:.1}\" text-anchor=\"end\" fill=\"{AXIS}\">{}</text>",
            decade_label(k),
            x0 = f.x0,
            x1 = f.x1,
            xt = f.x0 - 5.0,
            xl = f.x0 - 8.0,
            yl = y + 4.0,
        );
    }
    time_axis(&mut s, &f);
    y_title(&mut s, &f, "latency (log scale)");
    fault_bands(&mut s, &f, a);

    // Points, grouped by (kind, f); ok underneath so failures stay visible.
    // Points landing on the same pixel as an earlier one of the same series
    // are dropped: invisible anyway, and it bounds the file size.
    let mut seen: HashSet<(usize, usize, i32, i32)> = HashSet::new();
    s.push_str("<g class=\"points\" clip-path=\"url(#plot)\">\n");
    for (ki, (kind, color)) in KINDS.iter().enumerate() {
        for (fi, fname) in a.fs.iter().enumerate() {
            let mut pts = String::new();
            for (c, v) in a.completed.iter().zip(&ms) {
                if c.kind != *kind || c.f != fname.as_str() {
                    continue;
                }
                let x = f.x(c.invoke_ns as f64 / 1e9);
                let y = y_of(*v);
                if seen.insert((ki, fi, (x * 2.0) as i32, (y * 2.0) as i32)) {
                    pts.push_str(&marker(fi, x, y));
                }
            }
            if !pts.is_empty() {
                let _ = writeln!(
                    s,
                    "<g class=\"series\" data-kind=\"{}\" data-f=\"{}\" {}>{pts}</g>",
                    kind_name(*kind),
                    esc(fname),
                    marker_style(fi, color)
                );
            }
        }
    }
    s.push_str("</g>\n");
    if a.completed.is_empty() {
        empty_note(&mut s, &f, "no completed operations");
    }
    plot_border(&mut s, &f);

    let mut entries = Vec::new();
    let present: Vec<_> = KINDS
        .iter()
        .filter(|(k, _)| a.completed.iter().any(|c| c.kind == *k))
        .collect();
    if !present.is_empty() {
        entries.push(Entry::Heading("completion"));
        for (k, color) in present {
            let n = a.completed.iter().filter(|c| c.kind == *k).count();
            entries.push(Entry::Marker {
                shape: 0,
                color,
                label: format!("{} ({n})", kind_name(*k)),
            });
        }
    }
    let fs_done: Vec<(usize, &String)> =
        a.fs.iter()
            .enumerate()
            .filter(|(_, fname)| a.completed.iter().any(|c| c.f == fname.as_str()))
            .collect();
    if !fs_done.is_empty() {
        entries.push(Entry::Heading("operation"));
        for (fi, fname) in fs_done {
            entries.push(Entry::Marker {
                shape: fi,
                color: "#555555",
                label: truncate(fname, 20),
            });
        }
    }
    entries.extend(fault_entries(a));
    legend(&mut s, &f, &entries);
    s.push_str("</svg>\n");
    s
}

/// `throughput.svg`: completed ops per second (by completion time), one
/// step line per completion kind.
pub(crate) fn throughput(title: &str, a: &Analysis) -> String {
    let f = Frame::new(a.t_max_s);
    let mut s = String::new();
    header(&mut s, &format!("{title} — throughput"), &f);

    // 1 s buckets, unless the run is absurdly long: then wider ones, so
    // that the chart stays a sane size.
    let width_s = (a.t_max_s / 50_000.0).ceil().max(1.0);
    let n = ((a.t_max_s / width_s).ceil() as usize).max(1);
    let mut counts = vec![vec![0u64; n]; KINDS.len()];
    for c in &a.completed {
        if let Some(ki) = KINDS.iter().position(|(k, _)| *k == c.kind) {
            let b = ((c.complete_ns as f64 / 1e9 / width_s) as usize).min(n - 1);
            counts[ki][b] += 1;
        }
    }
    // A little headroom so the busiest bucket doesn't run along the frame.
    let max = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64 * 1.08;
    let step = nice_step(max, 6.0).max(1.0);
    let y_max = (max / step).ceil() * step;
    let y_of = |v: f64| -> f64 { fin(f.y1 - (v / y_max).clamp(0.0, 1.0) * (f.y1 - f.y0)) };

    let mut i = 0;
    while (i as f64) * step <= y_max + 1e-9 && i < 1000 {
        let v = i as f64 * step;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"{GRID}\"/>\
             <line x1=\"{xt:.1}\" y1=\"{y:.1}\" x2=\"{x0:.1}\" y2=\"{y:.1}\" stroke=\"{AXIS}\"/>\
             <text x=\"{xl:.1}\" y=\"{yl:.1}\" text-anchor=\"end\" fill=\"{AXIS}\">{}</text>",
            fmt_tick(v, step),
            x0 = f.x0,
            x1 = f.x1,
            xt = f.x0 - 5.0,
            xl = f.x0 - 8.0,
            yl = y + 4.0,
        );
        i += 1;
    }
    time_axis(&mut s, &f);
    let y_label = if width_s == 1.0 {
        "completed ops / s (1 s buckets)".to_string()
    } else {
        format!("completed ops per {width_s} s bucket")
    };
    y_title(&mut s, &f, &y_label);
    fault_bands(&mut s, &f, a);

    let mut entries = Vec::new();
    s.push_str("<g class=\"lines\" clip-path=\"url(#plot)\" fill=\"none\" stroke-width=\"1.8\" stroke-linejoin=\"round\">\n");
    for (ki, (kind, color)) in KINDS.iter().enumerate() {
        let total: u64 = counts[ki].iter().sum();
        if total == 0 {
            continue;
        }
        let mut d = String::new();
        for (b, &c) in counts[ki].iter().enumerate() {
            let xa = f.x(b as f64 * width_s);
            let xb = f.x((b + 1) as f64 * width_s);
            let y = y_of(c as f64);
            if b == 0 {
                let _ = write!(d, "M{xa:.1} {y:.1}H{xb:.1}");
            } else {
                let _ = write!(d, "V{y:.1}H{xb:.1}");
            }
        }
        let _ = writeln!(
            s,
            "<path class=\"series\" data-kind=\"{}\" d=\"{d}\" stroke=\"{color}\"/>",
            kind_name(*kind)
        );
        entries.push(Entry::Line {
            color,
            label: format!("{} ({total})", kind_name(*kind)),
        });
    }
    s.push_str("</g>\n");
    if a.completed.is_empty() {
        empty_note(&mut s, &f, "no completed operations");
    }
    plot_border(&mut s, &f);
    if !entries.is_empty() {
        entries.insert(0, Entry::Heading("completion"));
    }
    entries.extend(fault_entries(a));
    legend(&mut s, &f, &entries);
    s.push_str("</svg>\n");
    s
}
