//! DriftDB rooms: their commands, results and events. A room is one ordered
//! sequence shared by all its keys (the seq, first 1), assigned in apply so
//! every node numbers every push alike; the values a key retains are state.

use serde::{Deserialize, Serialize};

/// A room write. Values are compact JSON text, validated by the gateway
/// once, so apply only counts and stores them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum RoomCmd {
    /// `POST /new`. The id is drawn at random by the node that took the
    /// request (not in apply, which has no randomness).
    Create { room: String },
    /// A client's `push`.
    Push {
        room: String,
        key: String,
        value: String,
        action: PushAction,
    },
    /// The internal `DELETE /room/:id`.
    Delete { room: String },
    /// Idle retention, proposed by the leader: deletes the room only if its
    /// last push is still the one the leader saw, so a push that raced the
    /// proposal keeps the room.
    Expire { room: String, last_push_ms: u64 },
}

impl RoomCmd {
    pub fn room(&self) -> &str {
        match self {
            RoomCmd::Create { room }
            | RoomCmd::Push { room, .. }
            | RoomCmd::Delete { room }
            | RoomCmd::Expire { room, .. } => room,
        }
    }
}

/// What a push does with its value (DriftDB's `action`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushAction {
    /// Takes a seq and is delivered; not stored.
    Relay,
    /// Takes a seq, is appended to the key's stream and delivered.
    Append,
    /// Takes a seq, becomes the key's whole stream and is delivered.
    Replace,
    /// Takes no seq and is not delivered: the values at or before `seq` are
    /// replaced by this one value, stored at `seq`.
    Compact { seq: u64 },
}

impl PushAction {
    /// The wire name of the action's type.
    pub fn name(self) -> &'static str {
        match self {
            PushAction::Relay => "relay",
            PushAction::Append => "append",
            PushAction::Replace => "replace",
            PushAction::Compact { .. } => "compact",
        }
    }
}

/// Cluster-wide room limits, enforced in apply (so every node refuses
/// alike). Changing a default changes apply, so it takes a new feature
/// version.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLimits {
    /// Largest key + value of one push, in bytes.
    pub max_message_bytes: u64,
    /// Keys one room may hold values for.
    pub max_keys: u64,
    /// Values one key may retain; past it an append is refused (the client
    /// compacts or replaces).
    pub max_values_per_key: u64,
    /// A room with no push for this long is deleted (by the leader, as an
    /// entry); 0 keeps rooms until deleted.
    pub idle_ttl_ms: u64,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            max_message_bytes: 1 << 20,
            max_keys: 10_000,
            max_values_per_key: 100_000,
            idle_ttl_ms: 0,
        }
    }
}

/// What applying a [`RoomCmd`] produced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum RoomResult {
    Created,
    /// `seq` is the push's (none for a compact); `size` is how many values
    /// the key retains after it (DriftDB's `stream_size`).
    Pushed {
        seq: Option<u64>,
        size: u64,
    },
    /// `existed` is false when there was no such room (or, for an expiry,
    /// when a later push kept it).
    Deleted {
        existed: bool,
    },
    Refused(RoomError),
}

impl RoomResult {
    pub fn refused(&self) -> bool {
        matches!(self, RoomResult::Refused(_))
    }
}

/// Why the state refused a room write; the same on every node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RoomError {
    pub code: RoomErrorCode,
    /// Names the problem (and the limit, with its value).
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomErrorCode {
    /// No such room (never created, or deleted).
    NoSuchRoom,
    /// `POST /new` drew an id that exists.
    RoomExists,
    /// Over a cluster-wide limit ([`RoomLimits`]).
    Limit,
    /// A compact to a seq the room has not reached.
    BadCompact,
}

impl RoomErrorCode {
    pub const ALL: [RoomErrorCode; 4] = [
        RoomErrorCode::NoSuchRoom,
        RoomErrorCode::RoomExists,
        RoomErrorCode::Limit,
        RoomErrorCode::BadCompact,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RoomErrorCode::NoSuchRoom => "no_such_room",
            RoomErrorCode::RoomExists => "room_exists",
            RoomErrorCode::Limit => "limit",
            RoomErrorCode::BadCompact => "bad_compact",
        }
    }

    pub fn parse(s: &str) -> Option<RoomErrorCode> {
        RoomErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A change to a room, for fan-out to its sockets on every node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum RoomEvent {
    /// A relay, append or replace: delivered to every socket of the room.
    Pushed {
        room: String,
        key: String,
        /// Compact JSON.
        value: String,
        seq: u64,
        action: PushAction,
    },
    /// A compact: nothing delivered; debug sockets show the new stream.
    Compacted { room: String, key: String, seq: u64 },
    /// The room is gone: its sockets are closed.
    Deleted { room: String },
}

impl RoomEvent {
    pub fn room(&self) -> &str {
        match self {
            RoomEvent::Pushed { room, .. }
            | RoomEvent::Compacted { room, .. }
            | RoomEvent::Deleted { room } => room,
        }
    }
}

/// A room as readers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RoomView {
    /// The last seq taken (0: none yet).
    pub seq: u64,
    /// Keys holding values.
    pub keys: u64,
    pub created_ms: u64,
    /// Entry time of the last push (the creation time before any).
    pub last_push_ms: u64,
}

/// Up to a read's limit of a key's values after a seq, in seq order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomValues {
    /// `(seq, compact JSON)`.
    pub values: Vec<(u64, String)>,
    /// More values follow the last one returned.
    pub more: bool,
}
