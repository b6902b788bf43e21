//! DriftDB's messages: what a client sends (parsed from JSON values, so a
//! CBOR frame decoded to the same value parses the same), what the server
//! sends (built as JSON text, stored values embedded as they are), and the
//! one mapping from an error to an HTTP status and to a socket's `error`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raftmesh_proto::{ClusterError, PushAction};
use serde_json::Value;

/// A client message.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMsg {
    /// `value` as compact JSON text.
    Push {
        key: String,
        value: String,
        action: PushAction,
    },
    /// `seq: None` (sent as `null`) asks for nothing; a missing seq is 0.
    Get { key: String, seq: Option<u64> },
    /// The nonce is echoed as sent (null when absent).
    Ping { nonce: Value },
}

/// Why a client message is refused: names the field and what it must be.
pub type SchemaError = String;

fn key_of(o: &serde_json::Map<String, Value>) -> Result<String, SchemaError> {
    match o.get("key") {
        Some(Value::String(k)) => Ok(k.clone()),
        Some(other) => Err(format!("key must be a string, not {}", kind(other))),
        None => Err("missing field `key`".into()),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn seq_of(v: &Value, what: &str) -> Result<u64, SchemaError> {
    v.as_u64()
        .ok_or_else(|| format!("{what} must be a non-negative integer, not {v}"))
}

/// Parses a client message from its JSON value.
pub fn parse(v: &Value) -> Result<ClientMsg, SchemaError> {
    let Value::Object(o) = v else {
        return Err(format!("a message must be an object, not {}", kind(v)));
    };
    let ty = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(other) => return Err(format!("type must be a string, not {}", kind(other))),
        None => return Err("missing field `type` (push, get or ping)".into()),
    };
    match ty {
        "push" => {
            let key = key_of(o)?;
            let value = o
                .get("value")
                .ok_or("missing field `value` (null is allowed)")?;
            let action = match o.get("action") {
                Some(Value::Object(a)) => match a.get("type").and_then(Value::as_str) {
                    Some("relay") => PushAction::Relay,
                    Some("append") => PushAction::Append,
                    Some("replace") => PushAction::Replace,
                    Some("compact") => PushAction::Compact {
                        seq: seq_of(
                            a.get("seq").ok_or("a compact action needs `seq`")?,
                            "the compact action's seq",
                        )?,
                    },
                    Some(other) => {
                        return Err(format!(
                        "unknown action type {other:?}; expected relay, append, replace or compact"
                    ))
                    }
                    None => return Err("the action needs a string `type`".into()),
                },
                Some(other) => {
                    return Err(format!(
                        "action must be an object like {{\"type\":\"append\"}}, not {}",
                        kind(other)
                    ))
                }
                None => return Err("missing field `action`".into()),
            };
            Ok(ClientMsg::Push {
                key,
                value: value.to_string(),
                action,
            })
        }
        "get" => {
            let key = key_of(o)?;
            let seq = match o.get("seq") {
                None => Some(0),
                Some(Value::Null) => None,
                Some(s) => Some(seq_of(s, "seq")?),
            };
            Ok(ClientMsg::Get { key, seq })
        }
        "ping" => Ok(ClientMsg::Ping {
            nonce: o.get("nonce").cloned().unwrap_or(Value::Null),
        }),
        other => Err(format!(
            "unknown message type {other:?}; expected push, get or ping"
        )),
    }
}

fn string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// `{"type":"push","key","value","seq"}`; `value` is stored JSON text.
pub fn push_msg(key: &str, value: &str, seq: u64) -> String {
    format!(
        r#"{{"type":"push","key":{},"value":{value},"seq":{seq}}}"#,
        string(key)
    )
}

/// `{"type":"init","key","data":[{"value","seq"}…]}`.
pub fn init_msg(key: &str, values: &[(u64, String)]) -> String {
    let mut out = format!(r#"{{"type":"init","key":{},"data":["#, string(key));
    for (i, (seq, v)) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(r#"{{"value":{v},"seq":{seq}}}"#));
    }
    out.push_str("]}");
    out
}

pub fn stream_size_msg(key: &str, size: u64) -> String {
    format!(
        r#"{{"type":"stream_size","key":{},"size":{size}}}"#,
        string(key)
    )
}

pub fn pong_msg(nonce: &Value) -> String {
    format!(r#"{{"type":"pong","nonce":{nonce}}}"#)
}

pub fn error_msg(message: &str) -> String {
    format!(r#"{{"type":"error","message":{}}}"#, string(message))
}

/// What a DriftDB route or message can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// The message does not fit DriftDB's schema. 422.
    #[error("{0}")]
    Schema(String),
    /// The body is not JSON. 400.
    #[error("{0}")]
    BadJson(String),
    /// `/send` needs `Content-Type: application/json`. 415.
    #[error("expected a request with Content-Type: application/json")]
    ContentType,
    /// No such room. 404.
    #[error("{0}")]
    NoRoom(String),
    /// The state refused the push (a limit, a compact past the room's seq). 422.
    #[error("{0}")]
    Refused(String),
    /// Over the size a message may have. 413.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl DriftError {
    /// The one mapping to an HTTP status. Cluster failures split as on the
    /// pm3 routes: 503 when nothing was applied (retry is safe), 504 when the
    /// outcome is unknown.
    pub fn status(&self) -> StatusCode {
        match self {
            DriftError::Schema(_) | DriftError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DriftError::BadJson(_) => StatusCode::BAD_REQUEST,
            DriftError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DriftError::NoRoom(_) => StatusCode::NOT_FOUND,
            DriftError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DriftError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            DriftError::Cluster(c) => match c {
                ClusterError::Unknown { .. } | ClusterError::TimedOut { .. } => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                ClusterError::NoLeader { .. }
                | ClusterError::NotLeader { .. }
                | ClusterError::NotReady { .. }
                | ClusterError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                ClusterError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ClusterError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ClusterError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The text of the socket's `error` message (the socket stays open).
    pub fn socket_message(&self) -> String {
        match self {
            DriftError::Cluster(
                c @ (ClusterError::Unknown { .. } | ClusterError::TimedOut { .. }),
            ) => {
                format!("outcome unknown: {c}; get the key before pushing it again")
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for DriftError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "room request failed");
        }
        let mut r = (status, self.socket_message()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse_as_the_spec_says() {
        let m = parse(&json!({"type":"push","key":"k","value":{"b":1,"a":[1,2.5]},"action":{"type":"compact","seq":4}}))
            .unwrap();
        assert_eq!(
            m,
            ClientMsg::Push {
                key: "k".into(),
                value: r#"{"a":[1,2.5],"b":1}"#.into(),
                action: PushAction::Compact { seq: 4 }
            }
        );
        let m = parse(&json!({"type":"push","key":"k","value":null,"action":{"type":"relay"}}))
            .unwrap();
        assert!(matches!(m, ClientMsg::Push { ref value, .. } if value == "null"));
        assert_eq!(
            parse(&json!({"type":"get","key":"k"})).unwrap(),
            ClientMsg::Get {
                key: "k".into(),
                seq: Some(0)
            }
        );
        assert_eq!(
            parse(&json!({"type":"get","key":"k","seq":null})).unwrap(),
            ClientMsg::Get {
                key: "k".into(),
                seq: None
            }
        );
        assert_eq!(
            parse(&json!({"type":"ping"})).unwrap(),
            ClientMsg::Ping { nonce: Value::Null }
        );
        for (bad, says) in [
            (
                json!({"type":"push","key":"k","action":{"type":"append"}}),
                "value",
            ),
            (
                json!({"type":"push","key":"k","value":1,"action":"append"}),
                "action must be an object",
            ),
            (
                json!({"type":"push","key":"k","value":1,"action":{"type":"compact"}}),
                "needs `seq`",
            ),
            (
                json!({"type":"push","key":"k","value":1,"action":{"type":"zap"}}),
                "zap",
            ),
            (
                json!({"type":"push","key":3,"value":1,"action":{"type":"append"}}),
                "key must be a string",
            ),
            (json!({"type":"get","key":"k","seq":1.5}), "seq must be"),
            (json!({"type":"nope"}), "unknown message type"),
            (json!([1]), "must be an object"),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn server_messages_are_the_spec_shapes() {
        let v: Value = serde_json::from_str(&push_msg("k\"", r#"{"a":1}"#, 7)).unwrap();
        assert_eq!(
            v,
            json!({"type":"push","key":"k\"","value":{"a":1},"seq":7})
        );
        let v: Value =
            serde_json::from_str(&init_msg("k", &[(5, "1".into()), (8, "null".into())])).unwrap();
        assert_eq!(
            v,
            json!({"type":"init","key":"k","data":[{"value":1,"seq":5},{"value":null,"seq":8}]})
        );
        let v: Value = serde_json::from_str(&init_msg("k", &[])).unwrap();
        assert_eq!(v["data"], json!([]));
        let v: Value = serde_json::from_str(&stream_size_msg("k", 3)).unwrap();
        assert_eq!(v, json!({"type":"stream_size","key":"k","size":3}));
        let v: Value = serde_json::from_str(&pong_msg(&json!(42))).unwrap();
        assert_eq!(v, json!({"type":"pong","nonce":42}));
        let v: Value = serde_json::from_str(&error_msg("bad \"x\"")).unwrap();
        assert_eq!(v, json!({"type":"error","message":"bad \"x\""}));
    }

    #[test]
    fn statuses_follow_retry_safety() {
        assert_eq!(DriftError::Schema("x".into()).status(), 422);
        assert_eq!(DriftError::ContentType.status(), 415);
        assert_eq!(DriftError::NoRoom("x".into()).status(), 404);
        assert_eq!(DriftError::from(ClusterError::no_leader("x")).status(), 503);
        assert_eq!(DriftError::from(ClusterError::unknown("x")).status(), 504);
    }
}
