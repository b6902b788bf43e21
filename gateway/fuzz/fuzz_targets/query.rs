//! Query strings (`?stale`, `?consistency=`, `?prefix=`, `?limit=`, ...),
//! decoded by hand. Never a panic; the decoded pairs, percent-encoded
//! again, decode to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use raftmesh_gateway::fuzzing::Query;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let q = Query::parse(Some(text));
    let _ = q.stale();
    let _ = q.flag("pretty");
    for name in ["prefix", "after", "limit", "from"] {
        let _ = q.get(name);
    }
    let again: Vec<String> = q
        .pairs()
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
            format!("{}={}", enc(k), enc(v))
        })
        .collect();
    let back = Query::parse(Some(&again.join("&")));
    assert_eq!(back.pairs(), q.pairs());
});
