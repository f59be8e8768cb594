//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{
            Role, WebSocketConfig,
            frame::{
                Frame,
                coding::{Data, OpCode},
            },
        },
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket,
    body::ResponseBody,
    config::EngineIoConfig,
    engine::EngineIo,
    errors::Error,
    handler::EngineIoHandler,
    socket::{Direct, DirectWrite, InternalRx},
    transport::{deflate, direct::DirectPolicy, make_open_packet},
};

/// flux-bff patch: the capacity a connection's write buffer keeps once written out; the
/// buffer of a larger batch (the four snapshots of a join: 16 KB) is freed after its flush.
/// A few tickers' worth, so that a busy socket does not allocate a buffer per flush
/// (BENCHMARKS.md, "Memory per hydrated client").
const WS_WRITE_BUFFER_RETAINED: usize = 4096;

/// Create a response for websocket upgrade, accepting permessage-deflate with `extension`
/// (flux-bff patch).
fn ws_response<B>(
    ws_key: &HeaderValue,
    extension: Option<&'static str>,
) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec);
    if let Some(extension) = extension {
        response = response.header(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(extension),
        );
    }
    response.body(ResponseBody::empty_response()).unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (mut parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    // flux-bff patch: permessage-deflate when it is configured and the client offers it.
    let extension = engine
        .config
        .ws_compression
        .and_then(|_| deflate::negotiate(&parts.headers));
    let compression = extension.and(engine.config.ws_compression);
    // The session keeps the request head for its whole life: not the answered offer.
    parts.headers.remove(http::header::SEC_WEBSOCKET_EXTENSIONS);

    // flux-bff patch: the upgrade and the handshake run in their own allocation, freed once
    // the connection is up, so the task that lives as long as the connection holds only
    // what the connection needs (the upstream task kept the whole handshake state machine,
    // about 4.4 KB per connection).
    let handshake_engine = engine.clone();
    let handshake = Box::pin(async move {
        match hyper::upgrade::on(req).await {
            Ok(conn) => {
                let conn = hyper_util::rt::TokioIo::new(conn);
                let ws =
                    handshake::<H, _>(handshake_engine, conn, protocol, sid, parts, compression);
                Some(ws.await)
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                None
            }
        }
    });
    let conn_task = async move {
        // Its own statement, so that the boxed handshake is dropped before the connection runs.
        let handshake = handshake.await;
        let res = match handshake {
            None => return,
            Some(Ok((socket, ws))) => run::<H, _>(&engine, socket, ws, compression).await,
            Some(Err(e)) => Err(e),
        };
        on_closed(&engine, sid, res);
    };
    tokio::spawn(conn_task);

    Ok(ws_response(&ws_key, extension))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (socket, ws) =
        handshake::<H, S>(engine.clone(), conn, protocol, sid, req_data, None).await?;
    run::<H, S>(&engine, socket, ws, None).await
}

/// The websocket handshake of [`on_init`]: a new session, or the upgrade of a polling one.
/// `compression`: the threshold of a negotiated permessage-deflate (flux-bff patch).
async fn handshake<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
    compression: Option<usize>,
) -> Result<(Arc<Socket<H::Data>>, WebSocketStream<S>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // flux-bff patch: the write buffer gives back what a large write (the snapshots a client
    // gets on joining) made it grow to, instead of holding it for the life of the connection.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .retained_write_buffer_size(WS_WRITE_BUFFER_RETAINED)
        // Compressed client messages reach `forward_to_handler` as RSV1 frames.
        .accept_rsv1_messages(compression.is_some())
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let inflate = compression.map(|_| engine.config.max_payload);
                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws, inflate);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                (socket, ws)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        (socket, ws)
    };
    Ok((socket, ws))
}

/// The connection of [`on_init`], once the handshake is done: reads until it closes.
async fn run<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    ws: WebSocketStream<S>,
    compression: Option<usize>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Pipe between websocket and internal socket channel. Spawned from a plain function: a
    // writer future built here would be reserved in this future's state (2.3 KB) although
    // it is moved out at once.
    let ws = spawn_writer::<H, S>(&socket, ws, compression, engine);

    // pipe between internal socket channel and websocket
    match forward_to_handler(engine, &ws, &socket, compression.is_some())
        .with_cancellation_token(&socket.cancellation_token)
        .await
    {
        Some(Err(ref e)) => {
            let reason =
                Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

            #[cfg(feature = "tracing")]
            tracing::debug!("error when handling packet: {:?}", e);
            engine.close_session(socket.id, reason);
        }
        Some(Ok(())) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
        }
        None => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
        }
    }
    Ok(())
}

/// Spawns the writer of `ws`; returns the reading task's hold on the connection, which it
/// shares with the writer. Sends write the connection directly as the engine's policy
/// allows; a client gets the engine's ping timeout to take the close (flux-bff patch).
fn spawn_writer<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: WebSocketStream<S>,
    compression: Option<usize>,
    engine: &EngineIo<H>,
) -> TaskHold<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let [reading, writing] = WsConn::open(ws, socket.protocol, compression, engine.direct);
    let close_timeout = engine.config.ping_timeout;
    let writer = forward_to_socket::<H, S>(socket.clone(), writing, close_timeout);
    tokio::spawn(writer);
    reading
}

