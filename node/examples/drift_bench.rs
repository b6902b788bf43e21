//! DriftDB room load generator: one room, S subscriber sockets and one
//! publisher socket, so raftmesh and the original driftdb-server are
//! measured through the same code path.
//!
//!   cargo run --release -p raftmesh-node --example drift_bench -- \
//!       127.0.0.1:7181,127.0.0.1:7182 --subs 100 --window 1 --duration 10 --warmup 2
//!
//! The room is created with `POST /new` on the first address; the publisher
//! connects to the first address and the subscribers round-robin over all of
//! them (JSON text frames, TCP_NODELAY on every client socket). The publisher
//! keeps `--window` pushes in flight: it sends `push` append with a unique id
//! and its send time in the value, and a push counts as acked when the
//! publisher's own socket receives its delivery. One socket's pushes are
//! delivered in the order sent, so an ack for id n means every earlier id
//! not yet acked was lost to the publisher (counted as `pub_lost`, its slot
//! freed); a window that hears nothing for `--ack-timeout` is freed the same
//! way. Measured over `--duration` after `--warmup`: acked pushes/s,
//! deliveries/s over all subscribers, push→delivery latency at subscribers
//! (p50/p99, pushes sent in the window), and `missing`: for every push acked
//! in the window, each subscriber that never received it (subscribers keep
//! reading up to `--drain` seconds after the end). `closed` counts sockets
//! that ended before the run did. Prints a human summary on stderr and one
//! `RESULT key=value ...` line on stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

#[derive(Parser, Debug)]
#[command(name = "drift_bench", about = "DriftDB room load generator")]
struct Args {
    /// HTTP addresses (host:port, comma-separated); the room is created on
    /// and published to the first, subscribers are spread over all.
    #[arg(required = true, value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    /// Subscriber sockets.
    #[arg(long, default_value_t = 10)]
    subs: usize,
    /// Pushes in flight on the publisher socket.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds subscribers keep reading after the end for late deliveries.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Seconds without any ack after which the whole window counts as lost.
    #[arg(long, default_value_t = 1.0)]
    ack_timeout: f64,
    /// Keys the pushes rotate over (each key's stream grows by append).
    #[arg(long, default_value_t = 16)]
    keys: u64,
    /// Name of the system under test, copied into the RESULT line.
    #[arg(long, default_value = "driftdb")]
    label: String,
}

/// Only what the bench reads of a message from the server.
#[derive(Deserialize)]
struct FromServer {
    #[serde(rename = "type")]
    ty: String,
    value: Option<PushValue>,
}

/// The value of every bench push: its id and its send time (µs since the
/// bench's start instant).
#[derive(Deserialize)]
struct PushValue {
    id: u64,
    t: u64,
}

struct Plan {
    base: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Plan {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_micros() as u64
    }
    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }
}

async fn connect(addr: SocketAddr, room: &str) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting {addr}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{addr}/room/{room}/connect");
    let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .with_context(|| format!("WebSocket upgrade {url}"))?;
    Ok(ws)
}

/// The value of a `push` delivery, if that is what the frame is.
fn delivery(m: &Message) -> Option<PushValue> {
    let Message::Text(t) = m else { return None };
    let msg: FromServer = serde_json::from_str(t.as_str()).ok()?;
    if msg.ty != "push" {
        return None;
    }
    msg.value
}

