//! Applying rstmdb machine commands. Every check runs here, serialized with
//! every other write: a machine's definition is validated and its guards
//! parsed once, at PUT_MACHINE, and stored compiled; APPLY_EVENT evaluates
//! them against the stored ctx. Times are the entry's (leader-stamped).
//!
//! Keys in the `sm` family (see the crate root's table):
//! - `M/<machine>\0<version>` → [`MachineRecord`] (JSON)
//! - `I/<instance>` → [`InstanceRecord`] (JSON)
//! - `X/m/<machine>\0<instance>`, `X/s/<state>\0<instance>`,
//!   `X/ms/<machine>\0<state>\0<instance>` → index entries for LIST_INSTANCES
//! - `N/<index key>` → 8-byte count of the index (`N/all` for all), so
//!   `total` is a read, not a scan
//! - `Y/<scope>` → idempotency record: 8-byte expiry + the first result;
//!   `Ye/<expiry><scope>` orders them by expiry for the sweep.

use raftmesh_proto::codec::{decode_machine_result, encode_machine_result};
use raftmesh_proto::{
    Event, MachineCmd, MachineError, MachineErrorCode, MachineEvent, MachineResult,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::guard::{self, Guard};
use super::txn::Txn;
use crate::StoreError;

/// Idempotency keys expire this long after the entry that stored them.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Expired idempotency records removed per applied machine command: the
/// sweep keeps pace with the writes that create them.
const SWEEP_PER_WRITE: usize = 4;

/// A stored machine version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MachineRecord {
    /// The normalized definition (compact JSON), as GET_MACHINE returns it
    /// and as its checksum is computed.
    pub definition: String,
    pub checksum: String,
    pub states: Vec<String>,
    pub initial: String,
    pub transitions: Vec<Transition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Transition {
    pub from: Vec<String>,
    pub event: String,
    pub to: String,
    pub guard: Option<Guard>,
}

/// A live instance (the shared record type).
pub use raftmesh_proto::Instance as InstanceRecord;

pub(crate) fn machine_key(machine: &str, version: u32) -> Vec<u8> {
    let mut k = format!("M/{machine}\0").into_bytes();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(crate) const MACHINE_PREFIX: &[u8] = b"M/";
pub(crate) const INSTANCE_PREFIX: &[u8] = b"I/";

pub(crate) fn instance_key(id: &str) -> Vec<u8> {
    format!("I/{id}").into_bytes()
}

/// The LIST_INSTANCES index an instance is in for a filter; `None` filters
/// mean "any". The instance id follows the returned prefix.
pub(crate) fn index_prefix(machine: Option<&str>, state: Option<&str>) -> Vec<u8> {
    match (machine, state) {
        (None, None) => INSTANCE_PREFIX.to_vec(),
        (Some(m), None) => format!("X/m/{m}\0").into_bytes(),
        (None, Some(s)) => format!("X/s/{s}\0").into_bytes(),
        (Some(m), Some(s)) => format!("X/ms/{m}\0{s}\0").into_bytes(),
    }
}

pub(crate) fn count_key(machine: Option<&str>, state: Option<&str>) -> Vec<u8> {
    let mut k = b"N/".to_vec();
    match (machine, state) {
        (None, None) => k.extend_from_slice(b"all"),
        _ => k.extend_from_slice(&index_prefix(machine, state)),
    }
    k
}

fn read_u64(raw: Option<Vec<u8>>) -> Result<u64, StoreError> {
    match raw {
        None => Ok(0),
        Some(v) => {
            Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(
                |_| StoreError::Corrupt("counter is not 8 bytes".into()),
            )?))
        }
    }
}

