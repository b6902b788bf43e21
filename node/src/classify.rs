//! The one place openraft's and tonic's errors become [`ClusterError`]s.
//! What a client may do next depends on one question — could the request
//! have taken effect? — and that is decided here from the error's type and
//! code, never from its text.

use std::error::Error as _;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use raftmesh_proto::{ClusterError, LeaderHint, NodeId, NodeInfo};

/// Whether a failed RPC may have reached (and been acted on by) its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// No connection could be made: nothing was sent.
    NotSent,
    /// The peer answered that it refused the request before acting on it
    /// (it could not decode it, belongs to another cluster, ...).
    Refused,
    /// Anything else: sent, and its fate is unknown.
    Maybe,
}

/// Classifies a tonic failure. A connect failure is recognized by tonic's
/// `ConnectError` in the status's source chain; refusals by the codes our
/// own service answers before it acts.
pub fn delivery(status: &tonic::Status) -> Delivery {
    let mut source = status.source();
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return Delivery::NotSent;
        }
        source = e.source();
    }
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unimplemented
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated => Delivery::Refused,
        _ => Delivery::Maybe,
    }
}

/// A failed Forward of a write (or membership step) to `leader`.
pub fn forward_failure(status: &tonic::Status, leader: LeaderHint) -> ClusterError {
    match delivery(status) {
        Delivery::NotSent => ClusterError::NoLeader {
            message: format!("leader {leader} unreachable: {}", status.message()),
            leader: Some(leader),
        },
        Delivery::Refused => ClusterError::NoLeader {
            message: format!(
                "leader {leader} refused the request before acting on it: {}",
                status.message()
            ),
            leader: Some(leader),
        },
        Delivery::Maybe => ClusterError::unknown(format!(
            "sent to leader {leader}, then the call failed ({}): {}",
            status.code(),
            status.message()
        )),
    }
}

/// A failed read-index round trip: a read never changes anything, so any
/// failure only means "not now".
pub fn read_index_failure(status: &tonic::Status, leader: LeaderHint) -> ClusterError {
    ClusterError::not_ready(format!(
        "read index from leader {leader} failed: {}",
        status.message()
    ))
}

pub fn hint(id: NodeId, node: Option<&NodeInfo>) -> LeaderHint {
    LeaderHint {
        id,
        grpc_addr: node.map(|n| n.grpc_addr.clone()).unwrap_or_default(),
        http_addr: node.map(|n| n.http_addr.clone()).unwrap_or_default(),
    }
}

fn not_leader(f: &ForwardToLeader<NodeId, NodeInfo>) -> ClusterError {
    ClusterError::NotLeader {
        leader: f.leader_id.map(|id| hint(id, f.leader_node.as_ref())),
    }
}

pub type WriteErr = RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>;

/// openraft's answer to `client_write` / `change_membership`. A refusal
/// before the entry could commit is `NotLeader` (openraft also sends
/// `ForwardToLeader` for entries it truncated, and a truncated entry was
/// never committed); a node that stopped mid-way leaves the outcome unknown.
pub fn write_failure(e: WriteErr) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::rejected(e.to_string())
        }
        RaftError::Fatal(f) => ClusterError::unknown(format!(
            "the node stopped while the write was in flight: {f}"
        )),
    }
}

/// openraft's answer to a leadership confirmation for a read.
pub fn read_failure(e: RaftError<NodeId, CheckIsLeaderError<NodeId, NodeInfo>>) -> ClusterError {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(&f),
        other => {
            // The quorum error carries openraft's internal state: log it.
            tracing::debug!("read index: {other}");
            ClusterError::not_ready("leadership could not be confirmed for a read")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused connection is recognized by type, whatever tonic's text.
    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        let mut client = raftmesh_proto::pb::raft_service_client::RaftServiceClient::new(ch);
        let err = client
            .status(raftmesh_proto::pb::StatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(delivery(&err), Delivery::NotSent, "{err:?}");
        let e = forward_failure(&err, hint(2, None));
        assert!(
            e.is_retryable() && e.leader().is_some_and(|l| l.id == 2),
            "{e:?}"
        );
    }

    #[test]
    fn refusals_and_ambiguous_failures() {
        let undecodable = tonic::Status::invalid_argument("forward op: bad bytes");
        assert_eq!(delivery(&undecodable), Delivery::Refused);
        assert!(forward_failure(&undecodable, hint(1, None)).is_retryable());
        // "connection refused" in a message does not make it unsent.
        let timeout = tonic::Status::deadline_exceeded("tcp connect error: connection refused");
        assert_eq!(delivery(&timeout), Delivery::Maybe);
        assert!(forward_failure(&timeout, hint(1, None)).outcome_unknown());
    }
}
