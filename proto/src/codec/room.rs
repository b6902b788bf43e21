//! Room commands, results and events in the log and journal schema.

use super::pb;
use super::{text, CodecError};
use crate::{PushAction, RoomCmd, RoomError, RoomErrorCode, RoomEvent, RoomLimits, RoomResult};

fn action_to_pb(a: PushAction) -> pb::PushAction {
    use pb::push_action::Action as A;
    pb::PushAction {
        action: Some(match a {
            PushAction::Relay => A::Relay(pb::Blank {}),
            PushAction::Append => A::Append(pb::Blank {}),
            PushAction::Replace => A::Replace(pb::Blank {}),
            PushAction::Compact { seq } => A::Compact(seq),
        }),
    }
}

fn action_from_pb(a: Option<pb::PushAction>) -> Result<PushAction, CodecError> {
    use pb::push_action::Action as A;
    Ok(
        match a
            .and_then(|a| a.action)
            .ok_or(CodecError::UnknownKind("a push action"))?
        {
            A::Relay(_) => PushAction::Relay,
            A::Append(_) => PushAction::Append,
            A::Replace(_) => PushAction::Replace,
            A::Compact(seq) => PushAction::Compact { seq },
        },
    )
}

fn name(room: &str) -> pb::RoomName {
    pb::RoomName {
        room: room.to_string(),
    }
}

pub(super) fn cmd_to_pb(c: &RoomCmd) -> pb::RoomCommand {
    use pb::room_command::Op;
    pb::RoomCommand {
        op: Some(match c {
            RoomCmd::Create { room } => Op::Create(name(room)),
            RoomCmd::Push {
                room,
                key,
                value,
                action,
            } => Op::Push(pb::RoomPush {
                room: room.clone(),
                key: key.clone(),
                value: value.as_bytes().to_vec(),
                action: Some(action_to_pb(*action)),
            }),
            RoomCmd::Delete { room } => Op::Delete(name(room)),
            RoomCmd::Expire { room, last_push_ms } => Op::Expire(pb::RoomExpire {
                room: room.clone(),
                last_push_ms: *last_push_ms,
            }),
        }),
    }
}

pub(super) fn cmd_from_pb(c: pb::RoomCommand) -> Result<RoomCmd, CodecError> {
    use pb::room_command::Op;
    Ok(
        match c.op.ok_or(CodecError::UnknownKind("a room command kind"))? {
            Op::Create(n) => RoomCmd::Create { room: n.room },
            Op::Push(p) => RoomCmd::Push {
                room: p.room,
                key: p.key,
                value: text(p.value)?,
                action: action_from_pb(p.action)?,
            },
            Op::Delete(n) => RoomCmd::Delete { room: n.room },
            Op::Expire(e) => RoomCmd::Expire {
                room: e.room,
                last_push_ms: e.last_push_ms,
            },
        },
    )
}

/// Worst-case encoded size of a room command (see `cmd_len`).
pub(super) fn cmd_len(c: &RoomCmd, field: fn(usize) -> usize) -> usize {
    const INT: usize = 11;
    field(field(match c {
        RoomCmd::Create { room } | RoomCmd::Delete { room } => field(field(room.len())),
        RoomCmd::Push {
            room, key, value, ..
        } => field(field(room.len()) + field(key.len()) + field(value.len()) + field(INT)),
        RoomCmd::Expire { room, .. } => field(field(room.len()) + INT),
    }))
}

pub(super) fn limits_to_pb(l: &RoomLimits) -> pb::RoomLimits {
    pb::RoomLimits {
        max_message_bytes: l.max_message_bytes,
        max_keys: l.max_keys,
        max_values_per_key: l.max_values_per_key,
        idle_ttl_ms: l.idle_ttl_ms,
    }
}

pub(super) fn limits_from_pb(l: pb::RoomLimits) -> RoomLimits {
    RoomLimits {
        max_message_bytes: l.max_message_bytes,
        max_keys: l.max_keys,
        max_values_per_key: l.max_values_per_key,
        idle_ttl_ms: l.idle_ttl_ms,
    }
}

pub(super) fn result_to_pb(r: &RoomResult) -> pb::RoomResult {
    use pb::room_result::Result as R;
    pb::RoomResult {
        result: Some(match r {
            RoomResult::Created => R::Created(pb::Blank {}),
            RoomResult::Pushed { seq, size } => R::Pushed(pb::RoomPushed {
                seq: *seq,
                size: *size,
            }),
            RoomResult::Deleted { existed } => R::Deleted(*existed),
            RoomResult::Refused(e) => R::Refused(pb::RoomRefusal {
                code: e.code.as_str().to_string(),
                message: e.message.clone(),
            }),
        }),
    }
}

pub(super) fn result_from_pb(r: pb::RoomResult) -> Result<RoomResult, CodecError> {
    use pb::room_result::Result as R;
    Ok(
        match r
            .result
            .ok_or(CodecError::Malformed("a room result of an unknown kind"))?
        {
            R::Created(_) => RoomResult::Created,
            R::Pushed(p) => RoomResult::Pushed {
                seq: p.seq,
                size: p.size,
            },
            R::Deleted(existed) => RoomResult::Deleted { existed },
            R::Refused(e) => RoomResult::Refused(RoomError {
                code: RoomErrorCode::parse(&e.code)
                    .ok_or(CodecError::UnknownKind("a room error code"))?,
                message: e.message,
            }),
        },
    )
}

pub(super) fn event_to_pb(e: &RoomEvent) -> pb::RoomEvent {
    use pb::room_event::Op;
    pb::RoomEvent {
        op: Some(match e {
            RoomEvent::Pushed {
                room,
                key,
                value,
                seq,
                action,
            } => Op::Pushed(pb::RoomDelivery {
                room: room.clone(),
                key: key.clone(),
                value: value.as_bytes().to_vec(),
                seq: *seq,
                action: Some(action_to_pb(*action)),
            }),
            RoomEvent::Compacted { room, key, seq } => Op::Compacted(pb::RoomCompacted {
                room: room.clone(),
                key: key.clone(),
                seq: *seq,
            }),
            RoomEvent::Deleted { room } => Op::Deleted(name(room)),
        }),
    }
}

pub(super) fn event_from_pb(e: pb::RoomEvent) -> Result<RoomEvent, CodecError> {
    use pb::room_event::Op;
    Ok(
        match e
            .op
            .ok_or(CodecError::Malformed("a room event of an unknown kind"))?
        {
            Op::Pushed(p) => RoomEvent::Pushed {
                room: p.room,
                key: p.key,
                value: text(p.value)?,
                seq: p.seq,
                action: action_from_pb(p.action)?,
            },
            Op::Compacted(c) => RoomEvent::Compacted {
                room: c.room,
                key: c.key,
                seq: c.seq,
            },
            Op::Deleted(n) => RoomEvent::Deleted { room: n.room },
        },
    )
}
