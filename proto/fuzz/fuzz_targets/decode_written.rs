//! A forwarded write's outcome as the follower decodes it from the leader.
//! Never a panic; what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_proto::codec::{decode_written, encode_written};

fuzz_target!(|data: &[u8]| {
    let Ok((index, result)) = decode_written(data) else {
        return;
    };
    let back = decode_written(&encode_written(index, &result)).expect("encoded outcome decodes");
    assert_eq!(back, (index, result));
});
