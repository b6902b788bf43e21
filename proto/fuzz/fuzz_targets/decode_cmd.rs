//! A command alone (a forwarded write's `cmd` bytes). Never a panic; what
//! decodes round-trips; the size bound never undercounts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_proto::codec::{cmd_len, decode_cmd, encode_cmd};

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = decode_cmd(data) else {
        return;
    };
    let bytes = encode_cmd(&cmd);
    assert_eq!(decode_cmd(&bytes).expect("an encoded command decodes"), cmd);
    assert!(cmd_len(&cmd) >= bytes.len());
    let _ = cmd.conflict_keys();
});
