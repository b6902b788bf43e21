use super::*;
use serde_json::json;

fn op(process: u64, kind: OpType, f: &str, time_ms: f64, error: Option<&str>) -> Op {
    Op {
        process,
        kind,
        f: f.to_string(),
        key: "k".to_string(),
        value: serde_json::Value::Null,
        node: (process % 3 + 1) as u32,
        time: (time_ms * 1e6) as u64,
        error: error.map(str::to_string),
    }
}

fn ev(time_ms: f64, phase: &str, fault: &str, detail: &str) -> NemesisEvent {
    NemesisEvent {
        time: (time_ms * 1e6) as u64,
        phase: phase.to_string(),
        fault: fault.to_string(),
        detail: detail.to_string(),
    }
}

/// A history of `secs` seconds: 4 processes doing reads, writes and cas;
/// slow and failing during the fault windows.
fn synthetic(secs: f64, windows: &[(f64, f64)]) -> Vec<Op> {
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f64 / 10_000.0
    };
    let fs = ["read", "write", "cas"];
    let mut events: Vec<Op> = Vec::new();
    for p in 0..4u64 {
        let mut process = p;
        let mut t = next() * 20.0;
        while t < secs * 1000.0 {
            let f = fs[(next() * 3.0) as usize % 3];
            let faulty = windows.iter().any(|&(a, b)| t >= a && t < b);
            let mut lat = 1.0 + next() * 8.0;
            if next() < 0.05 {
                lat *= 20.0;
            }
            let r = next();
            let (kind, err) = if faulty && r < 0.3 {
                lat = 1000.0 + next() * 500.0;
                (OpType::Info, Some("timeout"))
            } else if faulty && r < 0.6 {
                (OpType::Fail, Some("not leader"))
            } else if f == "cas" && r < 0.15 {
                (OpType::Fail, Some("cas mismatch"))
            } else {
                (OpType::Ok, None)
            };
            events.push(op(process, OpType::Invoke, f, t, None));
            events.push(op(process, kind, f, t + lat, err));
            if kind == OpType::Info {
                process += 4;
            }
            t += lat + next() * 15.0;
        }
    }
    events.sort_by_key(|o| o.time);
    events
}

