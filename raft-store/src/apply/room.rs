//! Applying DriftDB room commands. The room's seq (one counter shared by
//! all its keys, first 1) is taken here, in log order, so every node gives
//! every push the same seq; limits are the cluster-wide [`RoomLimits`]
//! setting, so every node refuses alike. Times are the entry's.
//!
//! Keys in the `sm` family (see the crate root's table):
//! - `r/<room>` → the room's [`RoomView`] (four 8-byte big-endian numbers)
//! - `rk/<room>\0<key len: u32 BE><key>` → 8-byte count of the key's values
//! - `rv/<room>\0<key len: u32 BE><key><seq: u64 BE>` → a value (JSON)
//! - `m/settings/room_limits` → the [`RoomLimits`] in force (JSON)
//!
//! A key's length comes before it, so no key's prefix is another key's.

use raftmesh_proto::{
    Event, PushAction, RoomCmd, RoomError, RoomErrorCode, RoomEvent, RoomLimits, RoomResult,
    RoomView,
};

use super::txn::Txn;
use crate::StoreError;

const LIMITS_KEY: &[u8] = b"m/settings/room_limits";
/// Bounds a scan that must see everything (a room's values); far above any
/// room the limits allow.
const ALL: usize = 1 << 40;

pub(crate) fn room_key(room: &str) -> Vec<u8> {
    format!("r/{room}").into_bytes()
}

