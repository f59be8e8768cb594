//! The [`ClientFanout`] port on a socketioxide handle: room broadcasts and per-socket sends,
//! with a backlog for sockets whose send queue is full.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use socketioxide::extract::SocketRef;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use socketioxide::{BroadcastError, SendError, SocketError, SocketIo};

use super::backlog::{Backlogs, LaggingSocket, LatestByRoom, Pending, Pushed};
use super::settings::SocketIoSettings;
use crate::domain::Payload;
use crate::ports::{ClientFanout, EmitOptions, FanoutError};
use crate::telemetry::metrics::{
    FANOUT_BACKLOGGED, FANOUT_CONFLATED, FANOUT_DROPPED, LAGGING_SOCKETS, SLOW_DISCONNECTS,
};

/// The [`ClientFanout`] port on a socketioxide handle.
///
/// Every emit goes to each socket's own bounded send queue (`socketio.max_buffer` packets),
/// so a slow client never holds up the others. When a socket's queue is full, what it should
/// still get goes to its backlog: replies and snapshots in order, tickers conflated to the
/// latest per product; [`SocketIoFanout::run_drainer`] moves backlogs into the queues as
/// they free up, and a socket whose backlog overflows is disconnected (its client reconnects
/// and is hydrated again) instead of growing the process's memory.
#[derive(Clone)]
pub struct SocketIoFanout {
    io: SocketIo,
    backlogs: Arc<Backlogs>,
    latest: Arc<LatestByRoom>,
    /// Set when a broadcast found full queues: the next ticker goes socket by socket, which
    /// finds them (see [`Self::broadcast_latest`]).
    probe_pending: Arc<AtomicBool>,
    /// When (ms since `epoch`) the last socket-by-socket ticker ran.
    last_probe: Arc<AtomicU64>,
    epoch: Instant,
}

/// The room every lagging socket is in, so that fast broadcasts can skip them.
pub(super) const LAGGING_ROOM: &str = "flux:lagging";
/// At most one socket-by-socket ticker per this interval. Going socket by socket encodes the
/// event once per socket, so a socket that hovers at full cannot make every broadcast slow;
/// between probes a full socket just misses tickers (newer prices follow, and counted).
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// How often lagging sockets' backlogs are retried.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// Conflation keys (products) a lagging socket's backlog may hold.
const MAX_BACKLOG_KEYS: usize = 1024;

impl SocketIoFanout {
    pub fn new(io: SocketIo, settings: &SocketIoSettings) -> Self {
        Self {
            io,
            backlogs: Arc::new(Backlogs::new(settings.max_backlog, MAX_BACKLOG_KEYS)),
            latest: Arc::new(LatestByRoom::new(MAX_BACKLOG_KEYS)),
            probe_pending: Arc::new(AtomicBool::new(false)),
            last_probe: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    fn socket(&self, socket: &str) -> Result<SocketRef, FanoutError> {
        Sid::from_str(socket)
            .ok()
            .and_then(|sid| self.get_socket(sid))
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))
    }

    /// The default namespace, `None` once the server is closed. socketioxide's shorthands
    /// (`io.to`, `io.get_socket`, …) panic then; nothing here may use them.
    fn namespace(&self) -> Option<BroadcastOperators> {
        namespace(&self.io)
    }

    fn get_socket(&self, sid: Sid) -> Option<SocketRef> {
        self.namespace()?.get_socket(sid)
    }

