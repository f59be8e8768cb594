//! `ClientFanout`: emits to connected clients, one socket or a whole room, and manages rooms.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;

/// A JSON payload encoded once and shared by every emit that carries it.
#[derive(Clone, Debug)]
pub struct Payload(Arc<RawValue>);

impl Payload {
    /// Encodes `value` once.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Self {
        let json = serde_json::to_string(value).expect("a serde_json::Value always serialises");
        Self::from_json(json)
    }

    /// Wraps text that is already valid JSON. Invalid JSON becomes `null`.
    pub fn from_json(json: String) -> Self {
        let raw = RawValue::from_string(json)
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"));
        Self(Arc::from(raw))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// Parses the payload back into a value (tests and diagnostics).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

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
