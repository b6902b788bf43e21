//! The server side of inter-node gRPC: `RaftService`.

use std::sync::Arc;

use openraft::{Snapshot, SnapshotMeta, Vote};
use raftmesh_proto::pb::raft_service_server::RaftService;
use raftmesh_proto::pb::{
    AppendRequest, ForwardReply, ForwardRequest, RaftPayload, SnapshotChunk, StatusReply,
    StatusRequest,
};
use raftmesh_proto::{
    ClusterError, ForwardOp, ForwardReplyBody, NodeId, NodeInfo, CLUSTER_ID_HEADER, FEATURE_VERSION,
};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::node::Node;

pub struct Service {
    pub node: Arc<Node>,
}

impl Service {
    /// Refuses a request from another cluster; a node that has joined none
    /// yet adopts the sender's cluster (a new member learns it from its
    /// leader's first RPC). Requests without the header come from nodes of
    /// a cluster formed before cluster ids existed.
    fn admit(&self, meta: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.serving()?;
        let Some(theirs) = meta.get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        match self.node.identity.adopt_cluster(theirs) {
            Ok(true) => {
                tracing::info!("this node now belongs to cluster {theirs}");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                tracing::warn!("refused a request: {e}");
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }
}

impl Service {
    /// Refuses everything while isolated (tests) or once the node stopped.
    fn serving(&self) -> Result<(), Status> {
        if self.node.is_isolated() {
            return Err(Status::unavailable("this node is isolated"));
        }
        if let Some(reason) = self.node.halted() {
            return Err(Status::unavailable(format!(
                "node {} stopped serving: {reason}",
                self.node.id
            )));
        }
        Ok(())
    }
}

fn bad_request(what: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {e}"))
}

/// A Raft result as a payload: openraft errors travel inside the reply so
/// the caller can tell a remote Raft error from a transport failure.
fn payload<T: Serialize, E: Serialize>(r: Result<T, E>) -> Result<Response<RaftPayload>, Status> {
    let encode =
        |v: Result<Vec<u8>, serde_json::Error>| v.map_err(|e| Status::internal(e.to_string()));
    Ok(Response::new(match r {
        Ok(v) => RaftPayload {
            data: encode(serde_json::to_vec(&v))?,
            error: Vec::new(),
        },
        Err(e) => RaftPayload {
            data: Vec::new(),
            error: encode(serde_json::to_vec(&e))?,
        },
    }))
}

#[tonic::async_trait]
impl RaftService for Service {
    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.admit(req.metadata())?;
        let rpc = serde_json::from_slice(&req.into_inner().data)
            .map_err(|e| bad_request("vote request", e))?;
        payload(self.node.raft.vote(rpc).await)
    }

    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(req.metadata())?;
        self.node.note_append_received();
        // JSON with 0.1's command shapes: a 0.1 leader replicating to this
        // (upgraded) follower.
        let rpc = raftmesh_proto::legacy::decode_append(&req.into_inner().data)
            .map_err(|e| bad_request("append-entries request", e))?;
        payload(self.node.raft.append_entries(rpc).await)
    }

