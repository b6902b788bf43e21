//! Cluster-wide settings that apply reads. They are replicated state, set by
//! a command like any write, so every node decides with the same values:
//! a limit from local config would make apply differ between nodes.

use serde::{Deserialize, Serialize};

use super::{Domain, RoomLimits};

/// How much of a domain's applied-event history the journal keeps. The
/// journal keeps its newest entry even when that alone exceeds a bound.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events kept, at most.
    pub max_events: u64,
    /// Encoded journal bytes kept, at most.
    pub max_bytes: u64,
}

impl Retention {
    /// What a domain keeps until a setting says otherwise. Changing a default
    /// changes apply, so it takes a new feature version.
    pub const fn default_for(domain: Domain) -> Retention {
        match domain {
            Domain::Kv | Domain::Machine | Domain::Settings | Domain::Session | Domain::Room => {
                Retention {
                    max_events: 100_000,
                    max_bytes: 64 << 20,
                }
            }
        }
    }
}

/// A change to the cluster-wide settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum SettingsCmd {
    /// Sets the journal retention of one domain; the journal is trimmed to
    /// it as the next entry of that domain applies.
    SetRetention {
        domain: Domain,
        retention: Retention,
    },
    /// Whether rstmdb's FLUSH_ALL may clear every machine and instance.
    AllowFlushAll(bool),
    /// The limits every room push is checked against.
    SetRoomLimits(RoomLimits),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum SettingsResult {
    /// The setting holds from the entry's index on.
    Set,
}
