//! One test run: topology, nodes, clients, nemesis, recovery, checks, report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::checker::{self, recovery::RecoveryProbe, CheckResult, Verdict};
use crate::cluster::{Cluster, NodeOpts};
use crate::history::{self, NemesisEvent, Op, OpType};
use crate::nemesis::{Fault, Nemesis};
use crate::rng::Rng;
use crate::topology::Topology;
use crate::workload::{Http, ProcessState, Reply, Workload};

pub struct RunOpts {
    pub workload: Arc<dyn Workload>,
    pub faults: Vec<Fault>,
    pub nodes: u32,
    pub time_limit: Duration,
    pub rate: f64,
    pub concurrency: u32,
    pub seed: u64,
    pub bin: PathBuf,
    pub store: PathBuf,
    /// Bound for the linearizability search.
    pub check_budget: Duration,
    /// After heal: a leader and a write+read on every key within this.
    pub recovery_bound: Duration,
    pub node_opts: NodeOpts,
}

/// Exit code: 0 valid, 1 invalid, 2 unknown or aborted.
pub fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Valid => 0,
        Verdict::Invalid => 1,
        Verdict::Unknown => 2,
    }
}

struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn push(&self, mut op: Op) {
        op.time = self.start.elapsed().as_nanos() as u64;
        self.ops.lock().expect("history").push(op);
    }
}

/// The test's name: `<workload label>-<faults joined by +, or none>-n<nodes>`,
/// e.g. `register-stale-partition-n3`, `set-kill+skew-n5`.
pub fn test_name(label: &str, faults: &[&str], nodes: u32) -> String {
    let faults = if faults.is_empty() {
        "none".to_string()
    } else {
        faults.join("+")
    };
    format!("{label}-{faults}-n{nodes}")
}

