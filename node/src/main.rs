//! The `raftmesh` binary: runs a node (`serve`, the default) or talks to a
//! running cluster (`cluster ...`). It owns configuration, the Raft
//! instance, the gRPC service and network, forwarding, and the gateway's
//! `Backend` implementation. Clap and anyhow live only here.

mod config;
mod grpc;
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
        /// Gateway URL of any member.
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
    /// Add a non-voting member and wait until it has caught up.
    AddLearner {
        #[arg(long)]
        node_id: u64,
        #[arg(long)]
        grpc_addr: String,
        #[arg(long, default_value = "")]
        http_addr: String,
    },
    /// Set the voting members, e.g. `--voters 1,2,4`; members left out are removed.
    ChangeMembership {
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<u64>,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
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

async fn cluster(endpoint: String, op: ClusterOp) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let base = endpoint.trim_end_matches('/');
    let resp = match op {
        ClusterOp::Status => http.get(format!("{base}/cluster?pretty")).send().await,
        ClusterOp::AddLearner {
            node_id,
            grpc_addr,
            http_addr,
        } => {
            http.post(format!("{base}/cluster/add-learner?pretty"))
                .json(&serde_json::json!({"node_id": node_id, "grpc_addr": grpc_addr, "http_addr": http_addr}))
                .send()
                .await
        }
        ClusterOp::ChangeMembership { voters } => {
            http.post(format!("{base}/cluster/change-membership?pretty"))
                .json(&serde_json::json!({ "voters": voters }))
                .send()
                .await
        }
    }
    .with_context(|| format!("contacting {base}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!("{body}");
    if !status.is_success() {
        anyhow::bail!("{base} answered {status}");
    }
    Ok(())
}
