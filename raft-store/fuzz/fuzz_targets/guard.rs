//! Any UTF-8 either fails to parse or parses to a guard whose canonical
//! text parses back to the same tree (and is a fixed point), survives a
//! JSON roundtrip, and evaluates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::sync::OnceLock;

// The module itself rather than the crate: it needs only serde and
// thiserror, so the fuzz build does not link RocksDB.
#[path = "../../src/apply/guard.rs"]
#[allow(dead_code)]
mod guard;

fn contexts() -> &'static [Value] {
    static CTX: OnceLock<Vec<Value>> = OnceLock::new();
    CTX.get_or_init(|| {
        vec![
            json!({}),
            json!(null),
            json!([1, 2]),
            json!({"a": 1, "b": "x", "c": null, "d": [], "e": {"f": true, "g": -0.5}}),
            json!({"a": {"a": {"a": 0}}, "b": 1e300, "c": u64::MAX, "d": i64::MIN}),
            json!({"amount": 150, "status": "active", "order": {"paid": true}}),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = guard::parse(src) else {
        return;
    };
    let text = parsed.to_string();
    let back = guard::parse(&text)
        .unwrap_or_else(|e| panic!("canonical {text:?} of {src:?} does not parse: {e}"));
    assert_eq!(back, parsed, "canonical {text:?} of {src:?}");
    assert_eq!(back.to_string(), text);
    let stored = serde_json::to_string(&parsed).expect("serialize");
    let loaded: guard::Guard = serde_json::from_str(&stored).expect("deserialize");
    assert_eq!(loaded, parsed, "{stored}");
    for ctx in contexts() {
        let _ = parsed.eval(ctx);
    }
});
