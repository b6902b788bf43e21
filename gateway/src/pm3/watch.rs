//! `GET /watch/kv?prefix=P&from=REV`: KV changes as a stream of JSON lines,
//! the retained history from `REV` first, then live (spec `pm3.md`, "KV
//! watch"). The stream is pulled as the client reads, so a slow client slows
//! only its own journal reads; it ends with one final `{"error": …,
//! "revision": R}` line saying why and that every change up to `R` was sent,
//! so the client resumes with `from = R + 1`, here or on another node.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use raftmesh_proto::feed::{AppliedEntry, FeedEnd, FeedNext};
use raftmesh_proto::{Domain, Event, KvEvent};

use crate::error::GatewayError;
use crate::json::raw_or_null;
use crate::query::QueryParams;
use crate::seam::{ClusterOps, FeedStream, Subscribe, SubscribeError};
use crate::AppState;

pub(crate) async fn watch_kv<B: Subscribe + ClusterOps>(
    State(st): State<AppState<B>>,
    q: QueryParams,
) -> Result<Response, GatewayError> {
    let prefix = q.get("prefix").unwrap_or("").to_string();
    let from = match q.get("from") {
        None => None,
        Some(s) => Some(s.parse::<u64>().ok().filter(|&f| f >= 1).ok_or_else(|| {
            GatewayError::BadRequest(format!("from must be a revision (1 or more); got {s:?}"))
        })?),
    };
    let sub = st
        .backend
        .subscribe(Domain::Kv, from)
        .map_err(|e| match e {
            SubscribeError::Compacted { from, oldest } => GatewayError::Gone {
                message: format!(
                    "revision {from} is older than the retained history, which starts at {oldest}"
                ),
                oldest,
            },
            SubscribeError::Cluster(c) => GatewayError::Cluster(c),
        })?;
    let watch = Watch {
        sub,
        prefix,
        backend: st.backend.clone(),
        stopping: st.stopping.clone(),
        leaderless: st.cfg.watch_leaderless,
        leaderless_since: None,
        done: false,
    };
    let body = Body::from_stream(futures::stream::unfold(watch, |mut w| async move {
        w.step().await.map(|chunk| (Ok::<_, Infallible>(chunk), w))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/stream+json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

struct Watch<B: Subscribe> {
    sub: B::Stream,
    prefix: String,
    backend: std::sync::Arc<B>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// How long without a leader ends the watch.
    leaderless: Duration,
    leaderless_since: Option<Instant>,
    /// The final line was sent.
    done: bool,
}

impl<B: Subscribe + ClusterOps> Watch<B> {
    /// The next chunk: one entry's lines, or the final line; `None` after it.
    async fn step(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        // Checked about four times per timeout, so a leaderless watch ends
        // within 1.25 timeouts.
        let mut tick = tokio::time::interval((self.leaderless / 4).max(Duration::from_millis(25)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = crate::stopping(self.stopping.clone()) => {
                    return Some(self.end("node shutting down", None));
                }
                next = self.sub.next() => match next {
                    FeedNext::Entry(e) => {
                        let lines = lines(&e, &self.prefix);
                        if !lines.is_empty() {
                            return Some(Bytes::from(lines));
                        }
                    }
                    FeedNext::End(FeedEnd::Lagged { last_index }) => {
                        return Some(self.end("lagged", Some(last_index)));
                    }
                    FeedNext::End(FeedEnd::Compacted { oldest }) => {
                        let why = format!("compacted: history now starts at {oldest}");
                        return Some(self.end(&why, None));
                    }
                    FeedNext::End(FeedEnd::Closed) => {
                        return Some(self.end("node shutting down", None));
                    }
                    FeedNext::End(FeedEnd::Failed(why)) => return Some(self.end(&why, None)),
                },
                _ = tick.tick() => {
                    if self.backend.raft_view().leader_id.is_some() {
                        self.leaderless_since = None;
                    } else {
                        let since = *self.leaderless_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.leaderless {
                            return Some(self.end("no leader", None));
                        }
                    }
                }
            }
        }
    }

    /// The final line: why, and the last revision wholly sent.
    fn end(&mut self, why: &str, last: Option<u64>) -> Bytes {
        self.done = true;
        let revision = last.unwrap_or_else(|| self.sub.next_index().saturating_sub(1));
        let line = serde_json::json!({ "error": why, "revision": revision });
        Bytes::from(format!("{line}\n"))
    }
}

/// The entry's changes under `prefix`, one JSON line each; values are
/// stored compact, so they are spliced in as they are.
fn lines(e: &AppliedEntry, prefix: &str) -> String {
    let mut out = String::new();
    for ev in &e.events {
        let Event::Kv(kv) = ev else { continue };
        if !kv.key().starts_with(prefix) {
            continue;
        }
        let key = serde_json::to_string(kv.key()).expect("a string serializes");
        match kv {
            KvEvent::Put { value, .. } => out.push_str(&format!(
                "{{\"revision\":{},\"key\":{key},\"value\":{}}}\n",
                e.index,
                raw_or_null(value)
            )),
            KvEvent::Deleted { .. } => out.push_str(&format!(
                "{{\"revision\":{},\"key\":{key},\"deleted\":true}}\n",
                e.index
            )),
        }
    }
    out
}
