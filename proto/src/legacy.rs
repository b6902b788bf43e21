//! Release 0.1's log entries: JSON of openraft's `Entry` with the 0.1
//! command shape. Stored entries that start with `{` are these; they are
//! read (never written) and turned into today's [`Cmd`]. Golden tests pin
//! the shapes 0.1 wrote.

use std::io::Cursor;

use serde::Deserialize;

use crate::cmd::{Cmd, KvCmd};
use crate::{LogEntry, NodeId, NodeInfo, TypeConfig};

openraft::declare_raft_types!(
    /// openraft types of 0.1, for decoding its JSON entries only.
    pub V01Types:
        D = V01LogEntry,
        R = (),
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<V01Types>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// 0.1's `LogEntry`.
#[derive(serde::Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct V01LogEntry {
    pub time_ms: u64,
    pub cmd: V01Cmd,
}

impl std::fmt::Display for V01LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}@{}", self.cmd, self.time_ms)
    }
}

/// 0.1's `Cmd`.
#[derive(serde::Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum V01Cmd {
    KvPut {
        key: String,
        value: String,
        #[serde(default)]
        if_revision: Option<u64>,
    },
    KvDelete {
        key: String,
    },
    KvCas {
        key: String,
        expected: String,
        desired: String,
    },
    Batch {
        cmds: Vec<V01Cmd>,
    },
}

impl From<V01Cmd> for Cmd {
    fn from(c: V01Cmd) -> Cmd {
        match c {
            V01Cmd::KvPut {
                key,
                value,
                if_revision,
            } => Cmd::Kv(KvCmd::Put {
                key,
                value,
                if_revision,
            }),
            V01Cmd::KvDelete { key } => Cmd::Kv(KvCmd::Delete { key }),
            V01Cmd::KvCas {
                key,
                expected,
                desired,
            } => Cmd::Kv(KvCmd::Cas {
                key,
                expected,
                desired,
            }),
            // 0.1's batch was the leader's packing of independent writes.
            V01Cmd::Batch { cmds } => Cmd::Pack(cmds.into_iter().map(Cmd::from).collect()),
        }
    }
}

/// Decodes one 0.1 entry (JSON) into today's entry.
pub fn decode_entry(json: &[u8]) -> Result<openraft::Entry<TypeConfig>, serde_json::Error> {
    Ok(convert_entry(serde_json::from_slice(json)?))
}

/// A 0.1 entry as today's (a 0.1 leader's AppendEntries carries these).
pub fn convert_entry(e: openraft::Entry<V01Types>) -> openraft::Entry<TypeConfig> {
    let payload = match e.payload {
        openraft::EntryPayload::Blank => openraft::EntryPayload::Blank,
        openraft::EntryPayload::Normal(n) => openraft::EntryPayload::Normal(LogEntry {
            time_ms: n.time_ms,
            cmd: n.cmd.into(),
        }),
        // Rebuilt as the binary codec builds it, so every voter has a node
        // (openraft unwraps a voter's node when it replicates to it).
        openraft::EntryPayload::Membership(m) => {
            let nodes: std::collections::BTreeMap<_, _> =
                m.nodes().map(|(id, n)| (*id, n.clone())).collect();
            openraft::EntryPayload::Membership(openraft::Membership::new(
                m.get_joint_config().clone(),
                nodes,
            ))
        }
    };
    openraft::Entry {
        log_id: e.log_id,
        payload,
    }
}

