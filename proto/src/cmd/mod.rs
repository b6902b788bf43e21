//! Replicated commands by domain, and what applying them produced.
//!
//! Every write of every API is a [`Cmd`]; one log entry carries one `Cmd`
//! (or a group of them). Each domain (KV, machines, rooms; streams later)
//! has its own command and result enums in its own module, so a new API
//! adds a variant here, not fields to a shared shape.

pub mod kv;
pub mod machine;
pub mod room;
pub mod settings;

use serde::{Deserialize, Serialize};

pub use kv::{KvCmd, KvEntry, KvEvent, KvResult};
pub use machine::{
    Instance, InstancePage, MachineCmd, MachineError, MachineErrorCode, MachineEvent,
    MachineResult, MachineView,
};
pub use room::{
    PushAction, RoomCmd, RoomError, RoomErrorCode, RoomEvent, RoomLimits, RoomResult, RoomValues,
    RoomView,
};
pub use settings::{Retention, SettingsCmd, SettingsResult};

/// One replicated write.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Cmd {
    Kv(KvCmd),
    Machine(MachineCmd),
    Settings(SettingsCmd),
    Room(RoomCmd),
    /// Independent writes the leader packed into one entry so a burst costs
    /// one append, one fsync, one replication round and one apply. Each is
    /// applied, in order, on its own: one refused leaves the others.
    Pack(Vec<Cmd>),
    /// All or nothing: applied in order, and if one is refused by the state
    /// none of the group's effects are kept.
    Atomic(Vec<Cmd>),
}

/// What a command contends on, for packing commands into entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConflictKey {
    /// At most one write per key per entry: the key's version is the
    /// entry's index (a KV key's revision), so two writes in one entry
    /// would share it.
    Exclusive(Domain, String),
    /// Many writes per entry, applied in order: the key's sequence is
    /// assigned in apply (a room's seq), so packing keeps order only.
    Ordered(Domain, String),
}

/// The domain a key belongs to (keys of two domains never conflict).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Kv,
    /// rstmdb machines and instances.
    Machine,
    /// The cluster-wide settings.
    Settings,
    /// A client connection, for ordering its writes (no state of its own).
    Session,
    /// DriftDB rooms.
    Room,
}

impl Domain {
    /// Every domain with a journal, in a fixed order.
    pub const JOURNALED: [Domain; 3] = [Domain::Kv, Domain::Machine, Domain::Room];

    /// Its name in stored keys, URLs and settings.
    pub fn name(self) -> &'static str {
        match self {
            Domain::Kv => "kv",
            Domain::Machine => "machine",
            Domain::Settings => "settings",
            Domain::Session => "session",
            Domain::Room => "room",
        }
    }

    pub fn from_name(name: &str) -> Option<Domain> {
        [
            Domain::Kv,
            Domain::Machine,
            Domain::Settings,
            Domain::Session,
            Domain::Room,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }
}

/// One change an applied command made, for the applied-event feed and the
/// journal; the entry's index and time travel beside it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Event {
    Kv(KvEvent),
    Machine(MachineEvent),
    Room(RoomEvent),
}

impl Event {
    pub fn domain(&self) -> Domain {
        match self {
            Event::Kv(_) => Domain::Kv,
            Event::Machine(_) => Domain::Machine,
            Event::Room(_) => Domain::Room,
        }
    }
}

impl Cmd {
    /// The lowest [`crate::FEATURE_VERSION`] a node must run to decode and
    /// apply this command; a leader proposes nothing that needs more than
    /// its oldest member supports. Release 0.1 (version 1) cannot read the
    /// binary log codec at all: everything needs 2; rooms need 3. No
    /// wildcard arm, so a new command must state its own version here.
    pub fn required_version(&self) -> u32 {
        match self {
            // Settings and machines come in the same release as the binary
            // codec: no release of version 2 lacks them.
            Cmd::Settings(SettingsCmd::SetRoomLimits(_)) | Cmd::Room(_) => 3,
            Cmd::Kv(_) | Cmd::Settings(_) | Cmd::Machine(_) => 2,
            // A group needs what its most demanding member needs.
            Cmd::Pack(cmds) | Cmd::Atomic(cmds) => {
                cmds.iter().map(Cmd::required_version).fold(2, u32::max)
            }
        }
    }

    /// Every key this command writes, with how it may share an entry.
    pub fn conflict_keys(&self) -> Vec<ConflictKey> {
        let mut out = Vec::new();
        self.collect_keys(&mut out);
        out
    }