    async fn append(&self, req: Request<AppendRequest>) -> Result<Response<RaftPayload>, Status> {
        self.admit(req.metadata())?;
        self.node.note_append_received();
        let rpc = raftmesh_proto::codec::decode_append(req.into_inner()).map_err(|e| {
            if e.needs_upgrade() {
                // The leader will send this entry again and again: this
                // node cannot follow the cluster until it is upgraded.
                self.node.halt(format!(
                    "node {} cannot decode what the leader sent: {e}",
                    self.node.id
                ));
                Status::failed_precondition(e.to_string())
            } else {
                bad_request("append request", e)
            }
        })?;
        payload(self.node.raft.append_entries(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.admit(req.metadata())?;
        self.node.note_append_received();
        let mut stream = req.into_inner();
        let mut header: Option<(Vote<NodeId>, SnapshotMeta<NodeId, NodeInfo>)> = None;
        // The state machine's receiving file, opened once the header came.
        let mut file: Option<tokio::fs::File> = None;
        let (mut chunks, mut bytes) = (0u64, 0u64);
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if header.is_none() {
                header = Some(
                    serde_json::from_slice(&chunk.header)
                        .map_err(|e| bad_request("snapshot header", e))?,
                );
                let f = self
                    .node
                    .raft
                    .begin_receiving_snapshot()
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!("cannot receive a snapshot now: {e}"))
                    })?;
                file = Some(*f);
            }
            let f = file.as_mut().expect("opened with the header");
            f.write_all(&chunk.data)
                .await
                .map_err(|e| Status::internal(format!("writing a received snapshot: {e}")))?;
            chunks += 1;
            bytes += chunk.data.len() as u64;
            if chunk.done {
                done = true;
                break;
            }
        }
        let (Some((vote, meta)), Some(mut file), true) = (header, file, done) else {
            return Err(Status::aborted(
                "snapshot stream ended before its last chunk",
            ));
        };
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("writing a received snapshot: {e}")))?;
        // Refused here, a body this node cannot read (another format
        // version, corrupt, not the snapshot the header names) is an error
        // the sender logs; handed to openraft, its install would fail as a
        // fatal storage error.
        let file = raftmesh_raft_store::verify_received(file, &meta)
            .await
            .map_err(|e| {
                tracing::warn!("refused snapshot {} from the leader: {e}", meta.snapshot_id);
                Status::invalid_argument(format!(
                    "node {} refused snapshot {}: {e}",
                    self.node.id, meta.snapshot_id
                ))
            })?;
        tracing::info!(
            "received snapshot {} ({bytes} bytes in {chunks} chunks)",
            meta.snapshot_id
        );
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(file),
        };
        payload(self.node.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        self.admit(req.metadata())?;
        let req = req.into_inner();
        if req.cmd_version > FEATURE_VERSION {
            // A newer node's write: this node cannot even decode it.
            let id = self.node.id;
            let result: Result<ForwardReplyBody, _> = Err(ClusterError::rejected(format!(
                "node {id} supports version {FEATURE_VERSION}; this write needs version {} — \
                 upgrade node {id} first; nothing was proposed",
                req.cmd_version
            )));
            let bytes = serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
            return Ok(Response::new(ForwardReply {
                result: bytes,
                ..Default::default()
            }));
        }
        // An op this node cannot decode (another version's, or garbage) was
        // not acted on: say so as data, so the sender knows a retry is safe.
        let op = if !req.cmd.is_empty() {
            raftmesh_proto::codec::decode_cmd(&req.cmd)
                .map(|cmd| ForwardOp::Write { cmd })
                .map_err(|e| e.to_string())
        } else if !req.cmds.is_empty() {
            req.cmds
                .iter()
                .map(|c| raftmesh_proto::codec::decode_cmd(c))
                .collect::<Result<Vec<_>, _>>()
                .map(|cmds| ForwardOp::WriteSeq {
                    cmds,
                    order: req.order.clone(),
                })
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_slice::<ForwardOp>(&req.op).map_err(|e| e.to_string())
        };
        let result: Result<_, ClusterError> = match op {
            Ok(op) => self.node.route(op, req.hops).await,
            Err(e) => Err(ClusterError::NoLeader {
                message: format!(
                    "node {} could not decode the forwarded request: {e}",
                    self.node.id
                ),
                leader: None,
            }),
        };
        // A write's success goes back in the binary codec (its values as
        // bytes); everything else, small, as JSON.
        match &result {
            Ok(ForwardReplyBody::Written { index, result }) => {
                return Ok(Response::new(ForwardReply {
                    written: raftmesh_proto::codec::encode_written(*index, result),
                    ..Default::default()
                }));
            }
            Ok(ForwardReplyBody::WrittenSeq(seq)) => {
                return Ok(Response::new(ForwardReply {
                    written_seq: raftmesh_proto::codec::encode_written_seq(seq),
                    ..Default::default()
                }));
            }
            _ => {}
        }
        let bytes = serde_json::to_vec(&result).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardReply {
            result: bytes,
            ..Default::default()
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.serving()?;
        Ok(Response::new(self.node.status_reply().await))
    }

    async fn compact(
        &self,
        req: Request<raftmesh_proto::pb::CompactRequest>,
    ) -> Result<Response<raftmesh_proto::pb::CompactReply>, Status> {
        self.serving()?;
        let force = req.into_inner().force_snapshot;
        match self.node.compact_local(force).await {
            Ok(c) => Ok(Response::new((&c).into())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
