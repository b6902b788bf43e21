//! The `raftmesh` binary: runs a node (`serve`, the default) or talks to a
//! running cluster (`cluster ...`). It owns configuration, the Raft
//! instance, the gRPC service and network, forwarding, and the gateway's
//! `Backend` implementation. Clap and anyhow live only here.

mod config;
mod error;
mod grpc;
mod identity;
mod network;
mod node;
mod read_index;
mod write_batch;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmesh_proto::pb::raft_service_server::RaftServiceServer;
use tokio::sync::watch;

use crate::config::ServeArgs;
use crate::node::Node;

#[derive(Parser)]
#[command(
    name = "raftmesh",
    version,
    about = "A Raft-replicated store (pm3 KV API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default, on embedded defaults, when no command is given).
    Serve(Box<ServeArgs>),
    /// Inspect or change cluster membership through a node's gateway.
    Cluster {
        /// Gateway of any member: a URL, or HOST:PORT (http is assumed).
        #[arg(
            long,
            global = true,
            env = "RAFTMESH_ENDPOINT",
            default_value = "http://127.0.0.1:8080"
        )]
        endpoint: String,
        #[command(subcommand)]
        op: ClusterOp,
    },
}

#[derive(Subcommand)]
enum ClusterOp {
    /// Print /cluster of the endpoint node.
    Status,
    /// Add a non-voting member and wait until it has caught up to the
    /// leader's commit index as of the call. Refused if the node does not
    /// answer at --grpc-addr.
    AddLearner {
        /// Id the new node was started with (`serve --node-id`).
        #[arg(long)]
        node_id: u64,
        /// gRPC address the other nodes dial to reach it.
        #[arg(long)]
        grpc_addr: String,
        /// HTTP address clients use for it (shown in /cluster and /peers).
        #[arg(long, default_value = "")]
        http_addr: String,
        /// Seconds to wait for it to catch up before failing.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Set the voting members, e.g. `--voters 1,2,4`; members left out are
    /// removed (through learner first, so they stop campaigning). New voters
    /// must be learners that caught up and answer.
    ChangeMembership {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
        /// Promote learners even if they lag or went silent.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for new voters to catch up before refusing.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let result = run(&rt, cli);
    // Wait for tasks still holding store handles to be dropped.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

fn run(rt: &tokio::runtime::Runtime, cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            // No arguments: one node on embedded defaults, still honouring
            // RAFTMESH_* variables.
            let Cli {
                command: Some(Command::Serve(args)),
            } = Cli::parse_from(["raftmesh", "serve"])
            else {
                unreachable!("serve parses")
            };
            rt.block_on(serve(*args))
        }
        Some(Command::Serve(args)) => rt.block_on(serve(*args)),
        Some(Command::Cluster { endpoint, op }) => rt.block_on(cluster(endpoint, op)),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in a log file.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let cfg = args.resolve()?;
    tracing::info!(?cfg, "starting raftmesh node");
    let grpc_listener = tokio::net::TcpListener::bind(&cfg.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", cfg.grpc_addr))?;
    let http_listener = tokio::net::TcpListener::bind(&cfg.http_addr)
        .await
        .with_context(|| format!("binding HTTP address {}", cfg.http_addr))?;
    let gw_cfg = raftmesh_gateway::GatewayConfig {
        max_key_bytes: cfg.max_key_bytes,
        max_value_bytes: cfg.max_value_bytes,
    };
    let node = Node::start(cfg).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let svc = RaftServiceServer::new(grpc::Service { node: node.clone() })
        .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::MAX_MESSAGE_BYTES);
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(network::H2_STREAM_WINDOW)
            .initial_connection_window_size(network::H2_CONNECTION_WINDOW)
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                stopped(stop_rx.clone()),
            ),
    );
    let http_task = tokio::spawn(raftmesh_gateway::run(
        http_listener,
        node.clone(),
        gw_cfg,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(node.clone().bootstrap(stop_rx.clone()));
    tokio::spawn(node.clone().watch_state(stop_rx.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    let _ = grpc_task.await;
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    // Release the last handles on RocksDB here, on this thread, so the
    // database closes before the process exits rather than racing its
    // background threads against exit-time destructors.
    drop(node);
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// `--endpoint` as a base URL: `HOST:PORT` means `http://HOST:PORT`.
fn endpoint_url(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let url = if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    };
    let parsed = reqwest::Url::parse(&url)
        .with_context(|| format!("--endpoint {endpoint:?} is not a URL or HOST:PORT"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        anyhow::bail!("--endpoint {endpoint:?} must be http://HOST:PORT or HOST:PORT");
    }
    Ok(url)
}

async fn cluster(endpoint: String, op: ClusterOp) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = endpoint_url(&endpoint)?;
    let base = base.as_str();
    let (path, body, watch) = match op {
        ClusterOp::Status => {
            let resp = http
                .get(format!("{base}/cluster?pretty"))
                .send()
                .await
                .with_context(|| format!("contacting {base}"))?;
            return finish(base, resp).await;
        }
        ClusterOp::AddLearner {
            node_id,
            grpc_addr,
            http_addr,
            timeout,
        } => (
            "add-learner",
            serde_json::json!({"node_id": node_id, "grpc_addr": grpc_addr,
                "http_addr": http_addr, "timeout_ms": timeout * 1000}),
            vec![node_id],
        ),
        ClusterOp::ChangeMembership {
            voters,
            force,
            timeout,
        } => (
            "change-membership",
            serde_json::json!({ "voters": voters, "force": force, "timeout_ms": timeout * 1000 }),
            voters,
        ),
    };
    let request = http
        .post(format!("{base}/cluster/{path}?pretty"))
        .json(&body)
        .send();
    tokio::pin!(request);
    // While the change runs, show how far the members it waits for are.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    let resp = loop {
        tokio::select! {
            r = &mut request => break r.with_context(|| format!("contacting {base}"))?,
            _ = tick.tick() => print_progress(&http, base, &watch).await,
        }
    };
    finish(base, resp).await
}

async fn print_progress(http: &reqwest::Client, base: &str, ids: &[u64]) {
    let Ok(resp) = http
        .get(format!("{base}/cluster/progress"))
        .timeout(std::time::Duration::from_millis(900))
        .send()
        .await
    else {
        return;
    };
    let Ok(p) = resp.json::<raftmesh_proto::ClusterProgress>().await else {
        return;
    };
    // Voters already in place are not what the change waits for.
    let parts: Vec<String> = ids
        .iter()
        .filter(|id| p.member(**id).is_none_or(|m| !m.voter))
        .map(|id| match p.member(*id) {
            None => format!("node {id}: not a member yet"),
            Some(m) => format!(
                "node {id}: matched {} (leader committed {}), last append {}",
                m.matched_index
                    .map_or_else(|| "nothing".into(), |i| i.to_string()),
                p.committed_index,
                m.last_contact_ms
                    .map_or_else(|| "never".into(), |c| format!("{c} ms ago")),
            ),
        })
        .collect();
    eprintln!("waiting: {}", parts.join("; "));
}

async fn finish(base: &str, resp: reqwest::Response) -> anyhow::Result<()> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!("{body}");
    if !status.is_success() {
        anyhow::bail!("{base} answered {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::endpoint_url;

    #[test]
    fn endpoint_without_scheme_is_http() {
        assert_eq!(
            endpoint_url("127.0.0.1:8082").unwrap(),
            "http://127.0.0.1:8082"
        );
        assert_eq!(endpoint_url("http://n1:8080/").unwrap(), "http://n1:8080");
        let e = endpoint_url("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("ftp://x:1"), "{e}");
    }
}
