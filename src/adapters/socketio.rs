//! The Socket.IO side, on socketioxide: the `ClientFanout` port over a `SocketIo` handle, and
//! the inbound handlers that turn client events into calls on the client service.
//!
//! Per socket: the identity resolved at the handshake (never rejected, D1, unless
//! `auth.token` verification is on, D25), a token-bucket rate limit on client events (D10),
//! and `session:init` as the first event.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Once};

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Sid};
use socketioxide::{SocketIo, TransportType};

use crate::app::auth::{Authenticator, Refusal};
use crate::app::clients::ClientService;
use crate::app::config::SocketIoSettings;
use crate::app::recovery::Recovery;
use crate::domain::Payload;
use crate::domain::identity;
use crate::domain::identity::ClientIdentity;
use crate::domain::recovery::Cut;
use crate::domain::replies::SnapshotRequest;
use crate::domain::topics::{REQ_LOCATION, REQ_USER_ID};
use crate::ports::{ClientFanout, EmitOptions, FanoutError};
use crate::telemetry::metrics::{
    CLIENT_EVENTS, CLIENT_EVENTS_DROPPED, FANOUT_BACKLOGGED, FANOUT_CONFLATED, FANOUT_DROPPED,
    LAGGING_SOCKETS, POLLING_SESSIONS, SLOW_DISCONNECTS, SOCKET_DISCONNECTS, SOCKETS_CONNECTED,
};

mod backlog;

