//! `jepsen-tests check` as a user runs it, on the recorded fixtures: it must
//! name a file it cannot read, run the checkers `run` runs (recovery from
//! the `recovery.jsonl` a run writes beside its history), and say so when a
//! recording has no recovery probes instead of passing over it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jepsen_tests::checker::recovery::RecoveryProbe;
use jepsen_tests::history::{read_jsonl, write_jsonl, write_lines, Op, OpType};
use jepsen_tests::rstmdb::Rstmdb;
use jepsen_tests::runner;
use jepsen_tests::watch::Watch;
use jepsen_tests::workload::{Register, Set, Workload};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Out {
    code: i32,
    json: Value,
    stderr: String,
}

fn check(history: &Path) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_jepsen-tests"))
        .arg("check")
        .arg(history)
        .env("RUST_LOG", "off")
        .output()
        .expect("runs jepsen-tests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    Out {
        code: out.status.code().expect("exit code"),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn names(v: &Value) -> Vec<&str> {
    v["checks"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// A run folder holding a copy of a fixture as its history.
fn run_folder(fixture_name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture(fixture_name), dir.path().join("history.jsonl")).unwrap();
    dir
}

fn probes(elapsed_ms: &[u64]) -> Vec<RecoveryProbe> {
    elapsed_ms
        .iter()
        .enumerate()
        .map(|(i, &elapsed_ms)| RecoveryProbe {
            key: "r0".into(),
            node: i as u32 + 1,
            wrote_ok: true,
            read_ok: true,
            elapsed_ms,
            bound_ms: 30_000,
        })
        .collect()
}

#[test]
fn a_missing_history_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir
        .path()
        .join("register-partition-n3/20261201T183000Z/history.jsonl");
    let out = check(&missing);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn an_unreadable_history_is_named_in_the_error() {
    // A directory opens but does not read; root could read a chmod 000 file.
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path());
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&dir.path().display().to_string()),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn without_recovery_probes_check_says_recovery_was_not_checked() {
    let dir = run_folder("linearizable-partition-kill.jsonl");
    let out = check(&dir.path().join("history.jsonl"));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json["valid"], "valid", "{}", out.json);
    assert_eq!(
        names(&out.json),
        ["linearizable-register", "monotonic-reads"]
    );
    let skipped = &out.json["not_checked"];
    assert_eq!(skipped[0]["name"], "recovery", "{}", out.json);
    assert!(
        skipped[0]["why"]
            .as_str()
            .unwrap()
            .contains("recovery.jsonl"),
        "{}",
        out.json
    );
    assert!(
        out.stderr.contains("recovery not checked"),
        "{}",
        out.stderr
    );
}

#[test]
fn with_recovery_probes_check_runs_recovery_like_run() {
    let dir = run_folder("linearizable-partition-kill.jsonl");
    let history = dir.path().join("history.jsonl");
    let recovery = dir.path().join("recovery.jsonl");

    write_lines(&recovery, &probes(&[900, 1200, 1500])).unwrap();
    let out = check(&history);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        names(&out.json),
        ["recovery", "linearizable-register", "monotonic-reads"]
    );
    assert_eq!(out.json["checks"][0]["verdict"], "valid");
    assert_eq!(out.json["not_checked"], json!([]));

    // A node that took longer than the bound makes the recording invalid.
    write_lines(&recovery, &probes(&[900, 31_000, 1500])).unwrap();
    let out = check(&history);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.json["valid"], "invalid");
    assert_eq!(out.json["checks"][0]["name"], "recovery");
    assert_eq!(out.json["checks"][0]["verdict"], "invalid");
    assert_eq!(out.json["checks"][0]["details"]["failed"][0]["node"], 2);
}