/// What the connection task does when the connection ends.
fn on_closed<H: EngineIoHandler>(engine: &EngineIo<H>, sid: Option<Sid>, res: Result<(), Error>) {
    match res {
        Ok(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(?sid, "ws closed")
        }
        Err(Error::MultipleWebsocketRequests) => {}
        Err(_e) => {
            #[cfg(feature = "tracing")]
            tracing::debug!(?sid, "ws closed with error: {_e}");
            if let Some(sid) = sid {
                engine.close_session(sid, DisconnectReason::TransportError);
            }
        }
    }
}

/// Forwards all packets received from a websocket to a EngineIo [`Socket`]; with `inflate`
/// (permessage-deflate negotiated), compressed messages are inflated first.
async fn forward_to_handler<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    ws: &WsConn<S>,
    socket: &Arc<Socket<H::Data>>,
    inflate: bool,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(msg) = std::future::poll_fn(|cx| ws.poll_read(cx))
        .await
        .transpose()?
    {
        let msg = match msg {
            Message::Frame(frame) if inflate && frame.header().rsv1 => {
                inflated(frame, engine.config.max_payload)?
            }
            msg => msg,
        };
        match msg {
            Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
                Packet::Close => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!("[sid={}] closing session", socket.id);
                    engine.close_session(socket.id, DisconnectReason::TransportClose);
                    break;
                }
                Packet::Pong | Packet::Ping => {
                    // A full channel means that the client is already known to be alive.
                    socket.heartbeat_received(engine.now_ms());
                    Ok::<(), Error>(())
                }
                Packet::Message(msg) => {
                    engine.handler.on_message(msg, socket.clone());
                    Ok(())
                }
                p => return Err(Error::BadPacket(p)),
            },
            Message::Binary(mut data) => {
                if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                    // The first byte is the message type, which we don't need.
                    data = data.split_off(1);
                }
                engine.handler.on_binary(data, socket.clone());
                Ok(())
            }
            Message::Close(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("websocket closed, closing session");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                break;
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = ?socket.id, "unexpected ws message");
                Ok(())
            }
        }?
    }
    Ok(())
}

/// flux-bff patch: the message a compressed (RSV1) client message inflates to, at most
/// `max_payload` bytes; a deflate bomb, a corrupt stream or text that is not UTF-8 is an
/// error of this connection.
fn inflated(frame: Frame, max_payload: u64) -> Result<Message, Error> {
    let text = frame.header().opcode == OpCode::Data(Data::Text);
    let limit = usize::try_from(max_payload).unwrap_or(usize::MAX);
    Ok(
        match deflate::inflate_message(frame.payload(), limit, text)? {
            deflate::Inflated::Text(text) => Message::Text(text.into()),
            deflate::Inflated::Binary(data) => Message::Binary(data.into()),
        },
    )
}

/// flux-bff patch: a WebSocket connection, shared by its reading task, its writer task and
/// the threads that send to the socket.
///
/// One lock for both directions, held for one read or one batch of writes at a time (never
/// across an `.await`: every call under it is a non-blocking poll), instead of
/// `futures::StreamExt::split`'s `BiLock` behind a second lock for the writers: each write
/// took the `BiLock` in `poll_ready`, `start_send` and `poll_flush` (2.1 % of the samples at
/// 1000 × 50/s), and the connection sat in an allocation of its own, one more cold load
/// per send that [`DirectWrite::prefetch`] could not reach. tungstenite keeps the reader's
/// and the writer's wakers apart, so either side polls with its own context. (Measured: no
/// change in CPU per delivery that a series could tell, 0.3 KB less per connection:
/// BENCHMARKS.md, "One lock for the whole connection".)
///
/// A send that finds the socket idle (nothing queued, nothing written lately) writes its
/// packets here itself ([`DirectWrite::try_write`]), as its engine's [`DirectPolicy`]
/// allows: when events to a socket are sparse, each is a write of its own anyway, and the
/// broadcasting thread then writes every socket of a room in one loop instead of waking each
/// socket's writer task to write it (at 1000 × 50/s, 3.5 % of the CPU per delivery through
/// Kafka, a fifth with the gateway alone: BENCHMARKS.md "Direct writes"). Whatever it cannot
/// write at once, and every other packet, goes through the queue to the writer task as
/// before.
///
/// Order: the writer task takes packets from the queue only while it holds this lock, and
/// marks them `taken` until it has fed them to the connection (or to `held`); a direct write
/// happens only under the same lock, with nothing queued, taken, held or unflushed. So a
/// direct write never overtakes a queued packet. (Volatile packets, which bypass the queue
/// and are unordered by contract, are not counted as queued.)
///
/// Messages are built (and compressed: a large message's deflate takes a while) outside the
/// lock, by the writer task between taking packets and feeding them, by a direct write before
/// it takes the lock: under it, the reading task waited for a whole deflate, parked on the
/// mutex, and other threads' direct writes were refused (flux-bff patch, found by review).
struct WsConn<S> {
    /// `None` once both of the connection's tasks have let go of it ([`TaskHold`]): the
    /// stream is dropped then, and the connection closed, although the socket keeps this
    /// struct for its direct writes as long as it lives.
    state: std::sync::Mutex<Option<WsConnState<S>>>,
    protocol: ProtocolVersion,
    compression: Option<usize>,
    /// When sends write directly.
    direct: DirectPolicy,
    /// When messages were last fed to the connection (the policy's clock, ns): a socket written
    /// lately is left to its writer task. Outside the lock, so that a send that finds the
    /// socket busy refuses without taking it.
    last_fed: AtomicU64,
}

