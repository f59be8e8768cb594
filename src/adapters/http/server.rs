//! The HTTP/1.1 server (hyper, upgrades for WebSocket) with the connection limits, and its
//! graceful stop.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::Refused;
use super::head::{detach_head, engine_handshake};
use super::limits::{Limits, Slot, too_many_connections};
use super::settings::HttpSettings;
use crate::domain::identity::ClientAddress;
use crate::telemetry::metrics::WS_NEVER_JOINED;

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
/// `into_make_service_with_connect_info`, an Engine.IO handshake also the client's
/// [`ClientAddress`] (trusted proxies honoured), and every accepted socket gets TCP_NODELAY.
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
            let session = Arc::new(SessionWatch::new());
            let watch = Arc::clone(&session);
            let tcp = Held {
                io: tcp,
                _slot: Arc::clone(&slot),
                session: Arc::clone(&session),
            };
            let (header_timeout, max_head_bytes) = (limits.header_timeout, limits.max_head_bytes);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let mut req = detach_head(req.map(Body::new));
                req.extensions_mut().insert(ConnectInfo(peer));
                // An Engine.IO handshake carries its client's address; the limits read it too
                // (named once per request).
                let mut client = None;
                if let Some(transport) = engine_handshake(&req) {
                    if transport == "websocket" {
                        session.websocket.store(true, Ordering::Relaxed);
                    }
                    let named = limits.client_of(&req, peer.ip());
                    client = Some(named);
                    req.extensions_mut().insert(ClientAddress(named));
                }
                req.extensions_mut().insert(Joined(Arc::clone(&session)));
                let admitted = limits.admit_forwarded(&slot, || {
                    client.unwrap_or_else(|| limits.client_of(&req, peer.ip()))
                });
                let router = router.clone();
                let session = Arc::clone(&session);
                async move {
                    let response = if admitted {
                        router.oneshot(req).await
                    } else {
                        Ok(too_many_connections())
                    };
                    session.arrived.store(false, Ordering::Relaxed);
                    response
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
                if e.is_timeout() && !watch.arrived.load(Ordering::Relaxed) {
                    // hyper's header timer also closes a keep-alive connection left idle.
                    tracing::trace!(%peer, "idle HTTP connection closed");
                } else if e.is_timeout() {
                    Refused::HeaderTimeout.count();
                } else if e.is_parse_too_large() {
                    Refused::HeadTooLarge.count();
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
    _slot: Arc<std::sync::Mutex<Slot>>,
    session: Arc<SessionWatch>,
}

/// Whether a connection opened an Engine.IO session over WebSocket, and whether that session
/// joined the namespace: one that never did (a half-open WebSocket, closed by
/// `socketio.connect_timeout`, or dropped by its client) is counted when the socket ends.
#[derive(Debug, Default)]
pub struct SessionWatch {
    websocket: std::sync::atomic::AtomicBool,
    joined: std::sync::atomic::AtomicBool,
    /// Bytes arrived since the connection's last response was ready; true until its first.
    /// hyper's header timer also runs while a keep-alive connection waits for its next
    /// request: a timeout with nothing arrived since a response is an idle connection closed,
    /// not a slow head. One that never sent a whole request (nothing at all, or a head that
    /// does not end: slowloris holding connections) counts.
    arrived: std::sync::atomic::AtomicBool,
}

impl SessionWatch {
    fn new() -> Self {
        Self {
            arrived: std::sync::atomic::AtomicBool::new(true),
            ..Self::default()
        }
    }
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
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.session.arrived.store(true, Ordering::Relaxed);
        }
        read
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use ipnet::IpNet;
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

    /// The client address an Engine.IO handshake from this machine carries, with `forwarded`
    /// as its `X-Forwarded-For`, under `trusted_proxies`.
    async fn handshake_address(forwarded: &str, trusted_proxies: Vec<IpNet>) -> String {
        async fn named(req: Request) -> String {
            format!("{:?}", req.extensions().get::<ClientAddress>())
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().route("/socket.io/", get(named));
        let settings = HttpSettings {
            trusted_proxies,
            ..HttpSettings::default()
        };
        let server = tokio::spawn(serve_with(listener, app, stop.clone(), settings));
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nhost: x\r\n\
             x-forwarded-for: {forwarded}\r\nconnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        stop.cancel();
        server.await.unwrap();
        response.lines().last().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_handshake_names_the_client_a_trusted_proxy_forwarded_and_no_other() {
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        // From a trusted proxy: the nearest untrusted hop, not the first (which the client
        // itself may have written).
        assert_eq!(
            handshake_address("198.51.100.9, 203.0.113.7", vec![loopback]).await,
            "Some(ClientAddress(203.0.113.7))"
        );
        // From any other peer: the peer, whatever it forwards.
        assert_eq!(
            handshake_address("203.0.113.7", Vec::new()).await,
            "Some(ClientAddress(127.0.0.1))"
        );
    }

    #[test]
    fn an_idle_keep_alive_connection_closed_by_the_header_timer_is_not_counted() {
        // One thread: the server's tasks count into this test's recorder.
        let text = crate::telemetry::metrics::testing::with_own_metrics(|handle| async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let app = Router::new().route("/peer", get(peer));
            let settings = HttpSettings {
                header_timeout: Duration::from_millis(300),
                ..HttpSettings::default()
            };
            let server = tokio::spawn(serve_with(listener, app, stop.clone(), settings));
            // Idle after a request (keep-alive), idle from the start, and a head that
            // never ends: all three are closed after the timeout; the last two, which
            // never sent a whole request (slowloris holds connections so), are counted.
            let mut kept_alive = TcpStream::connect(addr).await.unwrap();
            ask(&mut kept_alive, false).await;
            let mut silent = TcpStream::connect(addr).await.unwrap();
            let mut slow = TcpStream::connect(addr).await.unwrap();
            slow.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
            for tcp in [&mut kept_alive, &mut silent, &mut slow] {
                let mut rest = Vec::new();
                let closed =
                    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
                assert!(closed.is_ok(), "closed by the header timer");
            }
            stop.cancel();
            server.await.unwrap();
            handle.render()
        });
        let counted: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("flux_http_connections_refused_total{reason=\"header_timeout\"}")
            })
            .collect();
        assert_eq!(
            counted,
            ["flux_http_connections_refused_total{reason=\"header_timeout\"} 2"]
        );
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
}
