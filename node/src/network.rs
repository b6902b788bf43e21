//! The client side of inter-node gRPC: openraft's network and the
//! forwarding / status calls, over one reused channel per peer address.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, StorageIOError, Vote};
use raftmesh_proto::pb::raft_service_client::RaftServiceClient;
use raftmesh_proto::pb::{self, RaftPayload, SnapshotChunk};
use raftmesh_proto::{NodeId, NodeInfo, TypeConfig, CLUSTER_ID_HEADER};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::SeekFrom;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::transport::{Channel, Endpoint};

use crate::classify::{self, Delivery};
use crate::identity::Identity;

/// Snapshot bytes per streamed chunk when openraft names no size (it always
/// passes its `snapshot_max_chunk_size`).
const DEFAULT_SNAPSHOT_CHUNK: usize = 1 << 20;
/// HTTP/2 flow-control windows for inter-node channels (both ends).
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
pub const H2_CONNECTION_WINDOW: u32 = 32 << 20;
/// gRPC message size limit. An AppendEntries carries at most
/// `MAX_MESSAGE_BYTES / max_entry_bytes` entries (see `Node::start`), so a
/// batch of the largest entries still fits in one message.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// One lazily connected channel per address, shared by Raft replication and
/// forwarding. tonic reconnects a broken channel on the next call.
#[derive(Clone, Default)]
pub struct Channels {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
    /// Cuts this node off the network (both ways, with the service's check):
    /// the in-process test cluster's partition.
    isolated: Arc<AtomicBool>,
}

