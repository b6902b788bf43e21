//! The versioned binary codec of log entries, as stored in RocksDB and sent
//! in Raft messages: one version byte, then a protobuf message
//! (`proto/log.proto`). Values travel as bytes, never as JSON escaped inside
//! JSON.
//!
//! Why protobuf and not a serde binary format: fields will be added (to
//! commands, to `NodeInfo`), and protobuf's field numbers let a reader skip
//! what it does not know and default what an older writer left out, with no
//! version logic of ours; a serde binary format (bincode, postcard) encodes
//! by position, so every added field would need an explicit version. The
//! version byte is for what protobuf cannot absorb: a new schema.
//!
//! Reading also accepts release 0.1's entries (JSON, first byte `{`), see
//! [`crate::legacy`].

mod room;

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use prost::Message;

use crate::cmd::{
    ApplyResult, Cmd, Domain, Event, KvCmd, KvEvent, KvResult, MachineCmd, MachineError,
    MachineErrorCode, MachineEvent, MachineResult, Retention, SettingsCmd, SettingsResult,
};
use crate::{version_or_legacy, LogEntry, NodeId, NodeInfo, TypeConfig, FEATURE_VERSION};

/// Generated prost messages for `proto/log.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/raftmesh.log.v1.rs"));
}

/// The first byte of an entry in this schema.
pub const ENTRY_V2: u8 = 0x02;
/// The feature version every entry of this schema needs; an entry that
/// needs more says so (`AppEntry.required_version`).
const SCHEMA_VERSION: u32 = 2;
/// The first byte of a 0.1 entry (JSON object).
const ENTRY_V01_JSON: u8 = b'{';

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty entry")]
    Empty,
    /// Written by a newer release: this node cannot apply it and must not
    /// guess.
    #[error(
        "entry format version {0} (first byte {0:#04x}) is newer than this build understands; \
         it supports up to version {FEATURE_VERSION}: upgrade this node"
    )]
    UnknownVersion(u8),
    /// The entry says its command needs a newer feature version: it may
    /// carry fields this build would skip, so it is not applied.
    #[error(
        "the entry needs feature version {0}; this build supports up to version \
         {FEATURE_VERSION}: upgrade this node"
    )]
    TooNew(u32),
    /// A command (or result) kind this build does not know: written by a
    /// newer release (or garbage); never guessed at.
    #[error(
        "{0} this build does not know, written by a newer release; this build supports up \
         to version {FEATURE_VERSION}: upgrade this node"
    )]
    UnknownKind(&'static str),
    /// Decoding the entry at `index` of an append failed (shown, not
    /// chained as a source, so error chains do not repeat it).
    #[error("log entry {index}: {error}")]
    InEntry { index: u64, error: Box<CodecError> },
    #[error("undecodable entry: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("undecodable 0.1 entry: {0}")]
    Legacy(#[from] serde_json::Error),
    #[error("malformed entry: {0}")]
    Malformed(&'static str),
    #[error("entry value is not UTF-8 JSON text")]
    NotUtf8,
}

impl CodecError {
    /// Written by a newer release: the fix is to upgrade this node, not to
    /// repair the data.
    pub fn needs_upgrade(&self) -> bool {
        match self {
            CodecError::UnknownVersion(_) | CodecError::TooNew(_) | CodecError::UnknownKind(_) => {
                true
            }
            CodecError::InEntry { error, .. } => error.needs_upgrade(),
            _ => false,
        }
    }
}

/// Encodes an entry: [`ENTRY_V2`] then the protobuf message.
pub fn encode_entry(e: &Entry<TypeConfig>) -> Vec<u8> {
    let msg = entry_to_pb(e);
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(ENTRY_V2);
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Decodes an entry of this schema or of 0.1.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&ENTRY_V2) => entry_from_pb(pb::LogEntry::decode(&bytes[1..])?),
        Some(&ENTRY_V01_JSON) => Ok(crate::legacy::decode_entry(bytes)?),
        Some(&v) => Err(CodecError::UnknownVersion(v)),
    }
}

/// Encodes a command alone (forwarded writes carry only the command).
pub fn encode_cmd(c: &Cmd) -> Vec<u8> {
    cmd_to_pb(c).encode_to_vec()
}

/// Bytes a command takes in an entry, at most (for the entry size bound),
/// computed from the borrowed command: the leader checks every write, and
/// building the message to measure it would copy each value once more.
/// Counts every field as present, so it never undercounts.
pub fn cmd_len(c: &Cmd) -> usize {
    use prost::encoding::encoded_len_varint;
    // One length-delimited field: 1-byte tag (all field numbers are < 16),
    // the length, the bytes.
    fn field(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }
    match c {
        Cmd::Kv(k) => field(match k {
            KvCmd::Put {
                key,
                value,
                if_revision,
            } => field(
                field(key.len())
                    + field(value.len())
                    + if_revision.map_or(0, |r| 1 + encoded_len_varint(r)),
            ),
            KvCmd::Delete { key } => field(field(key.len())),
            KvCmd::Cas {
                key,
                expected,
                desired,
            } => field(field(key.len()) + field(expected.len()) + field(desired.len())),
        }),
        Cmd::Machine(m) => {
            let s = |x: &str| field(x.len());
            let o = |x: &Option<String>| x.as_ref().map_or(0, |x| field(x.len()));
            // Every integer as its widest varint plus a tag.
            const INT: usize = 11;
            field(field(match m {
                MachineCmd::PutMachine {
                    machine,
                    definition,
                    ..
                } => s(machine) + INT + s(definition),
                MachineCmd::CreateInstance {
                    machine,
                    instance_id,
                    initial_ctx,
                    idempotency_key,
                    ..
                } => s(machine) + INT + s(instance_id) + o(initial_ctx) + o(idempotency_key),
                MachineCmd::ApplyEvent {
                    instance_id,
                    event,
                    payload,
                    expected_state,
                    event_id,
                    idempotency_key,
                    ..
                } => {
                    s(instance_id)
                        + s(event)
                        + o(payload)
                        + o(expected_state)
                        + INT
                        + o(event_id)
                        + o(idempotency_key)
                }
                MachineCmd::DeleteInstance {
                    instance_id,
                    idempotency_key,
                } => s(instance_id) + o(idempotency_key),
                MachineCmd::FlushAll => 0,
            }))
        }
        Cmd::Settings(SettingsCmd::SetRetention { domain, .. }) => {
            // domain name, two varints of at most 10 bytes each.
            field(field(field(domain.name().len()) + 2 * 11))
        }
        Cmd::Settings(SettingsCmd::AllowFlushAll(_)) => field(2),
        Cmd::Settings(SettingsCmd::SetRoomLimits(_)) => field(field(4 * 11)),
        Cmd::Room(r) => room::cmd_len(r, field),
        Cmd::Pack(cmds) | Cmd::Atomic(cmds) => field(cmds.iter().map(|c| field(cmd_len(c))).sum()),
    }
}

