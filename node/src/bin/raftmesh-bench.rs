//! raftmesh's load generator: closed-loop clients, one keep-alive HTTP/1.1
//! connection each, against raftmesh's pm3 KV routes or etcd's JSON gateway
//! through the same code path, so the two are measured alike. Bounded in
//! time; meant for loopback targets.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Target {
    Raftmesh,
    Etcd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Workload {
    /// Unconditional put of a fresh value to a random key.
    Put,
    /// Linearizable read of a random key (prefilled first).
    Get,
    /// Compare-and-swap on a random key (raftmesh only).
    Cas,
}

#[derive(Parser, Debug)]
#[command(
    name = "raftmesh-bench",
    about = "KV load generator for raftmesh and etcd"
)]
struct Args {
    #[arg(long, value_enum, default_value = "raftmesh")]
    target: Target,
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Comma-separated host:port list; clients are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8081")]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// One prepared request shape, so the hot loop only formats the key.
struct Shape {
    target: Target,
    workload: Workload,
    value: String,
}

impl Shape {
    fn request(&self, host: &str, key: usize, n: u64) -> Request<Full<Bytes>> {
        let b = Request::builder().header("host", host);
        let key = format!("bench-{key}");
        match (self.target, self.workload) {
            (Target::Raftmesh, Workload::Put) => {
                b.method("PUT")
                    .uri(format!("/kv/{key}"))
                    .body(Full::new(Bytes::from(format!(
                        "{{\"value\":\"{n:016x}{}\"}}",
                        &self.value[16.min(self.value.len())..]
                    ))))
            }
            (Target::Raftmesh, Workload::Get) => b
                .method("GET")
                .uri(format!("/kv/{key}"))
                .body(Full::default()),
            (Target::Raftmesh, Workload::Cas) => b
                .method("POST")
                .uri(format!("/kv/{key}/cas"))
                .body(Full::new(Bytes::from(format!(
                    "{{\"expected\":null,\"desired\":\"{}\"}}",
                    self.value
                )))),
            (Target::Etcd, Workload::Put) => {
                let e = base64::engine::general_purpose::STANDARD;
                let v = format!("{n:016x}{}", &self.value[16.min(self.value.len())..]);
                b.method("POST")
                    .uri("/v3/kv/put")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                        e.encode(&key),
                        e.encode(v)
                    ))))
            }
            (Target::Etcd, Workload::Get) => {
                let e = base64::engine::general_purpose::STANDARD;
                b.method("POST")
                    .uri("/v3/kv/range")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"key\":\"{}\"}}",
                        e.encode(&key)
                    ))))
            }
            (Target::Etcd, Workload::Cas) => unreachable!("rejected in main"),
        }
        .expect("request builds")
    }
}

#[derive(Default)]
struct ClientStats {
    /// Microseconds per successful op in the measured window.
    latencies: Vec<u32>,
    errors: u64,
}

/// Tiny xorshift for key choice; no need for quality randomness here.
fn next_rand(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

async fn connect(addr: &str) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting {addr}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn client(
    shape: std::sync::Arc<Shape>,
    addr: String,
    keys: usize,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<ClientStats> {
    let mut stats = ClientStats::default();
    let mut send = connect(&addr).await?;
    let mut rng = seed | 1;
    let mut n = seed << 32;
    while Instant::now() < end {
        n += 1;
        let key = (next_rand(&mut rng) % keys as u64) as usize;
        let req = shape.request(&addr, key, n);
        let t0 = Instant::now();
        let ok = match send.ready().await.and(Ok(())) {
            Err(_) => false,
            Ok(()) => match send.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.into_body().collect().await;
                    status.is_success() && body.is_ok()
                }
                Err(_) => false,
            },
        };
        let dt = t0.elapsed();
        if t0 >= measure_from {
            if ok {
                stats
                    .latencies
                    .push(dt.as_micros().min(u32::MAX as u128) as u32);
            } else {
                stats.errors += 1;
            }
        }
        if !ok {
            // The connection may be gone; reconnect (bounded by `end`).
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(s) = connect(&addr).await {
                send = s;
            }
        }
    }
    Ok(stats)
}

/// Writes every key once so reads find values.
async fn prefill(args: &Args) -> anyhow::Result<()> {
    let shape = Shape {
        target: args.target,
        workload: Workload::Put,
        value: "x".repeat(args.value_size),
    };
    let addr = &args.endpoints[0];
    let mut send = connect(addr).await?;
    for key in 0..args.keys {
        send.ready().await?;
        let resp = send
            .send_request(shape.request(addr, key, key as u64))
            .await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if !status.is_success() {
            bail!("prefill of key {key} answered {status}");
        }
    }
    Ok(())
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
    if args.target == Target::Etcd && args.workload == Workload::Cas {
        bail!("the cas workload targets raftmesh only");
    }
    if args.clients == 0 || args.endpoints.is_empty() || args.keys == 0 {
        bail!("clients, endpoints and keys must be non-empty");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        if args.workload == Workload::Get {
            prefill(&args).await?;
        }
        let shape = std::sync::Arc::new(Shape {
            target: args.target,
            workload: args.workload,
            value: "v".repeat(args.value_size),
        });
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(args.warmup);
        let end = measure_from + Duration::from_secs_f64(args.duration);
        let mut tasks = Vec::new();
        for c in 0..args.clients {
            let addr = args.endpoints[c % args.endpoints.len()].clone();
            tasks.push(tokio::spawn(client(
                shape.clone(),
                addr,
                args.keys,
                c as u64 + 1,
                measure_from,
                end,
            )));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let s = t.await??;
            lat.extend(s.latencies);
            errors += s.errors;
        }
        lat.sort_unstable();
        let ops = lat.len() as f64 / args.duration;
        let summary = serde_json::json!({
            "target": format!("{:?}", args.target).to_lowercase(),
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "clients": args.clients,
            "endpoints": args.endpoints,
            "value_size": args.value_size,
            "duration_s": args.duration,
            "ops": lat.len(),
            "ops_per_s": (ops * 10.0).round() / 10.0,
            "p50_ms": pct(&lat, 0.50),
            "p90_ms": pct(&lat, 0.90),
            "p99_ms": pct(&lat, 0.99),
            "max_ms": lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
            "errors": errors,
        });
        if args.json {
            println!("{summary}");
        } else {
            println!(
                "{:?} {:?} clients={} ops/s={:.1} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms errors={}",
                args.target,
                args.workload,
                args.clients,
                ops,
                pct(&lat, 0.5),
                pct(&lat, 0.9),
                pct(&lat, 0.99),
                summary["max_ms"].as_f64().unwrap_or(0.0),
                errors
            );
        }
        anyhow::Ok(())
    })
}
