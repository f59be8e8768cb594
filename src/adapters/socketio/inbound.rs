//! The inbound side: the default namespace's handlers, which resolve each connection's
//! identity at the handshake (never rejected, D1, unless `auth.token` verification is on,
//! D25), rate-limit client events (D10), send `session:init` first, replay what a recovered
//! session missed (D26), and turn client events into calls on the driving ports.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Once};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::DisconnectReason;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken as TaskToken};

use super::settings::SocketIoSettings;
use crate::domain::identity::{self, ClientAddress, ClientIdentity};
use crate::domain::recovery::Cut;
use crate::domain::replies::SnapshotRequest;
use crate::domain::topics::{self, REQ_LOCATION, REQ_USER_ID};
use crate::ports::{AuthRefusal, Authenticate, ClientRequests, SessionRecovery};
use crate::telemetry::metrics::{
    CLIENT_EVENTS, CLIENT_EVENTS_DROPPED, SOCKET_DISCONNECTS, SOCKETS_CONNECTED,
};

/// Called with the request head of a connection that joins the namespace.
pub type JoinHook = Arc<dyn Fn(&Parts) + Send + Sync>;

/// What the namespace handlers call.
pub struct Inbound {
    /// Client events.
    pub requests: Arc<dyn ClientRequests>,
    /// Connection authentication, when on (D25).
    pub auth: Option<Arc<dyn Authenticate>>,
    /// Connection-state recovery, when on (D26).
    pub recovery: Option<Arc<dyn SessionRecovery>>,
    /// Called with the request head of every connection that joins the namespace (the HTTP
    /// server counts WebSocket sessions that never do).
    pub on_join: Option<JoinHook>,
    /// Tracks the client events being handled: a shutdown waits for them before it flushes
    /// the producer, so that the command of an event received before it is not lost (D19).
    pub handling: TaskTracker,
}

/// Per-socket state kept in the socket's extensions.
#[derive(Clone)]
struct Session {
    who: Arc<ClientIdentity>,
    limiter: Arc<DefaultDirectRateLimiter>,
    init: Arc<Once>,
    requests: Arc<dyn ClientRequests>,
    /// `socketio.max_event_name`.
    max_event_name: usize,
    /// Connection-state recovery (D26): the replay owed to a recovered socket, done once before
    /// anything else reaches it (its client events wait for it).
    resume: Option<Arc<Resume>>,
    /// [`Inbound::handling`].
    handling: TaskTracker,
}

/// A recovered session's replay, run once by whichever comes first: the connect handler or
/// the socket's first event.
struct Resume {
    recovery: Arc<dyn SessionRecovery>,
    cut: Cut,
    done: tokio::sync::OnceCell<()>,
}

/// What the namespace handlers share.
struct Handlers {
    inbound: Inbound,
    quota: Quota,
    max_event_name: usize,
}

/// Registers the default namespace: identity, `session:init`, and every client event. With
/// `inbound.auth`, a handshake without a valid `auth.token` is refused with a `connect_error`
/// (D25). With `inbound.recovery`, the CONNECT reply carries a session id and a recovered
/// session is replayed what it missed (D26).
pub fn register(io: &SocketIo, settings: &SocketIoSettings, inbound: Inbound) {
    let rate = NonZeroU32::new(settings.rate_per_second.max(1)).expect("at least one");
    let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least one");
    let handlers = Arc::new(Handlers {
        inbound,
        quota: Quota::per_second(rate).allow_burst(burst),
        max_event_name: settings.max_event_name,
    });
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
        let (event, payload) = session.requests.session_init(&session.who);
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
            let sid = s.id.to_string();
            if let Err(refusal) = resume.recovery.resume(&sid, &resume.cut).await {
                // Admitted at the handshake, refused now (counted by `resume`): the client
                // believes it recovered and would miss what it was owed without knowing. Its
                // connection is closed: it reconnects, and its next handshake tells it (a
                // normal connection). A DISCONNECT packet would stop it for good.
                tracing::debug!(socket = %s.id, reason = refusal.label(), "replay refused after admission; disconnecting");
                s.clone().close_connection();
            }
        })
        .await;
}

