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
}

/// Delivers events to connected clients. Socket ids are the transport's ids.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait ClientFanout: Send + Sync {
    /// Emits `event` with `payload` to every socket in `room` (none is fine).
    ///
    /// MUST NOT wait for slow clients: a socket that cannot keep up loses its own messages,
    /// never delays the others.
    ///
    /// # Errors
    /// [`FanoutError::Transport`] when the transport refused the broadcast as a whole.
    async fn to_room(&self, room: &str, event: &str, payload: &Payload) -> Result<(), FanoutError>;

    /// Like [`ClientFanout::to_room`] for a stream where only the latest value per `key`
    /// matters (tickers, keyed by product): a socket that falls behind MAY be sent only the
    /// latest payload per key instead of every one. The default sends every one.
    ///
    /// # Errors
    /// As for [`ClientFanout::to_room`].
    async fn to_room_latest(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        _key: &str,
    ) -> Result<(), FanoutError> {
        self.to_room(room, event, payload).await
    }

    /// Like [`ClientFanout::to_room`], with `offset` as the event's last argument: the
    /// position socket.io-client hands back when it reconnects (connection-state recovery).
    /// The default leaves the offset out.
    ///
    /// # Errors
    /// As for [`ClientFanout::to_room`].
    async fn to_room_at(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        _offset: &Arc<str>,
    ) -> Result<(), FanoutError> {
        self.to_room(room, event, payload).await
    }

    /// [`ClientFanout::to_room_latest`] with `offset` as the event's last argument. The
    /// default leaves the offset out.
    ///
    /// # Errors
    /// As for [`ClientFanout::to_room`].
    async fn to_room_latest_at(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        key: &str,
        _offset: &Arc<str>,
    ) -> Result<(), FanoutError> {
        self.to_room_latest(room, event, payload, key).await
    }

    /// Like [`ClientFanout::to_socket`], with `offset` as the event's last argument (a room
    /// event sent again to a recovering socket). The default leaves the offset out.
    ///
    /// # Errors
    /// As for [`ClientFanout::to_socket`].
    async fn to_socket_at(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
        _offset: &Arc<str>,
    ) -> Result<(), FanoutError> {
        self.to_socket(socket, event, payload).await
    }

    /// Emits `event` with `payload` to one socket.
    ///
    /// # Errors
    /// [`FanoutError::UnknownSocket`] when the socket is gone.
    async fn to_socket(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
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
