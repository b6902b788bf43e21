//! A DriftDB client frame, text (JSON) or binary (CBOR), as a room socket
//! reads it. No input panics; a message that parses re-encodes (as the
//! server would send a value) to CBOR that parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_gateway::drift::wire::ClientMsg;
use raftmesh_gateway::fuzzing::{drift_encode, drift_message};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    let binary = mode & 1 == 1;
    if let Ok(ClientMsg::Push { key, value, action }) = drift_message(frame, binary) {
        // The stored value is valid JSON that CBOR carries losslessly back.
        let v: serde_json::Value = serde_json::from_str(&value).expect("stored values are JSON");
        let msg = serde_json::json!({"type": "push", "key": key, "value": v, "action": {"type": action.name()}});
        let msg = if let raftmesh_proto::PushAction::Compact { seq } = action {
            let mut m = msg;
            m["action"]["seq"] = seq.into();
            m
        } else {
            msg
        };
        let cbor = drift_encode(&msg.to_string());
        match drift_message(&cbor, true) {
            Ok(ClientMsg::Push { value: again, .. }) => {
                let a: serde_json::Value = serde_json::from_str(&again).unwrap();
                assert!(same_number_model(&a, &v), "{a} vs {v}");
            }
            other => panic!("re-encoded push did not parse: {other:?}"),
        }
    }
});

/// Equal, counting a float and an integer of the same value as equal (CBOR
/// may carry 1.0 as a float where JSON wrote 1.0).
fn same_number_model(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => x.as_f64() == y.as_f64(),
        (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_number_model(p, q)),
        (Object(x), Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same_number_model(p, q)))
        }
        _ => a == b,
    }
}
