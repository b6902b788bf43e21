//! Fan-out on this node: one subscription to the feed's room events, and
//! the sockets of each room this node holds. Every push applied here goes
//! to every socket of its room, in seq order (the feed's order). A socket
//! whose queue is full is closed with a reason — never skipped — and the
//! subscription itself never loses an entry: when it falls behind the live
//! buffer it resumes from the journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use raftmesh_proto::feed::{FeedEnd, FeedNext};
use raftmesh_proto::{Domain, Event, RoomEvent};
use tokio::sync::{mpsc, watch, Notify};

use super::wire;
use crate::seam::{Backend, FeedStream, SubscribeError};

/// What a socket's writer sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// A JSON message (shared by every socket of the room).
    Text(Arc<str>),
}

/// Why a socket is closed, as its close frame says.
#[derive(Clone, Debug)]
pub(crate) struct Closing {
    pub code: u16,
    pub reason: String,
}

/// The hub's handle on one socket.
pub(crate) struct Member {
    out: mpsc::Sender<Out>,
    kill: Arc<Kill>,
    /// Debug sockets get relays as pushes and, after a storing push, the
    /// key's whole stream (read by the socket itself).
    debug: bool,
}

/// Closes a socket from outside its tasks (its queue may be full).
#[derive(Default)]
pub(crate) struct Kill {
    why: Mutex<Option<Closing>>,
    notify: Notify,
}

impl Kill {
    pub(crate) fn close(&self, code: u16, reason: impl Into<String>) {
        let mut w = self.why.lock().expect("kill switch");
        if w.is_none() {
            *w = Some(Closing {
                code,
                reason: reason.into(),
            });
        }
        drop(w);
        self.notify.notify_one();
    }

    /// Resolves once [`Kill::close`] was called, with why.
    pub(crate) async fn closed(&self) -> Closing {
        loop {
            if let Some(c) = self.why.lock().expect("kill switch").clone() {
                return c;
            }
            self.notify.notified().await;
        }
    }
}

/// What a debug socket is told about a key after a storing push.
#[derive(Clone, Debug)]
pub(crate) struct Changed {
    pub key: String,
}

pub(crate) struct Hub {
    rooms: Mutex<HashMap<String, HashMap<u64, Member>>>,
    next_id: AtomicU64,
    /// Debug sockets' change notices, by socket id.
    debug_tx: Mutex<HashMap<u64, mpsc::UnboundedSender<Changed>>>,
    /// The last entry index delivered to every socket (a sender waits for
    /// its push's to be delivered before its `stream_size`).
    delivered: watch::Sender<u64>,
    started: Mutex<bool>,
}

/// Close codes: the room is gone; the socket fell behind; the node stops.
pub(crate) const CLOSE_ROOM_DELETED: u16 = 4404;
pub(crate) const CLOSE_TOO_SLOW: u16 = 4408;
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;

impl Default for Hub {
    fn default() -> Self {
        Hub {
            rooms: Mutex::default(),
            next_id: AtomicU64::new(1),
            debug_tx: Mutex::default(),
            delivered: watch::channel(0).0,
            started: Mutex::new(false),
        }
    }
}

impl Hub {
    /// Starts the fan-out the first time a socket joins (subscribing before
    /// the socket is registered, so nothing applied after it joins is
    /// missed).
    fn start<B: Backend>(self: &Arc<Self>, backend: &Arc<B>) -> Result<(), SubscribeError> {
        let mut started = self.started.lock().expect("hub start");
        if *started {
            return Ok(());
        }
        let sub = backend.subscribe(Domain::Room, None)?;
        *started = true;
        tokio::spawn(self.clone().run(backend.clone(), sub));
        Ok(())
    }

    /// Registers a socket of `room`; returns its id.
    pub(crate) fn join<B: Backend>(
        self: &Arc<Self>,
        backend: &Arc<B>,
        room: &str,
        out: mpsc::Sender<Out>,
        kill: Arc<Kill>,
        debug: Option<mpsc::UnboundedSender<Changed>>,
    ) -> Result<u64, SubscribeError> {
        self.start(backend)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = debug.clone() {
            self.debug_tx.lock().expect("hub").insert(id, tx);
        }
        self.rooms
            .lock()
            .expect("hub rooms")
            .entry(room.to_string())
            .or_default()
            .insert(
                id,
                Member {
                    out,
                    kill,
                    debug: debug.is_some(),
                },
            );
        Ok(id)
    }

