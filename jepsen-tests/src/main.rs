//! raftmesh's fault-injection harness: real node processes, real faults, a
//! recorded history and checkers. Not built yet; the binary says so and
//! exits 2 ("unknown/aborted") so no caller mistakes it for a passing run.

fn main() {
    eprintln!("jepsen-tests: no workloads or nemeses are implemented yet");
    std::process::exit(2);
}
