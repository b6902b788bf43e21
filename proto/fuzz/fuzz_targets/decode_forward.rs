//! A `Forward` request as the leader decodes it (`node/src/grpc.rs`,
//! `RaftService::forward`): the protobuf `ForwardRequest`, then its `cmd`
//! bytes as a command (a write) or, when `cmd` is empty, its `op` JSON as a
//! `ForwardOp`. Never a panic; what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use raftmesh_proto::codec::{decode_cmd, encode_cmd};
use raftmesh_proto::{pb, ForwardOp};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::ForwardRequest::decode(data) else {
        return;
    };
    // The same choice `forward` makes.
    if req.cmd.is_empty() {
        let Ok(op) = serde_json::from_slice::<ForwardOp>(&req.op) else {
            return;
        };
        // ForwardOp has no PartialEq: compare what it serializes to.
        let json = serde_json::to_vec(&op).expect("an op serializes");
        let back: ForwardOp = serde_json::from_slice(&json).expect("a serialized op decodes");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&op).unwrap()
        );
    } else {
        let Ok(cmd) = decode_cmd(&req.cmd) else {
            return;
        };
        assert_eq!(decode_cmd(&encode_cmd(&cmd)).expect("round trip"), cmd);
    }
});
