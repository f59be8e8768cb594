//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts.headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use crate::{config::EngineIoConfig, errors::Error, queue};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
use tokio::sync::{Mutex, mpsc::error::TrySendError, watch};

pub use engineioxide_core::Sid;
use tokio_util::sync::CancellationToken;

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// flux-bff patch: what a direct write ([`DirectWrite::try_write`]) did with the packets.
#[derive(Debug)]
pub(crate) enum Direct {
    /// Written to the connection.
    Written,
    /// Taken by the connection, not all of it written yet: the socket's writer
    /// task must be woken to finish.
    Unflushed,
    /// Not taken (the writer task or the reading task holds the connection, or the writer
    /// has packets of its own to write first): they go through the queue.
    Refused(PacketBuf),
}

/// flux-bff patch: a WebSocket connection written directly, by a send that finds nothing
/// ahead of it in the socket's queue: the sending thread writes the packets to the
/// connection itself (one system call in the broadcasting thread's loop) instead of waking
/// the socket's writer task to do it. See `transport::ws::WsConn`.
pub(crate) trait DirectWrite: Send + Sync {
    /// Writes `packets` now, without waiting; gives them back when it cannot, or when
    /// `queued_ahead` (other packets are queued, or being sent, before them).
    fn try_write(&self, packets: PacketBuf, queued_ahead: bool) -> Direct;

    /// Starts loading what [`DirectWrite::try_write`] reads first (see [`crate::hint`]).
    fn prefetch(&self);
}

/// A permit to emit a message to the client.
/// A permit holds a place in the internal channel to send one packet to the client.
pub struct Permit<'a> {
    inner: queue::Permit<'a, PacketBuf>,
    /// flux-bff patch: the WebSocket connection, once its writer runs with direct writes on.
    direct: Option<&'a dyn DirectWrite>,
}
impl Permit<'_> {
    /// flux-bff patch: sends `packets` in the reserved slot, through the direct write when
    /// the socket has one and it takes them (only when this slot is the only one in use:
    /// nothing queued before it, no other send in progress).
    #[inline]
    fn send(self, packets: PacketBuf) {
        let packets = match self.direct {
            Some(direct) => match direct.try_write(packets, !self.inner.is_only_one_in_use()) {
                // The slot is given back as the permit drops.
                Direct::Written => return,
                Direct::Unflushed => {
                    self.inner.wake_receiver();
                    return;
                }
                Direct::Refused(packets) => packets,
            },
            None => packets,
        };
        self.inner.send(packets);
    }

    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        self.send(smallvec![Packet::Message(msg)]);
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        self.send(smallvec![Packet::Binary(data)]);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }
}

#[derive(Debug)]
pub(crate) struct InternalRx {
    pub buffered_rx: queue::Receiver<PacketBuf>,
    pub peeked_packet: Option<PacketBuf>,
    pub volatile_rx: watch::Receiver<Option<PacketBuf>>,
}

impl InternalRx {
    fn new(
        buffered_rx: queue::Receiver<PacketBuf>,
        volatile_rx: watch::Receiver<Option<PacketBuf>>,
    ) -> Self {
        Self {
            buffered_rx,
            peeked_packet: None,
            volatile_rx,
        }
    }
}