#[test]
fn stale_reads_recording_is_invalid_through_check() {
    let dir = run_folder("stale-reads-partition.jsonl");
    write_lines(
        &dir.path().join("recovery.jsonl"),
        &probes(&[800, 800, 800]),
    )
    .unwrap();
    let out = check(&dir.path().join("history.jsonl"));
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.json["valid"], "invalid");
    assert_eq!(
        names(&out.json),
        ["recovery", "linearizable-register", "monotonic-reads"]
    );
}

fn set_history() -> Vec<Op> {
    let op = |process, kind, f: &str, value: Value, time| Op {
        process,
        kind,
        f: f.into(),
        key: "set".into(),
        value,
        node: 1,
        time,
        error: None,
    };
    vec![
        op(0, OpType::Invoke, "add", json!(1), 1),
        op(0, OpType::Ok, "add", json!(1), 2),
        op(1, OpType::Invoke, "add", json!(2), 3),
        op(1, OpType::Ok, "add", json!(2), 4),
        op(9, OpType::Invoke, "read", Value::Null, 5),
        op(9, OpType::Ok, "read", json!([1]), 6),
    ]
}

#[test]
fn set_recording_gets_the_set_checker() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    write_jsonl(&history, &set_history()).unwrap();
    write_lines(&dir.path().join("recovery.jsonl"), &probes(&[500])).unwrap();
    let out = check(&history);
    // Element 2 was acknowledged and is missing from the final read.
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(names(&out.json), ["recovery", "set"]);
    assert_eq!(out.json["checks"][1]["verdict"], "invalid");
}

/// Two acked writes in one entry (revision 4) and a watcher that was cut
/// after the first of them (so nothing was complete: it asks for 1 again)
/// and was then sent both, or only the second.
fn watch_history(replay_both: bool) -> Vec<Op> {
    let op = |process, kind, f: &str, key: &str, value: Value, time| Op {
        process,
        kind,
        f: f.into(),
        key: key.into(),
        value,
        node: 1,
        time,
        error: None,
    };
    let line = |rev: u64, key: &str, v: &str| json!({"revision": rev, "key": key, "value": v});
    let w = 1u64 << 40;
    let replay = if replay_both {
        vec![line(4, "watch_k0", "a"), line(4, "watch_k1", "b")]
    } else {
        vec![line(4, "watch_k1", "b")]
    };
    vec![
        op(w, OpType::Invoke, "watch", "watch_", json!({"from": 1}), 1),
        op(0, OpType::Invoke, "write", "watch_k0", json!("a"), 2),
        op(1, OpType::Invoke, "write", "watch_k1", json!("b"), 2),
        op(
            0,
            OpType::Ok,
            "write",
            "watch_k0",
            json!({"value": "a", "revision": 4}),
            3,
        ),
        op(
            1,
            OpType::Ok,
            "write",
            "watch_k1",
            json!({"value": "b", "revision": 4}),
            3,
        ),
        op(
            w,
            OpType::Ok,
            "watch",
            "watch_",
            json!({"from": 1, "lines": [line(4, "watch_k0", "a")]}),
            4,
        ),
        op(w, OpType::Invoke, "watch", "watch_", json!({"from": 1}), 5),
        op(
            w,
            OpType::Ok,
            "watch",
            "watch_",
            json!({"from": 1, "lines": replay, "end": {"error": "no leader", "revision": 4}}),
            6,
        ),
    ]
}