impl Channels {
    pub fn set_isolated(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, tonic::Status> {
        if self.is_isolated() {
            // Shaped like a refused connection: nothing was sent.
            return Err(tonic::Status::from_error(Box::new(tonic::ConnectError(
                format!("this node is isolated; not dialing {addr}").into(),
            ))));
        }
        let mut map = self.inner.lock().expect("channel map poisoned");
        let ch = match map.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ep = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| {
                        tonic::Status::invalid_argument(format!("bad address {addr}: {e}"))
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    // Raft batches and snapshot chunks are larger than h2's
                    // default 64 KiB windows; waiting for WINDOW_UPDATEs
                    // would stall them.
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONNECTION_WINDOW)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                // Lazy: a peer whose DNS name does not resolve yet is retried
                // on every call instead of failing startup.
                let ch = ep.connect_lazy();
                map.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        Ok(RaftServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft messages serialize")
}

/// Marks a request with this node's cluster id so a node of another cluster
/// refuses it, and a node joining its first cluster learns which.
pub fn stamp<T>(req: &mut tonic::Request<T>, identity: &Identity) {
    if let Some(id) = identity.cluster_id() {
        if let Ok(v) = id.parse() {
            req.metadata_mut().insert(CLUSTER_ID_HEADER, v);
        }
    }
}

/// When the leader last had an `AppendEntries` accepted by each peer.
/// openraft 0.9 reports how far a follower matched, not when it last
/// answered; promoting a learner needs both (a node that matched long ago
/// and went silent must not become a voter).
#[derive(Clone, Default)]
pub struct Contacts {
    inner: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Contacts {
    fn record(&self, peer: NodeId) {
        self.inner
            .lock()
            .expect("contacts poisoned")
            .insert(peer, Instant::now());
    }

    /// Time since `peer` last accepted an append, if it ever did.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.inner
            .lock()
            .expect("contacts poisoned")
            .get(&peer)
            .map(Instant::elapsed)
    }
}

pub struct NetworkFactory {
    pub channels: Channels,
    pub identity: Arc<Identity>,
    pub contacts: Contacts,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork {
            target,
            addr: node.grpc_addr.clone(),
            channels: self.channels.clone(),
            identity: self.identity.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

/// The state of one snapshot send: the file and how far it was read.
struct ChunkReader {
    file: tokio::fs::File,
    /// Vote and metadata, sent in the first chunk only.
    header: Option<Vec<u8>>,
    sent: u64,
    len: u64,
    finished: bool,
    /// A read failure, reported instead of the receiver's "stream ended".
    failed: Arc<Mutex<Option<std::io::Error>>>,
}

/// openraft's view of one peer.
pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    channels: Channels,
    identity: Arc<Identity>,
    contacts: Contacts,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>;

impl PeerNetwork {
    fn map_status<E: std::error::Error>(&self, s: tonic::Status) -> RpcErr<E> {
        if classify::delivery(&s) == Delivery::NotSent {
            RPCError::Unreachable(Unreachable::new(&s))
        } else {
            RPCError::Network(NetworkError::new(&s))
        }
    }

    /// One unary call with a JSON-encoded openraft request.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let msg = RaftPayload {
            data: encode(req),
            error: Vec::new(),
        };
        self.call(msg, ttl, call).await
    }

    /// One unary call with request message `msg`, whose reply is a
    /// [`RaftPayload`]: openraft's answer, or its error, as JSON.
    async fn call<M, Resp, F, Fut>(&self, msg: M, ttl: Duration, call: F) -> Result<Resp, RpcErr>
    where
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self
            .channels
            .client(&self.addr)
            .map_err(|s| self.map_status(s))?;
        let mut request = tonic::Request::new(msg);
        request.set_timeout(ttl);
        stamp(&mut request, &self.identity);
        let reply = call(client, request)
            .await
            .map_err(|s| self.map_status(s))?
            .into_inner();
        if !reply.error.is_empty() {
            let err: RaftError<NodeId> = serde_json::from_slice(&reply.error)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, err)));
        }
        serde_json::from_slice(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // Entries in the binary log codec: values as bytes, not JSON in JSON.
        let msg = raftmesh_proto::codec::encode_append(&rpc);
        let resp = self
            .call(msg, option.hard_ttl(), |mut c, r| async move {
                c.append(r).await
            })
            .await?;
        if matches!(
            resp,
            AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
        ) {
            self.contacts.record(self.target);
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.unary(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    /// Streams the snapshot file in chunks of openraft's
    /// `snapshot_max_chunk_size` over one client-streaming call, reading
    /// one chunk at a time as the stream is polled (h2 flow control paces
    /// it), so the body is never in memory whole. The first chunk carries
    /// the vote and metadata; the receiver installs only after the last.
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let signature = snapshot.meta.signature();
        let read_err = |e: std::io::Error| {
            StreamingError::StorageError(
                StorageIOError::read_snapshot(Some(signature.clone()), &e).into(),
            )
        };
        let header = encode(&(vote, snapshot.meta.clone()));
        let chunk_size = option
            .snapshot_chunk_size()
            .unwrap_or(DEFAULT_SNAPSHOT_CHUNK)
            .max(1) as u64;
        let mut file = *snapshot.snapshot;
        file.seek(SeekFrom::Start(0)).await.map_err(read_err)?;
        let len = file.metadata().await.map_err(read_err)?.len();
        let failed: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
        let chunks = futures::stream::unfold(
            ChunkReader {
                file,
                header: Some(header),
                sent: 0,
                len,
                finished: false,
                failed: failed.clone(),
            },
            move |mut r| async move {
                if r.finished {
                    return None;
                }
                let n = chunk_size.min(r.len - r.sent);
                let mut data = vec![0; n as usize];
                if let Err(e) = r.file.read_exact(&mut data).await {
                    // Ends the stream without `done`: the receiver discards it.
                    *r.failed.lock().expect("poisoned") = Some(e);
                    return None;
                }
                r.sent += n;
                r.finished = r.sent == r.len;
                let chunk = SnapshotChunk {
                    header: r.header.take().unwrap_or_default(),
                    data,
                    done: r.finished,
                };
                Some((chunk, r))
            },
        );

        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|s| StreamingError::Unreachable(Unreachable::new(&s)))?;
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(option.hard_ttl().max(Duration::from_secs(30)));
        stamp(&mut request, &self.identity);
        let send = client.install_snapshot(request);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        if let Some(e) = failed.lock().expect("poisoned").take() {
            return Err(read_err(e));
        }
        let reply = reply
            .map_err(|s| {
                if classify::delivery(&s) == Delivery::NotSent {
                    StreamingError::Unreachable(Unreachable::new(&s))
                } else {
                    StreamingError::Network(NetworkError::new(&s))
                }
            })?
            .into_inner();
        if !reply.error.is_empty() {
            let err: Fatal<NodeId> = serde_json::from_slice(&reply.error)
                .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            return Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                err,
            )));
        }
        serde_json::from_slice(&reply.data)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    /// Exponential backoff for an unreachable peer, capped so a restarted
    /// node is found again within a couple of seconds.
    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|i: u32| Duration::from_millis((50u64 << i.min(5)).min(2_000))))
    }
}

/// Asks a peer who it is (bootstrap).
/// Asks the node at `addr` to snapshot and purge its own log.
pub async fn compact(
    channels: &Channels,
    addr: &str,
    force_snapshot: bool,
    timeout: Duration,
) -> Result<pb::CompactReply, tonic::Status> {
    let mut client = channels.client(addr)?;
    let mut req = tonic::Request::new(pb::CompactRequest { force_snapshot });
    req.set_timeout(timeout);
    Ok(client.compact(req).await?.into_inner())
}

pub async fn status(
    channels: &Channels,
    addr: &str,
    timeout: Duration,
) -> Result<pb::StatusReply, tonic::Status> {
    let mut client = channels.client(addr)?;
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(timeout);
    Ok(client.status(req).await?.into_inner())
}