/// flux-bff patch: the next packets for a WebSocket writer: what is queued first, then the
/// latest volatile packets; `None` once the queue is closed, or the socket cancelled and what
/// was queued before the cancellation handed out.
///
/// The writer waits on the queue's one waker alone: a volatile send and the socket's
/// cancellation ([`Socket::cancel`]) wake it through the queue. Upstream's writer built a
/// `select!` of the queue, the cancellation token and the volatile channel at every wait, so
/// each write registered and unregistered two `Notify` waiters (four mutex round trips per
/// write, BENCHMARKS.md "CPU per delivery").
pub(crate) fn poll_ws_packets(
    buffered_rx: &mut queue::Receiver<PacketBuf>,
    volatile_rx: &mut watch::Receiver<Option<PacketBuf>>,
    cancelled: &AtomicBool,
    cx: &mut Context<'_>,
) -> Poll<Option<PacketBuf>> {
    loop {
        // A flag, not `CancellationToken::is_cancelled`: that takes the token's mutex, and
        // this runs at every write (2.7 % of the gateway's samples at 1000 × 50/s).
        // Checked at every call, not only when the queue is empty: senders that keep the
        // queue filled (a lagging client's backlog, broadcasts) kept a cancelled writer going
        // while its client read, and the session's close, which waits for the queue, with it
        // (found by review). The sealed queue hands out what was queued before (the close
        // packet that `Socket::close` queues just before cancelling among it), takes no more,
        // and then returns `None`.
        if cancelled.load(Ordering::Acquire) {
            buffered_rx.seal();
        }
        if let Poll::Ready(packets) = buffered_rx.poll_recv(cx) {
            return Poll::Ready(packets);
        }
        // The waker is registered: a cancellation or a volatile send after these checks wakes
        // this task again.
        if cancelled.load(Ordering::Acquire) {
            continue; // cancelled since the check above: sealed now, then drained
        }
        if !volatile_rx.has_changed().unwrap_or(false) {
            return Poll::Pending;
        }
        if let Some(packets) = volatile_rx.borrow_and_update().clone() {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws volatile flush: {} packets", packets.len());
            return Poll::Ready(Some(packets));
        }
    }
}

