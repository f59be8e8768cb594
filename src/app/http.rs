//! The HTTP surface (axum): health, readiness, metrics, the Socket.IO layer, and the optional
//! admin publish hook of embedded mode.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;
use socketioxide::layer::SocketIoLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::cors::CorsLayer;

use crate::adapters::memory::MemoryBus;
use crate::ports::SnapshotCache;

use super::config::{HttpSettings, Settings};
use super::health::Health;
use crate::domain::identity;
use crate::telemetry::metrics::{HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED, WS_NEVER_JOINED};

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    cache: Arc<dyn SnapshotCache>,
    bus: Option<MemoryBus>,
}

/// The router: `/healthz`, `/readyz`, `/metrics`, the dashboard (`/` and its socket.io-client
/// bundle), `/socket.io/`, and `/admin/publish` when enabled in embedded mode.
pub fn router(
    settings: &Settings,
    health: Arc<Health>,
    cache: Arc<dyn SnapshotCache>,
    bus: Option<MemoryBus>,
    socketio: SocketIoLayer,
    polling_sessions: Arc<AtomicUsize>,
) -> Router {
    let max_polling = settings.socketio.max_polling_sessions;
    let bus = bus.filter(|_| settings.admin.publish);
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/assets/socket.io.min.js", get(socketio_client));
    if bus.is_some() {
        app = app.route("/admin/publish", post(publish));
    }
    let mut app = app
        .with_state(AppState { health, cache, bus })
        .layer(socketio)
        // Inside CORS, which still sees every header.
        .layer(tower::util::MapRequestLayer::new(trim_socketio_head))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let over = max_polling > 0
                    && engine_handshake(&req) == Some("polling")
                    && polling_sessions.load(Ordering::Relaxed) >= max_polling;
                async move {
                    if over {
                        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => "max_polling_sessions")
                            .increment(1);
                        return (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many polling sessions; connect with the websocket transport\n",
                        )
                            .into_response();
                    }
                    next.run(req).await
                }
            },
        ));
    if let Some(origin) = settings
        .http
        .cors_origin
        .as_deref()
        .and_then(|o| HeaderValue::from_str(o).ok())
    {
        app = app.layer(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST])
                .allow_credentials(true),
        );
    }
    app
}

/// Serves `router` on `listener` over HTTP/1.1 with upgrades (WebSocket) until `stop` is
/// cancelled; then stops accepting, lets in-flight requests finish, closes idle keep-alive
/// connections, and returns once every HTTP connection is closed (upgraded WebSockets are no
/// longer HTTP connections: the Socket.IO layer closes them).
///
/// This replaces `axum::serve` for memory (BENCHMARKS.md, "Memory per idle client"): axum
/// serves through hyper-util's auto builder, which reads the first bytes of each connection to
/// tell HTTP/2 from HTTP/1 and hands them back to hyper as a 24-byte first read; hyper then
/// needs a second read for the rest of the request head and doubles its read buffer to 16 KiB.
/// The request head's header values and URI are slices of that buffer, and Engine.IO keeps
/// the request head for the life of each socket, so 16 KiB stayed allocated per client. The
/// build has no HTTP/2 (axum's `http2` feature is off), so nothing is lost by going straight
/// to hyper's HTTP/1 connection, and [`detach_head`] copies the head out of the buffer.
/// Each request carries `ConnectInfo<SocketAddr>` as with
/// `into_make_service_with_connect_info`, and every accepted socket gets TCP_NODELAY.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    serve_with(listener, router, stop, HttpSettings::default()).await;
}

