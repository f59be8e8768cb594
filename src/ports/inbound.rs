//! Driving ports: what the inbound adapters (Socket.IO, HTTP) call. The application services
//! implement them; the adapters know only these traits, never the services.

use std::fmt;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::Payload;
use crate::domain::identity::ClientIdentity;
use crate::domain::recovery::{Cut, Refusal};
use crate::domain::replies::SnapshotRequest;

/// What connected clients ask for (contract §c). Replies go to the asking socket only,
/// through [`ClientFanout`](super::ClientFanout).
#[async_trait]
pub trait ClientRequests: Send + Sync {
    /// The first event of every connection (D1), for `who`: its name and payload. The
    /// adapter MUST send it before anything else reaches the socket, exactly once.
    fn session_init(&self, who: &ClientIdentity) -> (&'static str, Payload);

    /// `userLocationUpdate` with its first argument (the legacy second one is ignored).
    /// Never fails: a bad location is counted and answered as the contract says. The adapter
    /// MUST call it for one client one update at a time, in the order they arrived (it reads
    /// the socket's rooms, then switches them: two at once could leave it in two weather
    /// rooms, an older one last in the older city's).
    async fn location_update(&self, who: &ClientIdentity, arg: Option<&Value>);

    /// One of the four snapshot requests, answered with a hit, `loading` or `error`.
    async fn snapshot_request(&self, who: &ClientIdentity, request: SnapshotRequest);

    /// `getUserId` (legacy): answered with `userUniqueId`.
    async fn user_id(&self, who: &ClientIdentity);
}

/// Why a handshake was refused by connection authentication (D25): [`AuthRefusal::reason`]
/// is the metric label, and the client's `connect_error` message is `unauthorized: <reason>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No `auth.token` (absent, `null` or an empty string).
    Missing,
    /// Not a string, or not a well-formed JWT.
    Malformed,
    /// Not signed by the configured key with the configured algorithm.
    Signature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is ahead, beyond the leeway.
    NotYetValid,
    /// A required claim (`exp`, `sub`) missing or ill-typed, the wrong `iss` or `aud`, or a
    /// `sub` that is not an acceptable user id.
    Claims,
}

impl AuthRefusal {
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Malformed,
        Self::Signature,
        Self::Expired,
        Self::NotYetValid,
        Self::Claims,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Claims => "claims",
        }
    }
}

impl fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unauthorized: {}", self.reason())
    }
}

impl std::error::Error for AuthRefusal {}

/// Connection authentication (D25), consulted at every handshake when it is on.
pub trait Authenticate: Send + Sync {
    /// The user id a handshake's `auth` object stands for. `ip` is only logged.
    ///
    /// # Errors
    /// Why the handshake MUST be refused; each refusal is counted by reason.
    fn admit(&self, auth: Option<&Value>, ip: Option<&str>) -> Result<String, AuthRefusal>;
}

/// What connection-state recovery decided at a handshake.
#[derive(Debug)]
pub struct Admission {
    /// The session id to send in the CONNECT reply.
    pub pid: String,
    /// Set when the client's session is recovered: replay from this cut once connected.
    pub resume: Option<Cut>,
}

/// Connection-state recovery (D26): session ids at connect, and the replay of what a
/// reconnecting client missed.
#[async_trait]
pub trait SessionRecovery: Send + Sync {
    /// Decides at the handshake whether the client's session (the `pid` and `offset` of its
    /// handshake) is recovered. Anything it cannot recover is a normal connection with a new
    /// session id, never a refused one.
    async fn admit(&self, handshake: Option<&Value>, user_id: &str) -> Admission;

    /// Sends `socket` every event it missed after `cut`, in order, and puts it back in its
    /// rooms, atomically with respect to live emits: each event reaches it exactly once.
    /// MUST be called once per recovered socket, before anything else is sent to it.
    /// Returns how many events were replayed.
    ///
    /// # Errors
    /// The [`Refusal`] when the replay is no longer possible; the socket is then left as a
    /// normal connection.
    async fn resume(&self, socket: &str, cut: &Cut) -> Result<usize, Refusal>;
}

/// What `/readyz` reports (D17, D18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadinessReport {
    /// Consumers and producer run, and no shutdown is under way.
    pub ready: bool,
    pub kafka_consumer: bool,
    pub kafka_producer: bool,
    /// Whether the last snapshot cache call reached it.
    pub cache: bool,
}

/// The gateway's readiness, for the HTTP adapter.
pub trait Readiness: Send + Sync {
    fn readiness(&self) -> ReadinessReport;
}
