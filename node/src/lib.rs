//! A raftmesh node as a library: configuration, the Raft instance over the
//! RocksDB store, the gRPC service and network (replication, forwarding to
//! the leader, status probes), routing and batching of writes and reads,
//! membership orchestration, the data dir's identity, and the
//! implementations of the gateway's seam traits. [`server::run`] serves a
//! node until shutdown; [`testing::start_cluster`] runs several in one
//! process for tests; [`admin`] is the client side of `raftmesh cluster`.
//!
//! This is the only crate that sees all others (`proto ← raft-store ← node →
//! gateway → proto`); nothing depends on it but the binary and its tests.
//! Errors are [`error::NodeError`]; `anyhow` lives only in the binary.

pub mod admin;
mod classify;
pub mod config;
pub mod error;
mod grpc;
mod identity;
mod network;
mod node;
mod read_index;
pub mod server;
pub mod testing;
mod version_gate;
mod write_batch;

pub use config::{Config, ServeArgs};
pub use error::NodeError;
pub use server::{run, Listeners, RunningNode};
