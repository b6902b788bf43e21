//! What a follower decodes from a leader: an `Append` request (protobuf
//! `AppendRequest` as it arrives: a JSON header and codec entries) or, when
//! the bytes start with `{`, a 0.1 leader's `AppendEntries` JSON. Never a
//! panic; what decodes re-encodes as an `Append` that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use raftmesh_proto::{codec, legacy, pb};

fuzz_target!(|data: &[u8]| {
    // `{` is never the first byte of an `AppendRequest` (field 15, a group).
    let req = if data.first() == Some(&b'{') {
        match legacy::decode_append(data) {
            Ok(r) => r,
            Err(_) => return,
        }
    } else {
        let Ok(msg) = pb::AppendRequest::decode(data) else {
            return;
        };
        match codec::decode_append(msg) {
            Ok(r) => r,
            Err(_) => return,
        }
    };
    let wire = codec::encode_append(&req);
    let back = codec::decode_append(pb::AppendRequest::decode(&*wire.encode_to_vec()).unwrap())
        .expect("an encoded request decodes");
    assert_eq!(back.vote, req.vote);
    assert_eq!(back.prev_log_id, req.prev_log_id);
    assert_eq!(back.leader_commit, req.leader_commit);
    assert_eq!(back.entries, req.entries);
});