/// A 0.1 leader's AppendEntries request (JSON) as today's.
pub fn decode_append(
    json: &[u8],
) -> Result<openraft::raft::AppendEntriesRequest<TypeConfig>, serde_json::Error> {
    let r: openraft::raft::AppendEntriesRequest<V01Types> = serde_json::from_slice(json)?;
    Ok(openraft::raft::AppendEntriesRequest {
        vote: r.vote,
        prev_log_id: r.prev_log_id,
        leader_commit: r.leader_commit,
        entries: r.entries.into_iter().map(convert_entry).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries exactly as 0.1 stored them (taken from a 0.1 data dir).
    #[test]
    fn golden_v01_entries_decode() {
        let put = br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":2},"payload":{"Normal":{"time_ms":7,"cmd":{"op":"kv_put","key":"a","value":"1","if_revision":3}}}}"#;
        let e = decode_entry(put).unwrap();
        assert_eq!(e.log_id.index, 2);
        let openraft::EntryPayload::Normal(n) = e.payload else {
            panic!("normal entry expected")
        };
        assert_eq!(n.time_ms, 7);
        assert_eq!(
            n.cmd,
            Cmd::Kv(KvCmd::Put {
                key: "a".into(),
                value: "1".into(),
                if_revision: Some(3)
            })
        );

        let batch = br#"{"log_id":{"leader_id":{"term":2,"node_id":3},"index":9},"payload":{"Normal":{"time_ms":7,"cmd":{"op":"batch","cmds":[{"op":"kv_delete","key":"a"},{"op":"kv_put","key":"b","value":"2","if_revision":null},{"op":"kv_cas","key":"c","expected":"null","desired":"{\"x\":1}"}]}}}}"#;
        let openraft::EntryPayload::Normal(n) = decode_entry(batch).unwrap().payload else {
            panic!("normal entry expected")
        };
        assert_eq!(
            n.cmd,
            Cmd::Pack(vec![
                Cmd::Kv(KvCmd::Delete { key: "a".into() }),
                Cmd::Kv(KvCmd::Put {
                    key: "b".into(),
                    value: "2".into(),
                    if_revision: None
                }),
                Cmd::Kv(KvCmd::Cas {
                    key: "c".into(),
                    expected: "null".into(),
                    desired: "{\"x\":1}".into()
                }),
            ])
        );

        // A put written before `if_revision` existed.
        let old = br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":5},"payload":{"Normal":{"time_ms":1,"cmd":{"op":"kv_put","key":"k","value":"2"}}}}"#;
        let openraft::EntryPayload::Normal(n) = decode_entry(old).unwrap().payload else {
            panic!()
        };
        assert!(matches!(
            n.cmd,
            Cmd::Kv(KvCmd::Put {
                if_revision: None,
                ..
            })
        ));

        let blank =
            br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":"Blank"}"#;
        assert!(matches!(
            decode_entry(blank).unwrap().payload,
            openraft::EntryPayload::Blank
        ));
    }

    /// A membership whose voter has no node (0.1 never wrote one) reads as
    /// the binary codec reads it: the voter gets an empty node.
    #[test]
    fn a_voter_without_a_node_gets_one() {
        let m = br#"{"log_id":{"leader_id":{"term":0,"node_id":0},"index":0},"payload":{"Membership":{"configs":[[1,2]],"nodes":{"1":{"grpc_addr":"a:1","http_addr":"a:2"}}}}}"#;
        let openraft::EntryPayload::Membership(m) = decode_entry(m).unwrap().payload else {
            panic!("membership expected")
        };
        assert_eq!(m.get_node(&2), Some(&NodeInfo::default()));
        assert_eq!(m.get_node(&1).unwrap().grpc_addr, "a:1");
    }

    /// A 0.1 leader's AppendEntries (openraft's request with 0.1 entries,
    /// as JSON) becomes today's request.
    #[test]
    fn a_v01_append_request_decodes() {
        let req: openraft::raft::AppendEntriesRequest<V01Types> =
            openraft::raft::AppendEntriesRequest {
                vote: openraft::Vote::new_committed(2, 1),
                prev_log_id: None,
                leader_commit: None,
                entries: vec![serde_json::from_slice(
                    br#"{"log_id":{"leader_id":{"term":2,"node_id":1},"index":4},"payload":{"Normal":{"time_ms":3,"cmd":{"op":"kv_delete","key":"z"}}}}"#,
                )
                .unwrap()],
            };
        let json = serde_json::to_vec(&req).unwrap();
        let got = decode_append(&json).unwrap();
        assert_eq!(got.vote, req.vote);
        let openraft::EntryPayload::Normal(n) = &got.entries[0].payload else {
            panic!("normal entry expected")
        };
        assert_eq!(n.cmd, Cmd::Kv(KvCmd::Delete { key: "z".into() }));
    }
}
