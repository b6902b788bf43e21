//! rstmdb's JSON envelopes, and the one mapping from an error to rstmdb's
//! error code, `retryable` and `details`.
//!
//! Shapes follow what the real clients parse (rstmdb-client 0.3.0, PyPI
//! rstmdb 0.2.1): `id` is always a JSON string; `error.retryable` is always
//! present; `details` and `meta` are objects or absent, never `null`;
//! `meta.server_time` is RFC 3339 with a `Z`.

use raftmesh_proto::{ClusterError, MachineError};
use serde_json::{json, Map, Value};

/// A request as received.
#[derive(Debug)]
pub struct Request {
    /// Echoed as a string (a client sending a number gets it back as text).
    pub id: String,
    pub op: String,
    /// An object (an absent or `null` params is `{}`).
    pub params: Map<String, Value>,
}

/// Why a request cannot be served, as rstmdb reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    BadRequest(String),
    /// `from_offset` older than the retained journal.
    Compacted {
        message: String,
        oldest: u64,
    },
    UnsupportedProtocol(String),
    Unauthorized,
    AuthFailed(String),
    /// Decided by the state (guard failed, conflict, not found, ...).
    Machine(MachineError),
    Cluster(ClusterError),
    Internal(String),
}

impl From<ClusterError> for WireError {
    fn from(e: ClusterError) -> Self {
        WireError::Cluster(e)
    }
}

impl From<MachineError> for WireError {
    fn from(e: MachineError) -> Self {
        WireError::Machine(e)
    }
}

/// The one place an error becomes rstmdb's (code, message, retryable,
/// details). Cluster failures use codes every real client parses (the
/// Python client knows no replication codes): the truth is in `retryable`
/// and `details`.
pub fn error_fields(e: &WireError) -> (&'static str, String, bool, Option<Value>) {
    match e {
        WireError::BadRequest(m) => ("BAD_REQUEST", m.clone(), false, None),
        WireError::Compacted { message, oldest } => (
            "BAD_REQUEST",
            message.clone(),
            false,
            Some(json!({ "oldest_offset": oldest })),
        ),
        WireError::UnsupportedProtocol(m) => ("UNSUPPORTED_PROTOCOL", m.clone(), false, None),
        WireError::Unauthorized => (
            "UNAUTHORIZED",
            "authentication required: send AUTH first".into(),
            false,
            None,
        ),
        WireError::AuthFailed(m) => ("AUTH_FAILED", m.clone(), false, None),
        WireError::Machine(m) => (
            m.code.as_str(),
            m.message.clone(),
            false,
            m.details
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .filter(Value::is_object),
        ),
        WireError::Internal(m) => ("INTERNAL_ERROR", m.clone(), false, None),
        WireError::Cluster(c) => cluster_fields(c),
    }
}

fn cluster_fields(c: &ClusterError) -> (&'static str, String, bool, Option<Value>) {
    let leader = c.leader().map(|l| l.id);
    match c {
        ClusterError::NoLeader { .. } | ClusterError::NotLeader { .. } => (
            "INTERNAL_ERROR",
            c.to_string(),
            true,
            Some(json!({ "cluster": "no_leader", "leader_id": leader })),
        ),
        ClusterError::NotReady { .. } => (
            "INTERNAL_ERROR",
            c.to_string(),
            true,
            Some(json!({ "cluster": "not_ready", "leader_id": leader })),
        ),
        ClusterError::Overloaded { message } => ("RATE_LIMITED", message.clone(), true, None),
        ClusterError::Unknown { message } | ClusterError::TimedOut { message } => (
            "INTERNAL_ERROR",
            format!("outcome unknown: {message}"),
            false,
            Some(json!({ "outcome": "unknown" })),
        ),
        ClusterError::TooLarge { message } | ClusterError::Rejected { message } => {
            ("BAD_REQUEST", message.clone(), false, None)
        }
        ClusterError::Internal { message } => ("INTERNAL_ERROR", message.clone(), false, None),
    }
}

/// The HTTP status of an answer to `POST /rstmdb`, read off the envelope
/// [`error_fields`] made, so the two never disagree: 200 for a success; a
/// cluster failure is 503 when retry is safe and 504 when the outcome is
/// unknown, as on the pm3 routes.
pub fn http_status(envelope: &Value) -> u16 {
    let Some(e) = envelope.get("error") else {
        return 200;
    };
    let details = e.get("details");
    let cluster = details.and_then(|d| d.get("cluster")).is_some();
    let unknown = details.and_then(|d| d.get("outcome")) == Some(&json!("unknown"));
    match e.get("code").and_then(Value::as_str).unwrap_or("") {
        "BAD_REQUEST" | "UNSUPPORTED_PROTOCOL" => 400,
        "UNAUTHORIZED" | "AUTH_FAILED" => 401,
        "NOT_FOUND" | "MACHINE_NOT_FOUND" | "INSTANCE_NOT_FOUND" => 404,
        "MACHINE_VERSION_EXISTS"
        | "INSTANCE_EXISTS"
        | "CONFLICT"
        | "INVALID_TRANSITION"
        | "GUARD_FAILED"
        | "MACHINE_VERSION_LIMIT_EXCEEDED" => 409,
        "RATE_LIMITED" => 429,
        _ if unknown => 504,
        _ if cluster => 503,
        _ => 500,
    }
}

