//! pm3 KV records: the encoding in the `sm` column family and the apply rules.

use raftmesh_proto::{KvEntry, KvResult};

use crate::StoreError;

/// Namespace of pm3 KV keys inside the `sm` column family.
pub(crate) const PREFIX: &[u8] = b"k/";

pub(crate) fn data_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + key.len());
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Record layout: 8-byte big-endian revision, then the value's JSON text.
/// Reads hand the text out without parsing it.
pub(crate) fn encode(revision: u64, value: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&revision.to_be_bytes());
    v.extend_from_slice(value.as_bytes());
    v
}

pub(crate) fn decode(raw: &[u8]) -> Result<KvEntry, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt("kv record shorter than 8 bytes".into()));
    }
    let revision = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let value = std::str::from_utf8(&raw[8..])
        .map_err(|e| StoreError::Corrupt(format!("kv value not utf-8: {e}")))?
        .to_string();
    Ok(KvEntry { revision, value })
}

/// Deep JSON equality as the CAS rule wants it: object key order ignored,
/// arrays in order. A value that does not parse compares as `null`; the
/// gateway validates values, so that only guards old or foreign entries.
fn parse_or_null(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// Decides a CAS against the current record, deterministically; on
/// success (`ok`) the caller stores `desired` at `index`.
pub(crate) fn decide_cas(
    index: u64,
    current: Option<&KvEntry>,
    expected: &str,
    desired: &str,
) -> KvResult {
    let cur_value = current
        .map(|e| parse_or_null(&e.value))
        .unwrap_or(serde_json::Value::Null);
    let expected_v = parse_or_null(expected);
    if cur_value == expected_v {
        KvResult::Cas {
            ok: true,
            revision: index,
            value: desired.to_string(),
            diff: String::new(),
        }
    } else {
        let patch = json_patch::diff(&expected_v, &cur_value);
        let diff = serde_json::to_string(&patch).expect("a patch always serializes");
        KvResult::Cas {
            ok: false,
            revision: current.map_or(0, |e| e.revision),
            value: current.map_or_else(|| "null".to_string(), |e| e.value.clone()),
            diff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip() {
        let raw = encode(42, r#"{"a":1}"#);
        assert_eq!(
            decode(&raw).unwrap(),
            KvEntry {
                revision: 42,
                value: r#"{"a":1}"#.into()
            }
        );
        assert!(decode(b"short").is_err());
    }

    #[test]
    fn cas_ignores_key_order_and_missing_is_null() {
        let cur = KvEntry {
            revision: 3,
            value: r#"{"a":1,"b":[1,2]}"#.into(),
        };
        let r = decide_cas(9, Some(&cur), r#"{"b":[1,2],"a":1}"#, "5");
        assert_eq!(
            r,
            KvResult::Cas {
                ok: true,
                revision: 9,
                value: "5".into(),
                diff: String::new()
            }
        );
        let r = decide_cas(9, None, "null", "1");
        assert!(
            matches!(r, KvResult::Cas { ok: true, .. }),
            "missing key equals null"
        );
    }

    #[test]
    fn cas_failure_diff_turns_expected_into_current() {
        let cur = KvEntry {
            revision: 3,
            value: r#"{"a":[1,2,{"x":3}],"n":{"m":1}}"#.into(),
        };
        let expected = r#"{"a":[1],"n":{}}"#;
        let r = decide_cas(9, Some(&cur), expected, "0");
        assert!(r.refused());
        let KvResult::Cas {
            revision,
            value,
            diff,
            ..
        } = r
        else {
            panic!("cas result expected")
        };
        assert_eq!(revision, 3);
        assert_eq!(value, cur.value);
        let patch: json_patch::Patch = serde_json::from_str(&diff).unwrap();
        let mut doc: serde_json::Value = serde_json::from_str(expected).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            serde_json::from_str::<serde_json::Value>(&cur.value).unwrap()
        );
    }
}
