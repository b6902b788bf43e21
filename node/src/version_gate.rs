//! The version gate of rolling upgrades: the leader proposes no command that
//! needs a newer feature version ([`Cmd::required_version`]) than every
//! member — voters and learners — supports, so no node is ever handed an
//! entry it cannot decode. What a member supports is its membership
//! `NodeInfo.version`, overridden by what it advertised in a recent
//! `Status` reply: a node restarted on a new build says so at once, before
//! the leader has updated its stored entry.
//!
//! [`Cmd::required_version`]: raftmesh_proto::Cmd::required_version

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmesh_proto::NodeId;

/// How long a `Status` observation overrides the stored version. Older
/// ones say nothing about a node that may have restarted since; by then the
/// stored entry holds what was last observed anyway.
pub const FRESH: Duration = Duration::from_secs(10);

/// Whether a command needing version `needs` may be proposed to members
/// with these versions: `Err` is the refusal, naming every member too old.
pub fn check(members: &BTreeMap<NodeId, u32>, needs: u32) -> Result<(), String> {
    let old: Vec<(NodeId, u32)> = members
        .iter()
        .filter(|(_, v)| **v < needs)
        .map(|(id, v)| (*id, *v))
        .collect();
    if old.is_empty() {
        return Ok(());
    }
    let each: Vec<String> = old
        .iter()
        .map(|(id, v)| format!("node {id} supports version {v}"))
        .collect();
    let ids: Vec<String> = old.iter().map(|(id, _)| id.to_string()).collect();
    let which = match ids.len() {
        1 => format!("node {}", ids[0]),
        _ => format!("nodes {}", ids.join(", ")),
    };
    Err(format!(
        "{}; this write needs version {needs} — upgrade {which} first",
        each.join(", ")
    ))
}

/// Each member's version: a fresh observation where there is one, else the
/// stored one; `own` (the deciding node, which knows itself) wins over both.
pub fn effective(
    stored: impl IntoIterator<Item = (NodeId, u32)>,
    live: &LiveVersions,
    own: (NodeId, u32),
) -> BTreeMap<NodeId, u32> {
    let now = Instant::now();
    let mut out: BTreeMap<NodeId, u32> = stored
        .into_iter()
        .map(|(id, v)| (id, live.fresh_at(id, now).unwrap_or(v)))
        .collect();
    if let Some(v) = out.get_mut(&own.0) {
        *v = own.1;
    }
    out
}

/// The versions members advertised in their `Status` replies, and when.
#[derive(Clone, Default)]
pub struct LiveVersions {
    inner: Arc<Mutex<HashMap<NodeId, (u32, Instant)>>>,
    /// The rstmdb address each member last told; written back into its
    /// membership entry with its version.
    rstmdb: Arc<Mutex<HashMap<NodeId, String>>>,
}

impl LiveVersions {
    pub fn record_rstmdb(&self, id: NodeId, addr: String) {
        if !addr.is_empty() {
            self.rstmdb
                .lock()
                .expect("live addresses poisoned")
                .insert(id, addr);
        }
    }

    /// The rstmdb address `id` last told, if it told one.
    pub fn rstmdb(&self, id: NodeId) -> Option<String> {
        self.rstmdb
            .lock()
            .expect("live addresses poisoned")
            .get(&id)
            .cloned()
    }

    pub fn record(&self, id: NodeId, version: u32) {
        self.inner
            .lock()
            .expect("live versions poisoned")
            .insert(id, (version, Instant::now()));
    }

    /// The version `id` advertised within [`FRESH`], if any.
    pub fn fresh(&self, id: NodeId) -> Option<u32> {
        self.fresh_at(id, Instant::now())
    }

    fn fresh_at(&self, id: NodeId, now: Instant) -> Option<u32> {
        let map = self.inner.lock().expect("live versions poisoned");
        map.get(&id)
            .filter(|(_, at)| now.saturating_duration_since(*at) < FRESH)
            .map(|(v, _)| *v)
    }

    /// Whether `id` answered within `d` (no need to ask it again yet).
    pub fn seen_within(&self, id: NodeId, d: Duration) -> bool {
        let map = self.inner.lock().expect("live versions poisoned");
        map.get(&id).is_some_and(|(_, at)| at.elapsed() < d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(v: &[(NodeId, u32)]) -> BTreeMap<NodeId, u32> {
        v.iter().copied().collect()
    }

    #[test]
    fn a_write_passes_when_every_member_supports_it() {
        assert_eq!(check(&members(&[(1, 2), (2, 2), (3, 3)]), 2), Ok(()));
        assert_eq!(check(&members(&[]), 9), Ok(()));
    }

    #[test]
    fn the_refusal_names_each_member_too_old_and_the_fix() {
        let one = check(&members(&[(1, 2), (2, 2), (3, 1)]), 2).unwrap_err();
        assert_eq!(
            one,
            "node 3 supports version 1; this write needs version 2 — upgrade node 3 first"
        );
        let two = check(&members(&[(1, 3), (2, 2), (4, 1)]), 3).unwrap_err();
        assert_eq!(
            two,
            "node 2 supports version 2, node 4 supports version 1; this write needs version 3 \
             — upgrade nodes 2, 4 first"
        );
    }

    #[test]
    fn a_fresh_observation_overrides_the_stored_version_and_self_knows_best() {
        let live = LiveVersions::default();
        live.record(3, 2);
        live.record(9, 5); // not a member: ignored
        let v = effective([(1, 1), (2, 1), (3, 1)], &live, (1, 2));
        assert_eq!(v, members(&[(1, 2), (2, 1), (3, 2)]));
        assert_eq!(check(&v, 2).unwrap_err().matches("node 2").count(), 2);
    }

    #[test]
    fn an_old_observation_no_longer_counts() {
        let live = LiveVersions::default();
        live.record(3, 2);
        assert_eq!(live.fresh(3), Some(2));
        assert!(live.seen_within(3, FRESH));
        assert_eq!(live.fresh_at(3, Instant::now() + FRESH), None);
    }
}
