//! Per-socket backlogs for sockets that fall behind (issue 5): when a socket's send queue is
//! full, what it should still get waits here instead of being dropped. Replies and snapshots
//! wait in order (bounded: a socket that stops reading is disconnected before it can grow the
//! process's memory); tickers are conflated by product, so a lagging socket gets the latest
//! price per product, never a growing queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use socketioxide::socket::Sid;

use crate::domain::Payload;

/// A socket as its backlog sees it. The backlogs keep "has a backlog" and "is in the lagging
/// room" one state: they put the socket in the room under the same lock that gives it a
/// backlog, as [`Backlogs::catch_up`] takes it out under the lock that removes it. Joined
/// outside that lock, a catch-up in between could leave a socket in the lagging room with no
/// backlog, skipped by every ticker broadcast for the rest of its connection (found by
/// review).
pub(crate) trait LaggingSocket {
    /// Puts the socket in the lagging room: broadcasts skip it from then on.
    fn join_lagging_room(&self);
    /// The rooms the socket is in now.
    fn room_names(&self) -> Vec<String>;
}

/// One message waiting for a lagging socket.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub event: String,
    pub payload: Payload,
    /// The conflation key (a product id), if newer messages with the same key replace it.
    pub key: Option<String>,
    /// The recovery offset sent as the event's last argument (room events, D26).
    pub offset: Option<Arc<str>>,
}

impl Pending {
    /// The latest message of `key`.
    fn latest(event: &str, payload: &Payload, key: &str, offset: Option<&Arc<str>>) -> Self {
        Self {
            event: event.to_owned(),
            payload: payload.clone(),
            key: Some(key.to_owned()),
            offset: offset.cloned(),
        }
    }

    /// Becomes a newer message of the same key, in place (the event name is reused when it
    /// is the same: nothing allocated).
    fn supersede(&mut self, event: &str, payload: &Payload, offset: Option<&Arc<str>>) {
        self.payload = payload.clone();
        self.offset = offset.cloned();
        if self.event != event {
            event.clone_into(&mut self.event);
        }
    }
}

#[derive(Default)]
struct Backlog {
    /// Replies and snapshots, in order; never conflated.
    urgent: VecDeque<Pending>,
    /// Conflatable messages, the latest per key, in first-arrival order.
    latest: VecDeque<Pending>,
    /// The socket's rooms when it began lagging, refreshed by the drainer: a broadcast
    /// finds the lagging sockets of its room here, without a lookup per socket.
    rooms: Vec<String>,
}

impl Backlog {
    /// Sends through `send`, urgent first, then the latest per key, until it refuses one.
    fn drain(&mut self, mut send: impl FnMut(&Pending) -> bool) -> Drained {
        let mut sent = 0;
        while let Some(next) = self.urgent.front() {
            if !send(next) {
                return Drained { sent, empty: false };
            }
            self.urgent.pop_front();
            sent += 1;
        }
        while let Some(next) = self.latest.front() {
            if !send(next) {
                return Drained { sent, empty: false };
            }
            self.latest.pop_front();
            sent += 1;
        }
        Drained { sent, empty: true }
    }

    /// The latest `key` message is now `event` with `payload`: it replaces the one held for
    /// that key in place (nothing allocated), or is added if under `max_keys`.
    fn put_latest(
        &mut self,
        event: &str,
        payload: &Payload,
        key: &str,
        offset: Option<&Arc<str>>,
        max_keys: usize,
    ) -> Pushed {
        if let Some(slot) = self
            .latest
            .iter_mut()
            .find(|p| p.key.as_deref() == Some(key))
        {
            slot.supersede(event, payload, offset);
            return Pushed::Conflated;
        }
        if self.latest.len() >= max_keys {
            return Pushed::Overflow;
        }
        self.latest
            .push_back(Pending::latest(event, payload, key, offset));
        Pushed::Queued
    }
}

/// What [`Backlogs::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// An older message with the same key was replaced.
    Conflated,
    /// The socket's backlog is over its bound: the socket must be disconnected.
    Overflow,
}

/// What [`Backlogs::drain`] did: packets sent, and whether the backlog is empty.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    pub sent: usize,
    pub empty: bool,
}