    /// Sends to one socket, or queues in its backlog when it is behind. A socket found full
    /// while sending a conflatable message of `room` first gets the latest of every key of
    /// that room in its backlog (see [`LatestByRoom`]).
    fn deliver(
        &self,
        s: &SocketRef,
        room: Option<&str>,
        event: &str,
        payload: &Payload,
        key: Option<&str>,
        offset: Option<&Arc<str>>,
    ) {
        if !self.backlogs.is_lagging(s.id) {
            match send(s, event, payload, offset) {
                Ok(()) => return,
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {}
                Err(_) => return, // closed: the socket is going away
            }
            if let (Some(room), Some(key)) = (room, key) {
                let mut has_this = false;
                for missed in self.latest.of(room) {
                    has_this |= missed.key.as_deref() == Some(key);
                    if !self.backlog(s, missed) {
                        return;
                    }
                }
                // The room's latest already holds this message (it is recorded first).
                if has_this {
                    return;
                }
            }
        }
        let pending = Pending {
            event: event.to_owned(),
            payload: payload.clone(),
            key: key.map(str::to_owned),
            offset: offset.cloned(),
        };
        self.backlog(s, pending);
    }

    /// Queues `pending` in `s`'s backlog; disconnects `s` if that overflows. Returns whether
    /// `s` is still connected.
    fn backlog(&self, s: &SocketRef, pending: Pending) -> bool {
        let kind = if pending.key.is_some() {
            "latest"
        } else {
            "ordered"
        };
        match self.backlogs.push_for(s.id, pending, s) {
            Pushed::Queued => {
                metrics::counter!(FANOUT_BACKLOGGED, "kind" => kind).increment(1);
            }
            Pushed::Conflated => metrics::counter!(FANOUT_CONFLATED).increment(1),
            Pushed::Overflow => {
                self.too_slow(s.id);
                return false;
            }
        }
        true
    }

    /// Disconnects a socket whose backlog overflowed by closing its connection: its client
    /// reconnects and is hydrated again (a DISCONNECT packet would need room in its full
    /// queue, and would stop the official client for good).
    fn too_slow(&self, sid: Sid) {
        metrics::counter!(SLOW_DISCONNECTS).increment(1);
        tracing::warn!(socket = %sid, "client too slow: its backlog overflowed; disconnecting it");
        self.backlogs.remove(sid);
        if let Some(s) = self.get_socket(sid) {
            s.close_connection();
        }
    }