#[test]
fn watch_recording_gets_the_watch_checker() {
    for (replay_both, code) in [(true, 0), (false, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history.jsonl");
        write_jsonl(&history, &watch_history(replay_both)).unwrap();
        write_lines(&dir.path().join("recovery.jsonl"), &probes(&[500])).unwrap();
        let out = check(&history);
        assert_eq!(out.code, code, "{} {}", out.json, out.stderr);
        assert_eq!(names(&out.json), ["recovery", "watch"]);
    }
}

/// An rstmdb recording: instance i0 read at its creation offset 2, one cas
/// acked at 5, then a WATCH_ALL watcher that got the event (or, when
/// `lost`, nothing although the fence at 7 shows it went past 5).
fn rstmdb_history(lost: bool) -> Vec<Op> {
    let op = |process, kind, f: &str, key: &str, value: Value, time| Op {
        process,
        kind,
        f: f.into(),
        key: key.into(),
        value,
        node: 1,
        time,
        error: None,
    };
    let w = 1u64 << 40;
    let ev = |o: u64, i: &str, t: i64| json!({"wal_offset": o, "instance_id": i, "tag": t});
    let events = if lost {
        vec![ev(7, "fence", 2)]
    } else {
        vec![ev(5, "i0", 1), ev(7, "fence", 2)]
    };
    let session =
        json!({"from": 1, "subscription_id": "s1", "events": events, "ending": "caught up"});
    vec![
        op(
            w,
            OpType::Invoke,
            "rstmdb-watch",
            "watch",
            json!({"from": 1}),
            1,
        ),
        op(0, OpType::Invoke, "read", "i0", Value::Null, 2),
        op(
            0,
            OpType::Ok,
            "read",
            "i0",
            json!({"revision": 2, "value": null}),
            3,
        ),
        op(0, OpType::Invoke, "cas", "i0", json!([null, 1]), 4),
        op(
            0,
            OpType::Ok,
            "cas",
            "i0",
            json!({"tag": 1, "expected_offset": 2, "wal_offset": 5}),
            5,
        ),
        op(1, OpType::Invoke, "fence", "fence", json!(2), 6),
        op(
            1,
            OpType::Ok,
            "fence",
            "fence",
            json!({"tag": 2, "wal_offset": 7}),
            7,
        ),
        op(w, OpType::Ok, "rstmdb-watch", "watch", session, 8),
    ]
}

#[test]
fn rstmdb_recording_gets_the_rstmdb_checkers() {
    for (lost, code) in [(false, 0), (true, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history.jsonl");
        write_jsonl(&history, &rstmdb_history(lost)).unwrap();
        write_lines(&dir.path().join("recovery.jsonl"), &probes(&[500])).unwrap();
        let out = check(&history);
        assert_eq!(out.code, code, "{} {}", out.json, out.stderr);
        assert_eq!(
            names(&out.json),
            [
                "recovery",
                "rstmdb-summary",
                "linearizable-register",
                "monotonic-reads",
                "rstmdb-offsets",
                "rstmdb-watch-all"
            ]
        );
    }
}

/// Checks without their timings (the search's elapsed time varies).
fn comparable(checks: &[jepsen_tests::checker::CheckResult]) -> Vec<Value> {
    checks
        .iter()
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap();
            if let Some(d) = v["details"].as_object_mut() {
                d.remove("elapsed_ms");
            }
            v
        })
        .collect()
}

/// `check` picks the checkers of the workload that recorded the history:
/// the same list, in the same order, as a run of that workload.
#[test]
fn check_file_runs_what_run_runs_for_each_workload() {
    let budget = Duration::from_secs(60);
    let cases: [(&dyn Workload, Vec<Op>); 5] = [
        (
            &Register::new(5, false),
            read_jsonl(&fixture("linearizable-partition-kill.jsonl")).unwrap(),
        ),
        (
            &Register::new(5, true),
            read_jsonl(&fixture("stale-reads-partition.jsonl")).unwrap(),
        ),
        (&Set::new(), set_history()),
        (&Watch::new(5, 2), watch_history(true)),
        (&Rstmdb::new(5, 2), rstmdb_history(false)),
    ];
    for (workload, history) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        write_jsonl(&path, &history).unwrap();
        let p = probes(&[700, 700, 700]);
        write_lines(&dir.path().join("recovery.jsonl"), &p).unwrap();
        let from_run = runner::run_checks(workload, &history, Some(&p), budget);
        let from_file = runner::check_file(&path, budget).unwrap();
        assert_eq!(
            comparable(&from_file.checks),
            comparable(&from_run),
            "{}",
            workload.label()
        );
        assert!(from_file.not_checked.is_empty());
    }
}
