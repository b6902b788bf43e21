//! A log entry as stored in RocksDB and sent in `Append`: `0x02` + protobuf,
//! or release 0.1's JSON. Never a panic; what decodes re-encodes (always in
//! today's codec) to bytes that decode to the same entry; the size bound the
//! batcher uses never undercounts the command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;
use raftmesh_proto::codec::{cmd_len, decode_entry, encode_cmd, encode_entry};

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = decode_entry(data) else {
        return;
    };
    let bytes = encode_entry(&entry);
    let back = decode_entry(&bytes).expect("an encoded entry decodes");
    assert_eq!(back, entry);
    assert_eq!(encode_entry(&back), bytes, "encoding is deterministic");
    if let EntryPayload::Normal(n) = &entry.payload {
        assert!(cmd_len(&n.cmd) >= encode_cmd(&n.cmd).len());
        let _ = n.cmd.conflict_keys();
    }
});
