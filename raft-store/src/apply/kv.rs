//! Applying pm3 KV commands. A key's revision is the index of the entry
//! that wrote it, which is why a KV key is an exclusive conflict key.

use raftmesh_proto::{Event, KvCmd, KvEntry, KvEvent, KvResult};

use super::txn::Txn;
use crate::kv::{data_key, decide_cas, decode, encode};
use crate::StoreError;

fn lookup(txn: &Txn<'_>, key: &str) -> Result<Option<KvEntry>, StoreError> {
    txn.get(&data_key(key))?.map(|v| decode(&v)).transpose()
}

/// KV records carry no time: `_time_ms` is unused.
pub fn apply(
    txn: &mut Txn<'_>,
    index: u64,
    _time_ms: u64,
    cmd: &KvCmd,
) -> Result<KvResult, StoreError> {
    Ok(match cmd {
        KvCmd::Put {
            key,
            value,
            if_revision,
        } => {
            if let Some(want) = if_revision {
                let current = lookup(txn, key)?.map_or(0, |e| e.revision);
                if current != *want {
                    return Ok(KvResult::RevisionMismatch { current });
                }
            }
            txn.put(data_key(key), encode(index, value));
            txn.emit(Event::Kv(KvEvent::Put {
                key: key.clone(),
                value: value.clone(),
            }));
            KvResult::Written { revision: index }
        }
        KvCmd::Delete { key } => {
            // Watchers hear of deletes that removed something, as etcd's do.
            if txn.get(&data_key(key))?.is_some() {
                txn.delete(data_key(key));
                txn.emit(Event::Kv(KvEvent::Deleted { key: key.clone() }));
            }
            KvResult::Deleted
        }
        KvCmd::Cas {
            key,
            expected,
            desired,
        } => {
            let current = lookup(txn, key)?;
            let result = decide_cas(index, current.as_ref(), expected, desired);
            if matches!(result, KvResult::Cas { ok: true, .. }) {
                txn.put(data_key(key), encode(index, desired));
                txn.emit(Event::Kv(KvEvent::Put {
                    key: key.clone(),
                    value: desired.clone(),
                }));
            }
            result
        }
    })
}