fn results() -> serde_json::Value {
    json!({
        "valid": "invalid",
        "checks": [
            {"name": "linearizable", "verdict": "invalid",
             "details": {"anomaly": "stale read", "key": "k", "op": {"process": 3, "value": 4}}},
            {"name": "stats", "verdict": "valid", "details": "every f had ok ops"},
            {"name": "timeline", "valid": "unknown", "details": null, "note": "<escaped?>"}
        ],
        "workload": "register",
        "nodes": 5
    })
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Crude well-formedness: one root, balanced tags, no raw `&`, no NaN.
fn assert_xmlish(svg: &str) {
    assert!(svg.starts_with("<?xml"));
    assert!(svg.contains("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.contains("viewBox=\"0 0 "));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(
        !svg.contains("NaN") && !svg.replace("info", "").contains("inf"),
        "non-finite number"
    );
    let mut depth: i64 = 0;
    let mut rest = svg;
    while let Some(i) = rest.find('<') {
        let j = rest[i..].find('>').expect("unclosed tag") + i;
        let tag = &rest[i + 1..j];
        if tag.starts_with('?') || tag.starts_with('!') {
        } else if let Some(_name) = tag.strip_prefix('/') {
            depth -= 1;
        } else if !tag.ends_with('/') {
            depth += 1;
        }
        assert!(
            depth >= 0,
            "closing tag without opening near {}",
            &rest[i..j + 1]
        );
        assert!(!tag.contains('<'), "'<' inside tag");
        rest = &rest[j + 1..];
    }
    assert_eq!(depth, 0, "unbalanced tags");
    for (i, _) in svg.match_indices('&') {
        let ent = &svg[i..svg.len().min(i + 8)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .iter()
                .any(|e| ent.starts_with(e)),
            "raw & at {ent}"
        );
    }
}

#[test]
fn report_with_two_fault_windows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n1.log"), "hello\n").unwrap();
    std::fs::write(dir.path().join("n10.log"), "").unwrap();
    std::fs::write(dir.path().join("n2.log"), "").unwrap();
    let history = synthetic(10.0, &[(2000.0, 4000.0), (6000.0, 7500.0)]);
    let nemesis = vec![
        ev(
            2000.0,
            "start",
            "partition",
            "{n1 n2} | {n3 n4 n5} <majority>",
        ),
        ev(4000.0, "stop", "partition", "healed"),
        ev(6000.0, "start", "kill", "kill -9 n3"),
        ev(7500.0, "stop", "kill", "restarted n3"),
    ];
    write_report(
        dir.path(),
        "register & friends",
        &history,
        &nemesis,
        &results(),
    )
    .unwrap();

    for name in ["latency.svg", "throughput.svg", "index.html"] {
        assert!(dir.path().join(name).is_file(), "{name} missing");
    }
    for name in ["latency.svg", "throughput.svg"] {
        let svg = read(dir.path(), name);
        assert_xmlish(&svg);
        assert_eq!(svg.matches("class=\"fault\"").count(), 2, "{name}");
        assert!(svg.contains(">partition</text>") && svg.contains(">kill</text>"));
        assert!(svg.contains("register &amp; friends"));
        assert!(svg.contains("data-kind=\"ok\""));
        assert!(svg.contains("data-kind=\"fail\""));
        assert!(svg.contains("data-kind=\"info\""));
    }
    let lat = read(dir.path(), "latency.svg");
    for f in ["read", "write", "cas"] {
        assert!(lat.contains(&format!("data-f=\"{f}\"")), "{f}");
    }

    let html = read(dir.path(), "index.html");
    assert!(html.contains("<span class=\"badge invalid big\">invalid</span>"));
    assert!(html.contains("linearizable"));
    assert!(html.contains("badge valid"));
    assert!(html.contains("badge unknown"));
    assert!(html.contains("&lt;escaped?&gt;"));
    assert!(html.contains("stale read"));
    assert!(html.contains("register &amp; friends"));
    assert!(html.contains("partition") && html.contains("kill -9 n3"));
    assert!(html.contains("src=\"latency.svg\"") && html.contains("src=\"throughput.svg\""));
    for link in ["history.jsonl", "nemesis.jsonl", "results.json"] {
        assert!(html.contains(&format!("href=\"{link}\"")), "{link}");
    }
    let (a, b, c) = (
        html.find("href=\"n1.log\"").unwrap(),
        html.find("href=\"n2.log\"").unwrap(),
        html.find("href=\"n10.log\"").unwrap(),
    );
    assert!(a < b && b < c, "logs in natural order");
    assert!(html.contains("p99") && html.contains("never completed"));
    assert!(html.contains("workload") && html.contains("register"));
    assert!(!html.contains("NaN"));
}

#[test]
fn empty_input() {
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), "empty", &[], &[], &serde_json::Value::Null).unwrap();
    for name in ["latency.svg", "throughput.svg"] {
        let svg = read(dir.path(), name);
        assert_xmlish(&svg);
        assert!(!svg.contains("class=\"fault\""));
        assert!(svg.contains("no completed operations"));
    }
    let html = read(dir.path(), "index.html");
    assert!(html.contains("no verdict"));
    assert!(html.contains("no nemesis events") || html.contains("No nemesis events"));
    assert!(!html.contains("NaN"));
}

#[test]
fn no_nemesis_and_odd_results() {
    let dir = tempfile::tempdir().unwrap();
    let history = synthetic(3.0, &[]);
    let res = json!({"valid": true, "checks": {"set": {"valid": false, "lost": [1, 2]}}});
    write_report(dir.path(), "t", &history, &[], &res).unwrap();
    let svg = read(dir.path(), "latency.svg");
    assert_xmlish(&svg);
    assert!(!svg.contains("class=\"fault\""));
    let html = read(dir.path(), "index.html");
    assert!(html.contains("badge valid big"));
    assert!(html.contains("badge invalid") && html.contains("[1,2]"));
}

