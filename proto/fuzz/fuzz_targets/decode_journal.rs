//! A journal record (`0x01` + protobuf), read from RocksDB and from
//! snapshots a leader sends. Never a panic; what decodes round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_proto::codec::{decode_journal, encode_journal};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = decode_journal(data) else {
        return;
    };
    let bytes = encode_journal(&record);
    assert_eq!(
        decode_journal(&bytes).expect("an encoded record decodes"),
        record
    );
});
