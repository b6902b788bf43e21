//! raftmesh's fault-injection harness in Jepsen's spirit: real `raftmesh`
//! processes in their own network namespaces, real faults (partitions,
//! loss, kill -9, pauses, clock skew, membership changes), a recorded
//! history, and checkers whose verdicts are valid / invalid / unknown.
//!
//! Traffic goes only to addresses of namespaces this harness creates; every
//! loop is bounded by the run's time limit.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod rng;
pub mod room;
pub mod rstmdb;
pub mod runner;
pub mod topology;
pub mod watch;
pub mod workload;
