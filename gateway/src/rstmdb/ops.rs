//! rstmdb's commands: params → [`Cmd`]s (writes) or reads, and results →
//! rstmdb's JSON shapes. Validation of params happens here, once; the
//! state's checks happen in apply.

use raftmesh_proto::{
    ApplyResult, Cmd, Instance, MachineCmd, MachineError, MachineErrorCode, MachineResult,
};
use serde_json::{json, Map, Value};

use super::wire::WireError;

/// Most ops one BATCH may carry.
pub const MAX_BATCH_OPS: usize = 100;
/// Most instances one LIST_INSTANCES page may hold.
pub const MAX_LIST_LIMIT: usize = 1000;

pub(crate) fn str_param<'a>(p: &'a Map<String, Value>, name: &str) -> Result<&'a str, WireError> {
    match p.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(WireError::BadRequest(format!("{name} must not be empty"))),
        Some(_) => Err(WireError::BadRequest(format!("{name} must be a string"))),
        None => Err(WireError::BadRequest(format!("missing {name}"))),
    }
}

pub(crate) fn opt_str(p: &Map<String, Value>, name: &str) -> Result<Option<String>, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WireError::BadRequest(format!("{name} must be a string"))),
    }
}

pub(crate) fn opt_u64(p: &Map<String, Value>, name: &str) -> Result<Option<u64>, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| WireError::BadRequest(format!("{name} must be a non-negative integer"))),
    }
}

pub(crate) fn version_param(p: &Map<String, Value>) -> Result<u32, WireError> {
    opt_u64(p, "version")?
        .ok_or_else(|| WireError::BadRequest("missing version".into()))
        .and_then(|v| {
            u32::try_from(v).map_err(|_| WireError::BadRequest("version must fit in u32".into()))
        })
}

/// An optional JSON object param, as compact text.
fn opt_object(p: &Map<String, Value>, name: &str) -> Result<Option<String>, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.to_string())),
        Some(_) => Err(WireError::BadRequest(format!(
            "{name} must be a JSON object"
        ))),
    }
}

pub(crate) fn opt_strings(p: &Map<String, Value>, name: &str) -> Result<Vec<String>, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| WireError::BadRequest(format!("{name} must hold strings")))
            })
            .collect(),
        Some(_) => Err(WireError::BadRequest(format!(
            "{name} must be an array of strings"
        ))),
    }
}

/// The write ops (each one Raft entry, or part of one).
pub fn is_write(op: &str) -> bool {
    matches!(
        op,
        "PUT_MACHINE"
            | "CREATE_INSTANCE"
            | "APPLY_EVENT"
            | "DELETE_INSTANCE"
            | "BATCH"
            | "FLUSH_ALL"
    )
}

/// A single write op's command. `new_id` supplies an instance id when the
/// client gave none (chosen here, never in apply).
pub fn write_cmd(
    op: &str,
    p: &Map<String, Value>,
    new_id: &mut dyn FnMut() -> String,
) -> Result<MachineCmd, WireError> {
    Ok(match op {
        "PUT_MACHINE" => {
            let definition = match p.get("definition") {
                Some(v @ Value::Object(_)) => v.to_string(),
                Some(_) => {
                    return Err(WireError::BadRequest(
                        "definition must be a JSON object".into(),
                    ))
                }
                None => return Err(WireError::BadRequest("missing definition".into())),
            };
            MachineCmd::PutMachine {
                machine: str_param(p, "machine")?.to_string(),
                version: version_param(p)?,
                definition,
            }
        }
        "CREATE_INSTANCE" => MachineCmd::CreateInstance {
            machine: str_param(p, "machine")?.to_string(),
            version: version_param(p)?,
            instance_id: match opt_str(p, "instance_id")? {
                Some(id) if !id.is_empty() => id,
                _ => new_id(),
            },
            initial_ctx: opt_object(p, "initial_ctx")?,
            idempotency_key: opt_str(p, "idempotency_key")?,
        },
        "APPLY_EVENT" => MachineCmd::ApplyEvent {
            instance_id: str_param(p, "instance_id")?.to_string(),
            event: str_param(p, "event")?.to_string(),
            payload: opt_object(p, "payload")?,
            expected_state: opt_str(p, "expected_state")?,
            expected_wal_offset: opt_u64(p, "expected_wal_offset")?,
            event_id: opt_str(p, "event_id")?,
            idempotency_key: opt_str(p, "idempotency_key")?,
        },
        "DELETE_INSTANCE" => MachineCmd::DeleteInstance {
            instance_id: str_param(p, "instance_id")?.to_string(),
            idempotency_key: opt_str(p, "idempotency_key")?,
        },
        "FLUSH_ALL" => MachineCmd::FlushAll,
        other => {
            return Err(WireError::BadRequest(format!(
                "{other} is not a write op a BATCH may carry"
            )))
        }
    })
}

/// A parsed BATCH: its ops' commands, and whether all or nothing.
pub struct Batch {
    pub atomic: bool,
    /// (op name, command) in order.
    pub ops: Vec<(String, MachineCmd)>,
}

