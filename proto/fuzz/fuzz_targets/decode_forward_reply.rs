//! A `Forward` reply as the follower decodes it (`node/src/node.rs`,
//! `Node::route`): the protobuf `ForwardReply`, then its `written` bytes (a
//! write's outcome) or, when those are empty, its `result` JSON. Never a
//! panic; what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use raftmesh_proto::codec::{decode_written, encode_written};
use raftmesh_proto::{pb, ClusterError, ForwardReplyBody};

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = pb::ForwardReply::decode(data) else {
        return;
    };
    // The same choice `route` makes.
    if !reply.written.is_empty() {
        let Ok((index, result)) = decode_written(&reply.written) else {
            return;
        };
        let back = decode_written(&encode_written(index, &result)).expect("round trip");
        assert_eq!(back, (index, result));
    } else {
        let Ok(r) = serde_json::from_slice::<Result<ForwardReplyBody, ClusterError>>(&reply.result)
        else {
            return;
        };
        // ForwardReplyBody has no PartialEq: compare what it serializes to.
        let json = serde_json::to_vec(&r).expect("a reply serializes");
        let back: Result<ForwardReplyBody, ClusterError> =
            serde_json::from_slice(&json).expect("a serialized reply decodes");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&r).unwrap()
        );
    }
});