use backlog::{Backlogs, LatestByRoom, Pending, Pushed};
use socketioxide::{BroadcastError, ParserConfig, SendError, SocketError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Builds the Socket.IO layer (path `/socket.io`, websocket and polling) and its handle.
pub fn layer(settings: &SocketIoSettings) -> (SocketIoLayer, SocketIo) {
    SocketIo::builder()
        .req_path("/socket.io")
        .transports([TransportType::Polling, TransportType::Websocket])
        .ping_interval(settings.ping_interval)
        .ping_timeout(settings.ping_timeout)
        .max_payload(settings.max_payload)
        .ws_max_message_size(settings.max_payload as usize)
        .ws_max_frame_size(settings.max_payload as usize)
        .max_buffer_size(settings.max_buffer)
        .ws_read_buffer_size(settings.ws_read_buffer)
        // socketioxide's defaults let each socket buffer 10 MB of binary attachments for up
        // to 60 s; the gateway takes none (socketio.max_attachments).
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(settings.max_attachments)
                .max_incoming_binary_buf_size(settings.max_payload as usize)
                .packet_completion_timeout(Duration::from_secs(5)),
        )
        .connect_timeout(settings.connect_timeout)
        .build_layer()
}

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
const LAGGING_ROOM: &str = "flux:lagging";
/// At most one socket-by-socket ticker per this interval. Going socket by socket encodes the
/// event once per socket, so a socket that hovers at full cannot make every broadcast slow;
/// between probes a full socket just misses tickers (newer prices follow, and counted).
const PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// How often lagging sockets' backlogs are retried.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
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
            .and_then(|sid| self.io.get_socket(sid))
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))
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
        match self.backlogs.push_for(s.id, pending, || room_names(s)) {
            Pushed::Queued => {
                s.join(LAGGING_ROOM);
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

    /// Disconnects a socket whose backlog overflowed (its client reconnects and is hydrated
    /// again).
    fn too_slow(&self, sid: Sid) {
        metrics::counter!(SLOW_DISCONNECTS).increment(1);
        tracing::warn!(socket = %sid, "client too slow: its backlog overflowed; disconnecting it");
        self.backlogs.remove(sid);
        if let Some(s) = self.io.get_socket(sid) {
            let _ = s.disconnect();
        }
    }

    fn to_room_each(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: Option<&str>,
        offset: Option<&Arc<str>>,
    ) {
        for s in self.io.to(room.to_owned()).sockets() {
            self.deliver(&s, Some(room), event, payload, key, offset);
        }
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
            self.to_room_each(room, event, payload, Some(key), offset);
            return Ok(());
        }
        let lagging = self.backlogs.lagging() > 0;
        let op = self.io.to(room.to_owned());
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
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.backlogs.lagging() == 0 {
                continue;
            }
            for sid in self.backlogs.sockets() {
                match self.io.get_socket(sid) {
                    Some(s) => {
                        self.backlogs.set_rooms(sid, room_names(&s));
                        // A socket that caught up leaves the lagging room, or the fast
                        // broadcasts would skip it for good once it is not lagging.
                        self.backlogs.drain(
                            sid,
                            |p| send(&s, &p.event, &p.payload, p.offset.as_ref()).is_ok(),
                            || s.leave(LAGGING_ROOM),
                        );
                    }
                    None => self.backlogs.remove(sid),
                }
            }
            metrics::gauge!(LAGGING_SOCKETS).set(self.backlogs.lagging() as f64);
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
            None => {
                self.to_room_each(room, event, payload, None, options.offset);
                Ok(())
            }
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
        self.socket(socket)?.join(rooms.to_vec());
        Ok(())
    }

    async fn leave(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError> {
        self.socket(socket)?.leave(rooms.to_vec());
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

/// Counts the sockets on the polling transport (Engine.IO sessions that have not upgraded to
/// WebSocket) into `polling`, once a second until `stop`: the HTTP layer refuses new polling
/// handshakes beyond `socketio.max_polling_sessions`. Also the gauge `flux_polling_sessions`.
pub async fn count_polling(
    io: SocketIo,
    polling: Arc<std::sync::atomic::AtomicUsize>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = io
            .sockets()
            .iter()
            .filter(|s| s.transport_type() == TransportType::Polling)
            .count();
        polling.store(now, Ordering::Relaxed);
        metrics::gauge!(POLLING_SESSIONS).set(now as f64);
    }
}

/// Per-socket state kept in the socket's extensions.
#[derive(Clone)]
struct Session {
    who: Arc<ClientIdentity>,
    limiter: Arc<DefaultDirectRateLimiter>,
    init: Arc<Once>,
    /// `socketio.max_event_name`.
    max_event_name: usize,
    /// Connection-state recovery (D26): the replay owed to a recovered socket, done once before
    /// anything else reaches it (its client events wait for it).
    resume: Option<Arc<Resume>>,
}

/// A recovered session's replay, run once by whichever comes first: the connect handler or
/// the socket's first event.
struct Resume {
    recovery: Arc<Recovery>,
    fanout: SocketIoFanout,
    cut: Cut,
    done: tokio::sync::OnceCell<()>,
}

/// What the namespace handlers share.
#[derive(Clone)]
struct Handlers {
    service: Arc<ClientService>,
    auth: Option<Arc<Authenticator>>,
    recovery: Option<Arc<Recovery>>,
    fanout: SocketIoFanout,
    quota: Quota,
    max_event_name: usize,
}

/// Registers the default namespace: identity, `session:init`, and every client event. With
/// `auth`, a handshake without a valid `auth.token` is refused with a `connect_error` (D25).
/// With `recovery`, the CONNECT reply carries a session id and a recovered session is
/// replayed what it missed (D26).
pub fn register(
    io: &SocketIo,
    service: Arc<ClientService>,
    settings: &SocketIoSettings,
    auth: Option<Arc<Authenticator>>,
    recovery: Option<Arc<Recovery>>,
    fanout: SocketIoFanout,
) {
    let rate = NonZeroU32::new(settings.rate_per_second.max(1)).expect("at least one");
    let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least one");
    let handlers = Handlers {
        service,
        auth,
        recovery,
        fanout,
        quota: Quota::per_second(rate).allow_burst(burst),
        max_event_name: settings.max_event_name,
    };
    // The middleware runs before the connect packet is sent, so the event handlers exist when
    // the client's first event arrives; it rejects a handshake only when auth is on (D1, D25).
    let shared = handlers.clone();
    let middleware = move |s: SocketRef, TryData(handshake): TryData<Value>| {
        let handlers = shared.clone();
        async move { prepare(s, handshake.ok(), handlers).await }
    };
    io.ns("/", on_connected.with(middleware));
}

/// Runs once the client has the connect packet: `session:init` goes first, then a recovered
/// session's replay.
async fn on_connected(s: SocketRef) {
    if let Some(session) = s.extensions.get::<Session>() {
        session_init(&s, &session);
        resume(&s, &session).await;
    }
}

/// Emits `session:init` exactly once, before anything else reaches the socket.
fn session_init(s: &SocketRef, session: &Session) {
    session.init.call_once(|| {
        let (event, payload) = ClientService::session_init(&session.who);
        if let Err(e) = s.emit(event, &payload) {
            tracing::debug!(socket = %s.id, error = %e, "session:init not sent");
        }
    });
}

/// Replays what a recovered session missed and puts it back in its rooms, once.
async fn resume(s: &SocketRef, session: &Session) {
    let Some(resume) = &session.resume else {
        return;
    };
    resume
        .done
        .get_or_init(|| async {
            // A refusal is counted by `resume`; the socket stays a normal connection.
            let sid = s.id.to_string();
            let _ = resume
                .recovery
                .resume(&resume.fanout, &sid, &resume.cut)
                .await;
        })
        .await;
}

async fn prepare(
    s: SocketRef,
    handshake: Option<Value>,
    handlers: Handlers,
) -> Result<(), Refusal> {
    let parts = s.req_parts();
    if let Some(joined) = parts.extensions.get::<crate::app::http::Joined>() {
        joined.mark();
    }
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = identity::client_ip(forwarded, peer);
    let user_id = match &handlers.auth {
        Some(auth) => auth.admit(handshake.as_ref(), ip.as_deref())?,
        None => identity::accept_guest_id(handshake.as_ref())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let mut resume = None;
    if let Some(recovery) = &handlers.recovery {
        let admission = recovery.admit(handshake.as_ref(), &user_id).await;
        s.set_connect_pid(admission.pid);
        resume = admission.resume.map(|cut| {
            Arc::new(Resume {
                recovery: recovery.clone(),
                fanout: handlers.fanout.clone(),
                cut,
                done: tokio::sync::OnceCell::new(),
            })
        });
    }
    let who = Arc::new(ClientIdentity {
        socket_id: s.id.to_string(),
        user_id,
        ip,
    });
    tracing::debug!(socket = %who.socket_id, user = %who.user_id, ip = ?who.ip, "client connected");
    metrics::gauge!(SOCKETS_CONNECTED).increment(1.0);

    s.extensions.insert(Session {
        who,
        limiter: Arc::new(RateLimiter::direct(handlers.quota)),
        init: Arc::new(Once::new()),
        max_event_name: handlers.max_event_name,
        resume,
    });

    let service = handlers.service;
    s.on_fallback(
        // `TryData<Value>` is the first argument only: socketioxide skips the others (such as
        // the legacy second argument of `userLocationUpdate`, contract §c.4).
        move |s: SocketRef, Event(event): Event, TryData(data): TryData<Value>| {
            let service = service.clone();
            async move { on_event(s, event, data.ok(), service).await }
        },
    );
    s.on_disconnect(|s: SocketRef, reason: DisconnectReason| async move {
        metrics::gauge!(SOCKETS_CONNECTED).decrement(1.0);
        metrics::counter!(SOCKET_DISCONNECTS, "reason" => reason_label(reason)).increment(1);
        tracing::debug!(socket = %s.id, ?reason, "client disconnected");
    });
    Ok(())
}

async fn on_event(s: SocketRef, event: String, data: Option<Value>, service: Arc<ClientService>) {
    let Some(session) = s.extensions.get::<Session>() else {
        return;
    };
    session_init(&s, &session);
    resume(&s, &session).await;
    if event.len() > session.max_event_name {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => "event_name_too_long").increment(1);
        return;
    }
    if session.limiter.check().is_err() {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => "rate_limited").increment(1);
        return;
    }
    let who = &session.who;
    if event == REQ_LOCATION {
        metrics::counter!(CLIENT_EVENTS, "event" => REQ_LOCATION).increment(1);
        service.location_update(who, data.as_ref()).await;
    } else if let Some(request) = SnapshotRequest::from_event(&event) {
        metrics::counter!(CLIENT_EVENTS, "event" => request.reply_event()).increment(1);
        service.snapshot_request(who, request).await;
    } else if event == REQ_USER_ID {
        metrics::counter!(CLIENT_EVENTS, "event" => REQ_USER_ID).increment(1);
        service.user_id(who).await;
    } else {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => "unknown_event").increment(1);
    }
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

fn reason_label(reason: DisconnectReason) -> &'static str {
    match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    }
}