struct WsConnState<S> {
    ws: WebSocketStream<S>,
    /// The writer task has closed the connection: nothing is written any more (it reads
    /// the client's answer to the close).
    closed: bool,
    /// Messages the connection could not take yet (its buffer was full), oldest first.
    held: VecDeque<Message>,
    /// Messages fed since the last completed flush.
    unflushed: bool,
    /// The writer task has taken packets from the queue and builds their messages outside the
    /// lock: a direct write now would overtake them.
    taken: bool,
    /// A flush was begun and the connection could not take all of it: the writer takes no
    /// more packets from the queue until it is done, so that a client that stops reading
    /// fills the socket's queue (where the gateway sees it lag) rather than the WebSocket's
    /// write buffer (128 KiB before it pushes back).
    flushing: bool,
    /// How many of the connection's two tasks (the reading task, the writer task) still
    /// hold it ([`WsConn::open`] makes both holds, and only those).
    holds: u8,
}

impl<S> WsConn<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<WsConnState<S>>> {
        crate::lock(&self.state)
    }
}

/// A task's hold on its connection (the reading task's, the writer task's): when both have
/// let go, the stream is dropped — the connection closed, its buffers freed — whoever still
/// holds the [`WsConn`] (the socket, for direct writes, until it is dropped itself).
struct TaskHold<S>(Arc<WsConn<S>>);

impl<S> std::ops::Deref for TaskHold<S> {
    type Target = WsConn<S>;
    fn deref(&self) -> &WsConn<S> {
        &self.0
    }
}

impl<S> Drop for TaskHold<S> {
    fn drop(&mut self) {
        let released = {
            let mut state = self.0.lock();
            match state.as_mut() {
                Some(open) if open.holds > 1 => {
                    open.holds -= 1;
                    None
                }
                _ => state.take(),
            }
        };
        drop(released); // the stream, closed outside the lock
    }
}

impl<S> WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The connection `ws`, written directly as `direct` allows: the reading task's hold on
    /// it and the writer task's.
    fn open(
        ws: WebSocketStream<S>,
        protocol: ProtocolVersion,
        compression: Option<usize>,
        direct: DirectPolicy,
    ) -> [TaskHold<S>; 2] {
        let conn = Arc::new(WsConn {
            state: std::sync::Mutex::new(Some(WsConnState {
                ws,
                closed: false,
                held: VecDeque::new(),
                unflushed: false,
                taken: false,
                flushing: false,
                holds: 2,
            })),
            protocol,
            compression,
            last_fed: AtomicU64::new(0),
            direct,
        });
        conn.fed_now(); // a new connection is busy with its handshake's packets
        [TaskHold(conn.clone()), TaskHold(conn)]
    }

    /// Notes that messages were fed to the connection now (when sends may write directly).
    fn fed_now(&self) {
        if self.direct.is_on() {
            self.last_fed.store(self.direct.now(), Ordering::Relaxed);
        }
    }

    /// The next message from the client; `None` once the connection is closed.
    fn poll_read(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, tungstenite::Error>>> {
        match self.lock().as_mut() {
            Some(state) => Pin::new(&mut state.ws).poll_next(cx),
            None => Poll::Ready(None),
        }
    }

    /// Reads, and drops, the client's messages until its answer to the close, or the end of
    /// the connection.
    async fn read_until_closed(&self) {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| self.poll_read(cx)).await {}
    }

    /// Flushes what was written and closes the connection (a close frame); nothing is
    /// written after. What the connection could not take yet is dropped.
    async fn close(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            let Some(state) = state.as_mut() else {
                return Poll::Ready(());
            };
            state.closed = true;
            state.held.clear();
            // An error is the connection's: the reads after the close see it.
            Pin::new(&mut state.ws).poll_close(cx).map(|_| ())
        })
        .await;
    }
}