fn add(txn: &mut Txn<'_>, key: Vec<u8>, delta: i64) -> Result<(), StoreError> {
    let n = read_u64(txn.get(&key)?)?;
    let n = n.saturating_add_signed(delta);
    if n == 0 {
        txn.delete(key);
    } else {
        txn.put(key, n.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Adds (`delta` 1) or removes (-1) an instance from every index and count.
fn index_instance(
    txn: &mut Txn<'_>,
    id: &str,
    machine: &str,
    state: &str,
    delta: i64,
) -> Result<(), StoreError> {
    for (m, s) in [
        (Some(machine), None),
        (None, Some(state)),
        (Some(machine), Some(state)),
    ] {
        let mut k = index_prefix(m, s);
        k.extend_from_slice(id.as_bytes());
        if delta > 0 {
            txn.put(k, Vec::new());
        } else {
            txn.delete(k);
        }
        add(txn, count_key(m, s), delta)?;
    }
    add(txn, count_key(None, None), delta)
}

pub fn get_machine(
    txn: &Txn<'_>,
    machine: &str,
    version: u32,
) -> Result<Option<MachineRecord>, StoreError> {
    txn.get(&machine_key(machine, version))?
        .map(|v| serde_json::from_slice(&v).map_err(StoreError::from))
        .transpose()
}

pub fn get_instance(txn: &Txn<'_>, id: &str) -> Result<Option<InstanceRecord>, StoreError> {
    txn.get(&instance_key(id))?
        .map(|v| serde_json::from_slice(&v).map_err(StoreError::from))
        .transpose()
}

fn put_instance(txn: &mut Txn<'_>, id: &str, r: &InstanceRecord) -> Result<(), StoreError> {
    txn.put(instance_key(id), serde_json::to_vec(r)?);
    Ok(())
}

fn refuse(
    code: MachineErrorCode,
    message: impl Into<String>,
    details: Option<Value>,
) -> MachineResult {
    MachineResult::Refused(MachineError {
        code,
        message: message.into(),
        details: details.map(|d| d.to_string()),
    })
}

fn bad(message: impl Into<String>) -> MachineResult {
    refuse(MachineErrorCode::BadRequest, message, None)
}

/// Names become parts of keys: they must not hold the separator.
fn check_name(what: &str, name: &str) -> Result<(), MachineResult> {
    if name.is_empty() || name.contains('\0') || name.len() > 256 {
        return Err(bad(format!(
            "{what} must be 1 to 256 bytes without NUL characters"
        )));
    }
    Ok(())
}

fn parse_object(what: &str, text: &str) -> Result<Map<String, Value>, MachineResult> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(format!("{what} must be a JSON object"))),
        Err(e) => Err(bad(format!("{what} is not JSON: {e}"))),
    }
}

/// Validates a definition and normalizes it: keys in rstmdb's order,
/// `from` always an array, `guard` only when present.
pub fn compile(definition: &str) -> Result<MachineRecord, MachineResult> {
    let def = parse_object("definition", definition)?;
    let strings = |v: &Value, what: &str| -> Result<Vec<String>, MachineResult> {
        match v {
            Value::String(s) => Ok(vec![s.clone()]),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("{what} must hold strings")))
                })
                .collect(),
            _ => Err(bad(format!(
                "{what} must be a string or an array of strings"
            ))),
        }
    };
    let states = match def.get("states") {
        Some(v @ Value::Array(_)) => strings(v, "states")?,
        _ => return Err(bad("definition.states must be an array of strings")),
    };
    if states.is_empty() {
        return Err(bad("definition.states must not be empty"));
    }
    let initial = def
        .get("initial")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("definition.initial must be a string"))?
        .to_string();
    if !states.contains(&initial) {
        return Err(bad(format!("initial state {initial:?} is not in states")));
    }
    let Some(Value::Array(ts)) = def.get("transitions") else {
        return Err(bad("definition.transitions must be an array"));
    };
    let mut transitions = Vec::with_capacity(ts.len());
    let mut normalized = Vec::with_capacity(ts.len());
    for (i, t) in ts.iter().enumerate() {
        let Value::Object(t) = t else {
            return Err(bad(format!("transitions[{i}] must be an object")));
        };
        let from = strings(
            t.get("from").unwrap_or(&Value::Null),
            &format!("transitions[{i}].from"),
        )?;
        let event = t
            .get("event")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("transitions[{i}].event must be a string")))?
            .to_string();
        let to = t
            .get("to")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("transitions[{i}].to must be a string")))?
            .to_string();
        for s in from.iter().chain(std::iter::once(&to)) {
            if !states.contains(s) {
                return Err(bad(format!("transitions[{i}] names unknown state {s:?}")));
            }
        }
        let guard_src = match t.get("guard") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) => Some(g.clone()),
            Some(_) => return Err(bad(format!("transitions[{i}].guard must be a string"))),
        };
        let guard = guard_src
            .as_deref()
            .map(guard::parse)
            .transpose()
            .map_err(|e| bad(format!("transitions[{i}].guard: {e}")))?;
        normalized.push(guard_src);
        transitions.push(Transition {
            from,
            event,
            to,
            guard,
        });
    }
    for (i, a) in transitions.iter().enumerate() {
        for b in &transitions[..i] {
            if a.event == b.event && a.from.iter().any(|f| b.from.contains(f)) {
                return Err(bad(format!(
                    "transitions[{i}]: event {:?} from the same state is defined twice",
                    a.event
                )));
            }
        }
    }
    // Structs serialize their fields in declaration order: rstmdb's key
    // order, which the checksum depends on.
    // `meta` is part of rstmdb's checksum when present, its object keys
    // sorted (serde_json's map without `preserve_order`) and its numbers
    // as serde_json writes them.
    #[derive(Serialize)]
    struct Def<'a> {
        states: &'a [String],
        initial: &'a str,
        transitions: Vec<T<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        meta: Option<&'a Value>,
    }
    #[derive(Serialize)]
    struct T<'a> {
        from: &'a [String],
        event: &'a str,
        to: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        guard: Option<&'a str>,
    }
    let definition = serde_json::to_string(&Def {
        states: &states,
        initial: &initial,
        transitions: transitions
            .iter()
            .zip(&normalized)
            .map(|(t, g)| T {
                from: &t.from,
                event: &t.event,
                to: &t.to,
                guard: g.as_deref(),
            })
            .collect(),
        meta: def.get("meta").filter(|m| !m.is_null()),
    })
    .expect("strings serialize");
    let checksum = format!("{:08x}", crc32c::crc32c(definition.as_bytes()));
    Ok(MachineRecord {
        definition,
        checksum,
        states,
        initial,
        transitions,
    })
}