pub fn batch(
    p: &Map<String, Value>,
    max_ops: usize,
    new_id: &mut dyn FnMut() -> String,
) -> Result<Batch, WireError> {
    let atomic = match p.get("mode").and_then(Value::as_str) {
        Some("atomic") => true,
        Some("best_effort") | None => false,
        Some(m) => {
            return Err(WireError::BadRequest(format!(
                "mode must be \"atomic\" or \"best_effort\", not {m:?}"
            )))
        }
    };
    let Some(Value::Array(ops)) = p.get("ops") else {
        return Err(WireError::BadRequest("ops must be an array".into()));
    };
    if ops.len() > max_ops {
        return Err(WireError::BadRequest(format!(
            "batch of {} ops exceeds the limit of {max_ops}",
            ops.len()
        )));
    }
    let mut out = Vec::with_capacity(ops.len());
    for (i, o) in ops.iter().enumerate() {
        let op = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| WireError::BadRequest(format!("ops[{i}] needs a string op")))?;
        if op == "BATCH" || op == "FLUSH_ALL" {
            return Err(WireError::BadRequest(format!(
                "ops[{i}]: {op} cannot be batched"
            )));
        }
        let params = match o.get("params") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => {
                return Err(WireError::BadRequest(format!(
                    "ops[{i}].params must be an object"
                )))
            }
        };
        let cmd =
            write_cmd(op, &params, new_id).map_err(|e| prefix(e, &format!("ops[{i}] ({op}): ")))?;
        out.push((op.to_string(), cmd));
    }
    Ok(Batch { atomic, ops: out })
}

fn prefix(e: WireError, p: &str) -> WireError {
    match e {
        WireError::BadRequest(m) => WireError::BadRequest(format!("{p}{m}")),
        other => other,
    }
}

/// A machine command's result in rstmdb's shape, or its refusal.
pub fn write_result(op: &str, cmd: &MachineCmd, result: &ApplyResult) -> Result<Value, WireError> {
    let ApplyResult::Machine(r) = result else {
        return Err(WireError::Internal(format!(
            "unexpected apply result for {op}: {result:?}"
        )));
    };
    Ok(match r {
        MachineResult::Refused(e) => return Err(WireError::Machine(e.clone())),
        MachineResult::MachinePut { created, checksum } => {
            let MachineCmd::PutMachine {
                machine, version, ..
            } = cmd
            else {
                return Err(WireError::Internal(
                    "PUT_MACHINE result for another op".into(),
                ));
            };
            json!({"machine": machine, "version": version, "stored_checksum": checksum, "created": created})
        }
        MachineResult::InstanceCreated {
            instance_id,
            state,
            wal_offset,
        } => json!({"instance_id": instance_id, "state": state, "wal_offset": wal_offset}),
        MachineResult::EventApplied {
            from_state,
            to_state,
            ctx,
            wal_offset,
            event_id,
        } => {
            let mut v = json!({
                "from_state": from_state,
                "to_state": to_state,
                "ctx": parse_json(ctx),
                "wal_offset": wal_offset,
                "applied": true,
            });
            if let Some(e) = event_id {
                v["event_id"] = e.clone().into();
            }
            v
        }
        MachineResult::InstanceDeleted {
            instance_id,
            wal_offset,
        } => json!({"instance_id": instance_id, "deleted": true, "wal_offset": wal_offset}),
        MachineResult::Flushed {
            machines,
            instances,
        } => json!({"flushed": true, "instances_removed": instances, "machines_removed": machines}),
    })
}

pub(crate) fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The refusal an atomic BATCH reports: the failing op's code, naming it.
pub fn atomic_refusal(i: usize, op: &str, e: WireError) -> WireError {
    match e {
        WireError::Machine(m) => WireError::Machine(MachineError {
            code: m.code,
            message: format!(
                "batch op {i} ({op}) failed, so no op of the atomic batch was applied: {}",
                m.message
            ),
            details: Some(
                json!({"failed_op": i, "op": op, "cause": m.details.as_deref().map(parse_json)})
                    .to_string(),
            ),
        }),
        other => other,
    }
}

/// GET_INSTANCE's shape.
pub fn instance_json(i: &Instance) -> Value {
    let mut v = json!({
        "machine": i.machine,
        "version": i.version,
        "state": i.state,
        "ctx": parse_json(&i.ctx),
        "last_wal_offset": i.last_wal_offset,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
    });
    if let Some(e) = &i.last_event_id {
        v["last_event_id"] = e.clone().into();
    }
    v
}

/// A machine op refused before apply, for a missing machine or instance.
pub fn not_found(code: MachineErrorCode, message: String) -> WireError {
    WireError::Machine(MachineError {
        code,
        message,
        details: None,
    })
}

/// Commands of a BATCH as the entry carries them.
pub fn batch_cmd(b: &Batch) -> Option<Cmd> {
    b.atomic
        .then(|| Cmd::Atomic(b.ops.iter().map(|(_, c)| Cmd::Machine(c.clone())).collect()))
}