impl<S> WsConnState<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Feeds `msg` to the connection, after what is held; holds it when its buffer is full. Counts
    /// what was fed in `sent` (messages, payload bytes).
    fn feed(&mut self, msg: Message, sent: &mut (u64, u64), cx: &mut Context<'_>) {
        if self.held.is_empty() {
            if let Poll::Ready(ready) = Pin::new(&mut self.ws).poll_ready(cx) {
                self.start_send(ready, msg, sent);
                return;
            }
        }
        self.held.push_back(msg);
    }

    /// Feeds the held messages to the connection until its buffer is full.
    fn feed_held(&mut self, sent: &mut (u64, u64), cx: &mut Context<'_>) {
        if self.held.is_empty() {
            return;
        }
        while let Some(msg) = self.held.pop_front() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(ready) => self.start_send(ready, msg, sent),
                Poll::Pending => {
                    self.held.push_front(msg);
                    return;
                }
            }
        }
        // Only a full buffer makes it hold anything: an idle socket keeps no buffer here.
        self.held = VecDeque::new();
    }

    /// Sends `msg` to a connection that was found `ready`; an error drops it (logged), as the
    /// upstream writer did.
    fn start_send(
        &mut self,
        ready: Result<(), tungstenite::Error>,
        msg: Message,
        sent: &mut (u64, u64),
    ) {
        let len = match &msg {
            Message::Frame(frame) => frame.payload().len(),
            msg => msg.len(),
        } as u64;
        match ready.and_then(|()| Pin::new(&mut self.ws).start_send(msg)) {
            Ok(()) => {
                self.unflushed = true;
                sent.0 += 1;
                sent.1 += len;
            }
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("error sending packet: {}", _e);
            }
        }
    }

    /// Flushes what was fed; `Ready` once all of it is written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.unflushed {
            self.flushing = true;
            // An error is the connection's: its reading task sees it and closes the session.
            std::task::ready!(Pin::new(&mut self.ws).poll_flush(cx)).ok();
            self.unflushed = false;
            self.flushing = false;
        }
        Poll::Ready(())
    }
}

impl<S> DirectWrite for WsConn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn prefetch(&self) {
        crate::hint::prefetch(self);
    }

    fn try_write(&self, packets: PacketBuf, queued_ahead: bool) -> Direct {
        // Reached only when direct writes are on: the writer gives the socket this
        // connection only then.
        let policy = self.direct;
        debug_assert!(policy.is_on());
        if queued_ahead {
            return policy.refuse_busy(packets);
        }
        let now = policy.now();
        if policy.written_recently(self.last_fed.load(Ordering::Relaxed), now) {
            return policy.refuse_busy(packets); // more may follow: the writer task batches them
        }
        // The messages are built before the lock is taken (see `WsConn`), but only while
        // this thread has budget left: past it, a broadcast's sends build nothing here.
        // (What `take_budget` answers below, with nothing in between that changes this
        // thread's window.)
        let build = |packets: &PacketBuf| {
            (packets.iter().cloned())
                .filter_map(|packet| ws_message(self.protocol, packet, self.compression))
                .collect::<smallvec::SmallVec<[Message; 2]>>()
        };
        let messages = policy.has_budget(now).then(|| build(&packets));
        // Held by the writer task (it is writing), the reading task or another sender: queue.
        let Ok(mut state) = self.state.try_lock() else {
            return policy.refuse_busy(packets);
        };
        let Some(state) = state.as_mut().filter(|state| !state.closed) else {
            return Direct::Refused(packets); // the writer task has closed the connection
        };
        if state.unflushed || state.taken || !state.held.is_empty() {
            return policy.refuse_busy(packets); // the writer task has its own to write first
        }
        if !policy.take_budget(now) {
            return Direct::Refused(packets); // this thread's share is spent: the tasks write
        }
        // (Built already: `has_budget` said so. Were it ever wrong, they are built here.)
        let mut messages = messages.unwrap_or_else(|| build(&packets));
        // Nothing waits on this context: whatever is left to write is the writer task's,
        // which the caller wakes on `Unflushed`, and which polls the connection with its own waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut sent = (0, 0);
        // Outside tokio's cooperative budget: a broadcast writes every socket of a room in
        // one poll of its task, and a spent budget would make each write after the 128th
        // pretend the connection is full (the writer tasks would do them after all).
        let mut write = std::pin::pin!(tokio::task::coop::unconstrained(std::future::poll_fn(
            |cx| {
                for msg in std::mem::take(&mut messages) {
                    state.feed(msg, &mut sent, cx);
                }
                if state.held.is_empty() {
                    state.poll_flush(cx)
                } else {
                    Poll::Pending
                }
            }
        )));
        let flushed = write.as_mut().poll(&mut cx).is_ready();
        self.last_fed.store(now, Ordering::Relaxed);
        crate::stats::add_ws_sent(sent.0, sent.1);
        if flushed {
            crate::stats::add_ws_direct(sent.0);
            Direct::Written
        } else {
            Direct::Unflushed
        }
    }
}

