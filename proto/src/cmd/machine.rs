//! rstmdb state machines: commands, results and events of the `machine`
//! domain. Every check of a write (machine exists, expected state, guard,
//! idempotency) is decided in apply, so it is serialized with every other
//! write and the same on every node; refusals are results carrying rstmdb's
//! error code, not cluster errors.

use serde::{Deserialize, Serialize};

/// A write of the machine domain. JSON values (definitions, contexts,
/// payloads) travel as compact JSON text, validated by the API once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum MachineCmd {
    /// Registers `machine` at `version`; a version is immutable.
    PutMachine {
        machine: String,
        version: u32,
        /// The definition as the client sent it (compact JSON); apply
        /// validates and normalizes it and parses its guards once.
        definition: String,
    },
    CreateInstance {
        machine: String,
        version: u32,
        /// Chosen by the client, or a UUID chosen by the node that took the
        /// request (never in apply).
        instance_id: String,
        /// A JSON object; `None` stores `{}`.
        initial_ctx: Option<String>,
        idempotency_key: Option<String>,
    },
    ApplyEvent {
        instance_id: String,
        event: String,
        /// A JSON object merged into the ctx (top-level keys), if given.
        payload: Option<String>,
        expected_state: Option<String>,
        expected_wal_offset: Option<u64>,
        event_id: Option<String>,
        idempotency_key: Option<String>,
    },
    DeleteInstance {
        instance_id: String,
        idempotency_key: Option<String>,
    },
    /// Clears every machine and instance (refused unless the cluster-wide
    /// setting allows it).
    FlushAll,
}

impl MachineCmd {
    /// The instance this command writes, if any: an exclusive conflict key,
    /// since an instance's `wal_offset` is the entry's index.
    pub fn instance(&self) -> Option<&str> {
        match self {
            MachineCmd::CreateInstance { instance_id, .. }
            | MachineCmd::ApplyEvent { instance_id, .. }
            | MachineCmd::DeleteInstance { instance_id, .. } => Some(instance_id),
            MachineCmd::PutMachine { .. } | MachineCmd::FlushAll => None,
        }
    }
}

/// rstmdb's error codes that apply can decide.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineErrorCode {
    BadRequest,
    NotFound,
    MachineNotFound,
    MachineVersionExists,
    MachineVersionLimitExceeded,
    InstanceNotFound,
    InstanceExists,
    InvalidTransition,
    GuardFailed,
    Conflict,
}

impl MachineErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineErrorCode::BadRequest => "BAD_REQUEST",
            MachineErrorCode::NotFound => "NOT_FOUND",
            MachineErrorCode::MachineNotFound => "MACHINE_NOT_FOUND",
            MachineErrorCode::MachineVersionExists => "MACHINE_VERSION_EXISTS",
            MachineErrorCode::MachineVersionLimitExceeded => "MACHINE_VERSION_LIMIT_EXCEEDED",
            MachineErrorCode::InstanceNotFound => "INSTANCE_NOT_FOUND",
            MachineErrorCode::InstanceExists => "INSTANCE_EXISTS",
            MachineErrorCode::InvalidTransition => "INVALID_TRANSITION",
            MachineErrorCode::GuardFailed => "GUARD_FAILED",
            MachineErrorCode::Conflict => "CONFLICT",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    const ALL: [MachineErrorCode; 10] = [
        MachineErrorCode::BadRequest,
        MachineErrorCode::NotFound,
        MachineErrorCode::MachineNotFound,
        MachineErrorCode::MachineVersionExists,
        MachineErrorCode::MachineVersionLimitExceeded,
        MachineErrorCode::InstanceNotFound,
        MachineErrorCode::InstanceExists,
        MachineErrorCode::InvalidTransition,
        MachineErrorCode::GuardFailed,
        MachineErrorCode::Conflict,
    ];
}

/// A write refused by the state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MachineError {
    pub code: MachineErrorCode,
    pub message: String,
    /// A JSON object with specifics (e.g. the current state), if any.
    pub details: Option<String>,
}

/// What applying a [`MachineCmd`] produced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum MachineResult {
    MachinePut {
        /// False when the same definition was already stored.
        created: bool,
        /// CRC32C of the normalized definition, 8 hex digits.
        checksum: String,
    },
    InstanceCreated {
        instance_id: String,
        state: String,
        wal_offset: u64,
    },
    EventApplied {
        from_state: String,
        to_state: String,
        /// The ctx after the event (compact JSON).
        ctx: String,
        wal_offset: u64,
        event_id: Option<String>,
    },
    InstanceDeleted {
        instance_id: String,
        wal_offset: u64,
    },
    Flushed {
        machines: u64,
        instances: u64,
    },
    Refused(MachineError),
}

impl MachineResult {
    pub fn refused(&self) -> bool {
        matches!(self, MachineResult::Refused(_))
    }
}

/// What a machine write changed: the machine journal, which rstmdb's
/// WATCH_* and WAL_READ read. The entry's index is the `wal_offset`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum MachineEvent {
    MachinePut {
        machine: String,
        version: u32,
        checksum: String,
        /// The normalized definition (compact JSON).
        definition: String,
    },
    InstanceCreated {
        instance_id: String,
        machine: String,
        version: u32,
        state: String,
        ctx: String,
        idempotency_key: Option<String>,
    },
    EventApplied {
        instance_id: String,
        machine: String,
        version: u32,
        from_state: String,
        to_state: String,
        event: String,
        /// Compact JSON; `null` when the event had none.
        payload: String,
        /// After the event.
        ctx: String,
        event_id: Option<String>,
        idempotency_key: Option<String>,
    },
    InstanceDeleted {
        instance_id: String,
        machine: String,
        version: u32,
        idempotency_key: Option<String>,
    },
    Flushed,
}

/// A live instance, as stored and as reads return it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Instance {
    pub machine: String,
    pub version: u32,
    pub state: String,
    /// Compact JSON object.
    pub ctx: String,
    pub last_event_id: Option<String>,
    /// Index of the entry that last wrote the instance.
    pub last_wal_offset: u64,
    /// Epoch milliseconds (entry times).
    pub created_at: u64,
    pub updated_at: u64,
}

/// A stored machine version as reads return it.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineView {
    /// The normalized definition (compact JSON).
    pub definition: String,
    pub checksum: String,
}

/// One page of a LIST_INSTANCES.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstancePage {
    /// (instance id, instance), ordered by id.
    pub instances: Vec<(String, Instance)>,
    /// Instances matching the filter in all (a kept count, not a scan).
    pub total: u64,
    pub has_more: bool,
}