async fn prepare(
    s: SocketRef,
    handshake: Option<Value>,
    handlers: Arc<Handlers>,
) -> Result<(), AuthRefusal> {
    let inbound = &handlers.inbound;
    let parts = s.req_parts();
    // The address the HTTP server named (a trusted proxy's client, D34), else the peer.
    let ip = parts
        .extensions
        .get::<ClientAddress>()
        .map(|a| a.0)
        .or_else(|| {
            let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
            Some(peer.0.ip().to_canonical())
        })
        .map(|ip| ip.to_string());
    let user_id = match &inbound.auth {
        Some(auth) => auth.admit(handshake.as_ref(), ip.as_deref())?,
        None => identity::accept_guest_id(handshake.as_ref())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let mut resume = None;
    if let Some(recovery) = &inbound.recovery {
        let admission = recovery.admit(handshake.as_ref(), &user_id).await;
        s.set_connect_pid(admission.pid);
        resume = admission.resume.map(|cut| {
            Arc::new(Resume {
                recovery: recovery.clone(),
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
    // Joined only once admitted and past recovery's wait: until then the session is an
    // unjoined one, counted against `socketio.max_polling_sessions` (found by review: a
    // handshake refused for its token, or waiting up to 5 s for recovery, was counted
    // nowhere, neither unjoined nor among the sockets the limit recounts).
    if let Some(on_join) = &inbound.on_join {
        on_join(parts);
    }
    tracing::debug!(socket = %who.socket_id, user = %who.user_id, ip = ?who.ip, "client connected");
    metrics::gauge!(SOCKETS_CONNECTED).increment(1.0);

    s.extensions.insert(Session {
        who,
        limiter: Arc::new(RateLimiter::direct(handlers.quota)),
        init: Arc::new(Once::new()),
        requests: inbound.requests.clone(),
        max_event_name: handlers.max_event_name,
        resume,
        handling: inbound.handling.clone(),
    });

    s.on_fallback(
        // `TryData<Value>` is the first argument only: socketioxide skips the others (such as
        // the legacy second argument of `userLocationUpdate`, contract §c.4). The closure runs
        // as the event arrives, its future in a task of its own: what bounds and orders the
        // events is done here, before any task waits (a replay, the shutdown's wait).
        |s: SocketRef, Event(event): Event, TryData(data): TryData<Value>| {
            let admitted = admit(&s, &event);
            async move {
                if let Some((session, _handling)) = admitted {
                    handle(&s, &session, &event, data.ok()).await;
                }
            }
        },
    );
    s.on_disconnect(|s: SocketRef, reason: DisconnectReason| async move {
        metrics::gauge!(SOCKETS_CONNECTED).decrement(1.0);
        metrics::counter!(SOCKET_DISCONNECTS, "reason" => reason_label(reason)).increment(1);
        tracing::debug!(socket = %s.id, ?reason, "client disconnected");
    });
    Ok(())
}

/// As a client event arrives: `session:init` first, then the event counted against the name
/// length and rate limits, and tracked for the shutdown's wait (D19) from that moment, not
/// from when its task first runs. `None`: dropped.
fn admit(s: &SocketRef, event: &str) -> Option<(Session, TaskToken)> {
    let session = s.extensions.get::<Session>()?;
    session_init(s, &session);
    if event.len() > session.max_event_name {
        Dropped::EventNameTooLong.count();
        return None;
    }
    if session.limiter.check().is_err() {
        Dropped::RateLimited.count();
        return None;
    }
    let handling = session.handling.token();
    Some((session, handling))
}

/// Handles an admitted client event, after a recovered session's replay.
async fn handle(s: &SocketRef, session: &Session, event: &str, data: Option<Value>) {
    resume(s, session).await;
    // Counted under the event's own name (the snapshot requests were under their replies').
    let Some(&name) = topics::CLIENT_EVENTS.iter().find(|&&known| known == event) else {
        Dropped::UnknownEvent.count();
        return;
    };
    metrics::counter!(CLIENT_EVENTS, "event" => name).increment(1);
    let (requests, who) = (&session.requests, &session.who);
    if name == REQ_LOCATION {
        requests.location_update(who, data.as_ref()).await;
    } else if let Some(request) = SnapshotRequest::from_event(name) {
        requests.snapshot_request(who, request).await;
    } else if name == REQ_USER_ID {
        requests.user_id(who).await;
    }
}

/// Why a client event was dropped: the `reason` label of `flux_client_events_dropped_total`,
/// each written here once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dropped {
    EventNameTooLong,
    RateLimited,
    UnknownEvent,
}

impl Dropped {
    pub(super) const ALL: [Self; 3] = [
        Self::EventNameTooLong,
        Self::RateLimited,
        Self::UnknownEvent,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::EventNameTooLong => "event_name_too_long",
            Self::RateLimited => "rate_limited",
            Self::UnknownEvent => "unknown_event",
        }
    }

    fn count(self) {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => self.label()).increment(1);
    }
}

/// Every reason a socket disconnects for (socketioxide's), for the series at zero.
pub(super) const DISCONNECT_REASONS: [DisconnectReason; 8] = [
    DisconnectReason::TransportClose,
    DisconnectReason::MultipleHttpPollingError,
    DisconnectReason::PacketParsingError,
    DisconnectReason::TransportError,
    DisconnectReason::HeartbeatTimeout,
    DisconnectReason::ClientNSDisconnect,
    DisconnectReason::ServerNSDisconnect,
    DisconnectReason::ClosingServer,
];

/// The `reason` label of `flux_socket_disconnects_total`.
pub(super) fn reason_label(reason: DisconnectReason) -> &'static str {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::{Value, json};
    use socketioxide::SocketIo;
    use tokio::sync::Notify;
    use tokio_util::task::TaskTracker;

    use super::{DISCONNECT_REASONS, Dropped, Inbound, reason_label, register};
    use crate::adapters::socketio::settings::SocketIoSettings;
    use crate::domain::Payload;
    use crate::domain::identity::ClientIdentity;
    use crate::domain::recovery::{Cut, Refusal};
    use crate::domain::replies::SnapshotRequest;
    use crate::ports::{Admission, ClientRequests, SessionRecovery};

    /// Answers nothing.
    struct Quiet;

    #[async_trait]
    impl ClientRequests for Quiet {
        fn session_init(&self, _: &ClientIdentity) -> (&'static str, Payload) {
            ("session:init", Payload::new(&json!({})))
        }
        async fn location_update(&self, _: &ClientIdentity, _: Option<&Value>) {}
        async fn snapshot_request(&self, _: &ClientIdentity, _: SnapshotRequest) {}
        async fn user_id(&self, _: &ClientIdentity) {}
    }

    /// Recovers every session, and replays only once `release` is notified.
    struct HeldReplay {
        release: Arc<Notify>,
    }

    #[async_trait]
    impl SessionRecovery for HeldReplay {
        async fn admit(&self, _: Option<&Value>, _: &str) -> Admission {
            Admission {
                pid: "pid".into(),
                resume: Some(Cut::default()),
            }
        }
        async fn resume(&self, _: &str, _: &Cut) -> Result<usize, Refusal> {
            self.release.notified().await;
            Ok(0)
        }
    }

    /// Found by review: the name and rate limits were checked after the replay, so every
    /// event a recovered client sent meanwhile waited in a task of its own, unbounded.
    #[tokio::test]
    async fn events_sent_during_a_replay_are_rate_limited_as_they_arrive() {
        let (_layer, io) = SocketIo::new_layer();
        let settings = SocketIoSettings::default();
        let release = Arc::new(Notify::new());
        let handling = TaskTracker::new();
        register(
            &io,
            &settings,
            Inbound {
                requests: Arc::new(Quiet),
                auth: None,
                recovery: Some(Arc::new(HeldReplay {
                    release: release.clone(),
                })),
                on_join: None,
                handling: handling.clone(),
            },
        );
        let (client, _from_server) = io.new_dummy_sock("/", ()).await;
        for _ in 0..200 {
            let event = engineioxide::Packet::Message(r#"2["getUserId"]"#.into());
            client.send(event).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let waiting = handling.len();
        assert!(
            (1..=settings.burst as usize + 1).contains(&waiting),
            "{waiting} events wait for the replay; the burst is {}",
            settings.burst
        );
        release.notify_one();
        handling.close();
        tokio::time::timeout(Duration::from_secs(5), handling.wait())
            .await
            .expect("the admitted events are handled once the replay is done");
    }

    #[test]
    fn each_reason_has_its_own_label() {
        let mut disconnects: Vec<&str> = DISCONNECT_REASONS.into_iter().map(reason_label).collect();
        disconnects.sort_unstable();
        disconnects.dedup();
        assert_eq!(
            disconnects.len(),
            DISCONNECT_REASONS.len(),
            "{disconnects:?}"
        );
        let mut drops: Vec<&str> = Dropped::ALL.iter().map(|d| d.label()).collect();
        drops.sort_unstable();
        drops.dedup();
        assert_eq!(drops.len(), Dropped::ALL.len(), "{drops:?}");
    }
}
