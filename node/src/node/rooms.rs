//! Idle room retention: the leader walks the rooms in pages and proposes
//! an expiry for each room with no push for the cluster's `idle_ttl_ms`.
//! Apply deletes a room only if its last push is still the one seen here,
//! so a push racing the proposal keeps the room; every node agrees because
//! the expiry is an entry, not a local timer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;
use raftmesh_gateway::seam::Replicate;
use raftmesh_proto::{Cmd, RoomCmd};
use tokio::sync::watch;

use super::Node;

/// How often the leader looks for idle rooms.
const EVERY: Duration = Duration::from_secs(5);
/// Rooms read per look, and expiries proposed at most per look: the pass
/// is spread over ticks so one never holds the leader's write path long.
const PAGE: usize = 1000;
const MAX_EXPIRIES: usize = 100;

impl Node {
    pub async fn expire_idle_rooms(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cursor: Option<String> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if self.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            cursor = self.expire_page(cursor).await;
        }
    }

    /// One page of the pass; returns where the next one starts.
    async fn expire_page(&self, cursor: Option<String>) -> Option<String> {
        let Ok(limits) = self.reader.room_limits() else {
            return cursor;
        };
        if limits.idle_ttl_ms == 0 {
            return None;
        }
        let (r, after) = (self.reader.clone(), cursor.clone());
        let page =
            match tokio::task::spawn_blocking(move || r.rooms_page(after.as_deref(), PAGE)).await {
                Ok(Ok(p)) => p,
                _ => return cursor,
            };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let next = if page.len() < PAGE {
            None
        } else {
            page.last().map(|(id, _)| id.clone())
        };
        let idle = page
            .into_iter()
            .filter(|(_, v)| v.last_push_ms.saturating_add(limits.idle_ttl_ms) <= now)
            .take(MAX_EXPIRIES);
        for (room, v) in idle {
            let cmd = Cmd::Room(RoomCmd::Expire {
                room: room.clone(),
                last_push_ms: v.last_push_ms,
            });
            if let Err(e) = self.write(cmd).await {
                // Not retried here: the next pass proposes it again if the
                // room is still idle (an expiry is safe to repeat).
                tracing::debug!("expiring idle room {room}: {e}");
                return cursor;
            }
        }
        next
    }
}
