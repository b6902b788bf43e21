//! pm3 KV and CAS routes (spec `pm3.md`): `GET/PUT/DELETE /kv/{key}`,
//! `GET /kv`, `POST /kv/{key}/cas`, and the KV watch ([`watch`]). Handlers turn requests into [`Cmd`]s and
//! [`ApplyResult`]s into pm3's JSON shapes; the cluster does the rest.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use raftmesh_proto::{ApplyResult, Cmd, KvCmd, KvResult};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::json::{self, json_response, raw_or_null};
use crate::layers::with_index;
use crate::query::QueryParams;
use crate::seam::{Backend, KvRead, Replicate};
use crate::{AppState, GatewayConfig};

pub(crate) mod fuzzing;
mod watch;

pub(crate) fn routes<B: Backend>(cfg: &GatewayConfig) -> Router<AppState<B>> {
    Router::new()
        .route("/kv", get(list::<B>))
        .route("/watch/kv", get(watch::watch_kv::<B>))
        .route(
            "/kv/{key}",
            get(get_key::<B>).put(put_key::<B>).delete(delete_key::<B>),
        )
        .route(
            "/kv/{key}/cas",
            post(cas::<B>).layer(DefaultBodyLimit::max(cfg.cas_body_limit())),
        )
}

/// Checks the pm3 key rules; the error names the rule that failed.
pub(crate) fn validate_key(key: &str, max_key_bytes: usize) -> Result<(), GatewayError> {
    if key.is_empty() {
        return Err(GatewayError::BadRequest("key must not be empty".into()));
    }
    if key.len() > max_key_bytes {
        return Err(GatewayError::BadRequest(format!(
            "key is {} bytes; keys may be at most {max_key_bytes} bytes",
            key.len()
        )));
    }
    if let Some(c) = key
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.')))
    {
        return Err(GatewayError::BadRequest(format!(
            "key may only contain the characters [-/_=.a-zA-Z0-9]; found {c:?}"
        )));
    }
    if key.starts_with('.') || key.ends_with('.') {
        return Err(GatewayError::BadRequest(
            "key must not start or end with '.'".into(),
        ));
    }
    Ok(())
}

/// The percent-decoded `{key}` path segment, already validated.
pub(crate) struct Key(pub String);

impl<B: Send + Sync + 'static> FromRequestParts<AppState<B>> for Key {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &AppState<B>,
    ) -> Result<Self, Self::Rejection> {
        let Path(key) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(|e| GatewayError::BadRequest(format!("invalid key: {}", e.body_text())))?;
        validate_key(&key, st.cfg.max_key_bytes)?;
        Ok(Key(key))
    }
}

/// Body extraction failures: over the route's body limit is 413 with our
/// JSON body rather than axum's plain-text one.
pub(crate) fn body_error(e: BytesRejection, cfg: &GatewayConfig) -> GatewayError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        GatewayError::TooLarge(format!(
            "request body too large (values may be at most {} bytes)",
            cfg.max_value_bytes
        ))
    } else {
        GatewayError::BadRequest(format!("reading request body: {}", e.body_text()))
    }
}

/// Compacts a request value and enforces the stored-size limit on the
/// compact text, which is what the log and the state machine hold.
fn stored_value(raw: &RawValue, cfg: &GatewayConfig, field: &str) -> Result<String, GatewayError> {
    let value = json::minify(raw.get());
    if value.len() > cfg.max_value_bytes {
        return Err(GatewayError::TooLarge(format!(
            "{field} is {} bytes; values may be at most {} bytes",
            value.len(),
            cfg.max_value_bytes
        )));
    }
    Ok(value)
}

/// Linearizable by default: the barrier's index is what the local read
/// reflects. `None` for a stale read (headers then show the applied index).
async fn read_point<B: Replicate>(
    st: &AppState<B>,
    q: &QueryParams,
) -> Result<Option<u64>, GatewayError> {
    if q.stale()? {
        Ok(None)
    } else {
        Ok(Some(st.backend.read_barrier().await?))
    }
}

fn unexpected(op: &str, result: &ApplyResult) -> GatewayError {
    GatewayError::Internal(format!("unexpected apply result for {op}: {result:?}"))
}

async fn get_key<B: Replicate + KvRead>(
    State(st): State<AppState<B>>,
    Key(key): Key,
    q: QueryParams,
) -> Result<Response, GatewayError> {
    let index = read_point(&st, &q).await?;
    // A missing key reads as revision 0 / null, without pmesh's create-on-read.
    let body = match st.backend.kv_get(&key).await? {
        Some(e) => format!(
            r#"{{"revision":{},"value":{}}}"#,
            e.revision,
            raw_or_null(&e.value)
        ),
        None => r#"{"revision":0,"value":null}"#.to_owned(),
    };
    Ok(with_index(json_response(body), index))
}