fn is_error(m: &Message) -> bool {
    matches!(m, Message::Text(t) if t.as_str().contains(r#""type":"error""#))
}

#[derive(Default)]
struct PubStats {
    /// Ids acked inside the measured window, ascending.
    acked: Vec<u64>,
    lost: u64,
    errors: u64,
    closed: bool,
    close_reason: Option<String>,
    sent: u64,
}

async fn publisher(
    plan: Arc<Plan>,
    mut ws: Ws,
    window: usize,
    keys: u64,
    ack_timeout: Duration,
    last: watch::Sender<Option<u64>>,
) -> PubStats {
    let mut st = PubStats::default();
    // Ids sent and not yet acked, ascending.
    let mut outstanding = std::collections::VecDeque::<u64>::new();
    let mut next_id: u64 = 1;
    let mut highest_acked: u64 = 0;
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if now < plan.end {
            let mut fed = false;
            while outstanding.len() < window {
                let id = next_id;
                next_id += 1;
                let msg = format!(
                    r#"{{"type":"push","key":"k{}","value":{{"id":{id},"t":{}}},"action":{{"type":"append"}}}}"#,
                    id % keys,
                    plan.micros(Instant::now())
                );
                if ws.feed(Message::Text(msg.into())).await.is_err() {
                    st.closed = true;
                    break;
                }
                outstanding.push_back(id);
                st.sent += 1;
                fed = true;
            }
            if st.closed {
                break;
            }
            if fed && ws.flush().await.is_err() {
                st.closed = true;
                break;
            }
        } else if outstanding.is_empty() {
            break;
        }
        // After the end, wait for the acks still in flight (bounded).
        let wait = if now < plan.end {
            ack_timeout
        } else {
            ack_timeout.min((plan.end + ack_timeout).saturating_duration_since(now))
        };
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => {
                if Instant::now() >= plan.end || last_progress.elapsed() >= ack_timeout {
                    st.lost += outstanding.len() as u64;
                    outstanding.clear();
                    last_progress = Instant::now();
                    if Instant::now() >= plan.end {
                        break;
                    }
                }
            }
            Ok(None) | Ok(Some(Err(_))) => {
                st.closed = true;
                break;
            }
            Ok(Some(Ok(m))) => {
                if let Message::Close(f) = &m {
                    st.closed = true;
                    st.close_reason = f.as_ref().map(|f| format!("{}:{}", f.code, f.reason));
                    break;
                }
                if is_error(&m) {
                    st.errors += 1;
                    continue;
                }
                let Some(v) = delivery(&m) else { continue };
                let at = Instant::now();
                while let Some(&front) = outstanding.front() {
                    if front > v.id {
                        break;
                    }
                    outstanding.pop_front();
                    if front < v.id {
                        st.lost += 1;
                    }
                }
                if v.id > highest_acked {
                    highest_acked = v.id;
                    last_progress = at;
                    if plan.measured(at) {
                        st.acked.push(v.id);
                    }
                }
            }
        }
    }
    let _ = last.send(Some(highest_acked));
    let _ = ws.close(None).await;
    st
}

#[derive(Default)]
struct SubStats {
    /// Every id received, in arrival order.
    ids: Vec<u64>,
    /// Push→delivery µs for pushes sent in the window.
    latencies: Vec<u32>,
    /// Deliveries received inside the window.
    in_window: u64,
    closed: bool,
    close_reason: Option<String>,
}

