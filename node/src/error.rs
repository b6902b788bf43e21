//! The node's one error type: what can stop a node from starting or serving.
//! Cluster-level request failures are `raftmesh_proto::ClusterError`; this
//! enum is for the node itself (its data dir, its store, its config).

use std::path::{Path, PathBuf};

use raftmesh_raft_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file or directory operation failed; the message names the path,
    /// since "Read-only file system (os error 30)" alone says nothing useful.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something in the data dir is not what a raftmesh node wrote.
    #[error("data dir {}: {problem}", path.display())]
    DataDir { path: PathBuf, problem: String },
    /// The data dir belongs to another node or cluster.
    #[error(
        "data dir {} belongs to {stored}; refusing to use it as {wanted} \
         (start that node with its own data dir, or this one with an empty dir)",
        path.display()
    )]
    IdentityMismatch {
        path: PathBuf,
        stored: String,
        wanted: String,
    },
    /// RocksDB could not be opened or read.
    #[error("store in {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// Settings that would run but misbehave.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// openraft refused to start.
    #[error("starting Raft: {0}")]
    Raft(String),
    /// The node stopped serving: it cannot go on (an entry it cannot
    /// decode, a fatal Raft error); the reason says what to do.
    #[error("node stopped: {0}")]
    Halted(String),
    /// An admin request (`raftmesh cluster …`) failed or was refused.
    #[error("{0}")]
    Request(String),
}

impl NodeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
