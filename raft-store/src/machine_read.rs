//! Typed, bounded reads of the rstmdb machine state, for serving reads
//! locally (after a read barrier, or stale).

use rocksdb::{Direction, IteratorMode};

use crate::apply::machine::{
    count_key, index_prefix, instance_key, machine_key, InstanceRecord, MachineRecord,
    INSTANCE_PREFIX, MACHINE_PREFIX,
};
use crate::{cf, StoreError, StoreReader, CF_SM};

pub use raftmesh_proto::InstancePage;

impl StoreReader {
    pub fn machine_get(
        &self,
        machine: &str,
        version: u32,
    ) -> Result<Option<MachineRecord>, StoreError> {
        let _shared = self.gate.read()?;
        self.db
            .get_cf(cf(&self.db, CF_SM), machine_key(machine, version))?
            .map(|v| serde_json::from_slice(&v).map_err(StoreError::from))
            .transpose()
    }

    /// Every machine with its versions, ascending; at most `limit` machines.
    pub fn machine_list(&self, limit: usize) -> Result<Vec<(String, Vec<u32>)>, StoreError> {
        let _shared = self.gate.read()?;
        let mut out: Vec<(String, Vec<u32>)> = Vec::new();
        let iter = crate::prefix_iter(&self.db, MACHINE_PREFIX, MACHINE_PREFIX);
        for item in iter {
            let (k, _) = item?;
            if !k.starts_with(MACHINE_PREFIX) {
                break;
            }
            let rest = &k[MACHINE_PREFIX.len()..];
            let Some(nul) = rest.iter().position(|&b| b == 0) else {
                return Err(StoreError::Corrupt("machine key without version".into()));
            };
            let name = std::str::from_utf8(&rest[..nul])
                .map_err(|_| StoreError::Corrupt("machine name not UTF-8".into()))?;
            let version = u32::from_be_bytes(
                rest[nul + 1..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("machine version not 4 bytes".into()))?,
            );
            match out.last_mut() {
                Some((n, vs)) if n == name => vs.push(version),
                _ => {
                    if out.len() == limit {
                        break;
                    }
                    out.push((name.to_string(), vec![version]));
                }
            }
        }
        Ok(out)
    }

    pub fn instance_get(&self, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
        let _shared = self.gate.read()?;
        self.db
            .get_cf(cf(&self.db, CF_SM), instance_key(id))?
            .map(|v| serde_json::from_slice(&v).map_err(StoreError::from))
            .transpose()
    }

    /// Instances matching the filters, ordered by id, skipping `offset`.
    /// Reads from one point-in-time view, so the page and `total` agree.
    pub fn instance_list(
        &self,
        machine: Option<&str>,
        state: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<InstancePage, StoreError> {
        let _shared = self.gate.read()?;
        let snap = self.db.snapshot();
        let sm = cf(&self.db, CF_SM);
        let total = match snap.get_cf(sm, count_key(machine, state))? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("counter is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let prefix = index_prefix(machine, state);
        let direct = prefix == INSTANCE_PREFIX;
        let mut page = InstancePage {
            total,
            ..Default::default()
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(&snap);
        let iter =
            self.db
                .iterator_cf_opt(sm, opts, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter.skip(offset) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            if page.instances.len() == limit {
                page.has_more = true;
                break;
            }
            let id = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::Corrupt("instance id not UTF-8".into()))?
                .to_string();
            let rec: InstanceRecord = if direct {
                serde_json::from_slice(&v)?
            } else {
                let raw = snap.get_cf(sm, instance_key(&id))?.ok_or_else(|| {
                    StoreError::Corrupt(format!("index names instance {id} which is gone"))
                })?;
                serde_json::from_slice(&raw)?
            };
            page.instances.push((id, rec));
        }
        Ok(page)
    }
}