/// Forwards all packets waiting to be sent to the websocket
///
/// The websocket stream is flushed only when the internal channel is drained. With
/// `compression` (flux-bff patch: permessage-deflate negotiated, and its threshold), text
/// messages of at least that size go out compressed, each compressed once for all sockets.
/// flux-bff patch: the connection is shared with its reading task and with the senders that
/// write directly ([`WsConn`]). When the session closes, the writer lets go of the queue at
/// once, even while it waits for room in the connection, and of the connection once the
/// client has answered the close, or after `close_timeout` (flux-bff patch: upstream's writer
/// waited for a client that stopped reading for as long as its TCP connection lived, and
/// the session's close, which waits for the queue, with it).
async fn forward_to_socket<H: EngineIoHandler, S>(
    socket: Arc<Socket<H::Data>>,
    conn: TaskHold<S>,
    close_timeout: std::time::Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A polling request that was in progress during the upgrade may still hold the lock.
    let lock = socket.internal_rx.lock();
    let Some(mut internal_rx) = lock
        .with_cancellation_token(&socket.cancellation_token)
        .await
    else {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "session closed before starting the ws writer");
        return;
    };
    let InternalRx {
        buffered_rx,
        volatile_rx,
        ..
    } = &mut *internal_rx;

    if conn.direct.is_on() {
        // A socket has one WebSocket writer: a second WebSocket request is refused.
        socket.direct.set(conn.0.clone()).ok();
    }

    // Wait for packets, feed them and everything queued behind them, flush once the queue
    // is drained; until the queue closes or the socket is cancelled. The lock is let go while
    // a batch's messages are built, so that the reading task waits for one batch's feeding
    // at the most.
    std::future::poll_fn(|cx| {
        let mut sent = (0, 0);
        let mut guard = conn.lock();
        let poll = loop {
            let Some(state) = guard.as_mut() else {
                break Poll::Ready(());
            };
            state.feed_held(&mut sent, cx);
            let waiting_for_room =
                !state.held.is_empty() || (state.flushing && state.poll_flush(cx).is_pending());
            if waiting_for_room {
                // The connection wakes this task when it has room; the queue, when the
                // session is closed: a client that stopped reading must not keep it.
                buffered_rx.register(cx);
                if socket.cancelled.load(Ordering::Acquire) {
                    break Poll::Ready(());
                }
                break Poll::Pending;
            }
            match crate::socket::poll_ws_packets(buffered_rx, volatile_rx, &socket.cancelled, cx) {
                Poll::Ready(Some(packets)) => {
                    // Taken under the lock (a direct write cannot overtake them), built
                    // outside it (see `WsConn`), fed under it again.
                    state.taken = true;
                    drop(guard);
                    let messages = (packets.into_iter())
                        .filter_map(|packet| ws_message(conn.protocol, packet, conn.compression))
                        .collect::<smallvec::SmallVec<[Message; 2]>>();
                    guard = conn.lock();
                    let Some(state) = guard.as_mut() else {
                        break Poll::Ready(());
                    };
                    state.taken = false;
                    for msg in messages {
                        state.feed(msg, &mut sent, cx);
                    }
                }
                Poll::Ready(None) => break Poll::Ready(()),
                Poll::Pending => {
                    #[cfg(feature = "tracing")]
                    tracing::trace!(sid = %socket.id, "ws flush");
                    // Ready or not, wait: for packets (the queue's waker is registered) and,
                    // while the flush is incomplete, for room in the connection.
                    let _ = state.poll_flush(cx);
                    break Poll::Pending;
                }
            }
        };
        drop(guard);
        if sent.0 > 0 {
            conn.fed_now();
            crate::stats::add_ws_sent(sent.0, sent.1);
        }
        poll
    })
    .await;

    // The session's close waits for the queue (`EngineIo::close_session`): let go of it
    // before the close handshake.
    drop(internal_rx);

    #[cfg(feature = "tracing")]
    tracing::trace!(sid = %socket.id, "ws closing flush");

    if tokio::time::timeout(close_timeout, conn.close())
        .await
        .is_err()
    {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "the client did not take the close in time");
        return;
    }
    // Then read (and drop) what the client still sends until it answers the close: the TCP
    // connection is closed after the close handshake (RFC 6455 7.1.1), and one closed with
    // bytes unread is reset, which may cost the client what it had not read yet. The
    // reading task, cancelled with the session, reads no more. A client that answers does
    // so within a round trip; one that does not (a half-open connection) is not waited for.
    if tokio::time::timeout(CLOSE_ANSWER_TIMEOUT, conn.read_until_closed())
        .await
        .is_err()
    {
        #[cfg(feature = "tracing")]
        tracing::debug!(sid = %socket.id, "the client did not answer the close in time");
    }
}

/// How long the writer waits for the client's answer to its close (flux-bff patch), once
/// the close is written.
const CLOSE_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The websocket message of `packet`; `None` for a packet that is not sent (a Noop maybe
/// sent by the server to end a polling request during an upgrade, not polled in time).
/// With `compression`, a text message of at least that size is sent compressed (RSV1) when
/// that makes it smaller.
fn ws_message(
    protocol: ProtocolVersion,
    packet: Packet,
    compression: Option<usize>,
) -> Option<Message> {
    match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Some(Message::Binary(buff.into()))
            } else {
                Some(Message::Binary(bin))
            }
        }
        Packet::Noop => None,
        // flux-bff patch: the text or compressed frame of a broadcast message is built once
        // for all its sockets.
        Packet::Message(msg) => Some(super::frames::message(msg, compression)),
        packet => {
            let packet: String = packet.try_into().unwrap();
            Some(Message::Text(packet.into()))
        }
    }
}
/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
///
/// `inflate`: the bound of an inflated message when permessage-deflate was negotiated. A
/// client may compress any message then, the probe and the upgrade too (flux-bff patch).
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
    inflate: Option<u64>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match next_inflated(ws, inflate).await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match next_inflated(ws, inflate).await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

