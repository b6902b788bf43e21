//! The gateway's one error type, and the one place an error becomes an HTTP
//! status and body, so every route answers the same failure the same way.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use raftmesh_proto::ClusterError;

/// Everything a gateway handler can fail with. The body is always
/// `{"error": "<text>"}` (plus `"revision"` for [`GatewayError::Conflict`]).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed input: bad key, bad JSON, missing field. 400.
    #[error("{0}")]
    BadRequest(String),
    /// The route is internal-only and the connection is external. 403.
    #[error("this route is served to internal connections only")]
    Forbidden,
    /// Unknown route (or peer). 404.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method. 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A conditional write found another revision. 409; the body carries
    /// the current revision so the client can retry without another read.
    #[error("{message}")]
    Conflict { message: String, revision: u64 },
    /// Asked for history older than what is retained. 410; the body
    /// carries the oldest index still retained (as etcd's "compacted").
    #[error("{message}")]
    Gone { message: String, oldest: u64 },
    /// A value or body over the configured limit. 413.
    #[error("{0}")]
    TooLarge(String),
    /// A failure reported by the cluster; see [`IntoResponse`] for statuses.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A gateway bug or an impossible backend answer. 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for GatewayError {
    /// The single mapping from error to status and body. Cluster errors are
    /// split by what the client may do next: 503 means nothing was applied
    /// and a retry is safe; 504 means the write may or may not have been
    /// applied, so the client must read before retrying a non-idempotent op.
    fn into_response(self) -> Response {
        let mut leader = None;
        let mut oldest = None;
        let (status, message, revision) = match self {
            GatewayError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, None),
            GatewayError::Forbidden => (StatusCode::FORBIDDEN, self.to_string(), None),
            GatewayError::NotFound(m) => (StatusCode::NOT_FOUND, m, None),
            GatewayError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, m, None),
            GatewayError::Conflict { message, revision } => {
                (StatusCode::CONFLICT, message, Some(revision))
            }
            GatewayError::Gone { message, oldest: o } => {
                oldest = Some(o);
                (StatusCode::GONE, message, None)
            }
            GatewayError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, None),
            GatewayError::Internal(m) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: {m}"),
                None,
            ),
            GatewayError::Cluster(e) => {
                leader = e.leader().cloned();
                cluster_status(e)
            }
        };
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %message, "request failed");
        }
        let message = for_people(message);
        let mut body = serde_json::json!({ "error": message });
        if let Some(revision) = revision {
            body["revision"] = revision.into();
        }
        if let Some(o) = oldest {
            body["oldest"] = o.into();
        }
        if let Some(l) = leader {
            // Where to go instead: the client may send the request there.
            body["leader"] = serde_json::json!({ "id": l.id, "http_addr": l.http_addr });
        }
        let mut resp = (status, body.to_string()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Cluster errors by what the client may do next: 503 means nothing was
/// applied and a retry is safe; 504 means a write may or may not have been
/// applied, so the client must read before retrying a non-idempotent op.
fn cluster_status(e: ClusterError) -> (StatusCode, String, Option<u64>) {
    let retry = "nothing was applied, retrying is safe";
    let (status, message) = match e {
        ClusterError::NoLeader { message, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no leader available ({message}); {retry}"),
        ),
        ClusterError::NotLeader { leader } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node is not the leader and could not pass the request on \
                 (leader hint: {}); {retry}",
                leader.map_or_else(|| "none".to_owned(), |l| l.to_string())
            ),
        ),
        ClusterError::Overloaded { message } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("overloaded ({message}); {retry} after a pause"),
        ),
        ClusterError::NotReady { message } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("node not ready ({message}); retrying is safe"),
        ),
        ClusterError::Unknown { message } => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "outcome unknown ({message}): the request was sent but its result was not \
                 learned; the write may or may not have been applied, read before retrying"
            ),
        ),
        ClusterError::Rejected { message } => (
            StatusCode::BAD_REQUEST,
            format!("rejected by the cluster: {message}"),
        ),
        ClusterError::TooLarge { message } => (StatusCode::PAYLOAD_TOO_LARGE, message),
        ClusterError::TimedOut { message } => {
            (StatusCode::GATEWAY_TIMEOUT, format!("timed out: {message}"))
        }
        ClusterError::Internal { message } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {message}"),
        ),
    };
    (status, message, None)
}

/// Longest error message a client gets. Errors are sentences for people;
/// anything longer is internal state (a library's Debug dump) that belongs
/// in the log, where the full text already went.
const MAX_MESSAGE: usize = 400;

fn for_people(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        tracing::debug!(error = %message, "error message shortened for the client");
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("… (full text in the node's log)");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: GatewayError) -> StatusCode {
        e.into_response().status()
    }

    #[test]
    fn cluster_errors_map_by_what_the_client_may_do() {
        let cases = [
            (ClusterError::no_leader("x"), 503),
            (ClusterError::NotLeader { leader: None }, 503),
            (
                ClusterError::Overloaded {
                    message: "x".into(),
                },
                503,
            ),
            (ClusterError::not_ready("x"), 503),
            (ClusterError::unknown("x"), 504),
            (ClusterError::rejected("x"), 400),
            (
                ClusterError::TooLarge {
                    message: "x".into(),
                },
                413,
            ),
            (ClusterError::timed_out("x"), 504),
            (ClusterError::internal("x"), 500),
        ];
        for (e, code) in cases {
            assert_eq!(
                status_of(GatewayError::Cluster(e.clone())).as_u16(),
                code,
                "{e:?}"
            );
            // 503 exactly when the variant says a retry is safe.
            assert_eq!(code == 503, e.is_retryable(), "{e:?}");
        }
    }

    #[test]
    fn long_messages_are_cut_for_people() {
        let e = GatewayError::Cluster(ClusterError::not_ready("x".repeat(10_000)));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let msg = for_people("é".repeat(1000));
        assert!(msg.len() < MAX_MESSAGE + 64, "{}", msg.len());
        assert!(msg.ends_with("(full text in the node's log)"));
        assert_eq!(for_people("short".into()), "short");
    }
}