    fn to_room_each(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: Option<&str>,
        offset: Option<&Arc<str>>,
    ) -> Result<(), FanoutError> {
        let ns = self.namespace().ok_or(FanoutError::Closed)?;
        for s in ns.to(room.to_owned()).sockets() {
            self.deliver(&s, Some(room), event, payload, key, offset);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this ticker should go socket by socket: a broadcast found full queues, and
    /// the last probe is at least [`PROBE_INTERVAL`] old. Claims the probe.
    fn take_probe(&self) -> bool {
        if !self.probe_pending.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.now_ms();
        let last = self.last_probe.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PROBE_INTERVAL.as_millis() as u64 {
            return false;
        }
        // One caller wins the probe; concurrent broadcasts stay on the fast path.
        self.last_probe
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.probe_pending.swap(false, Ordering::Relaxed)
    }

    /// Tickers: one encode and one queue push per socket through socketioxide's broadcast,
    /// skipping lagging sockets, whose backlog gets the latest per product instead. A
    /// broadcast that finds full queues cannot say whose: the next ticker (at most one per
    /// [`PROBE_INTERVAL`]) then goes socket by socket, which finds them and makes them
    /// lagging. Only that one event is encoded per socket; a whole window of per-socket
    /// sends (the first design) cost every client seconds of latency when 100 stalled
    /// sockets filled up one after another (BENCHMARKS.md, "slow").
    async fn broadcast_latest(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: &str,
        offset: Option<&Arc<str>>,
    ) -> Result<(), FanoutError> {
        self.latest.record(room, event, payload, key, offset);
        if self.take_probe() {
            return self.to_room_each(room, event, payload, Some(key), offset);
        }
        let lagging = self.backlogs.lagging() > 0;
        // No lagging socket catches up (leaves the lagging room) until the ticker is in the
        // lagging backlogs: it would get it from neither.
        let _skipping_lagging = if lagging {
            Some(self.backlogs.skipping_lagging().await)
        } else {
            None
        };
        let op = self
            .namespace()
            .ok_or(FanoutError::Closed)?
            .to(room.to_owned());
        let op = if lagging { op.except(LAGGING_ROOM) } else { op };
        let sent = match offset {
            Some(offset) => op.emit(event, &(payload, &**offset)).await,
            None => op.emit(event, payload).await,
        };
        match sent {
            Ok(()) => {}
            Err(BroadcastError::Socket(errors)) => {
                let full = errors
                    .iter()
                    .filter(|e| matches!(e, SocketError::InternalChannelFull))
                    .count();
                if full > 0 {
                    metrics::counter!(FANOUT_DROPPED).increment(full as u64);
                    self.probe_pending.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => return Err(FanoutError::Transport(e.to_string())),
        }
        if lagging {
            // One pass over the lagging sockets' backlogs (they are in the lagging room, so
            // the broadcast skipped them): no socket lookup, nothing allocated per socket
            // that already has this key waiting.
            let pushed = self
                .backlogs
                .push_latest_to_room(room, event, payload, key, offset);
            if pushed.queued > 0 {
                metrics::counter!(FANOUT_BACKLOGGED, "kind" => "latest")
                    .increment(pushed.queued as u64);
            }
            if pushed.conflated > 0 {
                metrics::counter!(FANOUT_CONFLATED).increment(pushed.conflated as u64);
            }
            for sid in pushed.overflowed {
                self.too_slow(sid);
            }
        }
        Ok(())
    }

    /// Moves lagging sockets' backlogs into their send queues as room frees up, until `stop`.
    pub async fn run_drainer(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What the gauge says (declared at 0), written only when it changes: not every 20 ms
        // by an idle gateway (in the tests' one process, that overwrote another gateway's
        // lagging count, and one test failed in a full run).
        let mut exported = 0;
        let mut export = |lagging: usize| {
            if lagging != exported {
                metrics::gauge!(LAGGING_SOCKETS).set(lagging as f64);
                exported = lagging;
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.backlogs.lagging() == 0 {
                // The last lagging socket may have gone elsewhere (too slow, disconnected).
                export(0);
                continue;
            }
            let mut drained = Vec::new();
            for sid in self.backlogs.sockets() {
                match self.get_socket(sid) {
                    Some(s) => {
                        self.backlogs.refresh_rooms(sid, &s);
                        let send =
                            |p: &Pending| send(&s, &p.event, &p.payload, p.offset.as_ref()).is_ok();
                        if self.backlogs.drain(sid, send).empty {
                            drained.push(s);
                        }
                    }
                    None => self.backlogs.remove(sid),
                }
            }
            // A socket that caught up leaves the lagging room, or the fast broadcasts would
            // skip it for good once it is not lagging.
            for s in drained {
                let send = |p: &Pending| send(&s, &p.event, &p.payload, p.offset.as_ref()).is_ok();
                self.backlogs
                    .catch_up(s.id, send, || s.leave(LAGGING_ROOM))
                    .await;
            }
            export(self.backlogs.lagging());
        }
    }
}

#[async_trait]
impl ClientFanout for SocketIoFanout {
    async fn to_room<'a>(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError> {
        match options.latest {
            Some(key) => {
                self.broadcast_latest(room, event, payload, key, options.offset)
                    .await
            }
            None => self.to_room_each(room, event, payload, None, options.offset),
        }
    }

    async fn to_socket<'a>(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError> {
        let s = self.socket(socket)?;
        self.deliver(&s, None, event, payload, options.latest, options.offset);
        Ok(())
    }

    async fn join(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError> {
        let s = self.socket(socket)?;
        if !join_open(&s, rooms.to_vec()) {
            return Err(FanoutError::UnknownSocket(socket.to_owned()));
        }
        // A lagging socket's backlog gets the tickers of the rooms it is in (broadcasts skip
        // it): its rooms are read again when they change, not only at the drainer's next pass
        // (a recovered socket lags from its replay, then rejoins its rooms: found by review).
        self.backlogs.refresh_rooms(s.id, &s);
        Ok(())
    }

    async fn leave(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError> {
        let s = self.socket(socket)?;
        s.leave(rooms.to_vec());
        self.backlogs.refresh_rooms(s.id, &s);
        Ok(())
    }

    async fn rooms_of(&self, socket: &str) -> Result<Vec<String>, FanoutError> {
        let s = self.socket(socket)?;
        let own = s.id.to_string();
        Ok(s.rooms()
            .into_iter()
            .map(|r| r.to_string())
            .filter(|r| *r != own && r != LAGGING_ROOM)
            .collect())
    }
}

/// Adds `s` to `rooms` unless it closed since it was looked up: `false` then, and it is in
/// none of them. A close that emptied its rooms before this join would otherwise leave the
/// dead socket in them for good (found by review: a location update as the connection
/// drops). `close` clears the flag before it takes the socket out of its rooms, so a join
/// after that sees it cleared.
fn join_open(s: &SocketRef, rooms: Vec<String>) -> bool {
    s.join(rooms);
    if s.connected() {
        return true;
    }
    s.leave_all();
    false
}

/// Emits `event` to one socket, with the recovery `offset` as its last argument when given.
fn send(
    s: &SocketRef,
    event: &str,
    payload: &Payload,
    offset: Option<&Arc<str>>,
) -> Result<(), SendError> {
    match offset {
        Some(offset) => s.emit(event, &(payload, &**offset)),
        None => s.emit(event, payload),
    }
}

/// A socket's rooms as plain names.
fn room_names(s: &SocketRef) -> Vec<String> {
    s.rooms().into_iter().map(|r| r.to_string()).collect()
}

impl LaggingSocket for SocketRef {
    fn join_lagging_room(&self) {
        // A socket closing meanwhile leaves the lagging room as it leaves the others.
        join_open(self, vec![LAGGING_ROOM.to_owned()]);
    }

    fn room_names(&self) -> Vec<String> {
        room_names(self)
    }
}

/// The default namespace of `io`, `None` once the server is closed.
pub(super) fn namespace(io: &SocketIo) -> Option<BroadcastOperators> {
    io.of("/")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use socketioxide::SocketIo;
    use socketioxide::extract::SocketRef;

    use super::super::backlog::LaggingSocket;
    use super::join_open;

    #[tokio::test]
    async fn a_socket_closed_after_its_lookup_is_left_in_no_room() {
        let (_layer, io) = SocketIo::new_layer();
        let connected: Arc<Mutex<Option<SocketRef>>> = Arc::default();
        let slot = connected.clone();
        io.ns("/", move |s: SocketRef| {
            let slot = slot.clone();
            async move {
                *slot.lock().unwrap() = Some(s);
            }
        });
        let (client, _from_server) = io.new_dummy_sock("/", ()).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let s = loop {
            if let Some(s) = connected.lock().unwrap().clone() {
                break s;
            }
            assert!(tokio::time::Instant::now() < deadline, "never connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert!(join_open(&s, vec!["crypto.global".into()]));
        // The client goes; the socket is closed and taken out of its rooms. `s` is what a
        // location update looked up just before.
        client.send(engineioxide::Packet::Close).await.unwrap();
        while io.of("/").is_some_and(|ns| !ns.sockets().is_empty()) {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!join_open(
            &s,
            vec!["crypto.global".into(), "weather.Pune".into()]
        ));
        // A broadcast found its queue full just before: it moves it to the lagging room.
        s.join_lagging_room();
        // The adapter's own record of the socket: the namespace's listing shows only the rooms
        // of connected sockets, so it could not tell.
        let rooms = s.rooms();
        assert!(rooms.is_empty(), "a closed socket kept rooms: {rooms:?}");
    }
}