/// The next message of `ws`, inflated if compressed and `inflate` allows it (flux-bff patch;
/// compressed messages arrive as RSV1 frames only when the extension was negotiated).
async fn next_inflated<S>(
    ws: &mut WebSocketStream<S>,
    inflate: Option<u64>,
) -> Option<Result<Message, Error>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    Some(match (ws.next().await?, inflate) {
        (Ok(Message::Frame(frame)), Some(max_payload)) if frame.header().rsv1 => {
            inflated(frame, max_payload)
        }
        (msg, _) => msg.map_err(Error::from),
    })
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn direct_off() -> DirectPolicy {
        DirectPolicy::new(0, crate::engine::Clock::start())
    }

    /// The writer's hold on a connection whose reading task has ended.
    fn writer_hold(server: WebSocketStream<DuplexStream>) -> TaskHold<DuplexStream> {
        let [_reading, writing] = WsConn::open(server, ProtocolVersion::V4, None, direct_off());
        writing
    }

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

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

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A compressed (RSV1) text message, as a client sends it once permessage-deflate is
    /// negotiated: raw deflate, the `00 00 ff ff` tail removed (RFC 7692 7.2.1).
    fn compressed(text: &str) -> Message {
        use flate2::{Compress, Compression, FlushCompress};
        let mut out = Vec::with_capacity(text.len() + 64);
        Compress::new(Compression::default(), false)
            .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "{out:?}");
        out.truncate(out.len() - 4);
        let header = tungstenite::protocol::frame::FrameHeader {
            rsv1: true,
            opcode: OpCode::Data(Data::Text),
            ..Default::default()
        };
        Message::Frame(Frame::from_payload(header, out.into()))
    }

    /// Once permessage-deflate is negotiated a client may compress any message, however
    /// short: the upgrade's probe and upgrade packets too (gorilla/websocket with write
    /// compression does). They were refused as unexpected frames, which closed the session.
    #[tokio::test]
    async fn an_upgrade_in_compressed_messages_completes() {
        let socket = Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Polling,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ));
        let (server, client) = tokio::io::duplex(1024);
        let config = WebSocketConfig::default().accept_rsv1_messages(true);
        let mut server = WebSocketStream::from_raw_socket(server, Role::Server, Some(config)).await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let upgrade = tokio::spawn({
            let socket = socket.clone();
            async move { upgrade_handshake::<StubHandler, _>(&socket, &mut server, Some(1024)).await }
        });

        client.send(compressed("2probe")).await.unwrap();
        let answer = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(answer.unwrap().unwrap(), Message::Text("3probe".into()));
        client.send(compressed("5")).await.unwrap();
        tokio::time::timeout(TIMEOUT, upgrade)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(socket.is_ws(), "upgraded to the websocket");
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writer_hold(server),
            TIMEOUT,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    /// flux-bff patch: the reading task and the writer share one connection. A reader
    /// waiting for the client keeps nothing locked; a writer waiting for room in the
    /// connection and a reader waiting for data are each woken for their own direction;
    /// nothing is written after the close; and once both tasks have let go, the connection
    /// is closed although the struct lives on (the socket keeps it for direct writes).
    #[tokio::test]
    async fn reader_and_writer_share_the_connection() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        // Direct writes on: a send after the close would find the socket idle.
        let direct = DirectPolicy::new(1_000_000, crate::engine::Clock::start());
        let [reading, writing] = WsConn::open(server, socket.protocol, None, direct);
        let conn = reading.0.clone();
        let read = |conn: Arc<WsConn<DuplexStream>>| {
            tokio::spawn(async move { std::future::poll_fn(|cx| conn.poll_read(cx)).await })
        };
        let reader = read(conn.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!reader.is_finished(), "nothing to read yet");

        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writing,
            TIMEOUT,
        ));
        // Sixteen times the pipe: the writer waits for room while the reader waits for data.
        let long = "x".repeat(16 * 1024);
        socket.emit(Str::from(long.clone())).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert_eq!(
            msg.unwrap().unwrap().unwrap(),
            Message::text(format!("4{long}"))
        );

        client.send(Message::text("4hi")).await.unwrap();
        let msg = tokio::time::timeout(TIMEOUT, reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text("4hi"));

        socket.cancel();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert!(matches!(msg.unwrap().unwrap().unwrap(), Message::Close(_)));
        client.flush().await.unwrap(); // the client's answer, which the writer reads
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .unwrap()
            .unwrap();
        let end = tokio::time::timeout(TIMEOUT, read(conn.clone())).await;
        assert!(
            end.unwrap().unwrap().is_none(),
            "the close handshake ends the reads"
        );
        assert!(conn.lock().as_ref().is_some_and(|state| state.closed));
        tokio::time::sleep(Duration::from_millis(20)).await; // idle for longer than 15 ms
        assert!(
            matches!(
                conn.try_write(smallvec![Packet::Noop], false),
                Direct::Refused(_)
            ),
            "nothing is written after the close"
        );

        // The writer task has let go; the reading task lets go: the connection closes.
        drop(reading);
        let mut byte = [0u8; 1];
        let eof = tokio::time::timeout(TIMEOUT, client.get_mut().read(&mut byte)).await;
        assert_eq!(eof.expect("the server end closes").unwrap(), 0);
        assert!(
            conn.lock().is_none(),
            "the stream is dropped, the struct lives on"
        );
    }

    /// flux-bff patch: messages are built (a large one compressed) outside the connection's
    /// lock, by the writer task and by a direct write: under it, the reading task waited for
    /// the whole deflate, parked on the mutex, and other threads' direct writes were refused.
    #[tokio::test]
    async fn messages_are_built_outside_the_connection_lock() {
        // The writer task runs on this thread (a current-thread runtime): so does the hook.
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let direct = DirectPolicy::new(1_000_000, crate::engine::Clock::start());
        let [reading, writing] = WsConn::open(server, socket.protocol, None, direct);
        let locked = Arc::new(std::sync::Mutex::new(Vec::new()));
        super::super::frames::ON_BUILD.set(Some(Box::new({
            let (conn, locked) = (reading.0.clone(), locked.clone());
            move || locked.lock().unwrap().push(conn.state.try_lock().is_err())
        })));
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writing,
            TIMEOUT,
        ));
        socket.emit(Str::from("queued")).unwrap(); // the writer task writes it
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert_eq!(msg.unwrap().unwrap().unwrap(), Message::text("4queued"));

        tokio::time::sleep(Duration::from_millis(20)).await; // idle for longer than 15 ms
        let packets = smallvec![Packet::Message(Str::from("direct"))];
        assert!(matches!(reading.try_write(packets, false), Direct::Written));
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert_eq!(msg.unwrap().unwrap().unwrap(), Message::text("4direct"));

        super::super::frames::ON_BUILD.set(None);
        assert_eq!(
            *locked.lock().unwrap(),
            [false, false],
            "was the connection locked while each message was built?"
        );
        socket.cancel();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert!(matches!(msg.unwrap().unwrap().unwrap(), Message::Close(_)));
        client.flush().await.unwrap(); // the client's answer, which the writer reads
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .unwrap()
            .unwrap();
    }

    /// flux-bff patch: while the writer task builds the messages of packets it has taken, out
    /// of the connection's lock, a direct write is refused: it would overtake them.
    #[tokio::test]
    async fn a_direct_write_while_the_writer_builds_goes_behind_its_packets() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let direct = DirectPolicy::new(1_000_000, crate::engine::Clock::start());
        let [reading, writing] = WsConn::open(server, socket.protocol, None, direct);
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writing,
            TIMEOUT,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await; // idle for longer than 15 ms
        // As the writer task builds "taken", another sender finds the queue empty (the writer
        // took its packet) and the socket idle, and tries a direct write.
        let refused = Arc::new(std::sync::Mutex::new(None));
        super::super::frames::ON_BUILD.set(Some(Box::new({
            let (conn, refused) = (reading.0.clone(), refused.clone());
            let once = std::sync::atomic::AtomicBool::new(false);
            move || {
                if !once.swap(true, Ordering::Relaxed) {
                    let packets = smallvec![Packet::Message(Str::from("second"))];
                    *refused.lock().unwrap() = match conn.try_write(packets, false) {
                        Direct::Refused(packets) => Some(packets),
                        _ => None,
                    };
                }
            }
        })));
        socket.emit(Str::from("taken")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        super::super::frames::ON_BUILD.set(None);
        assert_eq!(msg.unwrap().unwrap().unwrap(), Message::text("4taken"));
        let refused = refused.lock().unwrap().take();
        let packets = refused.expect("the direct write is refused while the writer builds");
        socket.internal_tx.try_send(packets).unwrap(); // queued, as `Permit` does
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert_eq!(msg.unwrap().unwrap().unwrap(), Message::text("4second"));

        socket.cancel();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert!(matches!(msg.unwrap().unwrap().unwrap(), Message::Close(_)));
        client.flush().await.unwrap(); // the client's answer, which the writer reads
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .unwrap()
            .unwrap();
    }

    /// flux-bff patch: the writer closes the connection only once the client has answered
    /// its close (RFC 6455 7.1.1), reading and dropping what the client sends until then: a
    /// connection dropped with bytes unread is reset, not closed, and a client may lose what
    /// it had not read yet. (The reading task is cancelled with the session.)
    #[tokio::test]
    async fn the_writer_waits_for_the_answer_to_its_close() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writer_hold(server),
            TIMEOUT,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await; // the writer waits for packets
        socket.cancel();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await;
        assert!(matches!(msg.unwrap().unwrap().unwrap(), Message::Close(_)));

        // The client sends a message before its answer (a masked text frame, "3"), and
        // answers only later. Written raw: the client's own answer waits in its buffer.
        let raw = client.get_mut();
        raw.write_all(&[0x81, 0x81, 1, 2, 3, 4, b'3' ^ 1])
            .await
            .unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), raw.read(&mut byte)).await;
        assert!(
            read.is_err(),
            "the connection stays open until the answer: {read:?}"
        );
        assert!(!writer.is_finished());

        // The answer: a masked close frame with no payload.
        raw.write_all(&[0x88, 0x80, 1, 2, 3, 4]).await.unwrap();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer ends with the close handshake")
            .unwrap();
        let eof = tokio::time::timeout(TIMEOUT, raw.read(&mut byte)).await;
        assert_eq!(eof.expect("the server end closes").unwrap(), 0);
    }

    /// flux-bff patch: a client that never answers the close (a half-open connection) is
    /// waited for [`CLOSE_ANSWER_TIMEOUT`], not the whole close timeout.
    #[tokio::test]
    async fn a_close_without_answer_is_waited_for_briefly() {
        let socket = socket();
        let (server, _client) = ws_pair().await; // it reads nothing, answers nothing
        let close_timeout = Duration::from_secs(10);
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writer_hold(server),
            close_timeout,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let closed_at = tokio::time::Instant::now();
        socket.cancel();
        tokio::time::timeout(close_timeout, writer)
            .await
            .expect("the writer ends")
            .unwrap();
        let waited = closed_at.elapsed();
        assert!(
            waited >= CLOSE_ANSWER_TIMEOUT && waited < close_timeout,
            "{waited:?}"
        );
    }

    /// flux-bff patch: a writer waiting for room in the connection of a client that stopped
    /// reading still stops with the session: it lets go of the queue at once (the session's
    /// close waits for it), and of the connection after the close timeout.
    #[tokio::test]
    async fn a_writer_waiting_for_room_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await; // it never reads
        let close_timeout = Duration::from_millis(300);
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writer_hold(server),
            close_timeout,
        ));
        // Sixty-four times the pipe: the writer waits for room.
        socket.emit(Str::from("x".repeat(64 * 1024))).unwrap();
        socket.emit(Str::from("y")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer waits for room");

        socket.cancel();
        let queue = tokio::time::timeout(close_timeout / 3, socket.internal_rx.lock()).await;
        assert!(
            queue.is_ok(),
            "the writer lets go of the queue with the session"
        );
        drop(queue);
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer stops after the close timeout")
            .unwrap();
    }

    /// A client that reads everything at once (kept in `read`); each write to it queues one
    /// more message on `socket` (until `LIMIT`), as senders that keep a socket's queue filled
    /// do.
    struct Refilling {
        socket: Arc<Socket<()>>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        read: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Refilling {
        const LIMIT: usize = 10_000;
    }

    impl AsyncWrite for Refilling {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.writes.fetch_add(1, Ordering::Relaxed) < Self::LIMIT {
                self.socket.emit(Str::from("more")).ok();
            }
            self.read.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Refilling {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(())) // the end of the stream: no answer to the close to wait for
        }
    }

    /// flux-bff patch: a cancelled writer whose queue is refilled as fast as it writes (a
    /// client that reads, senders that keep its queue full) still stops: it writes what was
    /// queued before the cancellation and lets go of the queue, which the session's close
    /// waits for. It checked the cancellation only when the queue was empty, and wrote on.
    #[tokio::test]
    async fn a_cancelled_writer_stops_while_its_queue_is_refilled() {
        let socket = socket();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let read = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = Refilling {
            socket: socket.clone(),
            writes: writes.clone(),
            read: read.clone(),
        };
        // Every message goes to the client as it is fed (no write buffer): one refill each.
        let config = WebSocketConfig::default().write_buffer_size(0);
        let ws = WebSocketStream::from_raw_socket(client, Role::Server, Some(config)).await;
        let [_reading, writing] = WsConn::open(ws, ProtocolVersion::V4, None, direct_off());
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writing,
            TIMEOUT,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await; // the writer waits for packets

        socket.emit(Str::from("before the close")).unwrap();
        socket.cancel();
        let queue = tokio::time::timeout(TIMEOUT, socket.internal_rx.lock()).await;
        assert!(queue.is_ok(), "the writer lets go of the queue");
        drop(queue);
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer ends")
            .unwrap();
        let writes = writes.load(Ordering::Relaxed);
        assert!(
            writes <= 2,
            "what was queued before the cancellation and the close frame, not {writes} writes"
        );
        let read = read.lock().unwrap();
        assert!(
            read.windows(17).any(|w| w == b"4before the close"),
            "what was queued before the cancellation is written"
        );
        assert!(
            matches!(
                socket.reserve(),
                Err(crate::queue::TrySendError::Closed(()))
            ),
            "nothing is queued after"
        );
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(forward_to_socket::<StubHandler, _>(
            socket.clone(),
            writer_hold(server),
            TIMEOUT,
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }
}