#[test]
fn windows_pairing() {
    // Overlapping starts of one fault pair FIFO; an unmatched start runs
    // to the end; a stray stop starts at 0.
    let nemesis = vec![
        ev(1000.0, "start", "pause", "a"),
        ev(1500.0, "start", "pause", "b"),
        ev(2000.0, "stop", "pause", ""),
        ev(2500.0, "stop", "pause", ""),
        ev(3000.0, "stop", "skew", ""),
        ev(4000.0, "start", "loss", "20%"),
    ];
    let w = fault_windows(&nemesis);
    let spans: Vec<_> = w
        .iter()
        .map(|w| {
            (
                w.fault.as_str(),
                w.start_ns / 1_000_000,
                w.end_ns.map(|e| e / 1_000_000),
            )
        })
        .collect();
    assert_eq!(
        spans,
        vec![
            ("pause", 1000, Some(2000)),
            ("pause", 1500, Some(2500)),
            ("skew", 0, Some(3000)),
            ("loss", 4000, None),
        ]
    );
    let a = Analysis::new(&[], &nemesis);
    let svg = svg::latency("x", &a);
    assert_xmlish(&svg);
    assert_eq!(svg.matches("class=\"fault\"").count(), 4);
}

#[test]
fn percentiles_nearest_rank() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 50.0), Some(50));
    assert_eq!(percentile(&v, 99.0), Some(99));
    assert_eq!(percentile(&v, 100.0), Some(100));
    assert_eq!(percentile(&[7], 90.0), Some(7));
    assert_eq!(percentile(&[], 50.0), None);
}

/// Writes a demo report for eyeballing:
/// `JEPSEN_REPORT_DEMO=/tmp/demo cargo test -p jepsen-tests demo_report -- --ignored`
#[test]
#[ignore]
fn demo_report() {
    let dir =
        std::env::var("JEPSEN_REPORT_DEMO").unwrap_or_else(|_| "/tmp/jepsen-report-demo".into());
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).unwrap();
    let history = synthetic(
        30.0,
        &[
            (5000.0, 9000.0),
            (14000.0, 17000.0),
            (16000.0, 22000.0),
            (25000.0, 31000.0),
        ],
    );
    let nemesis = vec![
        ev(5000.0, "start", "partition", "{n1 n2} | {n3 n4 n5}"),
        ev(9000.0, "stop", "partition", "healed"),
        ev(14000.0, "start", "kill", "kill -9 n3"),
        ev(16000.0, "start", "pause", "SIGSTOP n1"),
        ev(17000.0, "stop", "kill", "restarted n3"),
        ev(22000.0, "stop", "pause", "SIGCONT n1"),
        ev(25000.0, "start", "loss", "20% loss on n2"),
    ];
    write_report(dir, "register workload", &history, &nemesis, &results()).unwrap();
}

#[test]
fn absurd_times_stay_bounded() {
    // A clock gone wild must not make a gigabyte of buckets.
    let history = vec![
        op(1, OpType::Invoke, "read", 0.0, None),
        op(1, OpType::Ok, "read", 1.0, None),
        op(2, OpType::Invoke, "write", 1e12, None),
        op(2, OpType::Info, "write", 1e12 + 5.0, Some("timeout")),
    ];
    let a = Analysis::new(&history, &[]);
    let svg = svg::throughput("x", &a);
    assert_xmlish(&svg);
    assert!(svg.len() < 5_000_000);
}

#[test]
#[ignore]
fn demo_small_reports() {
    let base =
        std::env::var("JEPSEN_REPORT_DEMO").unwrap_or_else(|_| "/tmp/jepsen-report-demo".into());
    let empty = Path::new(&base).join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    write_report(&empty, "empty", &[], &[], &serde_json::Value::Null).unwrap();
    let short = Path::new(&base).join("short");
    std::fs::create_dir_all(&short).unwrap();
    let history = synthetic(0.4, &[(100.0, 250.0)]);
    let nemesis = vec![
        ev(100.0, "start", "partition", "p"),
        ev(250.0, "stop", "partition", ""),
    ];
    write_report(
        &short,
        "short",
        &history,
        &nemesis,
        &json!({"valid": "valid"}),
    )
    .unwrap();
}
