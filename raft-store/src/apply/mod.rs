//! The deterministic apply of commands: each domain's
//! `apply(&mut Txn, index, time, &cmd) -> result`, and the two group kinds. Apply
//! reads only the entry (its index, its leader-stamped time, its command)
//! and the state; never a clock, randomness or local config.

pub mod guard;
pub mod journal;
pub mod kv;
pub mod machine;
pub mod room;
pub mod txn;

use raftmesh_proto::{ApplyResult, Cmd, SettingsCmd, SettingsResult};

use crate::StoreError;
pub use txn::Txn;

/// Present when the cluster allows rstmdb's FLUSH_ALL.
pub(crate) const ALLOW_FLUSH_ALL_KEY: &[u8] = b"m/settings/allow_flush_all";

/// The apply clock: the state's own time, so it travels in snapshots.
const TIME_KEY: &[u8] = b"m/time";

/// The time an entry applies at: the leader's stamp, but never earlier
/// than an entry applied before (leaders' clocks differ).
pub fn time_of(txn: &Txn<'_>, entry_time_ms: u64) -> Result<u64, StoreError> {
    let last = match txn.get(TIME_KEY)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("apply clock is not 8 bytes".into()))?,
        ),
        None => 0,
    };
    Ok(entry_time_ms.max(last))
}

pub fn set_time(txn: &mut Txn<'_>, time_ms: u64) {
    txn.put(TIME_KEY.to_vec(), time_ms.to_be_bytes().to_vec());
}

/// Applies one command of the entry at `index`, applied at `time_ms`.
pub fn apply(
    txn: &mut Txn<'_>,
    index: u64,
    time_ms: u64,
    cmd: &Cmd,
) -> Result<ApplyResult, StoreError> {
    Ok(match cmd {
        Cmd::Kv(c) => ApplyResult::Kv(kv::apply(txn, index, time_ms, c)?),
        Cmd::Machine(c) => {
            let allow = txn.get(ALLOW_FLUSH_ALL_KEY)?.is_some();
            ApplyResult::Machine(machine::apply(txn, index, time_ms, c, allow)?)
        }
        Cmd::Settings(SettingsCmd::SetRetention { domain, retention }) => {
            journal::set_retention(txn, *domain, *retention);
            ApplyResult::Settings(SettingsResult::Set)
        }
        Cmd::Room(c) => ApplyResult::Room(room::apply(txn, index, time_ms, c)?),
        Cmd::Settings(SettingsCmd::SetRoomLimits(l)) => {
            room::set_limits(txn, l)?;
            ApplyResult::Settings(SettingsResult::Set)
        }
        Cmd::Settings(SettingsCmd::AllowFlushAll(on)) => {
            if *on {
                txn.put(ALLOW_FLUSH_ALL_KEY.to_vec(), Vec::new());
            } else {
                txn.delete(ALLOW_FLUSH_ALL_KEY.to_vec());
            }
            ApplyResult::Settings(SettingsResult::Set)
        }
        Cmd::Pack(cmds) => {
            let mut results = Vec::with_capacity(cmds.len());
            for c in cmds {
                results.push(apply(txn, index, time_ms, c)?);
            }
            ApplyResult::Pack(results)
        }
        Cmd::Atomic(cmds) => {
            txn.savepoint();
            let mut results = Vec::with_capacity(cmds.len());
            let mut kept = true;
            for c in cmds {
                let r = apply(txn, index, time_ms, c)?;
                let refused = r.refused();
                results.push(r);
                if refused {
                    kept = false;
                    break;
                }
            }
            if kept {
                txn.release();
            } else {
                txn.rollback();
            }
            ApplyResult::Atomic { kept, results }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaders' clocks differ: an entry stamped earlier than one applied
    /// before applies at the later time.
    #[test]
    fn the_apply_clock_never_goes_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, reader) = crate::open(dir.path()).unwrap();
        let db = reader.db_for_tests();
        let mut txn = Txn::new(&db);
        assert_eq!(time_of(&txn, 100).unwrap(), 100);
        set_time(&mut txn, 100);
        assert_eq!(time_of(&txn, 50).unwrap(), 100);
        assert_eq!(time_of(&txn, 150).unwrap(), 150);
    }
}
