//! rstmdb load generator on the real client (crates.io `rstmdb-client`
//! 0.3.0), so raftmesh and the original rstmdb server are measured through
//! the same code path.
//!
//!   cargo run --release -p raftmesh-node --example rstmdb_bench -- \
//!       127.0.0.1:7401 --op apply --conns 64 --duration 10 --warmup 2
//!
//! Each connection is one client `Connection` doing closed-loop requests (one
//! outstanding at a time); connections are spread round-robin over the given
//! addresses. Setup puts a machine `bench-loop` with one self-loop event. For
//! `apply` every connection creates its own instance (no two connections touch
//! the same instance) and then sends APPLY_EVENT on it; for `create` every
//! request is a CREATE_INSTANCE with a fresh id. A failed request is counted
//! by its error code and never retried; after a transport error the
//! connection is reopened (bounded by the end of the run). Prints a human
//! summary on stderr and one `RESULT key=value ...` line on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use rstmdb_client::{Client, ClientError, ConnectionConfig};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Op {
    /// APPLY_EVENT of a self-loop event on the connection's own instance.
    Apply,
    /// CREATE_INSTANCE with a fresh instance id.
    Create,
}

#[derive(Parser, Debug)]
#[command(
    name = "rstmdb_bench",
    about = "rstmdb load generator (rstmdb-client 0.3.0)"
)]
struct Args {
    /// Server addresses (host:port, one or several, or comma-separated);
    /// connections are spread over them round-robin.
    #[arg(required = true, value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    #[arg(long, value_enum, default_value = "apply")]
    op: Op,
    /// Connections, one outstanding request each.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Per-request timeout, seconds (a timeout counts as an error).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Name of the system under test, copied into the RESULT line.
    #[arg(long, default_value = "rstmdb")]
    label: String,
}

const MACHINE: &str = "bench-loop";
const EVENT: &str = "TICK";

#[derive(Default)]
struct ConnStats {
    /// Microseconds per successful request in the measured window.
    latencies: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

fn error_code(e: &ClientError) -> String {
    match e {
        ClientError::ServerError { code, .. } => code.to_string(),
        ClientError::Timeout => "TIMEOUT".into(),
        ClientError::ConnectionClosed => "CONNECTION_CLOSED".into(),
        ClientError::NotConnected => "NOT_CONNECTED".into(),
        ClientError::Io(_) => "IO".into(),
        ClientError::Protocol(_) => "PROTOCOL".into(),
        ClientError::Json(_) => "JSON".into(),
        _ => "OTHER".into(),
    }
}

/// A transport failure, after which the connection is reopened.
fn is_transport(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout
            | ClientError::ConnectionClosed
            | ClientError::NotConnected
            | ClientError::Io(_)
            | ClientError::Protocol(_)
    )
}

async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Client> {
    let cfg = ConnectionConfig::new(addr)
        .with_client_name("rstmdb_bench")
        .with_connect_timeout(Duration::from_secs(5))
        .with_request_timeout(timeout);
    let client = Client::new(cfg);
    client
        .connect()
        .await
        .with_context(|| format!("connecting {addr}"))?;
    // The client reads no responses until its read loop runs.
    let conn = client.connection();
    tokio::spawn(async move {
        let _ = conn.read_loop().await;
    });
    Ok(client)
}

struct Plan {
    op: Op,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
}

async fn conn_loop(
    plan: Arc<Plan>,
    addr: SocketAddr,
    instance: String,
    mut client: Client,
) -> anyhow::Result<ConnStats> {
    let mut stats = ConnStats::default();
    let mut n: u64 = 0;
    while Instant::now() < plan.end {
        n += 1;
        let t0 = Instant::now();
        let res = match plan.op {
            Op::Apply => client
                .apply_event(&instance, EVENT, None, None, None)
                .await
                .map(drop),
            Op::Create => {
                let id = format!("{instance}-{n}");
                client
                    .create_instance(MACHINE, 1, Some(&id), None, None)
                    .await
                    .map(drop)
            }
        };
        let dt = t0.elapsed();
        let measured = t0 >= plan.measure_from;
        match res {
            Ok(()) => {
                if measured {
                    stats
                        .latencies
                        .push(dt.as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Err(e) => {
                if measured {
                    *stats.errors.entry(error_code(&e)).or_default() += 1;
                }
                if is_transport(&e) {
                    let _ = client.close().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    while Instant::now() < plan.end {
                        match connect(addr, plan.timeout).await {
                            Ok(c) => {
                                client = c;
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            }
        }
    }
    let _ = client.close().await;
    Ok(stats)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.timeout > 0.0) {
        bail!("--duration and --timeout must be positive, --warmup not negative");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let run_id = format!("bench-{}-{nanos:x}", std::process::id());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Setup: the machine, then one connection per slot (and its instance).
        let setup = connect(args.addrs[0], timeout).await?;
        setup
            .put_machine(
                MACHINE,
                1,
                json!({"states": ["s"], "initial": "s",
                       "transitions": [{"from": "s", "event": EVENT, "to": "s"}]}),
            )
            .await
            .context("PUT_MACHINE")?;
        let _ = setup.close().await;
        let mut clients = Vec::with_capacity(args.conns);
        for idx in 0..args.conns {
            let addr = args.addrs[idx % args.addrs.len()];
            let c = connect(addr, timeout).await?;
            // The apply target; for `create`, the prefix of the fresh ids.
            let id = format!("{run_id}-c{idx}");
            if args.op == Op::Apply {
                c.create_instance(MACHINE, 1, Some(&id), None, None)
                    .await
                    .with_context(|| format!("CREATE_INSTANCE {id} on {addr}"))?;
            }
            clients.push((addr, id, c));
        }

        let start = Instant::now();
        let plan = Arc::new(Plan {
            op: args.op,
            timeout,
            measure_from: start + Duration::from_secs_f64(args.warmup),
            end: start + Duration::from_secs_f64(args.warmup + args.duration),
        });
        let mut tasks = Vec::with_capacity(args.conns);
        for (addr, id, c) in clients {
            tasks.push(tokio::spawn(conn_loop(plan.clone(), addr, id, c)));
        }
        let mut lat = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for t in tasks {
            let s = t.await??;
            lat.extend(s.latencies);
            for (k, v) in s.errors {
                *errors.entry(k).or_default() += v;
            }
        }
        lat.sort_unstable();
        let ops_per_s = lat.len() as f64 / args.duration;
        let n_err: u64 = errors.values().sum();
        let by_code = if errors.is_empty() {
            "-".to_string()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let addrs = args
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        eprintln!(
            "{} {:?} conns={} ops/s={ops_per_s:.1} p50={:.3}ms p99={:.3}ms max={:.3}ms errors={n_err} ({by_code})",
            args.label,
            args.op,
            args.conns,
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
        );
        println!(
            "RESULT system={} op={} conns={} addrs={addrs} duration_s={} ops={} ops_per_s={:.1} \
             p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={n_err} errors_by_code={by_code}",
            args.label,
            format!("{:?}", args.op).to_lowercase(),
            args.conns,
            args.duration,
            lat.len(),
            ops_per_s,
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
        );
        anyhow::Ok(())
    })
}
