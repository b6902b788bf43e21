//! pm3 KV commands and their results.

use serde::{Deserialize, Serialize};

/// A pm3 KV write. Values are JSON text, validated and compacted by the
/// gateway once, so apply never re-parses a value it only stores.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum KvCmd {
    /// `PUT /kv/:key`; with `if_revision` the write happens only if the
    /// key's revision equals it (0 = key absent).
    Put {
        key: String,
        value: String,
        if_revision: Option<u64>,
    },
    /// `DELETE /kv/:key`; deleting a missing key is not an error.
    Delete { key: String },
    /// `POST /kv/:key/cas`: compare with deep JSON equality at apply time,
    /// so the check and the write are one atomic step.
    Cas {
        key: String,
        expected: String,
        desired: String,
    },
}

impl KvCmd {
    pub fn key(&self) -> &str {
        match self {
            KvCmd::Put { key, .. } | KvCmd::Delete { key } | KvCmd::Cas { key, .. } => key,
        }
    }
}

/// What applying a [`KvCmd`] produced. Refusals decided by the state
/// (a revision mismatch, a CAS that did not match) are results, the same
/// on every node — not errors of the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum KvResult {
    /// The key now holds the written value at `revision`.
    Written {
        revision: u64,
    },
    /// A conditional put found another revision; nothing changed.
    RevisionMismatch {
        current: u64,
    },
    Deleted,
    /// Outcome of a CAS. On success `value` is the desired value and `diff`
    /// is empty; on failure `value` is the current value and `diff` an RFC
    /// 6902 patch (JSON text) turning `expected` into it.
    Cas {
        ok: bool,
        revision: u64,
        value: String,
        diff: String,
    },
}

impl KvResult {
    /// The command was refused by the state (an all-or-nothing group that
    /// contains it keeps none of its effects).
    pub fn refused(&self) -> bool {
        matches!(
            self,
            KvResult::RevisionMismatch { .. } | KvResult::Cas { ok: false, .. }
        )
    }
}

/// A stored KV record as readers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KvEntry {
    /// Log index of the entry that last wrote the key.
    pub revision: u64,
    /// Compact JSON text.
    pub value: String,
}

/// What a KV write changed, as the applied-event feed and the journal carry
/// it. The revision is the entry's index, which travels beside the event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum KvEvent {
    /// `key` now holds `value` (compact JSON text).
    Put { key: String, value: String },
    /// `key` was deleted; only emitted when it existed.
    Deleted { key: String },
}

impl KvEvent {
    pub fn key(&self) -> &str {
        match self {
            KvEvent::Put { key, .. } | KvEvent::Deleted { key } => key,
        }
    }
}
