//! The inter-node RPC surface as a peer of another version (or a broken
//! one) meets it: what a node answers to requests it cannot use.

use raftmesh_node::testing::start_cluster;
use raftmesh_proto::pb::raft_service_client::RaftServiceClient;
use raftmesh_proto::pb::{AppendRequest, ForwardRequest};
use raftmesh_proto::{ClusterError, FEATURE_VERSION};

/// A forwarded op the leader cannot decode was not acted on: the answer
/// says so as data (retry-safe), not as a transport error the sender would
/// have to treat as "outcome unknown".
#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_forward_is_answered_as_not_applied() {
    let c = start_cluster(1).await.unwrap();
    let addr = format!("http://{}", c.node(1).grpc_addr);
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let reply = client
        .forward(ForwardRequest {
            op: b"{\"kind\":\"write\",\"cmd\":{\"op\":\"from_the_future\"}}".to_vec(),
            hops: 1,
            ..Default::default()
        })
        .await
        .expect("the call itself succeeds")
        .into_inner();
    let result: Result<serde_json::Value, ClusterError> =
        serde_json::from_slice(&reply.result).unwrap();
    let err = result.unwrap_err();
    assert!(err.is_retryable() && !err.outcome_unknown(), "{err:?}");
    assert!(err.to_string().contains("could not decode"), "{err}");

    // The same for a command in the binary codec that no release wrote.
    let reply = client
        .forward(ForwardRequest {
            hops: 1,
            cmd: vec![0x0a, 0x02, 0x7a, 0x00],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let result: Result<serde_json::Value, ClusterError> =
        serde_json::from_slice(&reply.result).unwrap();
    assert!(result.unwrap_err().is_retryable());
}

/// A Raft RPC from another cluster is refused and names both clusters.
#[tokio::test(flavor = "multi_thread")]
async fn raft_rpcs_from_another_cluster_are_refused() {
    let c = start_cluster(1).await.unwrap();
    let addr = format!("http://{}", c.node(1).grpc_addr);
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let mut req = tonic::Request::new(raftmesh_proto::pb::RaftPayload {
        data: b"{}".to_vec(),
        error: Vec::new(),
    });
    req.metadata_mut().insert(
        raftmesh_proto::CLUSTER_ID_HEADER,
        "someone-else".parse().unwrap(),
    );
    let err = client.vote(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("someone-else"), "{}", err.message());
}

/// A snapshot body the node cannot read is refused before openraft sees it,
/// with an error naming the format: release 0.1's bodies had no header, and
/// a later release's version is named. The node keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_body_of_an_unknown_format_is_refused_by_name() {
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};
    use raftmesh_proto::pb::SnapshotChunk;
    use raftmesh_proto::NodeInfo;

    let c = start_cluster(1).await.unwrap();
    let addr = format!("http://{}", c.node(1).grpc_addr);
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let meta: SnapshotMeta<u64, NodeInfo> = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(9, 2), 100)),
        last_membership: Default::default(),
        snapshot_id: "9-2-100-0".into(),
    };
    let header = serde_json::to_vec(&(Vote::new_committed(9, 2), meta)).unwrap();
    let legacy = [&3u32.to_be_bytes()[..], b"k/a", &1u32.to_be_bytes(), b"1"].concat();
    let mut v3 = raftmesh_raft_store::SNAPSHOT_MAGIC.to_vec();
    v3.extend_from_slice(&3u32.to_be_bytes());
    v3.extend_from_slice(&[0; 32]);
    for (body, says) in [
        (legacy, "format version 2"),
        (v3, "format version 3 is not supported"),
    ] {
        // Split across two chunks, as a sender with a small chunk size would.
        let (a, b) = body.split_at(body.len() / 2);
        let chunks = vec![
            SnapshotChunk {
                header: header.clone(),
                data: a.to_vec(),
                done: false,
            },
            SnapshotChunk {
                header: Vec::new(),
                data: b.to_vec(),
                done: true,
            },
        ];
        let err = client
            .install_snapshot(tokio_stream::iter(chunks))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(says), "{}", err.message());
    }
    let status = client
        .status(raftmesh_proto::pb::StatusRequest {})
        .await
        .unwrap();
    assert_eq!(status.into_inner().node_id, 1);
}

/// A write from a newer node that this one cannot even decode is refused as
/// data, naming this node and both versions, not taken for a lost leader.
#[tokio::test(flavor = "multi_thread")]
async fn a_forward_needing_a_newer_version_is_refused_naming_this_node() {
    let c = start_cluster(1).await.unwrap();
    let addr = format!("http://{}", c.node(1).grpc_addr);
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let reply = client
        .forward(ForwardRequest {
            op: Vec::new(),
            hops: 1,
            cmd: vec![0x0a, 0x02, 0x7a, 0x00],
            cmd_version: FEATURE_VERSION + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let result: Result<serde_json::Value, ClusterError> =
        serde_json::from_slice(&reply.result).unwrap();
    let err = result.unwrap_err();
    assert!(matches!(err, ClusterError::Rejected { .. }), "{err:?}");
    let want = format!(
        "node 1 supports version {FEATURE_VERSION}; this write needs version {} — upgrade node 1 first",
        FEATURE_VERSION + 1
    );
    assert!(err.to_string().contains(&want), "{err}");
}

/// A follower sent an entry of a newer format stops: it says which entry
/// and what to do (in /cluster, and to every RPC), instead of refusing the
/// same append forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_sent_an_entry_it_cannot_decode_stops_serving() {
    let c = start_cluster(1).await.unwrap();
    let addr = format!("http://{}", c.node(1).grpc_addr);
    let mut client = RaftServiceClient::connect(addr).await.unwrap();
    let header = serde_json::json!({
        "vote": openraft::Vote::<u64>::new_committed(99, 7),
        "prev_log_id": openraft::LogId::new(openraft::CommittedLeaderId::new(99, 7), 40),
        "leader_commit": null,
    });
    let err = client
        .append(AppendRequest {
            header: serde_json::to_vec(&header).unwrap(),
            entries: vec![vec![0x03, 0x0a, 0x00]],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let reason = c
        .node(1)
        .running()
        .unwrap()
        .halted()
        .expect("node 1 stopped");
    for want in [
        "log entry 41: entry format version 3",
        &format!("supports up to version {FEATURE_VERSION}"),
        "upgrade this node",
    ] {
        assert!(reason.contains(want), "{reason}");
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/cluster", c.node(1).http_addr);
    let status: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["halted"].as_str(), Some(reason.as_str()), "{status}");
    let ready = http
        .get(format!("http://{}/ready", c.node(1).http_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let err = client
        .status(raftmesh_proto::pb::StatusRequest {})
        .await
        .unwrap_err();
    assert!(err.message().contains("upgrade this node"), "{err:?}");
}