/// The `meta` object of a response, from the node's Raft state.
#[derive(Clone, Debug)]
pub struct Meta {
    pub leader: bool,
    pub wal_offset: u64,
    pub server_time_ms: u64,
    pub trace_id: String,
}

impl Meta {
    fn to_value(&self) -> Value {
        json!({
            "server_time": rfc3339(self.server_time_ms),
            "leader": self.leader,
            "wal_offset": self.wal_offset,
            "trace_id": self.trace_id,
        })
    }
}

pub fn ok(id: &str, result: Value, meta: &Meta) -> Value {
    json!({
        "type": "response",
        "id": id,
        "status": "ok",
        "result": result,
        "meta": meta.to_value(),
    })
}

pub fn error(id: &str, e: &WireError, meta: &Meta) -> Value {
    json!({
        "type": "response",
        "id": id,
        "status": "error",
        "error": error_object(e),
        "meta": meta.to_value(),
    })
}

/// `{code, message, retryable, details?}`, also used inside BATCH results.
pub fn error_object(e: &WireError) -> Value {
    let (code, message, retryable, details) = error_fields(e);
    let mut o = json!({ "code": code, "message": message, "retryable": retryable });
    if let Some(d) = details {
        o["details"] = d;
    }
    o
}

/// Parses one request envelope. A payload that is JSON but not a request
/// still yields its `id` when it has one, so the error can be answered.
pub fn parse_request(text: &str) -> Result<Request, (Option<String>, WireError)> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            WireError::BadRequest(format!("request is not JSON: {e}")),
        )
    })?;
    let Value::Object(mut o) = v else {
        return Err((
            None,
            WireError::BadRequest("request must be a JSON object".into()),
        ));
    };
    let id = match o.remove("id") {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err((
                None,
                WireError::BadRequest("request needs a string \"id\"".into()),
            ))
        }
    };
    match o.get("type").and_then(Value::as_str) {
        Some("request") | None => {}
        Some(t) => {
            return Err((
                Some(id),
                WireError::BadRequest(format!("message type {t:?} is not a request")),
            ))
        }
    }
    let op = match o.remove("op") {
        Some(Value::String(s)) => s,
        _ => {
            return Err((
                Some(id),
                WireError::BadRequest("request needs a string \"op\"".into()),
            ))
        }
    };
    let params = match o.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err((
                Some(id),
                WireError::BadRequest("params must be an object".into()),
            ))
        }
    };
    Ok(Request { id, op, params })
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-01T20:37:42.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POST /rstmdb's status follows the envelope's code; a cluster failure
    /// is 503 when a retry is safe and 504 when the outcome is unknown.
    #[test]
    fn http_status_follows_the_error_code_and_retry_safety() {
        let meta = Meta {
            leader: false,
            wal_offset: 1,
            server_time_ms: 0,
            trace_id: "t".into(),
        };
        let st = |e: WireError| http_status(&error("1", &e, &meta));
        assert_eq!(http_status(&ok("1", json!({}), &meta)), 200);
        assert_eq!(st(WireError::BadRequest("x".into())), 400);
        assert_eq!(st(WireError::Unauthorized), 401);
        assert_eq!(st(ClusterError::no_leader("x").into()), 503);
        assert_eq!(st(ClusterError::not_ready("x").into()), 503);
        assert_eq!(st(ClusterError::unknown("x").into()), 504);
        assert_eq!(st(ClusterError::timed_out("x").into()), 504);
        assert_eq!(st(ClusterError::internal("x").into()), 500);
        let conflict = MachineError {
            code: raftmesh_proto::MachineErrorCode::Conflict,
            message: "x".into(),
            details: None,
        };
        assert_eq!(st(conflict.into()), 409);
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_157_462_123), "2026-12-01T20:37:42.123Z");
    }

    #[test]
    fn requests_parse_and_bad_ones_name_the_problem() {
        let r = parse_request(r#"{"type":"request","id":"7","op":"PING"}"#).unwrap();
        assert_eq!(
            (r.id.as_str(), r.op.as_str(), r.params.len()),
            ("7", "PING", 0)
        );
        let r = parse_request(r#"{"id":8,"op":"INFO","params":null}"#).unwrap();
        assert_eq!(r.id, "8");
        let (id, e) = parse_request(r#"{"id":"9","op":"X","params":[1]}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("9"));
        assert!(matches!(e, WireError::BadRequest(m) if m.contains("params")));
        assert!(parse_request("nope").unwrap_err().0.is_none());
    }

    #[test]
    fn cluster_failures_use_codes_every_client_knows() {
        let (code, msg, retry, details) =
            error_fields(&WireError::Cluster(ClusterError::unknown("lost")));
        assert_eq!((code, retry), ("INTERNAL_ERROR", false));
        assert!(msg.starts_with("outcome unknown"));
        assert_eq!(details.unwrap()["outcome"], "unknown");
        let (code, _, retry, details) =
            error_fields(&WireError::Cluster(ClusterError::no_leader("none")));
        assert_eq!((code, retry), ("INTERNAL_ERROR", true));
        assert_eq!(details.unwrap()["cluster"], "no_leader");
        let (code, _, retry, _) = error_fields(&WireError::Cluster(ClusterError::Overloaded {
            message: "full".into(),
        }));
        assert_eq!((code, retry), ("RATE_LIMITED", true));
    }
}