fn key_part(room: &str, key: &str) -> Vec<u8> {
    let mut k = format!("{room}\0").into_bytes();
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn count_key(room: &str, key: &str) -> Vec<u8> {
    let mut k = b"rk/".to_vec();
    k.extend(key_part(room, key));
    k
}

/// The prefix of every value of `key` in `room`.
pub(crate) fn values_prefix(room: &str, key: &str) -> Vec<u8> {
    let mut k = b"rv/".to_vec();
    k.extend(key_part(room, key));
    k
}

fn value_key(room: &str, key: &str, seq: u64) -> Vec<u8> {
    let mut k = values_prefix(room, key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The prefixes of all of a room's keys and values.
pub(crate) fn room_prefixes(room: &str) -> [Vec<u8>; 2] {
    [
        format!("rk/{room}\0").into_bytes(),
        format!("rv/{room}\0").into_bytes(),
    ]
}

pub(crate) fn encode_view(v: &RoomView) -> Vec<u8> {
    [v.seq, v.keys, v.created_ms, v.last_push_ms]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect()
}

pub(crate) fn decode_view(raw: &[u8]) -> Result<RoomView, StoreError> {
    if raw.len() < 32 {
        return Err(StoreError::Corrupt(
            "room record shorter than 32 bytes".into(),
        ));
    }
    let n = |i: usize| u64::from_be_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(RoomView {
        seq: n(0),
        keys: n(1),
        created_ms: n(2),
        last_push_ms: n(3),
    })
}

pub(crate) fn decode_u64(raw: &[u8], what: &str) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(raw.try_into().map_err(|_| {
        StoreError::Corrupt(format!("{what} is not 8 bytes"))
    })?))
}

/// The room limits in force (the defaults until set).
pub fn limits(txn: &Txn<'_>) -> Result<RoomLimits, StoreError> {
    match txn.get(LIMITS_KEY)? {
        Some(raw) => Ok(serde_json::from_slice(&raw)?),
        None => Ok(RoomLimits::default()),
    }
}

pub fn set_limits(txn: &mut Txn<'_>, l: &RoomLimits) -> Result<(), StoreError> {
    txn.put(LIMITS_KEY.to_vec(), serde_json::to_vec(l)?);
    Ok(())
}

fn refused(code: RoomErrorCode, message: String) -> RoomResult {
    RoomResult::Refused(RoomError { code, message })
}

fn get_view(txn: &Txn<'_>, room: &str) -> Result<Option<RoomView>, StoreError> {
    txn.get(&room_key(room))?
        .map(|raw| decode_view(&raw))
        .transpose()
}

fn count(txn: &Txn<'_>, room: &str, key: &str) -> Result<u64, StoreError> {
    txn.get(&count_key(room, key))?
        .map_or(Ok(0), |raw| decode_u64(&raw, "a room key's count"))
}

fn set_count(txn: &mut Txn<'_>, room: &str, key: &str, n: u64) {
    if n == 0 {
        txn.delete(count_key(room, key));
    } else {
        txn.put(count_key(room, key), n.to_be_bytes().to_vec());
    }
}

/// Applies one room command of the entry at `index`, applied at `time_ms`.
pub fn apply(
    txn: &mut Txn<'_>,
    _index: u64,
    time_ms: u64,
    cmd: &RoomCmd,
) -> Result<RoomResult, StoreError> {
    match cmd {
        RoomCmd::Create { room } => {
            if get_view(txn, room)?.is_some() {
                return Ok(refused(
                    RoomErrorCode::RoomExists,
                    format!("room {room:?} exists"),
                ));
            }
            let v = RoomView {
                seq: 0,
                keys: 0,
                created_ms: time_ms,
                last_push_ms: time_ms,
            };
            txn.put(room_key(room), encode_view(&v));
            Ok(RoomResult::Created)
        }
        RoomCmd::Push {
            room,
            key,
            value,
            action,
        } => push(txn, time_ms, room, key, value, *action),
        RoomCmd::Delete { room } => delete(txn, room, None),
        RoomCmd::Expire { room, last_push_ms } => delete(txn, room, Some(*last_push_ms)),
    }
}

fn push(
    txn: &mut Txn<'_>,
    time_ms: u64,
    room: &str,
    key: &str,
    value: &str,
    action: PushAction,
) -> Result<RoomResult, StoreError> {
    let Some(mut view) = get_view(txn, room)? else {
        return Ok(refused(
            RoomErrorCode::NoSuchRoom,
            format!("room {room:?} does not exist (never created, or deleted)"),
        ));
    };
    let lim = limits(txn)?;
    let bytes = (key.len() + value.len()) as u64;
    if bytes > lim.max_message_bytes {
        return Ok(refused(
            RoomErrorCode::Limit,
            format!(
                "the push is {bytes} bytes (key and value), over the room limit \
                 max_message_bytes = {}",
                lim.max_message_bytes
            ),
        ));
    }
    let had = count(txn, room, key)?;
    let keys_full = had == 0 && view.keys >= lim.max_keys;
    let keys_refusal = || {
        refused(
            RoomErrorCode::Limit,
            format!(
                "room {room:?} holds values for {} keys, the room limit max_keys; \
                 a new key cannot be stored",
                view.keys
            ),
        )
    };
    let (seq, now) = match action {
        PushAction::Relay => {
            view.seq += 1;
            (Some(view.seq), had)
        }
        PushAction::Append => {
            if keys_full {
                return Ok(keys_refusal());
            }
            if had >= lim.max_values_per_key {
                return Ok(refused(
                    RoomErrorCode::Limit,
                    format!(
                        "key {key:?} retains {had} values, the room limit max_values_per_key; \
                         compact or replace it"
                    ),
                ));
            }
            view.seq += 1;
            txn.put(value_key(room, key, view.seq), value.as_bytes().to_vec());
            (Some(view.seq), had + 1)
        }
        PushAction::Replace => {
            if keys_full {
                return Ok(keys_refusal());
            }
            for (k, _) in txn.scan(&values_prefix(room, key), ALL)? {
                txn.delete(k);
            }
            view.seq += 1;
            txn.put(value_key(room, key, view.seq), value.as_bytes().to_vec());
            (Some(view.seq), 1)
        }
        PushAction::Compact { seq: upto } => {
            if upto > view.seq {
                return Ok(refused(
                    RoomErrorCode::BadCompact,
                    format!(
                        "compact to seq {upto}, but room {room:?} is at seq {}",
                        view.seq
                    ),
                ));
            }
            if keys_full {
                return Ok(keys_refusal());
            }
            let prefix = values_prefix(room, key);
            let mut covered = Vec::new();
            for (k, _) in txn.scan(&prefix, ALL)? {
                let s = decode_u64(&k[prefix.len()..], "a room value's seq")?;
                if s > upto {
                    break;
                }
                covered.push(k);
            }
            let now = had - covered.len() as u64 + 1;
            if now > lim.max_values_per_key {
                return Ok(refused(
                    RoomErrorCode::Limit,
                    format!(
                        "compacting key {key:?} to seq {upto} leaves {now} values, over the room \
                         limit max_values_per_key = {}",
                        lim.max_values_per_key
                    ),
                ));
            }
            for k in covered {
                txn.delete(k);
            }
            txn.put(value_key(room, key, upto), value.as_bytes().to_vec());
            (None, now)
        }
    };
    if had == 0 && now > 0 {
        view.keys += 1;
    }
    set_count(txn, room, key, now);
    view.last_push_ms = time_ms;
    txn.put(room_key(room), encode_view(&view));
    txn.emit(Event::Room(match seq {
        Some(seq) => RoomEvent::Pushed {
            room: room.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            seq,
            action,
        },
        None => RoomEvent::Compacted {
            room: room.to_string(),
            key: key.to_string(),
            seq: match action {
                PushAction::Compact { seq } => seq,
                _ => 0,
            },
        },
    }));
    Ok(RoomResult::Pushed { seq, size: now })
}

/// Deletes a room and everything it holds; with `idle_since`, only if its
/// last push is still that one.
fn delete(
    txn: &mut Txn<'_>,
    room: &str,
    idle_since: Option<u64>,
) -> Result<RoomResult, StoreError> {
    let Some(view) = get_view(txn, room)? else {
        return Ok(RoomResult::Deleted { existed: false });
    };
    if idle_since.is_some_and(|t| t != view.last_push_ms) {
        return Ok(RoomResult::Deleted { existed: false });
    }
    for prefix in room_prefixes(room) {
        for (k, _) in txn.scan(&prefix, ALL)? {
            txn.delete(k);
        }
    }
    txn.delete(room_key(room));
    txn.emit(Event::Room(RoomEvent::Deleted {
        room: room.to_string(),
    }));
    Ok(RoomResult::Deleted { existed: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T {
        _dir: tempfile::TempDir,
        reader: crate::StoreReader,
    }

    fn store() -> T {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, reader) = crate::open(dir.path()).unwrap();
        T { _dir: dir, reader }
    }

    fn push(room: &str, key: &str, value: &str, action: PushAction) -> RoomCmd {
        RoomCmd::Push {
            room: room.into(),
            key: key.into(),
            value: value.into(),
            action,
        }
    }

    /// Runs `cmds` in one transaction at time 10 and returns results and
    /// the values of `r`/`k` left, with their seqs.
    fn run(txn: &mut Txn<'_>, cmds: &[RoomCmd]) -> Vec<RoomResult> {
        cmds.iter().map(|c| apply(txn, 1, 10, c).unwrap()).collect()
    }

    fn values(txn: &Txn<'_>, room: &str, key: &str) -> Vec<(u64, String)> {
        let prefix = values_prefix(room, key);
        txn.scan(&prefix, ALL)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                (
                    decode_u64(&k[prefix.len()..], "seq").unwrap(),
                    String::from_utf8(v).unwrap(),
                )
            })
            .collect()
    }

    fn pushed(seq: u64, size: u64) -> RoomResult {
        RoomResult::Pushed {
            seq: Some(seq),
            size,
        }
    }

    /// One seq per room across all keys, first 1; relay takes a seq but
    /// stores nothing; replace leaves only its value; compact keeps what is
    /// after its seq and puts its value at that seq, taking none.
    #[test]
    fn actions_take_one_shared_seq_and_keep_what_the_spec_says() {
        let t = store();
        let db = t.reader.db_for_tests();
        let mut txn = Txn::new(&db);
        let r = run(
            &mut txn,
            &[
                RoomCmd::Create { room: "r".into() },
                push("r", "k", "1", PushAction::Append),
                push("r", "other", "\"x\"", PushAction::Append),
                push("r", "k", "2", PushAction::Append),
                push("r", "k", "9", PushAction::Relay),
                push("r", "k", "3", PushAction::Append),
                push("r", "k", "{\"c\":1}", PushAction::Compact { seq: 4 }),
            ],
        );
        assert_eq!(
            r,
            [
                RoomResult::Created,
                pushed(1, 1),
                pushed(2, 1),
                pushed(3, 2),
                pushed(4, 2),
                pushed(5, 3),
                RoomResult::Pushed { seq: None, size: 2 },
            ]
        );
        assert_eq!(
            values(&txn, "r", "k"),
            [(4, "{\"c\":1}".to_string()), (5, "3".to_string())]
        );
        let r = run(&mut txn, &[push("r", "k", "7", PushAction::Replace)]);
        assert_eq!(r, [pushed(6, 1)]);
        assert_eq!(values(&txn, "r", "k"), [(6, "7".to_string())]);
        assert_eq!(values(&txn, "r", "other"), [(2, "\"x\"".to_string())]);
        let view = get_view(&txn, "r").unwrap().unwrap();
        assert_eq!((view.seq, view.keys), (6, 2));
        let events: Vec<Event> = txn.take_events();
        let seqs: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Room(RoomEvent::Pushed { seq, .. }) => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5, 6],
            "every seq-taking push is delivered"
        );
        assert!(events.contains(&Event::Room(RoomEvent::Compacted {
            room: "r".into(),
            key: "k".into(),
            seq: 4
        })));
    }

    /// Refusals name the problem and change nothing; a key whose name is a
    /// prefix of another's keeps its own values.
    #[test]
    fn refusals_name_the_limit_and_keys_never_overlap() {
        let t = store();
        let db = t.reader.db_for_tests();
        let mut txn = Txn::new(&db);
        set_limits(
            &mut txn,
            &RoomLimits {
                max_message_bytes: 16,
                max_keys: 2,
                max_values_per_key: 2,
                idle_ttl_ms: 0,
            },
        )
        .unwrap();
        let refusal = |r: &RoomResult| match r {
            RoomResult::Refused(e) => (e.code, e.message.clone()),
            other => panic!("not refused: {other:?}"),
        };
        let r = run(
            &mut txn,
            &[
                push("nope", "k", "1", PushAction::Append),
                RoomCmd::Create { room: "r".into() },
                RoomCmd::Create { room: "r".into() },
                push("r", "k", "\"a value too long\"", PushAction::Append),
                push("r", "a", "1", PushAction::Append),
                push("r", "a\0b", "2", PushAction::Append),
                push("r", "c", "3", PushAction::Append),
                push("r", "a", "4", PushAction::Append),
                push("r", "a", "5", PushAction::Append),
                push("r", "a", "6", PushAction::Compact { seq: 99 }),
            ],
        );
        assert_eq!(refusal(&r[0]).0, RoomErrorCode::NoSuchRoom);
        assert_eq!(refusal(&r[2]).0, RoomErrorCode::RoomExists);
        assert!(refusal(&r[3]).1.contains("max_message_bytes = 16"), "{r:?}");
        assert_eq!((r[4].clone(), r[5].clone()), (pushed(1, 1), pushed(2, 1)));
        assert!(refusal(&r[6]).1.contains("max_keys"), "{r:?}");
        assert_eq!(r[7], pushed(3, 2));
        assert!(refusal(&r[8]).1.contains("max_values_per_key"), "{r:?}");
        assert_eq!(refusal(&r[9]).0, RoomErrorCode::BadCompact);
        assert_eq!(
            values(&txn, "r", "a"),
            [(1, "1".to_string()), (3, "4".to_string())]
        );
        assert_eq!(values(&txn, "r", "a\0b"), [(2, "2".to_string())]);
        assert_eq!(get_view(&txn, "r").unwrap().unwrap().seq, 3);
    }

    /// Delete removes everything the room held; an expiry only deletes a
    /// room whose last push is still the one the leader saw.
    #[test]
    fn delete_clears_the_room_and_expiry_spares_a_room_pushed_since() {
        let t = store();
        let db = t.reader.db_for_tests();
        let mut txn = Txn::new(&db);
        run(
            &mut txn,
            &[
                RoomCmd::Create { room: "r".into() },
                push("r", "k", "1", PushAction::Append),
            ],
        );
        let stale = RoomCmd::Expire {
            room: "r".into(),
            last_push_ms: 3,
        };
        assert_eq!(
            run(&mut txn, &[stale]),
            [RoomResult::Deleted { existed: false }]
        );
        let idle = RoomCmd::Expire {
            room: "r".into(),
            last_push_ms: 10,
        };
        assert_eq!(
            run(&mut txn, &[idle]),
            [RoomResult::Deleted { existed: true }]
        );
        assert!(get_view(&txn, "r").unwrap().is_none());
        assert!(values(&txn, "r", "k").is_empty());
        for p in room_prefixes("r") {
            assert!(txn.scan(&p, ALL).unwrap().is_empty());
        }
        let again = run(&mut txn, &[RoomCmd::Delete { room: "r".into() }]);
        assert_eq!(again, [RoomResult::Deleted { existed: false }]);
    }

    /// The readers see what apply stored: values after a seq, bounded, and
    /// keys, also a key that is a prefix of another.
    #[test]
    fn readers_page_values_after_a_seq_and_list_keys() {
        let t = store();
        let db = t.reader.db_for_tests();
        let mut txn = Txn::new(&db);
        let mut cmds = vec![RoomCmd::Create { room: "r".into() }];
        for i in 0..5 {
            cmds.push(push("r", "a", &i.to_string(), PushAction::Append));
        }
        cmds.push(push("r", "a\0b", "9", PushAction::Append));
        run(&mut txn, &cmds);
        let mut batch = rocksdb::WriteBatch::default();
        txn.write_into(&mut batch);
        db.write(batch).unwrap();
        let r = &t.reader;
        assert_eq!(r.room_get("r").unwrap().unwrap().seq, 6);
        assert!(r.room_get("nope").unwrap().is_none());
        let page = r.room_values("r", "a", 2, 2).unwrap();
        assert_eq!(page.values, [(3, "2".to_string()), (4, "3".to_string())]);
        assert!(page.more);
        let rest = r.room_values("r", "a", 4, 10).unwrap();
        assert_eq!((rest.values.len(), rest.more), (1, false));
        assert!(r
            .room_values("r", "a", u64::MAX, 10)
            .unwrap()
            .values
            .is_empty());
        assert_eq!(
            r.room_keys("r", None, 10).unwrap(),
            (vec!["a".to_string(), "a\0b".to_string()], false)
        );
        assert_eq!(
            r.room_keys("r", None, 1).unwrap(),
            (vec!["a".to_string()], true)
        );
        assert_eq!(
            r.room_keys("r", Some("a"), 10).unwrap(),
            (vec!["a\0b".to_string()], false)
        );
    }
}