/// Seconds since the Unix epoch as a UTC time in ISO 8601 basic format,
/// `20261201T183000Z`: readable, and sorts in time order.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`); avoids a date library for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Creates `<store>/<test>/<utc_stamp(secs)>/`; a second run in the same
/// second gets `-2`, `-3`, … rather than sharing (and overwriting) a folder.
pub fn run_dir(store: &Path, test: &str, secs: u64) -> anyhow::Result<PathBuf> {
    let parent = store.join(test);
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let stamp = utc_stamp(secs);
    for n in 1..=100 {
        let dir = if n == 1 {
            parent.join(&stamp)
        } else {
            parent.join(format!("{stamp}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    anyhow::bail!("{}: 100 runs already started at {stamp}", parent.display())
}

/// Runs the whole test and returns (verdict, report dir).
pub async fn run(opts: RunOpts) -> anyhow::Result<(Verdict, PathBuf)> {
    let faults: Vec<&str> = opts.faults.iter().map(|f| f.name()).collect();
    let test = test_name(&opts.workload.label(), &faults, opts.nodes);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let dir = run_dir(&opts.store, &test, now.as_secs())?;
    let data = tempfile_dir()?;
    tracing::info!("run {test}: report in {}", dir.display());
    let topo = Topology::create(opts.nodes)?;
    let cluster = Arc::new(Mutex::new(Cluster::new(
        topo,
        &opts.bin,
        &data,
        &dir,
        opts.node_opts.clone(),
    )));
    let start = Instant::now();
    let nemesis_log = Arc::new(Mutex::new(Vec::<NemesisEvent>::new()));
    let recorder = Arc::new(Recorder {
        start,
        ops: Mutex::new(Vec::new()),
    });

    let outcome = tokio::select! {
        r = drive(&opts, cluster.clone(), recorder.clone(), nemesis_log.clone(), start) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Always tear down what we made, whatever happened above.
    {
        let mut c = cluster.lock().expect("cluster");
        c.stop_all();
        c.topo.teardown();
    }
    let _ = std::fs::remove_dir_all(&data);

    let history = std::mem::take(&mut *recorder.ops.lock().expect("history"));
    let nemesis = nemesis_log.lock().expect("log").clone();
    history::write_jsonl(&dir.join(HISTORY), &history)?;
    history::write_lines(&dir.join("nemesis.jsonl"), &nemesis)?;

    let (probes, aborted, snapshots) = match outcome {
        Ok((probes, snapshots)) => {
            // So that `check` can re-run the recovery checker.
            history::write_lines(&dir.join(RECOVERY), &probes)?;
            (Some(probes), None, snapshots)
        }
        Err(e) => (None, Some(e.to_string()), serde_json::Value::Null),
    };
    let checks = run_checks(
        opts.workload.as_ref(),
        &history,
        probes.as_deref(),
        opts.check_budget,
    );
    let mut verdict = checker::combine(&checks);
    if aborted.is_some() && verdict == Verdict::Valid {
        verdict = Verdict::Unknown;
    }
    let results = json!({
        "test": test,
        "valid": verdict,
        "aborted": aborted,
        "seed": opts.seed,
        "nodes": opts.nodes,
        "nemesis": faults,
        "time_limit_s": opts.time_limit.as_secs(),
        "ops": history.len() / 2,
        "snapshots_since_last_restart": snapshots,
        "checks": checks,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    crate::report::write_report(&dir, &test, &history, &nemesis, &results)?;
    Ok((verdict, dir))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("raftmesh-jepsen-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn drive(
    opts: &RunOpts,
    cluster: Arc<Mutex<Cluster>>,
    recorder: Arc<Recorder>,
    nemesis_log: Arc<Mutex<Vec<NemesisEvent>>>,
    start: Instant,
) -> anyhow::Result<(Vec<RecoveryProbe>, serde_json::Value)> {
    {
        let mut c = cluster.lock().expect("cluster");
        for id in c.ids() {
            c.start(id, None)?;
        }
    }
    let mut rng = Rng::new(opts.seed);
    let nemesis = Nemesis {
        cluster: cluster.clone(),
        http: Http::new(Duration::from_secs(10)),
        faults: opts.faults.clone(),
        rng: rng.fork(),
        start,
        log: nemesis_log,
    };
    wait_leader(&nemesis, Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader within 30 s of start; see node logs"))?;

    let end = Instant::now() + opts.time_limit;
    let mut tasks = tokio::task::JoinSet::new();
    let bases: Vec<(u32, String)> = {
        let c = cluster.lock().expect("cluster");
        c.ids().into_iter().map(|id| (id, c.url(id))).collect()
    };
    let http = Arc::new(Http::new(Duration::from_secs(3)));
    let sink: crate::workload::Sink = {
        let recorder = recorder.clone();
        Arc::new(move |op| recorder.push(op))
    };
    opts.workload.setup(&http, &bases).await?;
    opts.workload.start_background(&bases, sink, end);
    let pause = Duration::from_secs_f64(opts.concurrency as f64 / opts.rate.max(0.1));
    for slot in 0..opts.concurrency {
        let (workload, recorder, http, bases) = (
            opts.workload.clone(),
            recorder.clone(),
            http.clone(),
            bases.clone(),
        );
        let mut rng = rng.fork();
        let concurrency = opts.concurrency as u64;
        tasks.spawn(async move {
            let mut process = slot as u64;
            let mut state = ProcessState::default();
            while Instant::now() < end {
                let (node, base) = &bases[(process % bases.len() as u64) as usize];
                state.process = process;
                let inv = workload.next(&mut rng, &mut state);
                let t0 = Instant::now();
                recorder.push(Op {
                    process,
                    kind: OpType::Invoke,
                    f: inv.f.clone(),
                    key: inv.key.clone(),
                    value: inv.value.clone(),
                    node: *node,
                    time: 0,
                    error: None,
                });
                let done = workload.invoke(&http, base, &inv).await;
                if done.kind == OpType::Ok {
                    let seen = match inv.f.as_str() {
                        "read" => done.value.get("value").cloned(),
                        "write" => Some(inv.value.clone()),
                        "cas" => inv.value.get(1).cloned(),
                        _ => None,
                    };
                    if let Some(v) = seen {
                        state.last_seen.insert(inv.key.clone(), v);
                    }
                }
                let kind = done.kind;
                recorder.push(Op {
                    process,
                    kind,
                    f: inv.f,
                    key: inv.key,
                    value: done.value,
                    node: *node,
                    time: 0,
                    error: done.error,
                });
                if kind == OpType::Info {
                    // One op in flight per process: an unknown op's process is
                    // retired and a fresh one takes its slot.
                    process += concurrency;
                }
                tokio::time::sleep(pause.saturating_sub(t0.elapsed())).await;
            }
        });
    }
    let nemesis_task = {
        let n = Nemesis {
            cluster: cluster.clone(),
            http: Http::new(Duration::from_secs(10)),
            faults: nemesis.faults.clone(),
            rng: nemesis.rng.clone(),
            start,
            log: nemesis.log.clone(),
        };
        tokio::spawn(n.run(end))
    };
    while tasks.join_next().await.is_some() {}
    let _ = nemesis_task.await;

    // Heal: every node up, full membership.
    nemesis.cluster.lock().expect("cluster").topo.heal()?;
    cluster.lock().expect("cluster").restore_all()?;
    let recovery_start = Instant::now();
    ensure_full_membership(&nemesis, opts.recovery_bound).await;
    let probes = recovery(opts, &nemesis, &bases, recovery_start).await;
    for (id, inv, c) in opts.workload.final_reads(&http, &bases).await {
        for (kind, value, error) in [
            (OpType::Invoke, inv.value.clone(), None),
            (c.kind, c.value, c.error),
        ] {
            recorder.push(Op {
                process: u64::MAX - id as u64,
                kind,
                f: inv.f.clone(),
                key: inv.key.clone(),
                value,
                node: id,
                time: 0,
                error,
            });
        }
    }
    let snapshots = snapshot_counters(&http, &bases).await;
    Ok((probes, snapshots))
}

/// Per node, the snapshot counters of its current process (from /metrics),
/// showing that snapshots were built and installed during the run.
async fn snapshot_counters(http: &Http, bases: &[(u32, String)]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (id, base) in bases {
        let text = match http.client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => continue,
        };
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
        };
        out.insert(
            format!("n{id}"),
            json!({
                "built": metric("raftmesh_sm_snapshots_built_total"),
                "installed": metric("raftmesh_sm_snapshots_installed_total"),
            }),
        );
    }
    serde_json::Value::Object(out)
}

async fn wait_leader(n: &Nemesis, bound: Duration) -> Option<u32> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(l) = n.leader().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn ensure_full_membership(n: &Nemesis, bound: Duration) {
    let deadline = Instant::now() + bound;
    let ids: HashSet<u64> = n
        .cluster
        .lock()
        .expect("cluster")
        .ids()
        .into_iter()
        .map(u64::from)
        .collect();
    while Instant::now() < deadline {
        let Some(l) = n.leader().await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let url = n.cluster.lock().expect("cluster").url(l);
        if let Reply::Status(200, body) = n
            .http
            .call(reqwest::Method::GET, &format!("{url}/cluster"), None)
            .await
        {
            let voters: HashSet<u64> = body["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter(|x| x["voter"] == true)
                        .filter_map(|x| x["node_id"].as_u64())
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<u64> = ids.difference(&voters).copied().collect();
            if missing.is_empty() {
                return;
            }
            for id in missing {
                if let Err(e) = n.readd(id as u32).await {
                    tracing::warn!("re-adding node {id}: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// After heal: every node must accept a write and serve a linearizable read
/// of it, for every key, within the bound.
async fn recovery(
    opts: &RunOpts,
    n: &Nemesis,
    bases: &[(u32, String)],
    since: Instant,
) -> Vec<RecoveryProbe> {
    let http = Http::new(Duration::from_secs(2));
    let bound = opts.recovery_bound;
    let mut probes = Vec::new();
    let _ = wait_leader(n, bound).await;
    for key in opts.workload.keys() {
        for (id, base) in bases {
            let value = json!(format!("recovery-{id}"));
            let url = format!("{base}/kv/{key}");
            let mut wrote = false;
            let mut read = false;
            while since.elapsed() < bound && !(wrote && read) {
                if !wrote {
                    wrote = matches!(
                        http.call(reqwest::Method::PUT, &url, Some(json!({ "value": value })))
                            .await,
                        Reply::Status(200, _)
                    );
                }
                if wrote {
                    read = matches!(
                        http.call(reqwest::Method::GET, &url, None).await,
                        Reply::Status(200, ref b) if b["value"] == value
                    );
                }
                if !(wrote && read) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            probes.push(RecoveryProbe {
                key: key.clone(),
                node: *id,
                wrote_ok: wrote,
                read_ok: read,
                elapsed_ms: since.elapsed().as_millis() as u64,
                bound_ms: bound.as_millis() as u64,
            });
        }
    }
    probes
}

/// A run folder's files the checkers read.
pub const HISTORY: &str = "history.jsonl";
/// The post-heal probes of [`checker::recovery`], one per line; absent when
/// the run aborted before healing.
pub const RECOVERY: &str = "recovery.jsonl";

/// The checks of a run, in `results.json` order: recovery (when there are
/// probes: the run got as far as healing), then the workload's checkers.
/// Both `run` and `check` go through here, so they cannot drift apart.
pub fn run_checks(
    workload: &dyn Workload,
    history: &[Op],
    probes: Option<&[RecoveryProbe]>,
    budget: Duration,
) -> Vec<CheckResult> {
    let mut checks: Vec<CheckResult> = probes
        .map(checker::recovery::check_recovery)
        .into_iter()
        .collect();
    checks.extend(workload.check(history, budget));
    checks
}

/// A checker `check` could not run on a recording, and why.
#[derive(serde::Serialize, Clone, Debug, PartialEq, Eq)]
pub struct NotChecked {
    pub name: String,
    pub why: String,
}

/// What `check` found in a recording.
#[derive(Debug)]
pub struct FileCheck {
    pub checks: Vec<CheckResult>,
    pub not_checked: Vec<NotChecked>,
}

/// The workload whose checkers fit a recorded history: room if it has
/// `append`s, rstmdb if it has
/// `rstmdb-watch` sessions, watch if it has `watch` sessions, set if it has
/// `add`s, else register. The register's
/// checkers are the same with and without stale reads (the reads themselves
/// differ, not the rules).
pub fn workload_of(history: &[Op]) -> Box<dyn Workload> {
    if history
        .iter()
        .any(|o| o.f == crate::checker::room::F_APPEND)
    {
        Box::new(crate::room::Room::new(1, 1))
    } else if history
        .iter()
        .any(|o| o.f == crate::checker::rstmdb::F_RSTMDB_WATCH)
    {
        Box::new(crate::rstmdb::Rstmdb::new(1, 1))
    } else if history
        .iter()
        .any(|o| o.f == crate::checker::watch::F_WATCH)
    {
        Box::new(crate::watch::Watch::new(1, 1))
    } else if history.iter().any(|o| o.f == "add") {
        Box::new(crate::workload::Set::new())
    } else {
        Box::new(crate::workload::Register::new(1, false))
    }
}

/// Re-checks a recorded history with the checkers `run` used: the
/// workload's, and recovery from `recovery.jsonl` beside the history. The
/// recovery probes are taken live after the faults heal, so without that
/// file recovery is reported as not checked rather than guessed.
pub fn check_file(path: &Path, budget: Duration) -> anyhow::Result<FileCheck> {
    let history = history::read_jsonl(path)?;
    let recovery = path.with_file_name(RECOVERY);
    let mut not_checked = Vec::new();
    let probes: Option<Vec<RecoveryProbe>> = if recovery.exists() {
        Some(history::read_lines(&recovery)?)
    } else {
        not_checked.push(NotChecked {
            name: "recovery".into(),
            why: format!(
                "no {} beside the history: recovery is probed live after the faults heal, \
                 and this recording has no probes (the run aborted before healing, or predates \
                 {RECOVERY})",
                recovery.display()
            ),
        });
        None
    };
    let checks = run_checks(
        workload_of(&history).as_ref(),
        &history,
        probes.as_deref(),
        budget,
    );
    Ok(FileCheck {
        checks,
        not_checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        for (secs, want) in [
            (0, "19700101T000000Z"),
            (951_782_400, "20000229T000000Z"),
            (1_709_164_800, "20240229T000000Z"),
            (1_764_613_800, "20251201T183000Z"),
            (1_796_149_800, "20261201T183000Z"),
            (4_102_444_799, "20991231T235959Z"),
        ] {
            assert_eq!(utc_stamp(secs), want, "{secs}");
        }
    }

    #[test]
    fn test_names_say_workload_variant_faults_and_nodes() {
        let stale = crate::workload::Register::new(5, true);
        let plain = crate::workload::Register::new(5, false);
        assert_eq!(
            test_name(&stale.label(), &["partition"], 3),
            "register-stale-partition-n3"
        );
        assert_eq!(
            test_name(&plain.label(), &["partition"], 3),
            "register-partition-n3"
        );
        let set = crate::workload::Set::new();
        assert_eq!(
            test_name(&set.label(), &["kill", "skew"], 5),
            "set-kill+skew-n5"
        );
        assert_eq!(test_name("register", &[], 1), "register-none-n1");
    }

    #[test]
    fn run_dirs_are_readable_and_never_shared() {
        let store = tempfile::tempdir().unwrap();
        let secs = 1_796_149_800;
        let a = run_dir(store.path(), "register-stale-partition-n3", secs).unwrap();
        assert_eq!(
            a,
            store
                .path()
                .join("register-stale-partition-n3/20261201T183000Z")
        );
        assert!(a.is_dir());
        let b = run_dir(store.path(), "register-stale-partition-n3", secs).unwrap();
        assert_eq!(b.file_name().unwrap(), "20261201T183000Z-2");
        let c = run_dir(store.path(), "register-partition-n3", secs).unwrap();
        assert_eq!(
            c.parent().unwrap().file_name().unwrap(),
            "register-partition-n3"
        );
    }
}