/// What [`Backlogs::push_latest_to_room`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RoomPush {
    pub queued: usize,
    pub conflated: usize,
    /// Sockets whose backlog is over its bound: they must be disconnected.
    pub overflowed: Vec<Sid>,
}

/// The backlogs of every lagging socket.
pub(crate) struct Backlogs {
    map: Mutex<HashMap<Sid, Backlog>>, // std Mutex: never held across an .await
    lagging: AtomicUsize,
    max_urgent: usize,
    max_keys: usize,
    /// Held shared by a broadcast that skips the lagging sockets, until it has pushed to
    /// their backlogs ([`skipping_lagging`](Self::skipping_lagging)); exclusively by a socket
    /// catching up ([`catch_up`](Self::catch_up)). A socket that stopped lagging in between
    /// would get that event from neither.
    gate: tokio::sync::RwLock<()>,
}

impl Backlogs {
    pub fn new(max_urgent: usize, max_keys: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            lagging: AtomicUsize::new(0),
            max_urgent,
            max_keys,
            gate: tokio::sync::RwLock::new(()),
        }
    }

    /// Held by a broadcast that skips the lagging sockets from before it reads the room to
    /// after its [`push_latest_to_room`](Self::push_latest_to_room).
    pub async fn skipping_lagging(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// How many sockets have a backlog now (cheap; checked before any lookup).
    pub fn lagging(&self) -> usize {
        self.lagging.load(Ordering::Relaxed)
    }

    pub fn is_lagging(&self, sid: Sid) -> bool {
        self.lagging() > 0 && self.lock().contains_key(&sid)
    }

    /// Queues `message` for `sid` (in no room), conflating by key.
    #[cfg(test)]
    pub fn push(&self, sid: Sid, message: Pending) -> Pushed {
        self.push_for(sid, message, &tests::InRooms::default())
    }

    /// Queues `message` for `socket` (`sid`), conflating by key. When this makes the socket
    /// lagging, it joins the lagging room under the lock ([`LaggingSocket`]).
    pub fn push_for(&self, sid: Sid, message: Pending, socket: &impl LaggingSocket) -> Pushed {
        let mut map = self.lock();
        let backlog = map.entry(sid).or_insert_with(|| {
            self.lagging.fetch_add(1, Ordering::Relaxed);
            socket.join_lagging_room();
            Backlog {
                rooms: socket.room_names(),
                ..Backlog::default()
            }
        });
        match &message.key {
            Some(key) => backlog.put_latest(
                &message.event,
                &message.payload,
                key,
                message.offset.as_ref(),
                self.max_keys,
            ),
            None => {
                if backlog.urgent.len() >= self.max_urgent {
                    return Pushed::Overflow;
                }
                backlog.urgent.push_back(message);
                Pushed::Queued
            }
        }
    }

    /// The latest `key` message of `room` is `payload` for every lagging socket in `room`:
    /// one lock for all of them, nothing allocated for a key a socket already has.
    pub fn push_latest_to_room(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: &str,
        offset: Option<&Arc<str>>,
    ) -> RoomPush {
        let mut done = RoomPush::default();
        let mut map = self.lock();
        for (sid, backlog) in map.iter_mut() {
            if !backlog.rooms.iter().any(|r| r == room) {
                continue;
            }
            match backlog.put_latest(event, payload, key, offset, self.max_keys) {
                Pushed::Queued => done.queued += 1,
                Pushed::Conflated => done.conflated += 1,
                Pushed::Overflow => done.overflowed.push(*sid),
            }
        }
        done
    }

    /// Reads the rooms of a lagging socket again (they change if it joins or leaves one),
    /// under the lock: two refreshes cannot write their readings in the other order (the
    /// drainer's older one over a join's newer one, found by review).
    /// Nothing to do, and no lock taken, while no socket lags.
    pub fn refresh_rooms(&self, sid: Sid, socket: &impl LaggingSocket) {
        if self.lagging() == 0 {
            return;
        }
        if let Some(backlog) = self.lock().get_mut(&sid) {
            backlog.rooms = socket.room_names();
        }
    }

    /// The sockets with a backlog.
    pub fn sockets(&self) -> Vec<Sid> {
        self.lock().keys().copied().collect()
    }

    /// Sends `sid`'s backlog through `send` (urgent first, then the latest per key) until
    /// `send` says the socket is full again (`false`). Returns how many were sent and whether
    /// the backlog is now empty; the socket stays lagging until [`catch_up`](Self::catch_up).
    pub fn drain(&self, sid: Sid, send: impl FnMut(&Pending) -> bool) -> Drained {
        match self.lock().get_mut(&sid) {
            Some(backlog) => backlog.drain(send),
            None => Drained::default(),
        }
    }

    /// Once no broadcast that skips the lagging sockets is under way, sends what `sid`'s
    /// backlog took meanwhile through `send`, as [`drain`](Self::drain); if that empties it,
    /// `caught_up` runs (under the lock, so before any later push can see the socket as not
    /// lagging) and the socket is no longer lagging. Returns whether it caught up.
    pub async fn catch_up(
        &self,
        sid: Sid,
        send: impl FnMut(&Pending) -> bool,
        caught_up: impl FnOnce(),
    ) -> bool {
        let _no_broadcast_between = self.gate.write().await;
        let mut map = self.lock();
        let Some(backlog) = map.get_mut(&sid) else {
            return false;
        };
        if !backlog.drain(send).empty {
            return false;
        }
        caught_up();
        map.remove(&sid);
        self.lagging.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Forgets a socket (disconnected).
    pub fn remove(&self, sid: Sid) {
        if self.lock().remove(&sid).is_some() {
            self.lagging.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, Backlog>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The latest conflatable message broadcast per room and key. A broadcast that finds a
/// socket's queue full cannot say whose it is, so that socket misses the message until a
/// later send finds it; when it does, its backlog is seeded from here, so that it still ends
/// up with the latest message of every key, including the ones it missed.
pub(crate) struct LatestByRoom {
    map: Mutex<HashMap<String, HashMap<String, Pending>>>, // std Mutex: never held across an .await
    max_keys: usize,
}

impl LatestByRoom {
    pub fn new(max_keys: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_keys,
        }
    }

    /// Remembers `payload` as the latest of `key` in `room` (beyond `max_keys` keys per room,
    /// new keys are not remembered).
    pub fn record(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: &str,
        offset: Option<&Arc<str>>,
    ) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let keys = match map.get_mut(room) {
            Some(keys) => keys,
            None => map.entry(room.to_owned()).or_default(),
        };
        if let Some(slot) = keys.get_mut(key) {
            slot.supersede(event, payload, offset);
        } else if keys.len() < self.max_keys {
            keys.insert(key.to_owned(), Pending::latest(event, payload, key, offset));
        }
    }

    /// The latest message of every key remembered for `room`.
    pub fn of(&self, room: &str) -> Vec<Pending> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(room)
            .map(|keys| keys.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    /// A socket in `0`'s rooms; joining the lagging room adds it, and `on_join` runs then.
    #[derive(Default)]
    pub(super) struct InRooms(pub Vec<String>, pub Option<Box<dyn Fn() + Send + Sync>>);

    impl LaggingSocket for InRooms {
        fn join_lagging_room(&self) {
            if let Some(on_join) = &self.1 {
                on_join();
            }
        }
        fn room_names(&self) -> Vec<String> {
            self.0.clone()
        }
    }

    fn in_rooms(rooms: &[&str]) -> InRooms {
        InRooms(rooms.iter().map(|r| (*r).to_owned()).collect(), None)
    }

    fn msg(event: &str, key: Option<&str>, n: u32) -> Pending {
        Pending {
            event: event.into(),
            payload: Payload::new(&n),
            key: key.map(str::to_owned),
            offset: None,
        }
    }

    #[test]
    fn tickers_are_conflated_per_key_and_replies_kept_in_order() {
        let b = Backlogs::new(8, 8);
        let sid = Sid::new();
        assert_eq!(b.push(sid, msg("t", Some("BTC"), 1)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("t", Some("ETH"), 2)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("t", Some("BTC"), 3)), Pushed::Conflated);
        assert_eq!(b.push(sid, msg("r", None, 4)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("r", None, 5)), Pushed::Queued);
        assert_eq!(b.lagging(), 1);
        let mut sent = Vec::new();
        let drained = b.drain(sid, |p| {
            sent.push(p.payload.as_str().to_owned());
            true
        });
        assert_eq!(
            drained,
            Drained {
                sent: 4,
                empty: true
            }
        );
        assert_eq!(b.lagging(), 1, "lagging until it catches up");
        let mut caught_up = false;
        let caught = b.catch_up(sid, |_| true, || caught_up = true);
        assert!(caught.now_or_never().unwrap());
        assert!(caught_up);
        // Replies first, in order; then the latest price per product, in first-arrival order.
        assert_eq!(sent, ["4", "5", "3", "2"]);
        assert_eq!(b.lagging(), 0);
        assert!(!b.is_lagging(sid));
    }

    #[test]
    fn a_socket_joins_the_lagging_room_once_under_the_lock_that_makes_its_backlog() {
        let b = Arc::new(Backlogs::new(8, 8));
        let sid = Sid::new();
        let joins = Arc::new(Mutex::new(Vec::new()));
        let on_join = {
            let (b, joins) = (Arc::clone(&b), Arc::clone(&joins));
            move || joins.lock().unwrap().push(b.map.try_lock().is_err())
        };
        let socket = InRooms(vec!["crypto".to_owned()], Some(Box::new(on_join)));
        assert_eq!(b.push_for(sid, msg("r", None, 1), &socket), Pushed::Queued);
        assert_eq!(b.push_for(sid, msg("r", None, 2), &socket), Pushed::Queued);
        assert_eq!(
            *joins.lock().unwrap(),
            [true],
            "one join, with the lock held"
        );
    }

    #[test]
    fn a_catch_up_cannot_come_between_becoming_lagging_and_joining_the_lagging_room() {
        let b = Arc::new(Backlogs::new(8, 8));
        let sid = Sid::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (in_hook, hook_entered) = std::sync::mpsc::channel();
        let pusher = {
            let (b, log) = (Arc::clone(&b), Arc::clone(&log));
            std::thread::spawn(move || {
                let joining = move || {
                    in_hook.send(()).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    log.lock().unwrap().push("joined");
                };
                b.push_for(
                    sid,
                    msg("r", None, 1),
                    &InRooms(Vec::new(), Some(Box::new(joining))),
                )
            })
        };
        hook_entered.recv().unwrap();
        let left = || log.lock().unwrap().push("left");
        let caught_up = futures::executor::block_on(b.catch_up(sid, |_| true, left));
        assert_eq!(pusher.join().unwrap(), Pushed::Queued);
        assert!(caught_up, "the catch-up found the backlog the push made");
        assert_eq!(*log.lock().unwrap(), ["joined", "left"]);
        assert!(!b.is_lagging(sid));
    }

    #[test]
    fn a_full_socket_keeps_the_rest_of_its_backlog() {
        let b = Backlogs::new(8, 8);
        let sid = Sid::new();
        for n in 0..3 {
            b.push(sid, msg("r", None, n));
        }
        let mut budget = 2;
        let drained = b.drain(sid, |_| {
            budget -= 1;
            budget >= 0
        });
        assert_eq!(
            drained,
            Drained {
                sent: 2,
                empty: false
            }
        );
        let catch_up = |b: &Backlogs| b.catch_up(sid, |_| false, || {}).now_or_never().unwrap();
        assert!(!catch_up(&b), "not caught up while full");
        assert!(b.is_lagging(sid));
        assert_eq!(
            b.drain(sid, |_| true),
            Drained {
                sent: 1,
                empty: true
            }
        );
        b.push(sid, msg("r", None, 3)); // pushed since: sent first, or it stays lagging
        assert!(!catch_up(&b), "not caught up with a packet it cannot send");
        let caught = b.catch_up(sid, |_| true, || {}).now_or_never().unwrap();
        assert!(caught);
        assert!(!b.is_lagging(sid));
    }

    /// A socket that drained its backlog during a broadcast that skipped it (it was lagging)
    /// catches up only once that broadcast has pushed to the backlogs, and is sent what it
    /// pushed first. Caught up in between, it would get the event from neither.
    #[tokio::test]
    async fn a_socket_catches_up_only_between_broadcasts_that_skip_it() {
        let b = Arc::new(Backlogs::new(8, 8));
        let sid = Sid::new();
        b.push_for(sid, msg("r", None, 0), &in_rooms(&["crypto"]));
        assert!(b.drain(sid, |_| true).empty);

        let broadcast = b.skipping_lagging().await;
        let catch_up = tokio::spawn({
            let b = b.clone();
            async move {
                let mut sent = Vec::new();
                let caught = b.catch_up(
                    sid,
                    |p| {
                        sent.push(p.payload.as_str().to_owned());
                        true
                    },
                    || {},
                );
                (caught.await, sent)
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!catch_up.is_finished(), "waits for the broadcast");
        let pushed = b.push_latest_to_room("crypto", "t", &Payload::new(&1), "BTC", None);
        assert_eq!(
            pushed.queued, 1,
            "the lagging socket's backlog took the event"
        );
        drop(broadcast);
        let (caught, sent) = catch_up.await.unwrap();
        assert!(caught);
        assert_eq!(sent, ["1"], "the event, sent before it caught up");
        assert!(!b.is_lagging(sid));
    }

    #[test]
    fn the_latest_per_room_and_key_is_remembered_within_bounds() {
        let latest = LatestByRoom::new(2);
        let p = |n: u32| Payload::new(&n);
        latest.record("crypto", "t", &p(1), "BTC", None);
        latest.record("crypto", "t", &p(2), "ETH", None);
        latest.record("crypto", "t", &p(3), "BTC", None);
        latest.record("crypto", "t", &p(4), "SOL", None); // a third key: over the bound
        latest.record("other", "t", &p(5), "BTC", None);
        let mut got: Vec<(String, String)> = latest
            .of("crypto")
            .into_iter()
            .map(|m| (m.key.unwrap(), m.payload.as_str().to_owned()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [("BTC".into(), "3".into()), ("ETH".into(), "2".into())]
        );
        assert_eq!(latest.of("other").len(), 1);
        assert!(latest.of("nobody").is_empty());
    }

    #[test]
    fn a_room_push_reaches_the_lagging_sockets_of_that_room_only() {
        let b = Backlogs::new(8, 2);
        let (in_room, elsewhere, moved) = (Sid::new(), Sid::new(), Sid::new());
        b.push_for(in_room, msg("r", None, 0), &in_rooms(&["crypto", "news"]));
        b.push_for(elsewhere, msg("r", None, 0), &in_rooms(&["news"]));
        b.push_for(moved, msg("r", None, 0), &in_rooms(&["news"]));
        b.refresh_rooms(moved, &in_rooms(&["crypto"]));
        let p = |n: u32| Payload::new(&n);
        let first = b.push_latest_to_room("crypto", "t", &p(1), "BTC", None);
        assert_eq!((first.queued, first.conflated), (2, 0));
        let second = b.push_latest_to_room("crypto", "t", &p(2), "BTC", None);
        assert_eq!((second.queued, second.conflated), (0, 2));
        b.push_latest_to_room("crypto", "t", &p(3), "ETH", None);
        // A third key is over the bound of two: those sockets must go.
        let third = b.push_latest_to_room("crypto", "t", &p(4), "SOL", None);
        let mut over = third.overflowed.clone();
        over.sort();
        let mut expected = vec![in_room, moved];
        expected.sort();
        assert_eq!(over, expected);
        let drained = |sid| {
            let mut sent = Vec::new();
            b.drain(sid, |m| {
                sent.push(m.payload.as_str().to_owned());
                true
            });
            sent
        };
        assert_eq!(drained(in_room), ["0", "2", "3"]);
        assert_eq!(drained(elsewhere), ["0"]);
    }

    #[test]
    fn backlogs_are_bounded() {
        let b = Backlogs::new(2, 2);
        let sid = Sid::new();
        assert_eq!(b.push(sid, msg("r", None, 1)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("r", None, 2)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("r", None, 3)), Pushed::Overflow);
        assert_eq!(b.push(sid, msg("t", Some("a"), 1)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("t", Some("b"), 1)), Pushed::Queued);
        assert_eq!(b.push(sid, msg("t", Some("c"), 1)), Pushed::Overflow);
        assert_eq!(b.push(sid, msg("t", Some("a"), 2)), Pushed::Conflated);
        b.remove(sid);
        assert_eq!(b.lagging(), 0);
    }
}
