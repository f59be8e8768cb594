//! `ClientFanout`: emits to connected clients, one socket or a whole room, and manages rooms.

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::Payload;

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The socket is not (or no longer) connected.
    #[error("socket {0} is not connected")]
    UnknownSocket(String),
    /// The transport failed to take the message.
    #[error("emit failed: {0}")]
    Transport(String),
    /// The transport is closed (the gateway is shutting down): nothing is delivered any more.
    #[error("the transport is closed")]
    Closed,
}

/// How an event is delivered, beyond its room or socket, name and payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmitOptions<'a> {
    /// The event is one of a stream where only the latest value per key matters (tickers,
    /// keyed by product): a socket that falls behind MAY be sent only the latest payload per
    /// key instead of every one. `None`: every one is owed, in order.
    pub latest: Option<&'a str>,
    /// The connection-state recovery offset (D26), sent as the event's last argument: the
    /// position socket.io-client hands back when it reconnects. `None`: no extra argument.
    pub offset: Option<&'a Arc<str>>,
}

impl<'a> EmitOptions<'a> {
    /// Every payload owed, in order, with no offset argument (replies, snapshots).
    pub const PLAIN: Self = Self {
        latest: None,
        offset: None,
    };
}

/// Delivers events to connected clients. Socket ids are the transport's ids.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ClientFanout: Send + Sync {
    /// Emits `event` with `payload` to every socket in `room` (none is fine), as `options` say.
    ///
    /// MUST NOT wait for slow clients: a socket that cannot keep up loses its own messages
    /// (only those `options.latest` allows it to lose, or it is disconnected), never delays
    /// the others.
    ///
    /// # Errors
    /// [`FanoutError::Transport`] when the transport refused the broadcast as a whole,
    /// [`FanoutError::Closed`] once it is closed.
    async fn to_room<'a>(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError>;

    /// Emits `event` with `payload` to one socket, as `options` say.
    ///
    /// # Errors
    /// [`FanoutError::UnknownSocket`] when the socket is gone.
    async fn to_socket<'a>(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError>;

    /// Adds the socket to each room (joining a room twice is a no-op).
    ///
    /// # Errors
    /// [`FanoutError::UnknownSocket`] when the socket is gone.
    async fn join(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError>;

    /// Removes the socket from each room (leaving a room it is not in is a no-op).
    ///
    /// # Errors
    /// [`FanoutError::UnknownSocket`] when the socket is gone.
    async fn leave(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError>;

    /// The rooms the socket is in, excluding the transport's own per-socket room.
    ///
    /// # Errors
    /// [`FanoutError::UnknownSocket`] when the socket is gone.
    async fn rooms_of(&self, socket: &str) -> Result<Vec<String>, FanoutError>;
}
