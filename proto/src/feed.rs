//! What the applied-event feed hands its subscribers, shared by the store
//! (which produces it) and the APIs (which stream it to clients).

use crate::cmd::Event;

/// One applied entry's events (for a subscription: only its domain's).
/// All events of an entry travel together.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedEntry {
    pub index: u64,
    /// The entry's apply time (leader-stamped, never going backwards).
    pub time_ms: u64,
    pub events: Vec<Event>,
}

/// Why a subscription ended. Each names where to resume, if anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEnd {
    /// Too slow for the live buffer: every entry up to `last_index` was
    /// delivered; resume from `last_index + 1`.
    Lagged { last_index: u64 },
    /// The journal no longer holds what comes next (trimmed, or replaced by
    /// a snapshot that starts later): `oldest` is the oldest index kept.
    Compacted { oldest: u64 },
    /// The node is shutting down.
    Closed,
    /// Reading the journal failed.
    Failed(String),
}

/// One step of a subscription.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedNext {
    Entry(AppliedEntry),
    End(FeedEnd),
}
