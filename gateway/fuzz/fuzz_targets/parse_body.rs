//! The JSON bodies of the write and membership routes, parsed as the routes
//! parse them (the first byte picks the body, the rest is the body). Never
//! a panic; a value a route accepts is JSON the store can read back (apply
//! compares CAS values as `serde_json::Value`), and compacting it keeps it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_gateway::fuzzing::{
    add_learner_body, cas_body, change_membership_body, minify, put_body, retention_body,
};
use serde_json::Value;

/// A value the gateway would store: the text it keeps after compaction.
fn check_value(raw: &str) {
    let value: Value = serde_json::from_str(raw)
        .unwrap_or_else(|e| panic!("accepted value {raw:?} is not JSON the store reads: {e}"));
    let compact = minify(raw);
    assert_eq!(serde_json::from_str::<Value>(&compact).unwrap(), value);
    assert_eq!(minify(&compact), compact);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok((Some(value), _)) = put_body(body) {
                check_value(&value);
            }
        }
        1 => {
            if let Ok((expected, desired)) = cas_body(body) {
                for value in [expected, desired].iter().flatten() {
                    check_value(value);
                }
            }
        }
        2 => {
            let _ = add_learner_body(body);
        }
        3 => {
            let _ = change_membership_body(body);
        }
        _ => {
            let _ = retention_body(body);
        }
    }
});
