//! rstmdb's wire from a client: RCPX frames, jsonl lines and the request
//! envelope. No input panics; a decoded frame re-encodes to bytes that
//! decode to the same payload; an error that keeps alignment consumed the
//! frame (so a reader loop always makes progress).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use raftmesh_gateway::rstmdb::frame::{decode_frame, decode_line, encode_frame};
use raftmesh_gateway::rstmdb::wire::parse_request;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        let before = buf.len();
        match decode_frame(&mut buf, 1 << 16) {
            Ok(Some(payload)) => {
                let _ = parse_request(&payload);
                let mut again = BytesMut::new();
                encode_frame(&mut again, payload.as_bytes());
                assert_eq!(decode_frame(&mut again, 1 << 16).unwrap().as_deref(), Some(payload.as_str()));
                assert!(buf.len() < before);
            }
            Ok(None) => break,
            Err(e) if e.keeps_alignment() => assert!(buf.len() < before, "{e}"),
            Err(_) => break,
        }
    }
    let mut lines = BytesMut::from(data);
    for _ in 0..64 {
        match decode_line(&mut lines, 1 << 16) {
            Ok(Some(l)) => {
                let _ = parse_request(&l);
            }
            _ => break,
        }
    }
});