/// [`serve`] with the connection limits of `settings` (`[http]`): open connections in total
/// and per client address, the time a request head may take (slowloris) and its size. Over a
/// limit the connection is closed (or answered 429 / 431), never the process; each refusal is
/// counted in `flux_http_connections_refused_total{reason}`.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    settings: HttpSettings,
) {
    let limits = Arc::new(Limits::new(&settings));
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let Some(slot) = limits.admit(peer.ip()) else {
            continue; // dropping the socket closes it
        };
        // Small frames go out at once: Nagle would add up to 40 ms to every push.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let stop = stop.clone();
        let open = open_rx.clone();
        let limits = Arc::clone(&limits);
        tokio::spawn(async move {
            // The per-client slot of a connection through a trusted proxy is taken on its
            // first request head, which names the client. The slot lives as long as the
            // socket: an upgraded WebSocket outlives this task (hyper hands the socket over).
            let slot = Arc::new(std::sync::Mutex::new(slot));
            let session = Arc::new(SessionWatch::default());
            let tcp = Held {
                io: tcp,
                _slot: Arc::clone(&slot),
                session: Arc::clone(&session),
            };
            let (header_timeout, max_head_bytes) = (limits.header_timeout, limits.max_head_bytes);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut req = detach_head(req.map(Body::new));
                req.extensions_mut().insert(ConnectInfo(peer));
                if engine_handshake(&req) == Some("websocket") {
                    session.websocket.store(true, Ordering::Relaxed);
                }
                req.extensions_mut().insert(Joined(Arc::clone(&session)));
                let admitted = limits.admit_forwarded(&slot, &req, peer.ip());
                let router = router.clone();
                async move {
                    if admitted {
                        router.oneshot(req).await
                    } else {
                        Ok(too_many_connections())
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_head_bytes)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                let reason = if e.is_timeout() {
                    Some("header_timeout")
                } else if e.is_parse_too_large() {
                    Some("head_too_large")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => reason).increment(1);
                }
                tracing::trace!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// A socket with its place under the limits: given back when the socket is dropped, which
/// for a WebSocket is when the upgraded connection ends, long after its HTTP request.
struct Held {
    io: tokio::net::TcpStream,
    _slot: Arc<Mutex<Slot>>,
    session: Arc<SessionWatch>,
}

/// Whether a connection opened an Engine.IO session over WebSocket, and whether that session
/// joined the namespace: one that never did (a half-open WebSocket, closed by
/// `socketio.connect_timeout`, or dropped by its client) is counted when the socket ends.
#[derive(Debug, Default)]
pub struct SessionWatch {
    websocket: std::sync::atomic::AtomicBool,
    joined: std::sync::atomic::AtomicBool,
}

/// The request extension through which the namespace connect marks its connection joined.
#[derive(Clone, Debug)]
pub struct Joined(Arc<SessionWatch>);

impl Joined {
    /// The connection's Engine.IO session joined the namespace.
    pub fn mark(&self) {
        self.0.joined.store(true, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.session.websocket.load(Ordering::Relaxed)
            && !self.session.joined.load(Ordering::Relaxed)
        {
            metrics::counter!(WS_NEVER_JOINED).increment(1);
        }
    }
}

impl tokio::io::AsyncRead for Held {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Held {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connection limits and what they count.
struct Limits {
    max_connections: usize,
    max_per_client: usize,
    trusted_proxies: Vec<IpNet>,
    header_timeout: Duration,
    max_head_bytes: usize,
    open: AtomicUsize,
    // std Mutex: never held across an .await
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the limits, given back when dropped.
struct Slot {
    limits: Arc<Limits>,
    client: Option<IpAddr>,
    /// Whether the client still has to be named by the first request (trusted proxy).
    pending: bool,
}

impl Limits {
    fn new(settings: &HttpSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            max_per_client: settings.max_connections_per_client,
            trusted_proxies: settings.trusted_proxies.clone(),
            header_timeout: settings.header_timeout,
            max_head_bytes: settings.max_head_bytes.max(8192),
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
        }
    }

    /// A new connection from `peer`: its slot, or `None` (counted) when a limit refuses it.
    /// A peer that is not a trusted proxy is the client and is counted now.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => "max_connections").increment(1);
            return None;
        }
        metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(1.0);
        let mut slot = Slot {
            limits: Arc::clone(self),
            client: None,
            pending: false,
        };
        if self.trusted_proxies.iter().any(|net| net.contains(&peer)) {
            slot.pending = self.max_per_client > 0;
        } else if !self.take_client(&mut slot, peer) {
            return None;
        }
        Some(slot)
    }

    /// On each request of a connection: names the client of a connection through a trusted
    /// proxy on its first one. `false` when that client is over its limit.
    fn admit_forwarded(&self, slot: &std::sync::Mutex<Slot>, req: &Request, peer: IpAddr) -> bool {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.pending {
            return true;
        }
        slot.pending = false;
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let forwarded = forwarded.join(",");
        let client = identity::limit_address(Some(&forwarded), peer, &self.trusted_proxies);
        self.take_client(&mut slot, client)
    }

    /// Counts the connection against `client`; `false` (counted) when over the limit.
    fn take_client(&self, slot: &mut Slot, client: IpAddr) -> bool {
        if self.max_per_client == 0 {
            return true;
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            drop(per_client);
            metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => "max_connections_per_client")
                .increment(1);
            return false;
        }
        *count += 1;
        slot.client = Some(client);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(HTTP_CONNECTIONS_OPEN).decrement(1.0);
        if let Some(client) = self.client {
            let mut per_client = self
                .limits
                .per_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&client);
                }
            }
        }
    }
}