pub fn decode_cmd(bytes: &[u8]) -> Result<Cmd, CodecError> {
    cmd_from_pb(pb::Command::decode(bytes)?)
}

/// The small part of an AppendEntries request, as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct AppendHeader {
    vote: openraft::Vote<NodeId>,
    prev_log_id: Option<LogId<NodeId>>,
    leader_commit: Option<LogId<NodeId>>,
}

/// An AppendEntries request with its entries in this codec.
pub fn encode_append(
    req: &openraft::raft::AppendEntriesRequest<TypeConfig>,
) -> crate::pb::AppendRequest {
    let header = AppendHeader {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
    };
    crate::pb::AppendRequest {
        header: serde_json::to_vec(&header).expect("openraft ids serialize"),
        entries: req.entries.iter().map(encode_entry).collect(),
    }
}

/// Decodes an append; an entry that fails is named by its log index
/// ([`CodecError::InEntry`]), so a node too old for it can say which.
pub fn decode_append(
    req: crate::pb::AppendRequest,
) -> Result<openraft::raft::AppendEntriesRequest<TypeConfig>, CodecError> {
    let h: AppendHeader = serde_json::from_slice(&req.header)?;
    let first = h.prev_log_id.map_or(0, |l| l.index + 1);
    Ok(openraft::raft::AppendEntriesRequest {
        vote: h.vote,
        prev_log_id: h.prev_log_id,
        leader_commit: h.leader_commit,
        entries: req
            .entries
            .iter()
            .zip(first..)
            .map(|(e, index)| {
                decode_entry(e).map_err(|e| CodecError::InEntry {
                    index,
                    error: Box::new(e),
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Encodes a forwarded write's outcome.
pub fn encode_written(index: u64, result: &ApplyResult) -> Vec<u8> {
    pb::Written {
        index,
        result: Some(result_to_pb(result)),
    }
    .encode_to_vec()
}

pub fn decode_written(bytes: &[u8]) -> Result<(u64, ApplyResult), CodecError> {
    let w = pb::Written::decode(bytes)?;
    let r = w.result.ok_or(CodecError::Malformed("no result"))?;
    Ok((w.index, result_from_pb(r)?))
}

/// One outcome per write of a forwarded write sequence.
pub type SeqOutcomes = Vec<Result<(u64, ApplyResult), crate::ClusterError>>;

pub fn encode_written_seq(items: &SeqOutcomes) -> Vec<u8> {
    use pb::written_item::Outcome;
    pb::WrittenSeq {
        items: items
            .iter()
            .map(|i| pb::WrittenItem {
                outcome: Some(match i {
                    Ok((index, r)) => Outcome::Ok(pb::Written {
                        index: *index,
                        result: Some(result_to_pb(r)),
                    }),
                    Err(e) => Outcome::Error(serde_json::to_vec(e).expect("errors serialize")),
                }),
            })
            .collect(),
    }
    .encode_to_vec()
}

pub fn decode_written_seq(bytes: &[u8]) -> Result<SeqOutcomes, CodecError> {
    use pb::written_item::Outcome;
    pb::WrittenSeq::decode(bytes)?
        .items
        .into_iter()
        .map(|i| match i.outcome {
            Some(Outcome::Ok(w)) => {
                let r = w.result.ok_or(CodecError::Malformed("no result"))?;
                Ok(Ok((w.index, result_from_pb(r)?)))
            }
            Some(Outcome::Error(e)) => Ok(Err(serde_json::from_slice(&e)?)),
            None => Err(CodecError::Malformed("an outcome of an unknown kind")),
        })
        .collect()
}

fn result_to_pb(r: &ApplyResult) -> pb::ApplyResult {
    use pb::apply_result::Result as R;
    use pb::kv_result::Result as K;
    let all = |rs: &[ApplyResult]| rs.iter().map(result_to_pb).collect();
    let result = match r {
        ApplyResult::None => R::None(pb::Blank {}),
        ApplyResult::Kv(k) => R::Kv(pb::KvResult {
            result: Some(match k {
                KvResult::Written { revision } => K::Written(pb::KvWritten {
                    revision: *revision,
                }),
                KvResult::RevisionMismatch { current } => {
                    K::Mismatch(pb::KvMismatch { current: *current })
                }
                KvResult::Deleted => K::Deleted(pb::Blank {}),
                KvResult::Cas {
                    ok,
                    revision,
                    value,
                    diff,
                } => K::Cas(pb::KvCasResult {
                    ok: *ok,
                    revision: *revision,
                    value: value.as_bytes().to_vec(),
                    diff: diff.as_bytes().to_vec(),
                }),
            }),
        }),
        ApplyResult::Machine(m) => R::Machine(machine_result_to_pb(m)),
        ApplyResult::Room(r) => R::Room(room::result_to_pb(r)),
        ApplyResult::Settings(SettingsResult::Set) => R::Settings(pb::SettingsResult {
            result: Some(pb::settings_result::Result::Set(pb::Blank {})),
        }),
        ApplyResult::Pack(rs) => R::Pack(pb::Results { results: all(rs) }),
        ApplyResult::Atomic { kept, results } => R::Atomic(pb::AtomicResult {
            kept: *kept,
            results: all(results),
        }),
    };
    pb::ApplyResult {
        result: Some(result),
    }
}

fn result_from_pb(r: pb::ApplyResult) -> Result<ApplyResult, CodecError> {
    use pb::apply_result::Result as R;
    use pb::kv_result::Result as K;
    let all = |rs: Vec<pb::ApplyResult>| -> Result<Vec<ApplyResult>, CodecError> {
        rs.into_iter().map(result_from_pb).collect()
    };
    Ok(
        match r
            .result
            .ok_or(CodecError::Malformed("a result of an unknown kind"))?
        {
            R::None(_) => ApplyResult::None,
            R::Kv(k) => ApplyResult::Kv(
                match k
                    .result
                    .ok_or(CodecError::Malformed("a KV result of an unknown kind"))?
                {
                    K::Written(w) => KvResult::Written {
                        revision: w.revision,
                    },
                    K::Mismatch(m) => KvResult::RevisionMismatch { current: m.current },
                    K::Deleted(_) => KvResult::Deleted,
                    K::Cas(c) => KvResult::Cas {
                        ok: c.ok,
                        revision: c.revision,
                        value: text(c.value)?,
                        diff: text(c.diff)?,
                    },
                },
            ),
            R::Machine(m) => ApplyResult::Machine(machine_result_from_pb(m)?),
            R::Room(r) => ApplyResult::Room(room::result_from_pb(r)?),
            R::Settings(st) => match st.result.ok_or(CodecError::Malformed(
                "a settings result of an unknown kind",
            ))? {
                pb::settings_result::Result::Set(_) => ApplyResult::Settings(SettingsResult::Set),
            },
            R::Pack(p) => ApplyResult::Pack(all(p.results)?),
            R::Atomic(a) => ApplyResult::Atomic {
                kept: a.kept,
                results: all(a.results)?,
            },
        },
    )
}

/// The first byte of a stored journal record in this schema.
pub const JOURNAL_V1: u8 = 0x01;

/// One journal record: the events entry `index` produced in one domain.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalRecord {
    pub index: u64,
    pub time_ms: u64,
    pub events: Vec<Event>,
}

/// Encodes a journal record: [`JOURNAL_V1`] then the protobuf message.
pub fn encode_journal(r: &JournalRecord) -> Vec<u8> {
    let msg = pb::JournalRecord {
        index: r.index,
        time_ms: r.time_ms,
        events: r.events.iter().map(event_to_pb).collect(),
    };
    let mut out = Vec::with_capacity(1 + msg.encoded_len());
    out.push(JOURNAL_V1);
    msg.encode(&mut out).expect("a Vec grows as needed");
    out
}

pub fn decode_journal(bytes: &[u8]) -> Result<JournalRecord, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&JOURNAL_V1) => {
            let m = pb::JournalRecord::decode(&bytes[1..])?;
            Ok(JournalRecord {
                index: m.index,
                time_ms: m.time_ms,
                events: m
                    .events
                    .into_iter()
                    .map(event_from_pb)
                    .collect::<Result<_, _>>()?,
            })
        }
        Some(&v) => Err(CodecError::UnknownVersion(v)),
    }
}

fn event_to_pb(e: &Event) -> pb::Event {
    use pb::kv_event::Op;
    pb::Event {
        event: Some(match e {
            Event::Machine(m) => pb::event::Event::Machine(machine_event_to_pb(m)),
            Event::Room(r) => pb::event::Event::Room(room::event_to_pb(r)),
            Event::Kv(k) => pb::event::Event::Kv(pb::KvEvent {
                op: Some(match k {
                    KvEvent::Put { key, value } => Op::Put(pb::KvPutEvent {
                        key: key.clone(),
                        value: value.as_bytes().to_vec(),
                    }),
                    KvEvent::Deleted { key } => {
                        Op::Deleted(pb::KvDeletedEvent { key: key.clone() })
                    }
                }),
            }),
        }),
    }
}

fn event_from_pb(e: pb::Event) -> Result<Event, CodecError> {
    use pb::kv_event::Op;
    Ok(
        match e
            .event
            .ok_or(CodecError::Malformed("an event of an unknown kind"))?
        {
            pb::event::Event::Machine(m) => Event::Machine(machine_event_from_pb(m)?),
            pb::event::Event::Room(r) => Event::Room(room::event_from_pb(r)?),
            pb::event::Event::Kv(k) => Event::Kv(
                match k
                    .op
                    .ok_or(CodecError::Malformed("a KV event of an unknown kind"))?
                {
                    Op::Put(p) => KvEvent::Put {
                        key: p.key,
                        value: text(p.value)?,
                    },
                    Op::Deleted(d) => KvEvent::Deleted { key: d.key },
                },
            ),
        },
    )
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn opt_text(b: Option<Vec<u8>>) -> Result<Option<String>, CodecError> {
    b.map(text).transpose()
}

fn machine_cmd_to_pb(m: &MachineCmd) -> pb::MachineCommand {
    use pb::machine_command::Op;
    let op = match m {
        MachineCmd::PutMachine {
            machine,
            version,
            definition,
        } => Op::PutMachine(pb::PutMachine {
            machine: machine.clone(),
            version: *version,
            definition: bytes(definition),
        }),
        MachineCmd::CreateInstance {
            machine,
            version,
            instance_id,
            initial_ctx,
            idempotency_key,
        } => Op::CreateInstance(pb::CreateInstance {
            machine: machine.clone(),
            version: *version,
            instance_id: instance_id.clone(),
            initial_ctx: initial_ctx.as_deref().map(bytes),
            idempotency_key: idempotency_key.clone(),
        }),
        MachineCmd::ApplyEvent {
            instance_id,
            event,
            payload,
            expected_state,
            expected_wal_offset,
            event_id,
            idempotency_key,
        } => Op::ApplyEvent(pb::ApplyEvent {
            instance_id: instance_id.clone(),
            event: event.clone(),
            payload: payload.as_deref().map(bytes),
            expected_state: expected_state.clone(),
            expected_wal_offset: *expected_wal_offset,
            event_id: event_id.clone(),
            idempotency_key: idempotency_key.clone(),
        }),
        MachineCmd::DeleteInstance {
            instance_id,
            idempotency_key,
        } => Op::DeleteInstance(pb::DeleteInstance {
            instance_id: instance_id.clone(),
            idempotency_key: idempotency_key.clone(),
        }),
        MachineCmd::FlushAll => Op::FlushAll(pb::Blank {}),
    };
    pb::MachineCommand { op: Some(op) }
}

fn machine_cmd_from_pb(m: pb::MachineCommand) -> Result<MachineCmd, CodecError> {
    use pb::machine_command::Op;
    Ok(
        match m
            .op
            .ok_or(CodecError::UnknownKind("a machine command kind"))?
        {
            Op::PutMachine(p) => MachineCmd::PutMachine {
                machine: p.machine,
                version: p.version,
                definition: text(p.definition)?,
            },
            Op::CreateInstance(c) => MachineCmd::CreateInstance {
                machine: c.machine,
                version: c.version,
                instance_id: c.instance_id,
                initial_ctx: opt_text(c.initial_ctx)?,
                idempotency_key: c.idempotency_key,
            },
            Op::ApplyEvent(a) => MachineCmd::ApplyEvent {
                instance_id: a.instance_id,
                event: a.event,
                payload: opt_text(a.payload)?,
                expected_state: a.expected_state,
                expected_wal_offset: a.expected_wal_offset,
                event_id: a.event_id,
                idempotency_key: a.idempotency_key,
            },
            Op::DeleteInstance(d) => MachineCmd::DeleteInstance {
                instance_id: d.instance_id,
                idempotency_key: d.idempotency_key,
            },
            Op::FlushAll(_) => MachineCmd::FlushAll,
        },
    )
}

/// Machine results are also what an idempotency record keeps, so they
/// have a standalone encoding.
pub fn encode_machine_result(r: &MachineResult) -> Vec<u8> {
    machine_result_to_pb(r).encode_to_vec()
}

pub fn decode_machine_result(b: &[u8]) -> Result<MachineResult, CodecError> {
    machine_result_from_pb(pb::MachineResult::decode(b)?)
}

fn machine_result_to_pb(r: &MachineResult) -> pb::MachineResult {
    use pb::machine_result::Result as R;
    let result = match r {
        MachineResult::MachinePut { created, checksum } => R::MachinePut(pb::MachinePutResult {
            created: *created,
            checksum: checksum.clone(),
        }),
        MachineResult::InstanceCreated {
            instance_id,
            state,
            wal_offset,
        } => R::InstanceCreated(pb::InstanceCreatedResult {
            instance_id: instance_id.clone(),
            state: state.clone(),
            wal_offset: *wal_offset,
        }),
        MachineResult::EventApplied {
            from_state,
            to_state,
            ctx,
            wal_offset,
            event_id,
        } => R::EventApplied(pb::EventAppliedResult {
            from_state: from_state.clone(),
            to_state: to_state.clone(),
            ctx: bytes(ctx),
            wal_offset: *wal_offset,
            event_id: event_id.clone(),
        }),
        MachineResult::InstanceDeleted {
            instance_id,
            wal_offset,
        } => R::InstanceDeleted(pb::InstanceDeletedResult {
            instance_id: instance_id.clone(),
            wal_offset: *wal_offset,
        }),
        MachineResult::Flushed {
            machines,
            instances,
        } => R::Flushed(pb::FlushedResult {
            machines: *machines,
            instances: *instances,
        }),
        MachineResult::Refused(e) => R::Refused(pb::MachineError {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
            details: e.details.as_deref().map(bytes),
        }),
    };
    pb::MachineResult {
        result: Some(result),
    }
}

fn machine_result_from_pb(r: pb::MachineResult) -> Result<MachineResult, CodecError> {
    use pb::machine_result::Result as R;
    Ok(
        match r
            .result
            .ok_or(CodecError::Malformed("a machine result of an unknown kind"))?
        {
            R::MachinePut(p) => MachineResult::MachinePut {
                created: p.created,
                checksum: p.checksum,
            },
            R::InstanceCreated(c) => MachineResult::InstanceCreated {
                instance_id: c.instance_id,
                state: c.state,
                wal_offset: c.wal_offset,
            },
            R::EventApplied(a) => MachineResult::EventApplied {
                from_state: a.from_state,
                to_state: a.to_state,
                ctx: text(a.ctx)?,
                wal_offset: a.wal_offset,
                event_id: a.event_id,
            },
            R::InstanceDeleted(d) => MachineResult::InstanceDeleted {
                instance_id: d.instance_id,
                wal_offset: d.wal_offset,
            },
            R::Flushed(f) => MachineResult::Flushed {
                machines: f.machines,
                instances: f.instances,
            },
            R::Refused(e) => MachineResult::Refused(MachineError {
                code: MachineErrorCode::from_name(&e.code)
                    .ok_or(CodecError::Malformed("an unknown machine error code"))?,
                message: e.message,
                details: opt_text(e.details)?,
            }),
        },
    )
}

fn machine_event_to_pb(e: &MachineEvent) -> pb::MachineEvent {
    use pb::machine_event::Op;
    let op = match e {
        MachineEvent::MachinePut {
            machine,
            version,
            checksum,
            definition,
        } => Op::MachinePut(pb::MachinePutEvent {
            machine: machine.clone(),
            version: *version,
            checksum: checksum.clone(),
            definition: bytes(definition),
        }),
        MachineEvent::InstanceCreated {
            instance_id,
            machine,
            version,
            state,
            ctx,
            idempotency_key,
        } => Op::InstanceCreated(pb::InstanceCreatedEvent {
            instance_id: instance_id.clone(),
            machine: machine.clone(),
            version: *version,
            state: state.clone(),
            ctx: bytes(ctx),
            idempotency_key: idempotency_key.clone(),
        }),
        MachineEvent::EventApplied {
            instance_id,
            machine,
            version,
            from_state,
            to_state,
            event,
            payload,
            ctx,
            event_id,
            idempotency_key,
        } => Op::EventApplied(pb::EventAppliedEvent {
            instance_id: instance_id.clone(),
            machine: machine.clone(),
            version: *version,
            from_state: from_state.clone(),
            to_state: to_state.clone(),
            event: event.clone(),
            payload: bytes(payload),
            ctx: bytes(ctx),
            event_id: event_id.clone(),
            idempotency_key: idempotency_key.clone(),
        }),
        MachineEvent::InstanceDeleted {
            instance_id,
            machine,
            version,
            idempotency_key,
        } => Op::InstanceDeleted(pb::InstanceDeletedEvent {
            instance_id: instance_id.clone(),
            machine: machine.clone(),
            version: *version,
            idempotency_key: idempotency_key.clone(),
        }),
        MachineEvent::Flushed => Op::Flushed(pb::Blank {}),
    };
    pb::MachineEvent { op: Some(op) }
}

fn machine_event_from_pb(e: pb::MachineEvent) -> Result<MachineEvent, CodecError> {
    use pb::machine_event::Op;
    Ok(
        match e
            .op
            .ok_or(CodecError::Malformed("a machine event of an unknown kind"))?
        {
            Op::MachinePut(p) => MachineEvent::MachinePut {
                machine: p.machine,
                version: p.version,
                checksum: p.checksum,
                definition: text(p.definition)?,
            },
            Op::InstanceCreated(c) => MachineEvent::InstanceCreated {
                instance_id: c.instance_id,
                machine: c.machine,
                version: c.version,
                state: c.state,
                ctx: text(c.ctx)?,
                idempotency_key: c.idempotency_key,
            },
            Op::EventApplied(a) => MachineEvent::EventApplied {
                instance_id: a.instance_id,
                machine: a.machine,
                version: a.version,
                from_state: a.from_state,
                to_state: a.to_state,
                event: a.event,
                payload: text(a.payload)?,
                ctx: text(a.ctx)?,
                event_id: a.event_id,
                idempotency_key: a.idempotency_key,
            },
            Op::InstanceDeleted(d) => MachineEvent::InstanceDeleted {
                instance_id: d.instance_id,
                machine: d.machine,
                version: d.version,
                idempotency_key: d.idempotency_key,
            },
            Op::Flushed(_) => MachineEvent::Flushed,
        },
    )
}

fn log_id_to_pb(l: &LogId<NodeId>) -> pb::LogId {
    pb::LogId {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

fn log_id_from_pb(l: pb::LogId) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(l.term, l.node_id), l.index)
}

fn entry_to_pb(e: &Entry<TypeConfig>) -> pb::LogEntry {
    use pb::log_entry::Payload;
    let payload = match &e.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(n) => Payload::App(pb::AppEntry {
            time_ms: n.time_ms,
            cmd: Some(cmd_to_pb(&n.cmd)),
            // Absent for what every reader of this schema applies, so
            // today's bytes stay as they were.
            required_version: match n.cmd.required_version() {
                v if v > SCHEMA_VERSION => v,
                _ => 0,
            },
        }),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::LogEntry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

fn entry_from_pb(e: pb::LogEntry) -> Result<Entry<TypeConfig>, CodecError> {
    use pb::log_entry::Payload;
    let log_id = log_id_from_pb(e.log_id.ok_or(CodecError::Malformed("no log id"))?);
    let payload = match e
        .payload
        .ok_or(CodecError::UnknownKind("a log entry kind"))?
    {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::App(a) if a.required_version > FEATURE_VERSION => {
            return Err(CodecError::TooNew(a.required_version))
        }
        Payload::App(a) => EntryPayload::Normal(LogEntry {
            time_ms: a.time_ms,
            cmd: cmd_from_pb(a.cmd.ok_or(CodecError::Malformed("no command"))?)?,
        }),
        Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(m)),
    };
    Ok(Entry { log_id, payload })
}

fn cmd_to_pb(c: &Cmd) -> pb::Command {
    use pb::command::Cmd as C;
    use pb::kv_command::Op;
    let cmd = match c {
        Cmd::Kv(k) => C::Kv(pb::KvCommand {
            op: Some(match k {
                KvCmd::Put {
                    key,
                    value,
                    if_revision,
                } => Op::Put(pb::KvPut {
                    key: key.clone(),
                    value: value.as_bytes().to_vec(),
                    if_revision: *if_revision,
                }),
                KvCmd::Delete { key } => Op::Delete(pb::KvDelete { key: key.clone() }),
                KvCmd::Cas {
                    key,
                    expected,
                    desired,
                } => Op::Cas(pb::KvCas {
                    key: key.clone(),
                    expected: expected.as_bytes().to_vec(),
                    desired: desired.as_bytes().to_vec(),
                }),
            }),
        }),
        Cmd::Machine(m) => C::Machine(machine_cmd_to_pb(m)),
        Cmd::Room(r) => C::Room(room::cmd_to_pb(r)),
        Cmd::Settings(SettingsCmd::SetRoomLimits(l)) => C::Settings(pb::SettingsCommand {
            op: Some(pb::settings_command::Op::RoomLimits(room::limits_to_pb(l))),
        }),
        Cmd::Settings(SettingsCmd::AllowFlushAll(on)) => C::Settings(pb::SettingsCommand {
            op: Some(pb::settings_command::Op::AllowFlushAll(*on)),
        }),
        Cmd::Settings(SettingsCmd::SetRetention { domain, retention }) => {
            C::Settings(pb::SettingsCommand {
                op: Some(pb::settings_command::Op::SetRetention(pb::SetRetention {
                    domain: domain.name().to_string(),
                    max_events: retention.max_events,
                    max_bytes: retention.max_bytes,
                })),
            })
        }
        Cmd::Pack(cmds) => C::Pack(pb::Commands {
            cmds: cmds.iter().map(cmd_to_pb).collect(),
        }),
        Cmd::Atomic(cmds) => C::Atomic(pb::Commands {
            cmds: cmds.iter().map(cmd_to_pb).collect(),
        }),
    };
    pb::Command { cmd: Some(cmd) }
}

fn text(b: Vec<u8>) -> Result<String, CodecError> {
    String::from_utf8(b).map_err(|_| CodecError::NotUtf8)
}

fn cmd_from_pb(c: pb::Command) -> Result<Cmd, CodecError> {
    use pb::command::Cmd as C;
    use pb::kv_command::Op;
    let group = |g: pb::Commands| -> Result<Vec<Cmd>, CodecError> {
        g.cmds.into_iter().map(cmd_from_pb).collect()
    };
    Ok(
        match c.cmd.ok_or(CodecError::UnknownKind("a command kind"))? {
            C::Kv(k) => Cmd::Kv(
                match k.op.ok_or(CodecError::UnknownKind("a KV command kind"))? {
                    Op::Put(p) => KvCmd::Put {
                        key: p.key,
                        value: text(p.value)?,
                        if_revision: p.if_revision,
                    },
                    Op::Delete(d) => KvCmd::Delete { key: d.key },
                    Op::Cas(c) => KvCmd::Cas {
                        key: c.key,
                        expected: text(c.expected)?,
                        desired: text(c.desired)?,
                    },
                },
            ),
            C::Machine(m) => Cmd::Machine(machine_cmd_from_pb(m)?),
            C::Room(r) => Cmd::Room(room::cmd_from_pb(r)?),
            C::Settings(st) => match st
                .op
                .ok_or(CodecError::UnknownKind("a settings command kind"))?
            {
                pb::settings_command::Op::SetRetention(r) => {
                    Cmd::Settings(SettingsCmd::SetRetention {
                        domain: Domain::from_name(&r.domain)
                            .ok_or(CodecError::UnknownKind("a retention domain"))?,
                        retention: Retention {
                            max_events: r.max_events,
                            max_bytes: r.max_bytes,
                        },
                    })
                }
                pb::settings_command::Op::AllowFlushAll(on) => {
                    Cmd::Settings(SettingsCmd::AllowFlushAll(on))
                }
                pb::settings_command::Op::RoomLimits(l) => {
                    Cmd::Settings(SettingsCmd::SetRoomLimits(room::limits_from_pb(l)))
                }
            },
            C::Pack(g) => Cmd::Pack(group(g)?),
            C::Atomic(g) => Cmd::Atomic(group(g)?),
        },
    )
}

fn membership_to_pb(m: &Membership<NodeId, NodeInfo>) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::VoterSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| {
                (
                    *id,
                    pb::Node {
                        grpc_addr: n.grpc_addr.clone(),
                        http_addr: n.http_addr.clone(),
                        version: n.version,
                        rstmdb_addr: n.rstmdb_addr.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn membership_from_pb(m: pb::Membership) -> Membership<NodeId, NodeInfo> {
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .into_iter()
        .map(|s| s.ids.into_iter().collect())
        .collect();
    let nodes: BTreeMap<NodeId, NodeInfo> = m
        .nodes
        .into_iter()
        .map(|(id, n)| {
            (
                id,
                NodeInfo {
                    grpc_addr: n.grpc_addr,
                    http_addr: n.http_addr,
                    version: version_or_legacy(n.version),
                    rstmdb_addr: n.rstmdb_addr,
                },
            )
        })
        .collect();
    Membership::new(configs, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), index),
            payload,
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The stored bytes of each kind of entry. Changing any of these breaks
    /// every data dir written since: add fields with new numbers instead.
    #[test]
    fn golden_entry_bytes() {
        let put = Cmd::Kv(KvCmd::Put {
            key: "a".into(),
            value: r#"{"q":"\""}"#.into(),
            if_revision: Some(0),
        });
        let cases = [
            (entry(1, EntryPayload::Blank), "020a06080310021801 1200"),
            (
                entry(
                    7,
                    EntryPayload::Normal(LogEntry {
                        time_ms: 5,
                        cmd: put.clone(),
                    }),
                ),
                "020a060803100218071a19 0805 1215 0a13 0a11 0a0161 120a7b2271223a225c22227d 1800",
            ),
            (
                entry(
                    8,
                    EntryPayload::Normal(LogEntry {
                        time_ms: 5,
                        cmd: Cmd::Atomic(vec![
                            put,
                            Cmd::Kv(KvCmd::Delete { key: "b".into() }),
                        ]),
                    }),
                ),
                "020a060803100218081a26 0805 1222 1a20 0a15 0a13 0a11 0a0161 120a7b2271223a225c22227d 1800 0a07 0a05 1203 0a0162",
            ),
        ];
        for (e, golden) in cases {
            let golden: String = golden.split_whitespace().collect();
            let bytes = encode_entry(&e);
            assert_eq!(hex(&bytes), golden, "{e:?}");
            let back = decode_entry(&bytes).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[test]
    fn results_roundtrip() {
        let r = ApplyResult::Pack(vec![
            ApplyResult::Kv(KvResult::Written { revision: 4 }),
            ApplyResult::Atomic {
                kept: false,
                results: vec![
                    ApplyResult::Kv(KvResult::Deleted),
                    ApplyResult::Kv(KvResult::RevisionMismatch { current: 2 }),
                ],
            },
            ApplyResult::Kv(KvResult::Cas {
                ok: false,
                revision: 3,
                value: r#"{"a":"\""}"#.into(),
                diff: r#"[{"op":"replace","path":"/a","value":"\""}]"#.into(),
            }),
            ApplyResult::None,
        ]);
        assert_eq!(decode_written(&encode_written(9, &r)).unwrap(), (9, r));
    }

    /// The size bound is computed without encoding; it must never be below
    /// the real size, and not far above it.
    #[test]
    fn cmd_len_bounds_the_encoded_size() {
        let put = |k: &str, v: &str, r: Option<u64>| {
            Cmd::Kv(KvCmd::Put {
                key: k.into(),
                value: v.into(),
                if_revision: r,
            })
        };
        let big = "x".repeat(300);
        let cases = [
            put("a", "1", None),
            put("", "", Some(0)),
            put(&big, &big, Some(u64::MAX)),
            Cmd::Kv(KvCmd::Delete { key: "k".into() }),
            Cmd::Kv(KvCmd::Cas {
                key: "k".into(),
                expected: "null".into(),
                desired: big.clone(),
            }),
            Cmd::Pack(vec![
                put("a", "1", None),
                Cmd::Atomic(vec![put("b", &big, None)]),
            ]),
            Cmd::Atomic(vec![]),
        ];
        for c in cases {
            let real = encode_cmd(&c).len();
            let bound = cmd_len(&c);
            assert!(
                bound >= real && bound <= real + 16,
                "{c:?}: {bound} vs {real}"
            );
        }
    }

    #[test]
    fn membership_roundtrips() {
        let m = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([
                (
                    1,
                    NodeInfo {
                        grpc_addr: "a:1".into(),
                        http_addr: "a:2".into(),
                        version: 2,
                        rstmdb_addr: "a:3".into(),
                    },
                ),
                (2, NodeInfo::default()),
                (3, NodeInfo::default()),
                (4, NodeInfo::default()),
            ]),
        );
        let e = entry(3, EntryPayload::Membership(m.clone()));
        let EntryPayload::Membership(back) = decode_entry(&encode_entry(&e)).unwrap().payload
        else {
            panic!("membership expected")
        };
        assert_eq!(back, m);
    }

    #[test]
    fn values_are_bytes_not_escaped_json() {
        let v = "\"".repeat(1000);
        let e = entry(
            9,
            EntryPayload::Normal(LogEntry {
                time_ms: 1,
                cmd: Cmd::Kv(KvCmd::Put {
                    key: "k".into(),
                    value: v.clone(),
                    if_revision: None,
                }),
            }),
        );
        let bytes = encode_entry(&e);
        assert!(bytes.len() < v.len() + 32, "{} bytes", bytes.len());
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let e = decode_entry(&[0x03, 1, 2]).unwrap_err();
        assert!(matches!(e, CodecError::UnknownVersion(3)), "{e:?}");
        assert!(e.needs_upgrade());
        let msg = e.to_string();
        assert!(
            msg.contains("version 3") && msg.contains(&format!("up to version {FEATURE_VERSION}")),
            "{msg}"
        );
        assert!(msg.contains("upgrade this node"), "{msg}");
        assert!(matches!(decode_entry(&[]), Err(CodecError::Empty)));
        assert!(decode_entry(&[ENTRY_V2, 0xff, 0xff]).is_err());
        assert!(decode_entry(b"{not json").is_err());
    }

    fn app_entry(cmd: Option<pb::Command>, required_version: u32) -> Vec<u8> {
        let msg = pb::LogEntry {
            log_id: Some(log_id_to_pb(&LogId::new(CommittedLeaderId::new(3, 2), 4))),
            payload: Some(pb::log_entry::Payload::App(pb::AppEntry {
                time_ms: 1,
                cmd,
                required_version,
            })),
        };
        let mut out = vec![ENTRY_V2];
        out.extend(msg.encode_to_vec());
        out
    }

    /// An entry that says it needs a newer version is refused even though
    /// its command decodes: its new fields would be skipped silently.
    #[test]
    fn entries_needing_a_newer_version_are_refused() {
        let del = cmd_to_pb(&Cmd::Kv(KvCmd::Delete { key: "k".into() }));
        assert!(decode_entry(&app_entry(Some(del.clone()), FEATURE_VERSION)).is_ok());
        let e = decode_entry(&app_entry(Some(del), FEATURE_VERSION + 1)).unwrap_err();
        assert!(e.needs_upgrade(), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("needs feature version {}", FEATURE_VERSION + 1))
                && msg.contains(&format!("up to version {FEATURE_VERSION}")),
            "{msg}"
        );
        // A command kind added later (an unknown oneof field, here 15) is
        // refused, not applied as nothing.
        let mut unknown = pb::Command { cmd: None }.encode_to_vec();
        unknown.extend_from_slice(&[0x7a, 0x00]); // field 15, empty message
        let unknown = pb::Command::decode(unknown.as_slice()).unwrap();
        let e = decode_entry(&app_entry(Some(unknown), 0)).unwrap_err();
        assert!(e.needs_upgrade(), "{e:?}");
        assert!(e.to_string().contains("a command kind"), "{e}");
        // Today's entries carry no required version: their bytes are those
        // of the golden test.
        let put = entry(
            1,
            EntryPayload::Normal(LogEntry {
                time_ms: 1,
                cmd: Cmd::Kv(KvCmd::Delete { key: "k".into() }),
            }),
        );
        let pb::log_entry::Payload::App(a) = entry_to_pb(&put).payload.unwrap() else {
            panic!("app entry expected")
        };
        assert_eq!(a.required_version, 0);
    }

    /// A follower names the log index of an appended entry it cannot read.
    #[test]
    fn append_names_the_index_of_an_undecodable_entry() {
        let blank = encode_entry(&entry(5, EntryPayload::Blank));
        let req = crate::pb::AppendRequest {
            header: serde_json::to_vec(&AppendHeader {
                vote: openraft::Vote::new_committed(3, 2),
                prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 2), 4)),
                leader_commit: None,
            })
            .unwrap(),
            entries: vec![blank, vec![0x09, 0x00]],
        };
        let e = decode_append(req).unwrap_err();
        assert!(
            matches!(&e, CodecError::InEntry { index: 6, error } if matches!(**error, CodecError::UnknownVersion(9))),
            "{e:?}"
        );
        assert!(e.needs_upgrade());
        assert!(e.to_string().starts_with("log entry 6: "), "{e}");
    }

    /// A field added by a later release (here: an unknown field 15 in the
    /// entry) is skipped, not an error.
    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = encode_entry(&entry(1, EntryPayload::Blank));
        bytes.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
        assert!(decode_entry(&bytes).is_ok());
    }

    /// Journal records are stored state (and travel in snapshots): their
    /// bytes are pinned like entries'.
    #[test]
    fn golden_journal_bytes() {
        let r = JournalRecord {
            index: 7,
            time_ms: 5,
            events: vec![
                Event::Kv(KvEvent::Put {
                    key: "a".into(),
                    value: "1".into(),
                }),
                Event::Kv(KvEvent::Deleted { key: "b".into() }),
            ],
        };
        let bytes = encode_journal(&r);
        assert_eq!(
            hex(&bytes),
            "0108071005 1a0a 0a08 0a06 0a0161 120131 1a07 0a05 1203 0a0162"
                .split_whitespace()
                .collect::<String>()
        );
        assert_eq!(decode_journal(&bytes).unwrap(), r);
        assert!(matches!(
            decode_journal(&[0x09, 0]),
            Err(CodecError::UnknownVersion(9))
        ));
    }

    #[test]
    fn golden_settings_command() {
        let c = Cmd::Settings(SettingsCmd::SetRetention {
            domain: Domain::Kv,
            retention: Retention {
                max_events: 10,
                max_bytes: 300,
            },
        });
        let bytes = encode_cmd(&c);
        assert_eq!(
            hex(&bytes),
            "220b 0a09 0a026b76 100a 18ac02"
                .split_whitespace()
                .collect::<String>()
        );
        assert_eq!(decode_cmd(&bytes).unwrap(), c);
        assert!(cmd_len(&c) >= bytes.len());
        let r = ApplyResult::Settings(SettingsResult::Set);
        assert_eq!(decode_written(&encode_written(3, &r)).unwrap(), (3, r));
    }

    /// Machine commands, results and journal events are stored bytes too.
    #[test]
    fn golden_machine_bytes() {
        let c = Cmd::Machine(MachineCmd::ApplyEvent {
            instance_id: "o".into(),
            event: "PAY".into(),
            payload: Some("{}".into()),
            expected_state: None,
            expected_wal_offset: Some(3),
            event_id: None,
            idempotency_key: Some("k".into()),
        });
        let bytes = encode_cmd(&c);
        assert_eq!(hex(&bytes), "2a131a110a016f12035041591a027b7d28033a016b");
        assert_eq!(decode_cmd(&bytes).unwrap(), c);
        assert!(cmd_len(&c) >= bytes.len());
        let r = ApplyResult::Machine(MachineResult::Refused(MachineError {
            code: MachineErrorCode::GuardFailed,
            message: "no".into(),
            details: None,
        }));
        let w = encode_written(5, &r);
        assert_eq!(
            hex(&w),
            "08051216321432120a0c47554152445f4641494c454412026e6f"
        );
        assert_eq!(decode_written(&w).unwrap(), (5, r));
        let j = JournalRecord {
            index: 9,
            time_ms: 1,
            events: vec![Event::Machine(MachineEvent::InstanceDeleted {
                instance_id: "o".into(),
                machine: "m".into(),
                version: 1,
                idempotency_key: None,
            })],
        };
        let jb = encode_journal(&j);
        assert_eq!(hex(&jb), "01080910011a0c120a22080a016f12016d1801");
        assert_eq!(decode_journal(&jb).unwrap(), j);
    }

    /// Room commands, results and events are stored bytes too; every push
    /// action and refusal code round-trips.
    #[test]
    fn golden_room_bytes() {
        use crate::{
            PushAction, RoomCmd, RoomError, RoomErrorCode, RoomEvent, RoomLimits, RoomResult,
        };
        let c = Cmd::Room(RoomCmd::Push {
            room: "r".into(),
            key: "k".into(),
            value: "1".into(),
            action: PushAction::Compact { seq: 7 },
        });
        let bytes = encode_cmd(&c);
        assert_eq!(hex(&bytes), "320f120d0a017212016b1a013122022007");
        assert_eq!(decode_cmd(&bytes).unwrap(), c);
        let r = ApplyResult::Room(RoomResult::Pushed {
            seq: Some(4),
            size: 2,
        });
        let w = encode_written(5, &r);
        assert_eq!(hex(&w), "080512083a06120408041002");
        assert_eq!(decode_written(&w).unwrap(), (5, r));
        let j = JournalRecord {
            index: 9,
            time_ms: 1,
            events: vec![Event::Room(RoomEvent::Pushed {
                room: "r".into(),
                key: "k".into(),
                value: "1".into(),
                seq: 4,
                action: PushAction::Append,
            })],
        };
        let jb = encode_journal(&j);
        assert_eq!(
            hex(&jb),
            "01080910011a131a110a0f0a017212016b1a013120042a021200"
        );
        assert_eq!(decode_journal(&jb).unwrap(), j);

        let room = |action| {
            Cmd::Room(RoomCmd::Push {
                room: "r".into(),
                key: "k".into(),
                value: "[1,{}]".into(),
                action,
            })
        };
        let cmds = [
            room(PushAction::Relay),
            room(PushAction::Append),
            room(PushAction::Replace),
            Cmd::Room(RoomCmd::Create { room: "r".into() }),
            Cmd::Room(RoomCmd::Delete { room: "r".into() }),
            Cmd::Room(RoomCmd::Expire {
                room: "r".into(),
                last_push_ms: 9,
            }),
            Cmd::Settings(SettingsCmd::SetRoomLimits(RoomLimits::default())),
        ];
        for c in cmds {
            let b = encode_cmd(&c);
            assert_eq!(decode_cmd(&b).unwrap(), c);
            assert!(cmd_len(&c) >= b.len(), "{c:?}");
        }
        let mut results = vec![
            RoomResult::Created,
            RoomResult::Pushed { seq: None, size: 1 },
            RoomResult::Deleted { existed: false },
        ];
        for code in RoomErrorCode::ALL {
            results.push(RoomResult::Refused(RoomError {
                code,
                message: "m".into(),
            }));
        }
        for r in results {
            let r = ApplyResult::Room(r);
            assert_eq!(decode_written(&encode_written(1, &r)).unwrap(), (1, r));
        }
        for e in [
            RoomEvent::Compacted {
                room: "r".into(),
                key: "k".into(),
                seq: 3,
            },
            RoomEvent::Deleted { room: "r".into() },
        ] {
            let j = JournalRecord {
                index: 1,
                time_ms: 1,
                events: vec![Event::Room(e)],
            };
            assert_eq!(decode_journal(&encode_journal(&j)).unwrap(), j);
        }
    }
}