/// flux-bff patch: what the engine's heartbeat task needs to know of a socket (times in ms
/// of the engine's clock).
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    /// When the next ping is due (v4).
    next_ping_ms: AtomicU64,
    /// When the outstanding ping was sent; 0 when none is (v4).
    ping_sent_ms: AtomicU64,
    /// When the client last sent a heartbeat packet.
    last_seen_ms: AtomicU64,
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat job that verify that the connection is still up by sending packets periodically.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Channel to send [`PacketBuf`] to the connection
    ///
    /// It is used and managed by the [`EngineIo`](crate::engine) struct depending on the transport type
    ///
    /// It is locked if [`EngineIo`](crate::engine) is currently reading from it :
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation_token`].
    ///
    /// The channel is made of a [`SmallVec`] of [`Packet`]s so that adjacent packets can be sent atomically.
    pub(crate) internal_rx: Mutex<InternalRx>,

    /// Channel to send [PacketBuf] to the internal connection
    pub(crate) internal_tx: queue::Sender<PacketBuf>,

    /// Channel to send volatile [PacketBuf]s that bypass the internal buffer.
    /// Uses a [`watch`](tokio::sync::watch) channel so only the latest volatile
    /// message is retained; subsequent volatile sends overwrite the previous one.
    volatile_tx: watch::Sender<Option<PacketBuf>>,

    /// flux-bff patch: the heartbeat state, checked by the engine's one heartbeat task
    /// ([`crate::engine::EngineIo`]) instead of a task per socket.
    pub(crate) heartbeat: Heartbeat,

    /// A cancellation token that will be triggered when the socket is being closed.
    pub(crate) cancellation_token: CancellationToken,
    /// flux-bff patch: set by [`Socket::cancel`] with the token, for the WebSocket writer's
    /// check at every wait (an atomic load, not the token's mutex).
    pub(crate) cancelled: AtomicBool,

    /// flux-bff patch: the WebSocket connection, set when its writer starts (with direct
    /// writes on); [`Permit`]s write through it when the queue is empty.
    pub(crate) direct: OnceLock<Arc<dyn DirectWrite>>,

    /// Function to call when the socket is closed
    close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    pub req_parts: Parts,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        let (internal_tx, internal_rx) = queue::channel(config.max_buffer_size);
        let (volatile_tx, volatile_rx) = watch::channel(None);

        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx, volatile_rx)),
            internal_tx,

            volatile_tx,

            heartbeat: Heartbeat::default(),
            cancellation_token: CancellationToken::new(),
            cancelled: AtomicBool::new(false),
            direct: OnceLock::new(),

            close_fn,

            data: D::default(),
            req_parts,

            supports_binary,
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        self.internal_tx
            .try_send(smallvec![packet])
            .map_err(|p| match p {
                TrySendError::Full(mut p) => TrySendError::Full(p.pop().unwrap()),
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            })?;
        Ok(())
    }
    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// A heartbeat packet from the client: a pong (v4) or a ping (v3, answered at once).
    pub(crate) fn heartbeat_received(&self, now_ms: u64) {
        self.heartbeat.last_seen_ms.store(now_ms, Ordering::Relaxed);
        self.heartbeat.ping_sent_ms.store(0, Ordering::Relaxed);
        #[cfg(feature = "v3")]
        if self.protocol == ProtocolVersion::V3 {
            self.internal_tx.try_send(smallvec![Packet::Pong]).ok();
        }
    }

    /// One heartbeat check at `now_ms` (v4: the server pings every `interval` and expects a
    /// pong within `timeout`; v3: the client pings at least every `interval + timeout`).
    /// `Err` when the socket must be closed for a heartbeat timeout.
    pub(crate) fn heartbeat_check(
        &self,
        now_ms: u64,
        interval: Duration,
        timeout: Duration,
    ) -> Result<(), Error> {
        // The heartbeat pass is also when an emptied send queue gives its memory back.
        self.internal_tx.release_if_empty();
        let hb = &self.heartbeat;
        let interval = interval.as_millis() as u64;
        let timeout = timeout.as_millis() as u64;
        #[cfg(feature = "v3")]
        if self.protocol == ProtocolVersion::V3 {
            let last = hb.last_seen_ms.load(Ordering::Relaxed);
            return if now_ms.saturating_sub(last) > interval + timeout {
                Err(Error::HeartbeatTimeout)
            } else {
                Ok(())
            };
        }
        let sent = hb.ping_sent_ms.load(Ordering::Relaxed);
        if sent != 0 {
            return if now_ms.saturating_sub(sent) >= timeout {
                Err(Error::HeartbeatTimeout)
            } else {
                Ok(())
            };
        }
        // Pings pause while the transport is being upgraded.
        if self.is_upgrading() || now_ms < hb.next_ping_ms.load(Ordering::Relaxed) {
            return Ok(());
        }
        // flux-bff patch: the ping is noted as sent before it is queued. Queuing it wakes the
        // writer, which may send it, read the client's pong and clear `ping_sent_ms` before
        // this thread runs again: noted after, the ping would count as unanswered and the
        // socket be closed `timeout` later (found by review). (The reader's clear comes after
        // this store in the variable's order: over a WebSocket, the queue's lock and then the
        // connection's lock order them. A ping that cannot be queued closes the socket.)
        hb.ping_sent_ms.store(now_ms.max(1), Ordering::Relaxed);
        hb.next_ping_ms.store(now_ms + interval, Ordering::Relaxed);
        // flux-bff patch: one slot past the queue's bound when it is full. Upstream closed the
        // socket at once when its queue was full at ping time, so a slow client (its queue
        // kept full by the gateway's backlog drainer) was dropped as a heartbeat timeout with
        // no grace; now it gets the ping behind what it has queued, and `timeout` to answer
        // it. A queue still past its bound at the next ping (nothing read since, pongs sent
        // unasked) closes the socket as upstream did.
        self.internal_tx
            .send_past_bound(smallvec![Packet::Ping])
            .map_err(|_| Error::HeartbeatTimeout)?;
        Ok(())
    }

    /// Starts the heartbeat clock of a new session at `now_ms`: the first ping goes out at
    /// once, as upstream's heartbeat task did.
    pub(crate) fn heartbeat_start(&self, now_ms: u64) {
        let hb = &self.heartbeat;
        hb.last_seen_ms.store(now_ms, Ordering::Relaxed);
        hb.next_ping_ms.store(now_ms, Ordering::Relaxed);
    }

    /// flux-bff patch: cancels the socket's transport tasks and wakes its WebSocket writer,
    /// which watches the cancellation through its queue (see [`poll_ws_packets`]).
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.cancellation_token.cancel();
        self.internal_tx.wake_receiver();
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// flux-bff patch: starts loading what a send to this socket reads, `depth` pointers
    /// below it: 0 its own fields, 1 its queue and its WebSocket connection. A broadcast
    /// asks for the next sockets' lines at increasing depths while it writes one (see
    /// [`crate::hint`]).
    #[doc(hidden)]
    #[inline]
    pub fn prefetch_send(&self, depth: usize) {
        if depth == 0 {
            crate::hint::prefetch(&self.internal_tx);
            crate::hint::prefetch(&self.direct);
        } else {
            self.internal_tx.prefetch();
            if let Some(direct) = self.direct.get() {
                direct.prefetch();
            }
        }
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let permit = self.internal_tx.try_reserve()?;
        Ok(Permit {
            inner: permit,
            direct: self.direct.get().map(|direct| &**direct),
        })
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        // Try to send a close packet is the connection is still operational.
        self.send(Packet::Close).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        self.internal_tx.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        self.internal_tx.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the main mpsc buffer queue, they may
    /// arrive out of order relative to regular messages.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (channel full or transport shutting down).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        let sent = self.volatile_tx.send(Some(packets)).is_ok();
        if sent {
            // flux-bff patch: the WebSocket writer watches the volatile packet through its
            // queue's waker (see [`poll_ws_packets`]).
            self.internal_tx.wake_receiver();
        }
        sent
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("internal_rx", &self.internal_rx)
            .field("internal_tx", &self.internal_tx)
            .field("heartbeat", &self.heartbeat)
            .field("cancellation_token", &self.cancellation_token)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> std::sync::Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (
        std::sync::Arc<Socket<D>>,
        tokio::sync::mpsc::Receiver<Packet>,
    ) {
        let (internal_tx, internal_rx) = queue::channel(buffer_size);
        let (volatile_tx, volatile_rx) = watch::channel(None);

        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx, volatile_rx)),
            internal_tx,

            volatile_tx,

            heartbeat: Heartbeat::default(),
            cancellation_token: CancellationToken::new(),
            cancelled: AtomicBool::new(false),
            direct: OnceLock::new(),
            close_fn,

            data: D::default(),
            req_parts: http::Request::<()>::default().into_parts().0,

            supports_binary: true,
        };
        let sock = std::sync::Arc::new(sock);

        let (tx, rx) = tokio::sync::mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            let mut internal_rx = sock_clone.internal_rx.try_lock().unwrap();
            while let Some(packets) = internal_rx.buffered_rx.recv().await {
                for packet in packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::Arc;

    use http::Request;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    /// What a WebSocket writer waiting on `socket` gets next.
    fn next(socket: &Arc<Socket<()>>) -> tokio::task::JoinHandle<Option<PacketBuf>> {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut rx = socket.internal_rx.lock().await;
            let InternalRx {
                buffered_rx,
                volatile_rx,
                ..
            } = &mut *rx;
            poll_fn(|cx| poll_ws_packets(buffered_rx, volatile_rx, &socket.cancelled, cx)).await
        })
    }

    async fn waiting(task: &tokio::task::JoinHandle<Option<PacketBuf>>) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "the writer should be waiting");
    }

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_a_packet_a_volatile_packet_and_the_cancellation() {
        let socket = socket();

        let task = next(&socket);
        waiting(&task).await;
        socket.emit("queued").unwrap();
        let got = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert_eq!(got.unwrap()[0], Packet::Message("queued".into()));

        let task = next(&socket);
        waiting(&task).await;
        assert!(socket.emit_volatile("volatile"));
        let got = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert_eq!(got.unwrap()[0], Packet::Message("volatile".into()));

        // The volatile packet was taken: the writer waits again, until the cancellation.
        let task = next(&socket);
        waiting(&task).await;
        socket.cancel();
        let got = tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
        assert!(got.is_none());
    }

    /// flux-bff patch: a slow client's full queue does not close it at ping time; the ping
    /// goes behind its packets, and only an unanswered ping closes it after the timeout.
    #[tokio::test]
    async fn a_full_queue_at_ping_time_gets_the_ping_behind_its_packets() {
        let config = EngineIoConfig::builder().max_buffer_size(2).build();
        let socket = Arc::new(Socket::<()>::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &config,
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ));
        socket.emit("first").unwrap();
        socket.emit("second").unwrap();
        assert!(socket.emit("third").is_err(), "the queue is full");
        let (interval, timeout) = (Duration::from_secs(25), Duration::from_secs(20));
        socket.heartbeat_start(1_000);
        assert!(
            socket.heartbeat_check(1_000, interval, timeout).is_ok(),
            "a full queue is no heartbeat timeout"
        );
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend(next(&socket).await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            [
                Packet::Message("first".into()),
                Packet::Message("second".into()),
                Packet::Ping
            ]
        );
        assert!(socket.emit("after").is_ok(), "the queue has room again");
        // No pong: closed once the timeout has passed, not before.
        assert!(socket.heartbeat_check(20_999, interval, timeout).is_ok());
        assert!(socket.heartbeat_check(21_000, interval, timeout).is_err());
    }

    /// flux-bff patch: a client that reads nothing but answers pings it never read (pongs
    /// sent unasked) does not get a ping past its full queue at every interval.
    #[tokio::test]
    async fn a_queue_still_past_its_bound_at_the_next_ping_closes_the_socket() {
        let config = EngineIoConfig::builder().max_buffer_size(2).build();
        let socket = Arc::new(Socket::<()>::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &config,
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ));
        socket.emit("first").unwrap();
        socket.emit("second").unwrap();
        let (interval, timeout) = (Duration::from_secs(25), Duration::from_secs(20));
        socket.heartbeat_start(1_000);
        assert!(socket.heartbeat_check(1_000, interval, timeout).is_ok());
        socket.heartbeat_received(2_000);
        assert!(
            socket.heartbeat_check(26_000, interval, timeout).is_err(),
            "the ping before is still queued: no second one past the bound"
        );
    }

    /// flux-bff patch: the writer may send the ping, and the reading task take the client's
    /// pong, before the heartbeat thread runs again after queuing it. Here the pong "arrives"
    /// as the ping is queued: the queue wakes the writer's waker, which takes it.
    #[test]
    fn a_pong_read_before_the_ping_is_noted_answers_it() {
        struct PongOnWake(Arc<Socket<()>>, u64);
        impl std::task::Wake for PongOnWake {
            fn wake(self: Arc<Self>) {
                self.0.heartbeat_received(self.1);
            }
        }
        let socket = socket();
        let (interval, timeout) = (Duration::from_secs(25), Duration::from_secs(20));
        let waker = std::task::Waker::from(Arc::new(PongOnWake(socket.clone(), 1_001)));
        socket
            .internal_rx
            .try_lock()
            .unwrap()
            .buffered_rx
            .register(&mut Context::from_waker(&waker));
        socket.heartbeat_start(1_000);
        assert!(socket.heartbeat_check(1_000, interval, timeout).is_ok());
        assert!(
            socket.heartbeat_check(21_000, interval, timeout).is_ok(),
            "the ping was answered"
        );
    }

    #[tokio::test]
    async fn queued_packets_go_before_a_volatile_one() {
        let socket = socket();
        socket.emit("first").unwrap();
        assert!(socket.emit_volatile("volatile"));
        let got = next(&socket).await.unwrap().unwrap();
        assert_eq!(got[0], Packet::Message("first".into()));
        let got = next(&socket).await.unwrap().unwrap();
        assert_eq!(got[0], Packet::Message("volatile".into()));
    }
}