/// The answer to a request whose client has too many connections open; the connection closes.
fn too_many_connections() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONNECTION, "close")],
        "too many connections from this client address\n",
    )
        .into_response()
}

/// What `axum::serve` does with accept errors: a peer that went away is nothing; anything
/// else (out of file descriptors, typically) is logged and accepting pauses for a second.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s (raise the open-files limit if this is EMFILE)");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Copies the URI and the header values into allocations of their own: hyper parses them as
/// slices of its connection read buffer, and Engine.IO keeps the request head for the life of
/// the socket, which would keep that whole buffer alive for it.
fn detach_head(mut req: Request) -> Request {
    if let Ok(uri) = req.uri().to_string().parse() {
        *req.uri_mut() = uri;
    }
    for value in req.headers_mut().values_mut() {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
    }
    req
}

/// What the server does to a request head before any handler sees it: [`detach_head`], then
/// [`trim_socketio_head`] (a layer of the router) on Socket.IO paths. For the fuzz target
/// `request_head` (`fuzz/`).
#[doc(hidden)]
pub fn prepare_head(req: Request) -> Request {
    trim_socketio_head(detach_head(req))
}

/// The transport (`polling`, `websocket`) of a request that opens a new Engine.IO session:
/// a `/socket.io/` request without `sid` (an upgrade or a poll of a session carries its `sid`).
fn engine_handshake(req: &Request) -> Option<&str> {
    if !req.uri().path().starts_with("/socket.io/") {
        return None;
    }
    let query = req.uri().query()?;
    if query.split('&').any(|kv| kv.starts_with("sid=")) {
        return None;
    }
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("transport="))
}

/// The request headers a Socket.IO request keeps: what engineioxide needs for the handshake
/// and the polling transport, and what the gateway reads (`x-forwarded-for`). A header the
/// gateway starts to read must be added here.
const SOCKETIO_HEADERS: [header::HeaderName; 9] = [
    header::HOST,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HeaderName::from_static("x-forwarded-for"),
];

/// Engine.IO keeps the head of the request that opened a session for the life of the socket.
/// A browser sends a dozen headers the gateway never reads (user agent, languages, cookies,
/// extensions: 1–2 KB per connection, as much as the rest of an idle socket); only
/// [`SOCKETIO_HEADERS`] are kept on `/socket.io/` requests.
fn trim_socketio_head(mut req: Request) -> Request {
    if !req.uri().path().starts_with("/socket.io/") {
        return req;
    }
    let headers = req.headers_mut();
    let keep = |name: &header::HeaderName| SOCKETIO_HEADERS.contains(name);
    if headers.keys().all(keep) {
        return req;
    }
    // A map sized for what is kept: a map's memory follows its capacity, not its length.
    let kept_len = headers.iter().filter(|(name, _)| keep(name)).count();
    let mut kept = axum::http::HeaderMap::with_capacity(kept_len);
    let mut current = None;
    for (name, value) in headers.drain() {
        // `drain` names a header once, then gives its further values with `None`.
        if name.is_some() {
            current = name;
        }
        if let Some(name) = current.as_ref().filter(|n| keep(n)) {
            kept.append(name.clone(), value);
        }
    }
    *headers = kept;
    req
}

