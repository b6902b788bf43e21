//! Typed, bounded reads of DriftDB rooms, for serving `get`, room lookups
//! and debug sockets locally.

use crate::apply::room::{decode_u64, decode_view, room_key, values_prefix};
use crate::{cf, StoreError, StoreReader, CF_SM};

pub use raftmesh_proto::{RoomValues, RoomView};

impl StoreReader {
    /// The room limits in force.
    pub fn room_limits(&self) -> Result<raftmesh_proto::RoomLimits, StoreError> {
        let _shared = self.gate.read()?;
        crate::apply::room::limits(&crate::apply::Txn::new(&self.db))
    }

    /// Rooms in id order after `after` (exclusive), at most `limit`, with
    /// their state: the leader's idle-retention pass walks them in pages.
    pub fn rooms_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, RoomView)>, StoreError> {
        let _shared = self.gate.read()?;
        let prefix = b"r/".to_vec();
        let from = match after {
            Some(a) => {
                let mut k = room_key(a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in crate::prefix_iter(&self.db, &prefix, &from) {
            let (k, v) = item?;
            if out.len() == limit {
                break;
            }
            let id = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| StoreError::Corrupt("a room id is not UTF-8".into()))?;
            out.push((id, decode_view(&v)?));
        }
        Ok(out)
    }

    pub fn room_get(&self, room: &str) -> Result<Option<RoomView>, StoreError> {
        let _shared = self.gate.read()?;
        self.db
            .get_cf(cf(&self.db, CF_SM), room_key(room))?
            .map(|raw| decode_view(&raw))
            .transpose()
    }

    /// The values of `key` in `room` with a seq greater than `after`, at
    /// most `limit`, from one point-in-time view.
    pub fn room_values(
        &self,
        room: &str,
        key: &str,
        after: u64,
        limit: usize,
    ) -> Result<RoomValues, StoreError> {
        let _shared = self.gate.read()?;
        let prefix = values_prefix(room, key);
        let mut from = prefix.clone();
        from.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        if after == u64::MAX {
            return Ok(RoomValues::default());
        }
        let mut out = RoomValues::default();
        let iter = crate::prefix_iter(&self.db, &prefix, &from);
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if out.values.len() == limit {
                out.more = true;
                break;
            }
            let seq = decode_u64(&k[prefix.len()..], "a room value's seq")?;
            let text = String::from_utf8(v.to_vec())
                .map_err(|_| StoreError::Corrupt("a room value is not UTF-8".into()))?;
            out.values.push((seq, text));
        }
        Ok(out)
    }

    /// The keys of `room` holding values (shorter keys first, then in byte
    /// order: stored keys are length-prefixed), after `after`
    /// (exclusive) when given; at most `limit`, and whether more follow.
    pub fn room_keys(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let _shared = self.gate.read()?;
        let prefix = format!("rk/{room}\0").into_bytes();
        let from = match after {
            Some(a) => {
                let mut k = crate::apply::room::count_key(room, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut keys = Vec::new();
        let iter = crate::prefix_iter(&self.db, &prefix, &from);
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if keys.len() == limit {
                return Ok((keys, true));
            }
            let rest = &k[prefix.len()..];
            if rest.len() < 4 {
                return Err(StoreError::Corrupt("room key record too short".into()));
            }
            let name = String::from_utf8(rest[4..].to_vec())
                .map_err(|_| StoreError::Corrupt("a room key is not UTF-8".into()))?;
            keys.push(name);
        }
        Ok((keys, false))
    }
}