async fn subscriber(
    plan: Arc<Plan>,
    mut ws: Ws,
    drain: Duration,
    mut last: watch::Receiver<Option<u64>>,
) -> SubStats {
    let mut st = SubStats::default();
    let stop = plan.end + drain;
    let mut highest: u64 = 0;
    // The publisher's highest acked id, once it is done.
    let mut final_id: Option<u64> = None;
    loop {
        if final_id.is_none() {
            final_id = *last.borrow();
        }
        if final_id.is_some_and(|l| highest >= l) {
            break;
        }
        let left = stop.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let m = if final_id.is_some() {
            tokio::time::timeout(left, ws.next()).await
        } else {
            tokio::select! {
                m = tokio::time::timeout(left, ws.next()) => m,
                r = last.changed() => {
                    if r.is_err() {
                        // The publisher is gone without a last id.
                        final_id = Some(u64::MAX);
                    }
                    continue;
                }
            }
        };
        let m = match m {
            Err(_) => break,
            Ok(None) | Ok(Some(Err(_))) => {
                st.closed = true;
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        if let Message::Close(f) = &m {
            st.closed = true;
            st.close_reason = f.as_ref().map(|f| format!("{}:{}", f.code, f.reason));
            break;
        }
        let Some(v) = delivery(&m) else { continue };
        let at = Instant::now();
        highest = highest.max(v.id);
        st.ids.push(v.id);
        if plan.measured(at) {
            st.in_window += 1;
        }
        let sent = plan.base + Duration::from_micros(v.t);
        if plan.measured(sent) {
            let us = at.saturating_duration_since(sent).as_micros();
            st.latencies.push(us.min(u32::MAX as u128) as u32);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    st
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// How many of `want` (ascending) are not in `got`.
fn missing(want: &[u64], got: &mut [u64]) -> u64 {
    got.sort_unstable();
    want.iter()
        .filter(|id| got.binary_search(id).is_err())
        .count() as u64
}

async fn new_room(addr: SocketAddr) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Room {
        room: String,
    }
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .post(format!("http://{addr}/new"))
        .send()
        .await
        .context("POST /new")?;
    if !r.status().is_success() {
        bail!("POST /new on {addr}: {}", r.status());
    }
    Ok(r.json::<Room>().await.context("POST /new body")?.room)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.subs == 0 || args.window == 0 || args.keys == 0 {
        bail!("--subs, --window and --keys must be at least 1");
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0 && args.ack_timeout > 0.0) {
        bail!("--duration and --ack-timeout must be positive, --warmup and --drain not negative");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let room = new_room(args.addrs[0]).await?;
        let mut subs = Vec::with_capacity(args.subs);
        for idx in 0..args.subs {
            let addr = args.addrs[idx % args.addrs.len()];
            subs.push(connect(addr, &room).await?);
        }
        let pub_ws = connect(args.addrs[0], &room).await?;
        // Let every socket join its node's room before the first push.
        tokio::time::sleep(Duration::from_millis(300)).await;

        let base = Instant::now();
        let measure_from = base + Duration::from_secs_f64(args.warmup);
        let plan = Arc::new(Plan {
            base,
            measure_from,
            end: measure_from + Duration::from_secs_f64(args.duration),
        });
        let (last_tx, last_rx) = watch::channel(None);
        let sub_tasks: Vec<_> = subs
            .into_iter()
            .map(|ws| {
                tokio::spawn(subscriber(
                    plan.clone(),
                    ws,
                    Duration::from_secs_f64(args.drain),
                    last_rx.clone(),
                ))
            })
            .collect();
        let p = publisher(
            plan.clone(),
            pub_ws,
            args.window,
            args.keys,
            Duration::from_secs_f64(args.ack_timeout),
            last_tx,
        )
        .await;

        let mut reasons = BTreeMap::<String, u64>::new();
        let mut lat = Vec::new();
        let (mut delivered, mut missed, mut closed) = (0u64, 0u64, 0u64);
        for t in sub_tasks {
            let mut s = t.await?;
            delivered += s.in_window;
            missed += missing(&p.acked, &mut s.ids);
            if s.closed {
                closed += 1;
                let r = s.close_reason.unwrap_or_else(|| "no-close-frame".into());
                *reasons.entry(r).or_default() += 1;
            }
            lat.extend(s.latencies);
        }
        if p.closed {
            closed += 1;
            let r = p.close_reason.clone().unwrap_or_else(|| "no-close-frame".into());
            *reasons.entry(format!("publisher {r}")).or_default() += 1;
        }
        lat.sort_unstable();
        let acked = p.acked.len() as u64;
        let acked_per_s = acked as f64 / args.duration;
        let deliveries_per_s = delivered as f64 / args.duration;
        let why = if reasons.is_empty() {
            "-".to_string()
        } else {
            reasons
                .iter()
                .map(|(k, v)| format!("{v}x{k}"))
                .collect::<Vec<_>>()
                .join(";")
                .replace(char::is_whitespace, "_")
        };
        let addrs = args
            .addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        eprintln!(
            "{} subs={} window={} acked/s={acked_per_s:.1} deliveries/s={deliveries_per_s:.1} \
             p50={:.3}ms p99={:.3}ms missing={missed} closed={closed} pub_lost={} errors={} ({why})",
            args.label,
            args.subs,
            args.window,
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            p.lost,
            p.errors,
        );
        println!(
            "RESULT system={} subs={} window={} addrs={addrs} duration_s={} sent={} acked={acked} \
             acked_per_s={acked_per_s:.1} deliveries={delivered} deliveries_per_s={deliveries_per_s:.1} \
             expected_deliveries={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} \
             missing={missed} closed={closed} pub_lost={} errors={} close_reasons={why}",
            args.label,
            args.subs,
            args.window,
            args.duration,
            p.sent,
            acked * args.subs as u64,
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
            p.lost,
            p.errors,
        );
        anyhow::Ok(())
    })
}
