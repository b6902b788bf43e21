//! The pm3 key rule (on the percent-decoded path segment): the first byte
//! picks the length limit, the rest is the key. Never a panic, and a key is
//! accepted exactly when it meets the rule as the spec states it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raftmesh_gateway::fuzzing::validate_key;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, key)) = data.split_first() else {
        return;
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    // The default limit, or a small one so the length rule is reached.
    let max = if limit % 2 == 0 {
        1024
    } else {
        usize::from(limit / 2)
    };
    let rule = !key.is_empty()
        && key.len() <= max
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        && !key.starts_with('.')
        && !key.ends_with('.');
    assert_eq!(
        validate_key(key, max).is_ok(),
        rule,
        "{key:?} (limit {max})"
    );
});