/// An idempotency scope: the op, the instance where the op names one, the
/// client's key. CREATE_INSTANCE is scoped by op only, since a retry
/// without an instance id gets a fresh one.
fn scope(cmd: &MachineCmd) -> Option<String> {
    match cmd {
        MachineCmd::CreateInstance {
            idempotency_key: Some(k),
            ..
        } => Some(format!("create\0{k}")),
        MachineCmd::ApplyEvent {
            instance_id,
            idempotency_key: Some(k),
            ..
        } => Some(format!("apply\0{instance_id}\0{k}")),
        MachineCmd::DeleteInstance {
            instance_id,
            idempotency_key: Some(k),
        } => Some(format!("delete\0{instance_id}\0{k}")),
        _ => None,
    }
}

fn idem_key(scope: &str) -> Vec<u8> {
    format!("Y/{scope}").into_bytes()
}

fn idem_expiry_key(expires: u64, scope: &str) -> Vec<u8> {
    let mut k = b"Ye/".to_vec();
    k.extend_from_slice(&expires.to_be_bytes());
    k.extend_from_slice(scope.as_bytes());
    k
}

/// Removes a few idempotency records that expired by `time_ms`.
fn sweep(txn: &mut Txn<'_>, time_ms: u64) -> Result<(), StoreError> {
    for (k, _) in txn.scan(b"Ye/", SWEEP_PER_WRITE)? {
        let expires = u64::from_be_bytes(
            k[3..11]
                .try_into()
                .map_err(|_| StoreError::Corrupt("idempotency expiry key too short".into()))?,
        );
        if expires > time_ms {
            break;
        }
        let scope = std::str::from_utf8(&k[11..])
            .map_err(|_| StoreError::Corrupt("idempotency scope not UTF-8".into()))?;
        txn.delete(idem_key(scope));
        txn.delete(k);
    }
    Ok(())
}

/// The first result for this scope, if it has not expired.
fn remembered(
    txn: &Txn<'_>,
    scope: &str,
    time_ms: u64,
) -> Result<Option<MachineResult>, StoreError> {
    let Some(raw) = txn.get(&idem_key(scope))? else {
        return Ok(None);
    };
    if raw.len() < 8 {
        return Err(StoreError::Corrupt("idempotency record too short".into()));
    }
    let expires = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    if expires <= time_ms {
        return Ok(None);
    }
    Ok(Some(decode_machine_result(&raw[8..])?))
}

