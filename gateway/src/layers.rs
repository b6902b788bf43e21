//! Middleware shared by every route: Raft headers, metrics, `?pretty`, and
//! the internal-only gate. Doing these once here keeps handlers to their
//! API logic and guarantees error responses get the same treatment.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;
use crate::metrics::{method_label, UNMATCHED_ROUTE};
use crate::query::QueryParams;
use crate::seam::ClusterOps;
use crate::{access, json, AppState};

pub(crate) const X_RAFT_LEADER: HeaderName = HeaderName::from_static("x-raft-leader");
pub(crate) const X_RAFT_LEADER_ID: HeaderName = HeaderName::from_static("x-raft-leader-id");
pub(crate) const X_RAFT_TERM: HeaderName = HeaderName::from_static("x-raft-term");
pub(crate) const X_RAFT_INDEX: HeaderName = HeaderName::from_static("x-raft-index");
pub(crate) const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

/// Response extension: the log index this answer reflects (a write's entry,
/// a linearizable read's barrier). Without it `X-Raft-Index` shows the
/// applied index, which is what a stale read or an error reflects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RaftIndex(pub u64);

/// Attaches [`RaftIndex`] when there is one.
pub(crate) fn with_index(mut resp: Response, index: Option<u64>) -> Response {
    if let Some(i) = index {
        resp.extensions_mut().insert(RaftIndex(i));
    }
    resp
}

/// Stamps the node's Raft view on every response, read after the handler
/// ran so the headers describe the state the answer came from.
pub(crate) async fn raft_headers<B: ClusterOps>(
    State(st): State<AppState<B>>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    let view = st.backend.raft_view();
    let index = resp
        .extensions()
        .get::<RaftIndex>()
        .map_or(view.applied_index, |i| i.0);
    let h = resp.headers_mut();
    h.insert(
        X_RAFT_LEADER,
        HeaderValue::from_static(if view.is_leader { "true" } else { "false" }),
    );
    h.insert(
        X_RAFT_LEADER_ID,
        view.leader_id
            .map_or(HeaderValue::from_static(""), HeaderValue::from),
    );
    h.insert(X_RAFT_TERM, HeaderValue::from(view.term));
    h.insert(X_RAFT_INDEX, HeaderValue::from(index));
    h.insert(X_SERVED_BY, HeaderValue::from(view.node_id));
    resp
}

/// Counts every answer (including 403/404/413 produced by other layers)
/// under its route template.
pub(crate) async fn record_metrics<B: Send + Sync + 'static>(
    State(st): State<AppState<B>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    st.metrics.record(
        route.as_ref().map_or(UNMATCHED_ROUTE, |r| r.as_str()),
        method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// `?pretty` re-indents any JSON answer, errors included. Only requests
/// that ask pay for buffering the body.
pub(crate) async fn pretty(req: Request, next: Next) -> Response {
    let want = QueryParams::parse(req.uri().query()).flag("pretty");
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !want || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return GatewayError::Internal(format!("reading response: {e}")).into_response(),
    };
    let text = String::from_utf8_lossy(&bytes);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json::prettify(&text)))
}

/// Refuses external connections on every route except [`access::PUBLIC_ROUTES`]
/// and the public room routes (the room id is their secret).
pub(crate) async fn internal_only(req: Request, next: Next) -> Response {
    if access::is_public_route(req.uri().path())
        || crate::drift::is_public(req.method(), req.uri().path())
    {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if access::is_internal(peer, req.headers()) {
        next.run(req).await
    } else {
        GatewayError::Forbidden.into_response()
    }
}

/// Unknown routes. A `/kv/...` path that matched no route has an empty or
/// multi-segment key, which deserves a 400 naming the key rule, not a 404.
pub(crate) async fn fallback(uri: Uri) -> GatewayError {
    match uri.path().strip_prefix("/kv/") {
        Some("") => GatewayError::BadRequest("key must not be empty".into()),
        Some(_) => GatewayError::BadRequest(
            "key must be a single path segment (encode '/' in a key as %2F)".into(),
        ),
        None => GatewayError::NotFound(format!("no route for {}", uri.path())),
    }
}

/// The route exists but not with this method; axum's default has no body.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> GatewayError {
    GatewayError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