    fn collect_keys(&self, out: &mut Vec<ConflictKey>) {
        match self {
            Cmd::Kv(c) => out.push(ConflictKey::Exclusive(Domain::Kv, c.key().to_string())),
            Cmd::Machine(c) => out.push(match (c, c.instance()) {
                (_, Some(id)) => ConflictKey::Exclusive(Domain::Machine, format!("i/{id}")),
                (MachineCmd::PutMachine { machine, .. }, None) => {
                    ConflictKey::Ordered(Domain::Machine, format!("m/{machine}"))
                }
                // Touches everything: ordered after whatever shares its entry.
                (_, None) => ConflictKey::Ordered(Domain::Machine, "*".into()),
            }),
            Cmd::Settings(SettingsCmd::SetRetention { domain, .. }) => out.push(
                ConflictKey::Exclusive(Domain::Settings, format!("retention/{}", domain.name())),
            ),
            Cmd::Settings(SettingsCmd::AllowFlushAll(_)) => out.push(ConflictKey::Exclusive(
                Domain::Settings,
                "allow_flush_all".into(),
            )),
            Cmd::Settings(SettingsCmd::SetRoomLimits(_)) => out.push(ConflictKey::Exclusive(
                Domain::Settings,
                "room_limits".into(),
            )),
            // Many pushes to one room share an entry, in order: the seq is
            // assigned in apply.
            Cmd::Room(c) => out.push(ConflictKey::Ordered(Domain::Room, c.room().to_string())),
            Cmd::Pack(cmds) | Cmd::Atomic(cmds) => {
                for c in cmds {
                    c.collect_keys(out);
                }
            }
        }
    }
}

/// What applying one entry produced; returned to the client that proposed it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub enum ApplyResult {
    /// Blank and membership entries.
    #[default]
    None,
    Kv(KvResult),
    Machine(MachineResult),
    Settings(SettingsResult),
    Room(RoomResult),
    /// One result per command of a [`Cmd::Pack`], in order.
    Pack(Vec<ApplyResult>),
    /// A [`Cmd::Atomic`]: `kept` says whether its effects were kept; the
    /// results show what each command did (or, when not kept, would have
    /// done up to the one that was refused).
    Atomic {
        kept: bool,
        results: Vec<ApplyResult>,
    },
}

impl ApplyResult {
    /// The command was refused by the state (see [`KvResult::refused`]).
    pub fn refused(&self) -> bool {
        match self {
            ApplyResult::None => false,
            ApplyResult::Kv(r) => r.refused(),
            ApplyResult::Machine(r) => r.refused(),
            ApplyResult::Room(r) => r.refused(),
            ApplyResult::Settings(_) => false,
            ApplyResult::Pack(_) => false,
            ApplyResult::Atomic { kept, .. } => !kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_need_version_3_and_a_group_needs_its_most_demanding_member() {
        let push = Cmd::Room(RoomCmd::Push {
            room: "r".into(),
            key: "k".into(),
            value: "1".into(),
            action: PushAction::Append,
        });
        let limits = Cmd::Settings(SettingsCmd::SetRoomLimits(RoomLimits::default()));
        let put = Cmd::Kv(KvCmd::Delete { key: "k".into() });
        for c in [push.clone(), limits, Cmd::Pack(vec![put, push])] {
            assert_eq!(c.required_version(), 3, "{c:?}");
            assert!(c.required_version() <= crate::FEATURE_VERSION);
        }
    }

    #[test]
    fn every_command_before_rooms_needs_version_2() {
        let put = Cmd::Kv(KvCmd::Delete { key: "k".into() });
        let set = Cmd::Settings(SettingsCmd::SetRetention {
            domain: Domain::Kv,
            retention: Retention::default_for(Domain::Kv),
        });
        for c in [
            put.clone(),
            set,
            Cmd::Pack(vec![]),
            Cmd::Atomic(vec![put.clone(), Cmd::Pack(vec![put])]),
        ] {
            assert_eq!(c.required_version(), 2, "{c:?}");
            assert!(c.required_version() <= crate::FEATURE_VERSION);
        }
    }

    #[test]
    fn conflict_keys_of_groups_are_their_members_keys() {
        let put = |k: &str| {
            Cmd::Kv(KvCmd::Put {
                key: k.into(),
                value: "1".into(),
                if_revision: None,
            })
        };
        let c = Cmd::Atomic(vec![put("a"), Cmd::Pack(vec![put("b")])]);
        assert_eq!(
            c.conflict_keys(),
            [
                ConflictKey::Exclusive(Domain::Kv, "a".into()),
                ConflictKey::Exclusive(Domain::Kv, "b".into())
            ]
        );
    }
}
