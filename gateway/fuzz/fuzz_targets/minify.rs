//! JSON text compaction (request values) and indentation (`?pretty`), both
//! by scanning. Never a panic; compaction is idempotent on any text; on
//! valid JSON both keep the value, and compacting the indented text gives
//! the compact text back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_gateway::fuzzing::{minify, prettify};
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let compact = minify(text);
    assert_eq!(minify(&compact), compact, "minify is idempotent");
    let pretty = prettify(text);
    // What the gateway accepts as a value (a raw JSON value) stays one.
    if serde_json::from_str::<&RawValue>(text).is_ok() {
        assert!(serde_json::from_str::<&RawValue>(&compact).is_ok());
        assert_eq!(minify(&pretty), compact);
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        assert_eq!(serde_json::from_str::<Value>(&compact).unwrap(), value);
        assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), value);
    }
});