    pub(crate) fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.lock().expect("hub rooms");
        if let Some(m) = rooms.get_mut(room) {
            m.remove(&id);
            if m.is_empty() {
                rooms.remove(room);
            }
        }
        self.debug_tx.lock().expect("hub").remove(&id);
    }

    /// Waits until entry `index` was delivered to this node's sockets, at
    /// most `within`.
    pub(crate) async fn delivered(&self, index: u64, within: std::time::Duration) {
        let mut rx = self.delivered.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|d| *d >= index)).await;
    }

    fn close_all(&self, code: u16, reason: &str) {
        let mut rooms = self.rooms.lock().expect("hub rooms");
        for (_, members) in rooms.drain() {
            for (_, m) in members {
                m.kill.close(code, reason);
            }
        }
    }

    fn deliver(&self, room: &str, msg: Arc<str>, changed: Option<&str>, relay: bool) {
        let mut rooms = self.rooms.lock().expect("hub rooms");
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        let debug_tx = self.debug_tx.lock().expect("hub");
        members.retain(|id, m| {
            if m.debug {
                // A debug socket sees relays as pushes and, for storing
                // pushes, re-reads the key's whole stream.
                if relay {
                    return queue(m, &msg);
                }
                if let (Some(key), Some(tx)) = (changed, debug_tx.get(id)) {
                    let _ = tx.send(Changed {
                        key: key.to_string(),
                    });
                }
                return true;
            }
            queue(m, &msg)
        });
    }

    async fn run<B: Backend>(self: Arc<Self>, backend: Arc<B>, mut sub: B::Stream) {
        loop {
            match sub.next().await {
                FeedNext::Entry(e) => {
                    for ev in &e.events {
                        let Event::Room(r) = ev else { continue };
                        match r {
                            RoomEvent::Pushed {
                                room,
                                key,
                                value,
                                seq,
                                action,
                            } => {
                                let msg: Arc<str> = wire::push_msg(key, value, *seq).into();
                                let relay = matches!(action, raftmesh_proto::PushAction::Relay);
                                self.deliver(room, msg, Some(key), relay);
                            }
                            RoomEvent::Compacted { room, key, .. } => {
                                // Nothing is delivered; debug sockets re-read.
                                let rooms = self.rooms.lock().expect("hub rooms");
                                if let Some(members) = rooms.get(room) {
                                    let debug_tx = self.debug_tx.lock().expect("hub");
                                    for (id, m) in members {
                                        if let (true, Some(tx)) = (m.debug, debug_tx.get(id)) {
                                            let _ = tx.send(Changed { key: key.clone() });
                                        }
                                    }
                                }
                            }
                            RoomEvent::Deleted { room } => {
                                let members = self.rooms.lock().expect("hub rooms").remove(room);
                                for (_, m) in members.into_iter().flatten() {
                                    m.kill.close(CLOSE_ROOM_DELETED, "the room was deleted");
                                }
                            }
                        }
                    }
                    self.delivered.send_replace(e.index);
                }
                FeedNext::End(FeedEnd::Lagged { last_index }) => {
                    // Behind the live buffer: go on from the journal.
                    match backend.subscribe(Domain::Room, Some(last_index + 1)) {
                        Ok(s) => sub = s,
                        Err(e) => {
                            tracing::warn!(
                                "room fan-out cannot resume at {}: {e:?}",
                                last_index + 1
                            );
                            match self.restart(&*backend) {
                                Some(s) => sub = s,
                                None => return self.stopped(),
                            }
                        }
                    }
                }
                FeedNext::End(FeedEnd::Compacted { .. }) => match self.restart(&*backend) {
                    Some(s) => sub = s,
                    None => return self.stopped(),
                },
                FeedNext::End(FeedEnd::Closed) | FeedNext::End(FeedEnd::Failed(_)) => {
                    return self.stopped();
                }
            }
        }
    }

    /// The fan-out missed entries it cannot replay: every socket is told to
    /// reconnect and resync, and the fan-out starts again from now.
    fn restart<B: Backend>(&self, backend: &B) -> Option<B::Stream> {
        self.close_all(
            CLOSE_TOO_SLOW,
            "this node fell behind the room's pushes; reconnect and get your keys again",
        );
        backend.subscribe(Domain::Room, None).ok()
    }

    fn stopped(&self) {
        self.close_all(CLOSE_GOING_AWAY, "the node is stopping");
        *self.started.lock().expect("hub start") = false;
    }
}

/// Queues `msg` for a socket; a full queue closes it (false: drop it).
fn queue(m: &Member, msg: &Arc<str>) -> bool {
    match m.out.try_send(Out::Text(msg.clone())) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            m.kill.close(
                CLOSE_TOO_SLOW,
                "this socket fell behind the room's pushes; reconnect and get your keys again",
            );
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
