//! JSON text helpers. Values cross the gateway as JSON *text*: validated once
//! on the way in, then embedded verbatim in responses, so the hot path never
//! re-parses what the state machine stores and never reorders object keys or
//! rewrites numbers (a round trip through `serde_json::Value` would do both).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::{
    Deserialize, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::value::RawValue;

use crate::error::GatewayError;

/// A 200 response whose body is already JSON text.
pub(crate) fn json_response(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Stored text is always JSON written by the gateway; an empty string would
/// produce an invalid document, so it is shown as `null` instead.
pub(crate) fn raw_or_null(text: &str) -> &str {
    if text.is_empty() {
        "null"
    } else {
        text
    }
}

/// Parses a request body, telling malformed JSON apart from well-formed JSON
/// of the wrong shape so the 400 message names the actual problem, and
/// showing `shape` (the route's body, e.g. `{"expected": E, "desired": D}`)
/// so the client sees what was wanted.
/// Request bodies are JSON objects. serde's derived structs would also accept
/// an array in field order (`[1, 2]` as value 1 at revision 2), so anything
/// that is not an object is refused before it is decoded.
pub(crate) fn parse_body<T: DeserializeOwned>(
    bytes: &[u8],
    shape: &str,
) -> Result<T, GatewayError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(GatewayError::BadRequest(format!(
            "invalid request body: expected a JSON object like {shape}"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "invalid request body"
        } else {
            "invalid JSON body"
        };
        GatewayError::BadRequest(format!("{what}: {e}; expected {shape}"))
    })
}

/// `deserialize_with` for optional raw fields: a present `null` becomes
/// `Some("null")` (it is a value, e.g. CAS `expected: null` means "absent"),
/// while a missing field stays `None` via `#[serde(default)]`.
///
/// A raw value only has to be JSON text (numbers of any size, any depth),
/// but apply reads stored values as `serde_json::Value` (CAS compares
/// them) and reads what it cannot parse as `null`: a stored `1e400` would
/// match `expected: null`. So a value is refused unless `Value` accepts it.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    serde_json::from_str::<Readable>(raw.get()).map_err(|e| {
        serde::de::Error::custom(format_args!(
            "a value this store cannot read back as JSON ({e})"
        ))
    })?;
    Ok(Some(raw))
}

/// Accepts exactly what `serde_json::Value` accepts (numbers within `f64`,
/// nesting within serde_json's depth limit) without building it.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Readable)
    }
}

impl<'de> Visitor<'de> for Readable {
    type Value = Readable;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_str<E>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_unit<E>(self) -> Result<Readable, E> {
        Ok(Readable)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<IgnoredAny, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Removes insignificant whitespace from valid JSON text without parsing it.
pub(crate) fn minify(text: &str) -> String {
    if !text.contains(is_json_space) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in text.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !is_json_space(c) {
            out.push(c);
        }
    }
    out
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Indents valid JSON text the way `serde_json::to_string_pretty` does, but
/// by scanning, so `?pretty` keeps the stored key order.
pub(crate) fn prettify(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_str, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|&n| is_json_space(n)) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if is_json_space(c) => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_order_and_string_whitespace() {
        let text = "{ \"b\" : [1, 2 ,\n {}],\t\"a\": \"x y \\\" }\" }";
        assert_eq!(minify(text), r#"{"b":[1,2,{}],"a":"x y \" }"}"#);
        assert_eq!(minify("12"), "12");
    }

    #[test]
    fn prettify_matches_serde_json_pretty() {
        // Keys already sorted so serde_json's (sorted) map output is comparable.
        let text = r#"{"a":[1,{"k":"v , : {"},[],{}],"b":{"c":null,"d":"é\"\\"},"e":-1.5}"#;
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            prettify(text),
            serde_json::to_string_pretty(&value).unwrap()
        );
        assert_eq!(prettify("7"), "7");
        assert_eq!(prettify("[ ]"), "[]");
    }

    /// Values apply could not read back (it would compare them as `null`)
    /// are refused; the largest and deepest ones it reads are kept.
    #[test]
    fn raw_values_must_be_readable() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "present")]
            value: Option<Box<RawValue>>,
        }
        let parse = |v: &str| parse_body::<Body>(format!(r#"{{"value": {v}}}"#).as_bytes(), "");
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for bad in ["1e400".to_string(), "-1e309".into(), deep(129)] {
            let err = parse(&bad).err().expect("refused").to_string();
            assert!(err.contains("cannot read back"), "{err}");
        }
        for good in ["1e300", "18446744073709551616", r#"{"a":[null,"\u00e9"]}"#] {
            assert_eq!(parse(good).unwrap().value.unwrap().get(), good);
        }
        // The same depth limit as `Value` (the store's reader).
        for n in 120..135 {
            let readable = serde_json::from_str::<serde_json::Value>(&deep(n)).is_ok();
            assert_eq!(parse(&deep(n)).is_ok(), readable, "depth {n}");
        }
        assert!(parse_body::<Body>(b"{}", "").unwrap().value.is_none());
    }

    #[test]
    fn prettify_keeps_key_order() {
        assert_eq!(
            prettify(r#"{"z":1,"a":2}"#),
            "{\n  \"z\": 1,\n  \"a\": 2\n}"
        );
    }
}