fn remember(
    txn: &mut Txn<'_>,
    scope: &str,
    time_ms: u64,
    r: &MachineResult,
) -> Result<(), StoreError> {
    // A replaced (expired) record's expiry entry goes with it.
    if let Some(old) = txn.get(&idem_key(scope))? {
        if old.len() >= 8 {
            let e = u64::from_be_bytes(old[..8].try_into().expect("8 bytes"));
            txn.delete(idem_expiry_key(e, scope));
        }
    }
    let expires = time_ms.saturating_add(IDEMPOTENCY_TTL_MS);
    let mut v = expires.to_be_bytes().to_vec();
    v.extend_from_slice(&encode_machine_result(r));
    txn.put(idem_key(scope), v);
    txn.put(idem_expiry_key(expires, scope), Vec::new());
    Ok(())
}

/// Applies one machine command of the entry at `index`, applied at `time_ms`.
pub fn apply(
    txn: &mut Txn<'_>,
    index: u64,
    time_ms: u64,
    cmd: &MachineCmd,
    allow_flush_all: bool,
) -> Result<MachineResult, StoreError> {
    sweep(txn, time_ms)?;
    let scope = scope(cmd);
    if let Some(s) = &scope {
        if let Some(first) = remembered(txn, s, time_ms)? {
            return Ok(first);
        }
    }
    let r = decide(txn, index, time_ms, cmd, allow_flush_all)?;
    if let Some(s) = &scope {
        // Refusals are remembered too: the retry of a refused write is
        // refused the same way, whatever happened since.
        remember(txn, s, time_ms, &r)?;
    }
    Ok(r)
}

