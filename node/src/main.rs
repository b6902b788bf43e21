//! The `raftmesh` binary: parses flags and calls the library — `serve` (the
//! default) runs a node, `cluster …` talks to a running cluster. Everything
//! else lives in `raftmesh_node`; anyhow lives only here.

use std::time::Duration;

use clap::{Parser, Subcommand};
use raftmesh_node::admin::{self, Op};
use raftmesh_node::{Listeners, ServeArgs};

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
    let result = rt.block_on(run(cli));
    // Wait for tasks still holding store handles to be dropped.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // No arguments: one node on embedded defaults, still honouring
        // RAFTMESH_* variables.
        None => match Cli::parse_from(["raftmesh", "serve"]).command {
            Some(Command::Serve(args)) => serve(*args).await,
            _ => unreachable!("serve parses"),
        },
        Some(Command::Serve(args)) => serve(*args).await,
        Some(Command::Cluster { endpoint, op }) => {
            let op = match op {
                ClusterOp::Status => Op::Status,
                ClusterOp::AddLearner {
                    node_id,
                    grpc_addr,
                    http_addr,
                    timeout,
                } => Op::AddLearner {
                    node_id,
                    grpc_addr,
                    http_addr,
                    timeout: Duration::from_secs(timeout),
                },
                ClusterOp::ChangeMembership {
                    voters,
                    force,
                    timeout,
                } => Op::ChangeMembership {
                    voters,
                    force,
                    timeout: Duration::from_secs(timeout),
                },
            };
            Ok(admin::run(&endpoint, op).await?)
        }
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
    let listeners = Listeners::bind(&cfg).await?;
    raftmesh_node::run(cfg, listeners, async {
        if let Err(e) = wait_for_signal().await {
            tracing::error!("waiting for a signal: {e}");
        }
    })
    .await?;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