async fn list<B: Replicate + KvRead>(
    State(st): State<AppState<B>>,
    q: QueryParams,
) -> Result<Response, GatewayError> {
    let limit = match q.get("limit") {
        None => st.cfg.max_list_keys,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=st.cfg.max_list_keys).contains(n))
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "limit must be a number from 1 to {}, not {v:?}",
                    st.cfg.max_list_keys
                ))
            })?,
    };
    let index = read_point(&st, &q).await?;
    let page = st
        .backend
        .kv_scan(q.get("prefix").unwrap_or(""), q.get("after"), limit)
        .await?;
    let body =
        serde_json::to_string(&page.keys).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let mut resp = json_response(body);
    // The array stays pm3's shape; a truncated listing says where to go on.
    if let Some(next) = page.next_after {
        if let Ok(v) = axum::http::HeaderValue::from_str(&next) {
            resp.headers_mut().insert(X_KV_NEXT_AFTER, v);
        }
    }
    Ok(with_index(resp, index))
}

/// Set on a `GET /kv` answer cut at its limit: repeat with `?after=<it>`.
const X_KV_NEXT_AFTER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-kv-next-after");

/// The bodies of the write routes, as error messages show them.
const PUT_SHAPE: &str = r#"{"value": V} or {"value": V, "revision": N}"#;
const CAS_SHAPE: &str = r#"{"expected": E, "desired": D}"#;

#[derive(Deserialize)]
struct PutBody {
    #[serde(default, deserialize_with = "json::present")]
    value: Option<Box<RawValue>>,
    /// Present (even 0) makes the write conditional; `null` or absent does not.
    #[serde(default)]
    revision: Option<u64>,
}

async fn put_key<B: Replicate>(
    State(st): State<AppState<B>>,
    Key(key): Key,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let req: PutBody = json::parse_body(&body, PUT_SHAPE)?;
    let raw = req
        .value
        .ok_or_else(|| GatewayError::BadRequest(format!("request body must be {PUT_SHAPE}")))?;
    let value = stored_value(&raw, &st.cfg, "value")?;
    let out = st
        .backend
        .write(Cmd::Kv(KvCmd::Put {
            key,
            value,
            if_revision: req.revision,
        }))
        .await?;
    let resp = match out.result {
        ApplyResult::Kv(KvResult::Written { revision }) => json_response(revision.to_string()),
        ApplyResult::Kv(KvResult::RevisionMismatch { current }) => GatewayError::Conflict {
            message: format!(
                "revision mismatch: expected {}, the key is at revision {current}",
                req.revision.unwrap_or_default()
            ),
            revision: current,
        }
        .into_response(),
        other => return Err(unexpected("put", &other)),
    };
    Ok(with_index(resp, Some(out.index)))
}

async fn delete_key<B: Replicate>(
    State(st): State<AppState<B>>,
    Key(key): Key,
) -> Result<Response, GatewayError> {
    let out = st.backend.write(Cmd::Kv(KvCmd::Delete { key })).await?;
    match out.result {
        ApplyResult::Kv(KvResult::Deleted) => {
            Ok(with_index(json_response("{}".into()), Some(out.index)))
        }
        other => Err(unexpected("delete", &other)),
    }
}

#[derive(Deserialize)]
struct CasBody {
    #[serde(default, deserialize_with = "json::present")]
    expected: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "json::present")]
    desired: Option<Box<RawValue>>,
}

async fn cas<B: Replicate>(
    State(st): State<AppState<B>>,
    Key(key): Key,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, GatewayError> {
    let body = body.map_err(|e| body_error(e, &st.cfg))?;
    let req: CasBody = json::parse_body(&body, CAS_SHAPE)?;
    let missing = |f: &str| {
        GatewayError::BadRequest(format!(
            r#"request body must be {CAS_SHAPE}; "{f}" is missing (use null for an absent key)"#
        ))
    };
    let expected = req.expected.ok_or_else(|| missing("expected"))?;
    let desired = req.desired.ok_or_else(|| missing("desired"))?;
    let cmd = Cmd::Kv(KvCmd::Cas {
        key,
        expected: stored_value(&expected, &st.cfg, "expected")?,
        desired: stored_value(&desired, &st.cfg, "desired")?,
    });
    let out = st.backend.write(cmd).await?;
    let ApplyResult::Kv(KvResult::Cas {
        ok,
        revision,
        value,
        diff,
    }) = &out.result
    else {
        return Err(unexpected("cas", &out.result));
    };
    // `diff` is JSON text (an RFC 6902 patch) embedded raw on failure.
    let diff = match (ok, diff.as_str()) {
        (true, _) => r#""""#,
        (false, "") => "[]",
        (false, d) => d,
    };
    let body = format!(
        r#"{{"ok":{ok},"diff":{diff},"revision":{revision},"value":{}}}"#,
        raw_or_null(value)
    );
    Ok(with_index(json_response(body), Some(out.index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert!(validate_key("a-b/c_d=e.f", 1024).is_ok());
        let msg = |k: &str| validate_key(k, 8).unwrap_err().to_string();
        assert!(msg("").contains("empty"));
        assert!(msg("abcdefghi").contains("at most 8 bytes"));
        assert!(msg("a b").contains("[-/_=.a-zA-Z0-9]"));
        assert!(msg("é").contains("[-/_=.a-zA-Z0-9]"));
        assert!(msg(".a").contains("start or end with '.'"));
        assert!(msg("a.").contains("start or end with '.'"));
    }
}
