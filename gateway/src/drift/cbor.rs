//! DriftDB's binary frames: CBOR in the JSON data model. A CBOR frame is
//! decoded to the JSON value it stands for (text-keyed maps, arrays, text,
//! integers exact within i64/u64, floats, bool, null; `undefined` is null),
//! and what JSON cannot hold (byte strings, tags, non-text keys, NaN or
//! infinities, integers past 64 bits) is an error naming it. Outgoing
//! messages are built as JSON and encoded here for sockets that asked for
//! CBOR.

use ciborium::value::{Integer, Value as Cbor};
use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused (as serde_json's own limit).
const MAX_DEPTH: usize = 128;

pub(crate) fn decode(bytes: &[u8]) -> Result<Value, String> {
    let v: Cbor = ciborium::de::from_reader(bytes)
        .map_err(|e| format!("the binary frame is not CBOR: {e}"))?;
    to_json(v, 0)
}

fn to_json(v: Cbor, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the CBOR value nests deeper than {MAX_DEPTH}"));
    }
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Text(t) => Value::String(t),
        Cbor::Integer(i) => int(i)?,
        Cbor::Float(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("the float {f} has no JSON form (NaN or infinite)"))?,
        Cbor::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| to_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(m) => {
            let mut o = Map::new();
            for (k, x) in m {
                let Cbor::Text(k) = k else {
                    return Err(format!("a CBOR map key must be text, not {}", kind(&k)));
                };
                o.insert(k, to_json(x, depth + 1)?);
            }
            Value::Object(o)
        }
        Cbor::Bytes(_) => return Err("CBOR byte strings have no JSON form".into()),
        Cbor::Tag(t, _) => return Err(format!("CBOR tag {t} has no JSON form")),
        other => return Err(format!("the CBOR value {} has no JSON form", kind(&other))),
    })
}

fn int(i: Integer) -> Result<Value, String> {
    let n: i128 = i.into();
    if let Ok(u) = u64::try_from(n) {
        Ok(Value::Number(u.into()))
    } else if let Ok(s) = i64::try_from(n) {
        Ok(Value::Number(s.into()))
    } else {
        Err(format!("the integer {n} is outside the 64-bit range"))
    }
}

fn kind(v: &Cbor) -> &'static str {
    match v {
        Cbor::Integer(_) => "an integer",
        Cbor::Bytes(_) => "a byte string",
        Cbor::Float(_) => "a float",
        Cbor::Text(_) => "text",
        Cbor::Bool(_) => "a boolean",
        Cbor::Null => "null",
        Cbor::Tag(..) => "a tag",
        Cbor::Array(_) => "an array",
        Cbor::Map(_) => "a map",
        _ => "an unknown kind",
    }
}

fn from_json(v: &Value) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Cbor::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                Cbor::Integer(i.into())
            } else {
                Cbor::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::Array(a) => Cbor::Array(a.iter().map(from_json).collect()),
        Value::Object(o) => Cbor::Map(
            o.iter()
                .map(|(k, x)| (Cbor::Text(k.clone()), from_json(x)))
                .collect(),
        ),
    }
}

/// CBOR for an outgoing message built as JSON text.
pub(crate) fn encode_json(json: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let mut out = Vec::new();
    ciborium::ser::into_writer(&from_json(&v), &mut out).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cbor(v: &Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::ser::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn cbor_maps_to_the_json_data_model_and_back() {
        let msg = json!({"type":"push","key":"k","value":{"a":[1,-2,2.5,null,true,"x"],"big":18446744073709551615u64},"action":{"type":"append"}});
        let bytes = encode_json(&msg.to_string());
        assert_eq!(decode(&bytes).unwrap(), msg);
        // undefined (0xf7) is null; a half float decodes.
        assert_eq!(decode(&[0xf7]).unwrap(), Value::Null);
        assert_eq!(decode(&[0xf9, 0x3c, 0x00]).unwrap(), json!(1.0));
    }

    /// A float parsed from a client's JSON, stored as text and sent to a
    /// CBOR socket is the same float (found by fuzzing: without exact float
    /// parsing the two differed in the last digit).
    #[test]
    fn floats_survive_text_and_cbor_exactly() {
        let text = r#"{"f":-4.0942826163014047e+270}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let stored = v.to_string();
        let again: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(again, v);
        assert_eq!(decode(&encode_json(&stored)).unwrap(), v);
    }

    #[test]
    fn what_json_cannot_hold_is_an_error_naming_it() {
        let cases = [
            (cbor(&Cbor::Bytes(vec![1])), "byte string"),
            (
                cbor(&Cbor::Tag(1, Box::new(Cbor::Integer(0.into())))),
                "tag 1",
            ),
            (
                cbor(&Cbor::Map(vec![(Cbor::Integer(1.into()), Cbor::Null)])),
                "key must be text",
            ),
            (cbor(&Cbor::Float(f64::NAN)), "NaN"),
            (vec![0xc3, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0], "tag"),
            (vec![0xff], "not CBOR"),
        ];
        for (bytes, says) in cases {
            let e = decode(&bytes).unwrap_err();
            assert!(e.contains(says), "{bytes:02x?}: {e}");
        }
        let mut deep = vec![0x81; MAX_DEPTH + 2];
        deep.push(0xf6);
        assert!(decode(&deep).unwrap_err().contains("deeper"));
    }
}