fn decide(
    txn: &mut Txn<'_>,
    index: u64,
    time_ms: u64,
    cmd: &MachineCmd,
    allow_flush_all: bool,
) -> Result<MachineResult, StoreError> {
    macro_rules! check {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(refusal) => return Ok(refusal),
            }
        };
    }
    Ok(match cmd {
        MachineCmd::PutMachine {
            machine,
            version,
            definition,
        } => {
            check!(check_name("machine", machine));
            let rec = check!(compile(definition));
            match get_machine(txn, machine, *version)? {
                Some(old) if old.checksum == rec.checksum && old.definition == rec.definition => {
                    MachineResult::MachinePut {
                        created: false,
                        checksum: old.checksum,
                    }
                }
                Some(_) => refuse(
                    MachineErrorCode::MachineVersionExists,
                    format!("machine {machine:?} version {version} exists with another definition"),
                    Some(serde_json::json!({"machine": machine, "version": version})),
                ),
                None => {
                    txn.put(machine_key(machine, *version), serde_json::to_vec(&rec)?);
                    txn.emit(Event::Machine(MachineEvent::MachinePut {
                        machine: machine.clone(),
                        version: *version,
                        checksum: rec.checksum.clone(),
                        definition: rec.definition.clone(),
                    }));
                    MachineResult::MachinePut {
                        created: true,
                        checksum: rec.checksum,
                    }
                }
            }
        }
        MachineCmd::CreateInstance {
            machine,
            version,
            instance_id,
            initial_ctx,
            idempotency_key,
        } => {
            check!(check_name("instance_id", instance_id));
            let ctx = match initial_ctx {
                Some(c) => Value::Object(check!(parse_object("initial_ctx", c))).to_string(),
                None => "{}".to_string(),
            };
            let Some(m) = get_machine(txn, machine, *version)? else {
                return Ok(refuse(
                    MachineErrorCode::MachineNotFound,
                    format!("machine {machine:?} version {version} not found"),
                    Some(serde_json::json!({"machine": machine, "version": version})),
                ));
            };
            if get_instance(txn, instance_id)?.is_some() {
                return Ok(refuse(
                    MachineErrorCode::InstanceExists,
                    format!("instance {instance_id:?} already exists"),
                    Some(serde_json::json!({"instance_id": instance_id})),
                ));
            }
            let rec = InstanceRecord {
                machine: machine.clone(),
                version: *version,
                state: m.initial.clone(),
                ctx: ctx.clone(),
                last_event_id: None,
                last_wal_offset: index,
                created_at: time_ms,
                updated_at: time_ms,
            };
            put_instance(txn, instance_id, &rec)?;
            index_instance(txn, instance_id, machine, &m.initial, 1)?;
            txn.emit(Event::Machine(MachineEvent::InstanceCreated {
                instance_id: instance_id.clone(),
                machine: machine.clone(),
                version: *version,
                state: m.initial.clone(),
                ctx,
                idempotency_key: idempotency_key.clone(),
            }));
            MachineResult::InstanceCreated {
                instance_id: instance_id.clone(),
                state: m.initial,
                wal_offset: index,
            }
        }
        MachineCmd::ApplyEvent {
            instance_id,
            event,
            payload,
            expected_state,
            expected_wal_offset,
            event_id,
            idempotency_key,
        } => {
            let Some(mut inst) = get_instance(txn, instance_id)? else {
                return Ok(refuse(
                    MachineErrorCode::InstanceNotFound,
                    format!("instance {instance_id:?} not found"),
                    Some(serde_json::json!({"instance_id": instance_id})),
                ));
            };
            if let Some(want) = expected_state {
                if *want != inst.state {
                    return Ok(refuse(
                        MachineErrorCode::Conflict,
                        format!(
                            "instance {instance_id:?} is in state {:?}, not the expected {want:?}",
                            inst.state
                        ),
                        Some(
                            serde_json::json!({"expected_state": want, "current_state": inst.state}),
                        ),
                    ));
                }
            }
            if let Some(want) = expected_wal_offset {
                if *want != inst.last_wal_offset {
                    return Ok(refuse(
                        MachineErrorCode::Conflict,
                        format!(
                            "instance {instance_id:?} is at wal offset {}, not the expected {want}",
                            inst.last_wal_offset
                        ),
                        Some(serde_json::json!({
                            "expected_wal_offset": want,
                            "current_wal_offset": inst.last_wal_offset
                        })),
                    ));
                }
            }
            let payload_obj = match payload {
                Some(p) => Some(check!(parse_object("payload", p))),
                None => None,
            };
            let Some(m) = get_machine(txn, &inst.machine, inst.version)? else {
                return Err(StoreError::Corrupt(format!(
                    "instance {instance_id} names machine {} version {} which is gone",
                    inst.machine, inst.version
                )));
            };
            let Some(t) = m
                .transitions
                .iter()
                .find(|t| t.event == *event && t.from.contains(&inst.state))
            else {
                return Ok(refuse(
                    MachineErrorCode::InvalidTransition,
                    format!(
                        "no transition for event {event:?} from state {:?}",
                        inst.state
                    ),
                    Some(serde_json::json!({"state": inst.state, "event": event})),
                ));
            };
            let ctx_before: Value = serde_json::from_str(&inst.ctx)?;
            if let Some(g) = &t.guard {
                if !g.eval(&ctx_before) {
                    return Ok(refuse(
                        MachineErrorCode::GuardFailed,
                        format!(
                            "guard of event {event:?} from state {:?} is false",
                            inst.state
                        ),
                        Some(serde_json::json!({"guard": g.to_string()})),
                    ));
                }
            }
            let mut ctx = match ctx_before {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            if let Some(p) = payload_obj {
                for (k, v) in p {
                    ctx.insert(k, v);
                }
            }
            let ctx = Value::Object(ctx).to_string();
            let from_state = std::mem::replace(&mut inst.state, t.to.clone());
            if from_state != inst.state {
                index_instance(txn, instance_id, &inst.machine, &from_state, -1)?;
                index_instance(txn, instance_id, &inst.machine, &inst.state, 1)?;
            }
            inst.ctx = ctx.clone();
            inst.last_wal_offset = index;
            inst.updated_at = time_ms;
            if event_id.is_some() {
                inst.last_event_id = event_id.clone();
            }
            put_instance(txn, instance_id, &inst)?;
            txn.emit(Event::Machine(MachineEvent::EventApplied {
                instance_id: instance_id.clone(),
                machine: inst.machine.clone(),
                version: inst.version,
                from_state: from_state.clone(),
                to_state: inst.state.clone(),
                event: event.clone(),
                payload: payload.clone().unwrap_or_else(|| "null".into()),
                ctx: ctx.clone(),
                event_id: event_id.clone(),
                idempotency_key: idempotency_key.clone(),
            }));
            MachineResult::EventApplied {
                from_state,
                to_state: inst.state,
                ctx,
                wal_offset: index,
                event_id: event_id.clone(),
            }
        }
        MachineCmd::DeleteInstance {
            instance_id,
            idempotency_key,
        } => {
            let Some(inst) = get_instance(txn, instance_id)? else {
                return Ok(refuse(
                    MachineErrorCode::InstanceNotFound,
                    format!("instance {instance_id:?} not found"),
                    Some(serde_json::json!({"instance_id": instance_id})),
                ));
            };
            txn.delete(instance_key(instance_id));
            index_instance(txn, instance_id, &inst.machine, &inst.state, -1)?;
            txn.emit(Event::Machine(MachineEvent::InstanceDeleted {
                instance_id: instance_id.clone(),
                machine: inst.machine,
                version: inst.version,
                idempotency_key: idempotency_key.clone(),
            }));
            MachineResult::InstanceDeleted {
                instance_id: instance_id.clone(),
                wal_offset: index,
            }
        }
        MachineCmd::FlushAll => {
            if !allow_flush_all {
                return Ok(bad(
                    "FLUSH_ALL is disabled: the cluster setting allow_flush_all is off",
                ));
            }
            let mut machines = 0;
            let mut instances = 0;
            for prefix in [&b"M/"[..], b"I/", b"X/", b"N/", b"Y/", b"Ye/"] {
                loop {
                    let page = txn.scan(prefix, 1024)?;
                    if page.is_empty() {
                        break;
                    }
                    for (k, _) in page {
                        match prefix {
                            b"M/" => machines += 1,
                            b"I/" => instances += 1,
                            _ => {}
                        }
                        txn.delete(k);
                    }
                }
            }
            txn.emit(Event::Machine(MachineEvent::Flushed));
            MachineResult::Flushed {
                machines,
                instances,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmesh_proto::{ApplyResult, Cmd};

    const ORDER: &str = r#"{"states":["pending","paid","shipped"],"initial":"pending",
        "transitions":[{"from":"pending","event":"PAY","to":"paid","guard":"ctx.amount > 0"},
                       {"from":["paid"],"event":"SHIP","to":"shipped"}]}"#;

    fn put_machine(txn: &mut Txn<'_>, index: u64, def: &str) -> MachineResult {
        let cmd = MachineCmd::PutMachine {
            machine: "order".into(),
            version: 1,
            definition: def.into(),
        };
        apply(txn, index, 1000, &cmd, false).unwrap()
    }

    fn create(id: &str, key: Option<&str>) -> MachineCmd {
        MachineCmd::CreateInstance {
            machine: "order".into(),
            version: 1,
            instance_id: id.into(),
            initial_ctx: Some(r#"{"customer":"alice"}"#.into()),
            idempotency_key: key.map(Into::into),
        }
    }

    fn event(id: &str, ev: &str, payload: Option<&str>) -> MachineCmd {
        MachineCmd::ApplyEvent {
            instance_id: id.into(),
            event: ev.into(),
            payload: payload.map(Into::into),
            expected_state: None,
            expected_wal_offset: None,
            event_id: None,
            idempotency_key: None,
        }
    }

    fn code(r: &MachineResult) -> Option<MachineErrorCode> {
        match r {
            MachineResult::Refused(e) => Some(e.code),
            _ => None,
        }
    }

    fn with_txn(f: impl FnOnce(&mut Txn<'_>)) {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, reader) = crate::open(dir.path()).unwrap();
        let db = reader.db_for_tests();
        let mut txn = Txn::new(&db);
        f(&mut txn);
    }

    #[test]
    fn a_machine_version_is_immutable_and_stored_normalized() {
        with_txn(|t| {
            let r = put_machine(t, 1, ORDER);
            let MachineResult::MachinePut {
                created: true,
                checksum,
            } = r
            else {
                panic!("{r:?}")
            };
            assert_eq!(checksum.len(), 8);
            let m = get_machine(t, "order", 1).unwrap().unwrap();
            assert_eq!(
                m.definition,
                r#"{"states":["pending","paid","shipped"],"initial":"pending","transitions":[{"from":["pending"],"event":"PAY","to":"paid","guard":"ctx.amount > 0"},{"from":["paid"],"event":"SHIP","to":"shipped"}]}"#
            );
            assert_eq!(
                checksum,
                format!("{:08x}", crc32c::crc32c(m.definition.as_bytes()))
            );
            // The same definition, spelled differently: not created again.
            let same = ORDER.replace("\"from\":[\"paid\"]", "\"from\":\"paid\"");
            assert!(matches!(
                put_machine(t, 2, &same),
                MachineResult::MachinePut { created: false, .. }
            ));
            let other = ORDER.replace("shipped", "sent");
            assert_eq!(
                code(&put_machine(t, 3, &other)),
                Some(MachineErrorCode::MachineVersionExists)
            );
        });
    }

    /// rstmdb 0.3.0's own checksums, which clients compare.
    #[test]
    fn checksums_match_the_original() {
        let def = r#"{"states":["created","paid"],"initial":"created","transitions":[{"from":"created","event":"PAY","to":"paid"}]}"#;
        assert_eq!(compile(def).unwrap().checksum, "26adbd14");
        let with_meta = compile(&def.replace("}]}", r#"}],"meta":{"z":1,"a":1e2}}"#)).unwrap();
        assert!(
            with_meta
                .definition
                .ends_with(r#","meta":{"a":100.0,"z":1}}"#),
            "{}",
            with_meta.definition
        );
    }

    #[test]
    fn invalid_definitions_are_bad_requests_naming_the_problem() {
        with_txn(|t| {
            for (def, says) in [
                (
                    r#"{"states":["a"],"initial":"b","transitions":[]}"#,
                    "initial state",
                ),
                (
                    r#"{"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E","to":"z"}]}"#,
                    "unknown state",
                ),
                (
                    r#"{"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E","to":"a"},{"from":["a"],"event":"E","to":"a"}]}"#,
                    "defined twice",
                ),
                (
                    r#"{"states":["a"],"initial":"a","transitions":[{"from":"a","event":"E","to":"a","guard":"ctx.x >"}]}"#,
                    "guard",
                ),
                ("[1]", "JSON object"),
            ] {
                let r = put_machine(t, 1, def);
                let MachineResult::Refused(e) = &r else {
                    panic!("{def}: {r:?}")
                };
                assert_eq!(e.code, MachineErrorCode::BadRequest, "{def}");
                assert!(e.message.contains(says), "{def}: {}", e.message);
            }
        });
    }

    #[test]
    fn events_check_in_order_and_merge_the_payload() {
        with_txn(|t| {
            put_machine(t, 1, ORDER);
            assert_eq!(
                code(&apply(t, 2, 1000, &create("o1", None), false).unwrap()),
                None
            );
            assert_eq!(
                code(&apply(t, 3, 1000, &create("o1", None), false).unwrap()),
                Some(MachineErrorCode::InstanceExists)
            );
            // Guard sees the ctx before the event: amount is missing.
            let r = apply(
                t,
                4,
                1000,
                &event("o1", "PAY", Some(r#"{"amount":5}"#)),
                false,
            )
            .unwrap();
            assert_eq!(code(&r), Some(MachineErrorCode::GuardFailed));
            let r = apply(t, 5, 1000, &event("o1", "SHIP", None), false).unwrap();
            assert_eq!(code(&r), Some(MachineErrorCode::InvalidTransition));
            // expected_state is checked before the transition.
            let mut e = event("o1", "NOPE", None);
            if let MachineCmd::ApplyEvent { expected_state, .. } = &mut e {
                *expected_state = Some("paid".into());
            }
            assert_eq!(
                code(&apply(t, 6, 1000, &e, false).unwrap()),
                Some(MachineErrorCode::Conflict)
            );
            // Give the guard its amount (a self-loop is not defined: use a
            // fresh machine version whose guard passes on the stored ctx).
            let inst = get_instance(t, "o1").unwrap().unwrap();
            assert_eq!(inst.last_wal_offset, 2);
            let mut ok = MachineCmd::PutMachine {
                machine: "order".into(),
                version: 2,
                definition: ORDER.replace("ctx.amount > 0", r#"ctx.customer == \"alice\""#),
            };
            let r = apply(t, 7, 1000, &ok, false).unwrap();
            assert!(
                matches!(r, MachineResult::MachinePut { created: true, .. }),
                "{r:?}"
            );
            ok = create("o2", None);
            if let MachineCmd::CreateInstance { version, .. } = &mut ok {
                *version = 2;
            }
            let r = apply(t, 8, 1000, &ok, false).unwrap();
            assert!(matches!(r, MachineResult::InstanceCreated { .. }), "{r:?}");
            let r = apply(
                t,
                9,
                2000,
                &event("o2", "PAY", Some(r#"{"amount":5,"customer":"bob"}"#)),
                false,
            )
            .unwrap();
            let MachineResult::EventApplied {
                from_state,
                to_state,
                ctx,
                wal_offset,
                ..
            } = r
            else {
                panic!("{r:?}")
            };
            assert_eq!(
                (from_state.as_str(), to_state.as_str(), wal_offset),
                ("pending", "paid", 9)
            );
            assert_eq!(ctx, r#"{"amount":5,"customer":"bob"}"#);
            let inst = get_instance(t, "o2").unwrap().unwrap();
            assert_eq!(
                (inst.created_at, inst.updated_at, inst.last_wal_offset),
                (1000, 2000, 9)
            );
        });
    }

    #[test]
    fn a_duplicate_returns_the_first_result_until_the_key_expires() {
        with_txn(|t| {
            put_machine(t, 1, ORDER);
            let first = apply(t, 2, 1000, &create("o1", Some("k")), false).unwrap();
            // Same key, another id: the first result, nothing created.
            let again = apply(t, 3, 5000, &create("o9", Some("k")), false).unwrap();
            assert_eq!(again, first);
            assert!(get_instance(t, "o9").unwrap().is_none());
            // After 24 h by entry time the key is new again.
            let later = apply(
                t,
                4,
                1000 + IDEMPOTENCY_TTL_MS,
                &create("o9", Some("k")),
                false,
            )
            .unwrap();
            assert!(
                matches!(later, MachineResult::InstanceCreated { wal_offset: 4, .. }),
                "{later:?}"
            );
        });
    }

    #[test]
    fn an_atomic_group_with_a_refused_command_keeps_nothing() {
        with_txn(|t| {
            put_machine(t, 1, ORDER);
            let group = Cmd::Atomic(vec![
                Cmd::Machine(create("a", None)),
                Cmd::Machine(event("a", "SHIP", None)),
            ]);
            let r = super::super::apply(t, 2, 1000, &group).unwrap();
            assert!(
                matches!(r, ApplyResult::Atomic { kept: false, .. }),
                "{r:?}"
            );
            assert!(get_instance(t, "a").unwrap().is_none());
            assert!(t
                .take_events()
                .iter()
                .all(|e| !matches!(e, Event::Machine(MachineEvent::InstanceCreated { .. }))));
        });
    }

    #[test]
    fn counts_follow_creates_moves_and_deletes() {
        with_txn(|t| {
            put_machine(t, 1, &ORDER.replace("ctx.amount > 0", "ctx.customer"));
            for (i, id) in ["c", "a", "b"].iter().enumerate() {
                apply(t, 2 + i as u64, 1000, &create(id, None), false).unwrap();
            }
            apply(t, 6, 1000, &event("b", "PAY", None), false).unwrap();
            fn n(t: &Txn<'_>, m: Option<&str>, s: Option<&str>) -> u64 {
                read_u64(t.get(&count_key(m, s)).unwrap()).unwrap()
            }
            assert_eq!(n(t, None, None), 3);
            assert_eq!(n(t, Some("order"), None), 3);
            assert_eq!(n(t, None, Some("pending")), 2);
            assert_eq!(n(t, Some("order"), Some("paid")), 1);
            let r = apply(
                t,
                7,
                1000,
                &MachineCmd::DeleteInstance {
                    instance_id: "b".into(),
                    idempotency_key: None,
                },
                false,
            )
            .unwrap();
            assert!(matches!(
                r,
                MachineResult::InstanceDeleted { wal_offset: 7, .. }
            ));
            assert_eq!(n(t, Some("order"), Some("paid")), 0);
            assert_eq!(n(t, None, None), 2);
            // A deleted id may be reused.
            let r = apply(t, 8, 1000, &create("b", None), false).unwrap();
            assert!(matches!(r, MachineResult::InstanceCreated { .. }));
            assert_eq!(
                code(&apply(t, 9, 1000, &MachineCmd::FlushAll, false).unwrap()),
                Some(MachineErrorCode::BadRequest)
            );
            let r = apply(t, 10, 1000, &MachineCmd::FlushAll, true).unwrap();
            assert_eq!(
                r,
                MachineResult::Flushed {
                    machines: 1,
                    instances: 3
                }
            );
            assert_eq!(n(t, None, None), 0);
        });
    }
}
