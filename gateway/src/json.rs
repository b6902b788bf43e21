//! JSON text helpers. Values cross the gateway as JSON *text*: validated once
//! on the way in, then embedded verbatim in responses, so the hot path never
//! re-parses what the state machine stores and never reorders object keys or
//! rewrites numbers (a round trip through `serde_json::Value` would do both).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
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
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
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

    #[test]
    fn prettify_keeps_key_order() {
        assert_eq!(
            prettify(r#"{"z":1,"a":2}"#),
            "{\n  \"z\": 1,\n  \"a\": 2\n}"
        );
    }
}