/// The embedded dashboard (a self-contained page).
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../assets/dashboard.html"),
    )
        .into_response()
}

/// The socket.io-client browser bundle the dashboard loads (vendored from npm).
async fn socketio_client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../assets/socket.io.min.js"),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let h = &state.health;
    let body = json!({
        "ready": h.ready(),
        "kafka_consumer": h.consuming(),
        "kafka_producer": h.producing(),
        "cache": state.cache.is_available(),
    });
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::metrics::render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct PublishQuery {
    topic: String,
    key: Option<String>,
    /// `ndjson`: one record value per line.
    format: Option<String>,
}

/// Appends records to the in-process bus, as a domain service would produce them.
async fn publish(
    State(state): State<AppState>,
    Query(q): Query<PublishQuery>,
    body: Bytes,
) -> Response {
    let Some(bus) = state.bus else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut count = 0usize;
    if q.format.as_deref() == Some("ndjson") {
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            bus.publish(&q.topic, q.key.as_deref(), Some(line));
            count += 1;
        }
    } else {
        let value = (!body.is_empty()).then_some(&body[..]);
        bus.publish(&q.topic, q.key.as_deref(), value);
        count = 1;
    }
    axum::Json(json!({"published": count})).into_response()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn peer(ConnectInfo(addr): ConnectInfo<SocketAddr>) -> String {
        addr.to_string()
    }

    async fn started() -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().route("/peer", get(peer));
        let server = tokio::spawn(serve(listener, app, stop.clone()));
        (addr, stop, server)
    }

    /// Sends `GET /peer` on `tcp` and reads until the body (the client's own address) arrives.
    async fn ask(tcp: &mut TcpStream, close: bool) -> String {
        let connection = if close { "close" } else { "keep-alive" };
        let request = format!("GET /peer HTTP/1.1\r\nhost: x\r\nconnection: {connection}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&response).contains(&tcp.local_addr().unwrap().to_string()) {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response: {response:?}");
            response.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_as_connect_info() {
        let (addr, stop, server) = started().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let response = ask(&mut tcp, true).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn stop_closes_idle_keep_alive_connections_and_returns() {
        let (addr, stop, server) = started().await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        ask(&mut tcp, false).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once its connections are closed")
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
            .await
            .expect("the idle connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing more is sent: {rest:?}");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }

    #[test]
    fn socketio_requests_keep_only_the_headers_that_are_read() {
        let browser = |path: &str| {
            let mut req = Request::new(Body::empty());
            *req.uri_mut() = path.parse().unwrap();
            let h = req.headers_mut();
            h.insert(header::HOST, HeaderValue::from_static("flux.example"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k=="));
            h.insert(header::USER_AGENT, HeaderValue::from_static("Mozilla/5.0"));
            h.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
            h.insert(
                header::ORIGIN,
                HeaderValue::from_static("https://flux.example"),
            );
            h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
            h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
            req
        };
        let req = trim_socketio_head(browser("/socket.io/?EIO=4&transport=websocket"));
        let mut names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["host", "sec-websocket-key", "upgrade", "x-forwarded-for"]
        );
        assert_eq!(req.headers().get_all("x-forwarded-for").iter().count(), 2);
        // Other routes are untouched.
        assert_eq!(trim_socketio_head(browser("/metrics")).headers().len(), 8);
    }

    #[test]
    fn the_request_head_no_longer_shares_the_read_buffer() {
        // Stands for hyper's read buffer: the head is parsed as slices of it.
        let buffer = Bytes::from(b"/socket.io/?EIO=4 websocket".to_vec());
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = axum::http::Uri::from_maybe_shared(buffer.slice(..17)).unwrap();
        req.headers_mut().insert(
            header::UPGRADE,
            HeaderValue::from_maybe_shared(buffer.slice(18..)).unwrap(),
        );
        assert!(!buffer.is_unique(), "the test builds a head that shares it");
        let req = detach_head(req);
        assert!(buffer.is_unique(), "URI or a header value still shares it");
        assert_eq!(req.uri(), "/socket.io/?EIO=4");
        assert_eq!(req.headers()[header::UPGRADE], "websocket");
    }
}
