//! `jepsen-tests run …` drives a fault-injection run; `jepsen-tests check
//! <history.jsonl>` re-checks a recorded history with the run's checkers.
//! Exit 0 valid, 1 invalid, 2 unknown or aborted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen_tests::checker::{self, Verdict};
use jepsen_tests::cluster::NodeOpts;
use jepsen_tests::nemesis::Fault;
use jepsen_tests::room::Room;
use jepsen_tests::rstmdb::Rstmdb;
use jepsen_tests::runner::{self, exit_code, RunOpts};
use jepsen_tests::topology;
use jepsen_tests::watch::Watch;
use jepsen_tests::workload::{Register, Set, Workload};

#[derive(Parser)]
#[command(name = "jepsen-tests", about = "raftmesh fault-injection harness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run nodes in network namespaces under faults and check the history.
    Run {
        #[arg(long, default_value = "register")]
        workload: String,
        /// Comma-separated: partition, loss, kill, pause, skew, member.
        #[arg(long, value_delimiter = ',', default_value = "partition,kill")]
        nemesis: Vec<String>,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Seconds of workload under faults.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Target operations per second over all clients.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Concurrent client processes (each one op in flight).
        #[arg(long, default_value_t = 10)]
        concurrency: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Register workload: read with `?stale` (must be found non-linearizable).
        #[arg(long)]
        stale_reads: bool,
        /// Keys of the register and watch workloads; instances of rstmdb.
        #[arg(long, default_value_t = 5)]
        keys: usize,
        /// Watch and rstmdb workloads: watchers per node (1-8); room: per node
        /// and room (1-2).
        #[arg(long, default_value_t = 2)]
        watchers: u32,
        /// The raftmesh binary; default: next to this one.
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Where run folders go.
        #[arg(long, default_value = "jepsen-tests/store")]
        store: PathBuf,
        /// Seconds the linearizability search may take before saying unknown.
        #[arg(long, default_value_t = 60)]
        check_budget: u64,
        #[arg(long, default_value_t = 200)]
        snapshot_logs: u64,
    },
    /// Check a recorded history.jsonl with the checkers `run` uses
    /// (recovery from recovery.jsonl beside it, when the run wrote one).
    Check {
        history: PathBuf,
        #[arg(long, default_value_t = 60)]
        check_budget: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let code = match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jepsen-tests: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn real_main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check {
            history,
            check_budget,
        } => {
            let found = runner::check_file(&history, Duration::from_secs(check_budget))?;
            let verdict = checker::combine(&found.checks);
            for n in &found.not_checked {
                eprintln!("jepsen-tests: {} not checked: {}", n.name, n.why);
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "valid": verdict,
                    "checks": found.checks,
                    "not_checked": found.not_checked,
                }))?
            );
            Ok(exit_code(verdict))
        }
        Cmd::Run {
            workload,
            nemesis,
            nodes,
            time_limit,
            rate,
            concurrency,
            seed,
            stale_reads,
            keys,
            watchers,
            bin,
            store,
            check_budget,
            snapshot_logs,
        } => {
            if let Some(why) = topology::unavailable() {
                eprintln!("jepsen-tests: cannot run here: {why}");
                return Ok(2);
            }
            let workload: Arc<dyn Workload> = match workload.as_str() {
                "register" => Arc::new(Register::new(keys.max(1), stale_reads)),
                "set" => Arc::new(Set::new()),
                "watch" => Arc::new(Watch::new(keys, watchers)),
                "rstmdb" => Arc::new(Rstmdb::new(keys, watchers)),
                "room" => Arc::new(Room::new(3, watchers)),
                other => {
                    anyhow::bail!("unknown workload {other:?} (register, set, watch, rstmdb, room)")
                }
            };
            let faults = nemesis
                .iter()
                .filter(|s| !s.is_empty() && *s != "none")
                .map(|s| Fault::parse(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if faults.contains(&Fault::Skew) && jepsen_tests::cluster::faketime_lib().is_none() {
                anyhow::bail!("the skew nemesis needs libfaketime: apt-get install faketime");
            }
            let bin = match bin {
                Some(b) => b,
                None => std::env::current_exe()?
                    .parent()
                    .map(|d| d.join("raftmesh"))
                    .ok_or_else(|| anyhow::anyhow!("cannot locate the raftmesh binary"))?,
            };
            anyhow::ensure!(
                bin.exists(),
                "raftmesh binary not found at {} (cargo build --bin raftmesh, or --bin)",
                bin.display()
            );
            let bin = std::fs::canonicalize(bin)?;
            let opts = RunOpts {
                workload,
                faults,
                nodes: nodes.clamp(1, 9),
                time_limit: Duration::from_secs(time_limit),
                rate,
                concurrency: concurrency.max(1),
                seed,
                bin,
                store,
                check_budget: Duration::from_secs(check_budget),
                recovery_bound: Duration::from_secs(30),
                node_opts: NodeOpts {
                    snapshot_logs,
                    ..NodeOpts::default()
                },
            };
            let rt = tokio::runtime::Runtime::new()?;
            let (verdict, dir) = rt.block_on(runner::run(opts))?;
            println!("{}: {}", dir.display(), serde_json::to_string(&verdict)?);
            if verdict == Verdict::Invalid {
                eprintln!("invalid: see {}/results.json and index.html", dir.display());
            }
            Ok(exit_code(verdict))
        }
    }
}
