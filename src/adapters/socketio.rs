//! The Socket.IO side, on socketioxide: the `ClientFanout` port over a `SocketIo` handle, and
//! the inbound handlers that turn client events into calls on the client service.
//!
//! Per socket: the identity resolved at the handshake (never rejected, D1), a token-bucket
//! rate limit on client events (D10), and `session:init` as the first event.

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

use crate::app::clients::{ClientIdentity, ClientService};
use crate::app::config::SocketIoSettings;
use crate::app::metrics::{
    CLIENT_EVENTS, CLIENT_EVENTS_DROPPED, SOCKET_DISCONNECTS, SOCKETS_CONNECTED,
};
use crate::domain::identity;
use crate::domain::replies::SnapshotRequest;
use crate::domain::topics::{REQ_LOCATION, REQ_USER_ID};
use crate::ports::{ClientFanout, FanoutError, Payload};

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
        .build_layer()
}

/// The [`ClientFanout`] port on a socketioxide handle.
#[derive(Clone)]
pub struct SocketIoFanout {
    io: SocketIo,
}

impl SocketIoFanout {
    pub fn new(io: SocketIo) -> Self {
        Self { io }
    }

    fn socket(&self, socket: &str) -> Result<SocketRef, FanoutError> {
        Sid::from_str(socket)
            .ok()
            .and_then(|sid| self.io.get_socket(sid))
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))
    }
}

#[async_trait]
impl ClientFanout for SocketIoFanout {
    async fn to_room(&self, room: &str, event: &str, payload: &Payload) -> Result<(), FanoutError> {
        // A socket whose buffer is full loses this message; the others are not held up.
        self.io
            .to(room.to_owned())
            .emit(event, payload)
            .await
            .map_err(|e| FanoutError::Transport(e.to_string()))
    }

    async fn to_socket(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<(), FanoutError> {
        self.socket(socket)?
            .emit(event, payload)
            .map_err(|e| FanoutError::Transport(e.to_string()))
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
            .filter(|r| *r != own)
            .collect())
    }
}

/// Per-socket state kept in the socket's extensions.
#[derive(Clone)]
struct Session {
    who: Arc<ClientIdentity>,
    limiter: Arc<DefaultDirectRateLimiter>,
    init: Arc<Once>,
}

/// Registers the default namespace: identity, `session:init`, and every client event.
pub fn register(io: &SocketIo, service: Arc<ClientService>, settings: &SocketIoSettings) {
    let rate = NonZeroU32::new(settings.rate_per_second.max(1)).expect("at least one");
    let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least one");
    let quota = Quota::per_second(rate).allow_burst(burst);
    // The middleware runs before the connect packet is sent, so the event handlers exist when
    // the client's first event arrives; it never rejects a handshake (D1).
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let service = service.clone();
        async move {
            prepare(s, auth.ok(), service, quota);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    io.ns("/", on_connected.with(middleware));
}

/// Runs once the client has the connect packet: `session:init` goes first.
async fn on_connected(s: SocketRef) {
    if let Some(session) = s.extensions.get::<Session>() {
        session_init(&s, &session);
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

fn prepare(s: SocketRef, auth: Option<Value>, service: Arc<ClientService>, quota: Quota) {
    let parts = s.req_parts();
    let forwarded = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let user_id = identity::accept_guest_id(auth.as_ref())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let who = Arc::new(ClientIdentity {
        socket_id: s.id.to_string(),
        user_id,
        ip: identity::client_ip(forwarded, peer),
    });
    tracing::debug!(socket = %who.socket_id, user = %who.user_id, ip = ?who.ip, "client connected");
    metrics::gauge!(SOCKETS_CONNECTED).increment(1.0);

    s.extensions.insert(Session {
        who,
        limiter: Arc::new(RateLimiter::direct(quota)),
        init: Arc::new(Once::new()),
    });

    s.on_fallback(
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
}

async fn on_event(s: SocketRef, event: String, data: Option<Value>, service: Arc<ClientService>) {
    let Some(session) = s.extensions.get::<Session>() else {
        return;
    };
    session_init(&s, &session);
    if session.limiter.check().is_err() {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => "rate_limited").increment(1);
        return;
    }
    let who = &session.who;
    if event == REQ_LOCATION {
        metrics::counter!(CLIENT_EVENTS, "event" => REQ_LOCATION).increment(1);
        service
            .location_update(who, first_argument(data.as_ref()))
            .await;
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

/// socketioxide hands a `Value` of all arguments; extra arguments are ignored (contract §c.4).
fn first_argument(data: Option<&Value>) -> Option<&Value> {
    match data {
        Some(Value::Array(args)) => args.first(),
        other => other,
    }
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
