//! The membership bodies as their routes read them, for the fuzz targets
//! (re-exported by [`crate::fuzzing`]); the body types stay private here.

use raftmesh_proto::{NodeId, NodeInfo, Retention};

use super::{AddLearnerBody, ChangeMembershipBody};
use crate::error::GatewayError;
use crate::json;

/// A `POST /cluster/add-learner` body: the node, its addresses, the timeout.
pub fn add_learner_body(bytes: &[u8]) -> Result<(NodeId, NodeInfo, u64), GatewayError> {
    let b: AddLearnerBody = json::parse_body(bytes, "an add-learner body")?;
    let node = NodeInfo {
        grpc_addr: b.grpc_addr,
        http_addr: b.http_addr,
        ..NodeInfo::default()
    };
    Ok((b.node_id, node, b.timeout_ms))
}

/// A `POST /cluster/change-membership` body: voters, force, timeout.
pub fn change_membership_body(bytes: &[u8]) -> Result<(Vec<NodeId>, bool, u64), GatewayError> {
    let b: ChangeMembershipBody = json::parse_body(bytes, "a change-membership body")?;
    Ok((b.voters, b.force, b.timeout_ms))
}

/// A `PUT /cluster/settings/retention/{domain}` body.
pub fn retention_body(bytes: &[u8]) -> Result<Retention, GatewayError> {
    json::parse_body(bytes, "a retention body")
}
