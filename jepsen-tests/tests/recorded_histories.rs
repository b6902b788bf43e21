//! The checkers against histories recorded from real runs of the harness
//! (3 raftmesh nodes in network namespaces, partitions injected):
//! - `stale-reads-partition.jsonl`: the register workload with `?stale`
//!   reads; the isolated node served old values, which must be found;
//! - `linearizable-partition-kill.jsonl`: the same workload with default
//!   (linearizable) reads under partitions and kill -9; must be valid.

use std::path::Path;
use std::time::Duration;

use jepsen_tests::checker::{linearizable, Verdict};
use jepsen_tests::history::read_jsonl;

fn fixture(name: &str) -> Vec<jepsen_tests::history::Op> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    read_jsonl(&p).expect("fixture reads")
}

#[test]
fn stale_reads_under_partition_are_invalid_with_the_offending_read() {
    let h = fixture("stale-reads-partition.jsonl");
    let r = linearizable::check_register(&h, Duration::from_secs(60));
    assert_eq!(r.verdict, Verdict::Invalid, "{}", r.details);
    let text = r.details.to_string();
    assert!(
        text.contains("\"f\":\"read\""),
        "the culprit is a read: {text}"
    );
}

#[test]
fn linearizable_reads_under_partition_and_kill_are_valid() {
    let h = fixture("linearizable-partition-kill.jsonl");
    let r = linearizable::check_register(&h, Duration::from_secs(60));
    assert_eq!(r.verdict, Verdict::Valid, "{}", r.details);
}
