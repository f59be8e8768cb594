//! One Socket.IO client over the lean WebSocket: handshake up to `session:init`, event
//! emission, and a batch receive loop that answers engine pings by itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use crate::eio::{self, Packet};
use crate::ws::{WsError, WsStream};

/// Why a client could not connect or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Ws(#[from] WsError),
    #[error("socket.io connect refused: {0}")]
    Rejected(String),
    #[error("server closed the socket.io session")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

impl ClientError {
    /// A short stable label for error tables.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Ws(WsError::Connect { .. }) => "tcp-connect",
            ClientError::Ws(WsError::Upgrade(_)) => "ws-upgrade",
            ClientError::Ws(WsError::Io(_)) => "io",
            ClientError::Ws(WsError::Protocol(_)) => "ws-protocol",
            ClientError::Ws(WsError::Closed) | ClientError::Closed => "closed",
            ClientError::Rejected(_) => "sio-rejected",
            ClientError::Timeout(_) => "timeout",
        }
    }
}

/// A connected Socket.IO client on the default namespace.
pub struct SioClient {
    ws: WsStream,
}

impl SioClient {
    /// Connects and waits for `session:init`; everything must happen before `deadline`.
    pub async fn connect(
        src: Option<IpAddr>,
        dst: SocketAddr,
        guest_id: &str,
        buf_size: usize,
        deadline: Instant,
    ) -> Result<Self, ClientError> {
        let ws = timeout_at(
            deadline,
            WsStream::connect(src, dst, eio::WS_PATH, buf_size),
        )
        .await
        .map_err(|_| ClientError::Timeout("the websocket upgrade"))??;
        let mut client = Self { ws };
        client
            .wait_until(deadline, "the engine.io open packet", |p| {
                matches!(p, Packet::Open)
            })
            .await?;
        client.ws.send_text(&eio::connect_packet(guest_id)).await?;
        let mut rejected = None;
        let mut connected = false;
        client
            .wait_until(deadline, "session:init", |p| match p {
                Packet::Connected => {
                    connected = true;
                    false
                }
                Packet::ConnectError(why) => {
                    rejected = Some(String::from_utf8_lossy(why).into_owned());
                    true
                }
                Packet::Event { name, .. } => name == b"session:init",
                _ => false,
            })
            .await?;
        if let Some(why) = rejected {
            return Err(ClientError::Rejected(why));
        }
        if !connected {
            return Err(ClientError::Rejected(
                "session:init arrived before the connect acknowledgement".into(),
            ));
        }
        Ok(client)
    }

    /// Bytes read from the WebSocket since the upgrade.
    pub fn read_bytes(&self) -> u64 {
        self.ws.read_bytes()
    }

    /// Whether permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.ws.deflate()
    }

    /// Data messages read so far, and how many of them arrived compressed.
    pub fn messages(&self) -> (u64, u64) {
        self.ws.messages()
    }

    /// Emits `name` with an already serialised JSON payload.
    pub async fn emit(&mut self, name: &str, payload_json: &str) -> Result<(), ClientError> {
        self.ws
            .send_text(&eio::event_packet(name, payload_json))
            .await?;
        Ok(())
    }

    /// Reads batches until `done` returns true for a packet, or `deadline` passes.
    pub async fn wait_until(
        &mut self,
        deadline: Instant,
        what: &'static str,
        mut done: impl FnMut(Packet<'_>) -> bool,
    ) -> Result<(), ClientError> {
        loop {
            let mut hit = false;
            let batch = self.next_batch(|p| {
                if !hit && done(p) {
                    hit = true;
                }
            });
            timeout_at(deadline, batch)
                .await
                .map_err(|_| ClientError::Timeout(what))??;
            if hit {
                return Ok(());
            }
        }
    }

    /// Reads one batch of messages and hands each packet to `on_packet`; answers engine
    /// pings after the batch. A close or disconnect packet ends the session with `Closed`.
    pub async fn next_batch(
        &mut self,
        mut on_packet: impl FnMut(Packet<'_>),
    ) -> Result<usize, ClientError> {
        self.next_batch_sized(|p, _| on_packet(p)).await
    }

    /// [`Self::next_batch`], with the bytes each packet's frames took on the wire.
    pub async fn next_batch_sized(
        &mut self,
        mut on_packet: impl FnMut(Packet<'_>, usize),
    ) -> Result<usize, ClientError> {
        let mut pings = 0u32;
        let mut closed = false;
        let n = self
            .ws
            .read_batch(|msg, wire| match eio::classify(msg) {
                Packet::Ping => pings += 1,
                Packet::Close | Packet::Disconnect => closed = true,
                p => on_packet(p, wire),
            })
            .await?;
        for _ in 0..pings {
            self.ws.send_text(b"3").await?;
        }
        if closed {
            return Err(ClientError::Closed);
        }
        Ok(n)
    }
}

/// The source address for client `index` when spreading over `sources` loopback addresses
/// 127.0.0.1 ..= 127.0.0.N (each has its own ephemeral port range).
pub fn source_addr(index: usize, sources: usize) -> Option<IpAddr> {
    if sources == 0 {
        return None;
    }
    let n = (index % sources.min(254)) as u8;
    Some(IpAddr::from([127, 0, 0, 1 + n]))
}

/// A connection deadline `secs` from now.
pub fn deadline_in(secs: f64) -> Instant {
    Instant::now() + Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    use socketioxide::SocketIo;
    use socketioxide::extract::{Data, SocketRef};

    /// A tiny socketioxide server with the gateway's visible behaviour: `session:init` on
    /// connect, a hydration reply and a timestamped ticker on `userLocationUpdate`.
    async fn echo_server() -> SocketAddr {
        let (layer, io) = SocketIo::builder()
            .ping_interval(Duration::from_millis(200))
            .ping_timeout(Duration::from_millis(400))
            .build_layer();
        io.ns(
            "/",
            async |s: SocketRef, Data(auth): Data<serde_json::Value>| {
                let id = auth["guestId"].as_str().unwrap_or("none").to_owned();
                let _ = s.emit(
                    "session:init",
                    &serde_json::json!({"userId": id, "userType": "guest"}),
                );
                s.on(
                    "userLocationUpdate",
                    async |s: SocketRef, Data(loc): Data<serde_json::Value>| {
                        let _ = s.emit(
                            "newsUpdate",
                            &serde_json::json!({"status": "success", "data": []}),
                        );
                        let _ = s.emit(
                            "cryptoTickerResponse",
                            &serde_json::json!({"status": "success",
                        "data": {"lg_ts": 123_456_789u64, "city": loc["city"]}, "error": null}),
                        );
                    },
                );
            },
        );
        let app = axum::Router::new().layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_client_handshakes_joins_and_reads_a_timestamped_ticker_from_socketioxide() {
        let addr = echo_server().await;
        let mut c = SioClient::connect(source_addr(3, 4), addr, "lg-7", 4096, deadline_in(5.0))
            .await
            .expect("handshake up to session:init");
        // Any location: the echo server does not check it (and this module does not depend on
        // the scenarios, which hold the valid one).
        c.emit("userLocationUpdate", r#"{"city":"Pune"}"#)
            .await
            .unwrap();
        let scanner = eio::TimestampScanner::default();
        let mut names = Vec::new();
        let mut ts = None;
        c.wait_until(deadline_in(5.0), "the ticker", |p| match p {
            Packet::Event { name, raw } => {
                names.push(String::from_utf8_lossy(name).into_owned());
                ts = scanner.scan(raw);
                ts.is_some()
            }
            _ => false,
        })
        .await
        .unwrap();
        assert_eq!(names, ["newsUpdate", "cryptoTickerResponse"]);
        assert_eq!(ts, Some(123_456_789));
        // Engine pings (every 200 ms here) are answered: the session outlives the ping timeout.
        let quiet = c
            .wait_until(deadline_in(1.5), "nothing", |_| false)
            .await
            .unwrap_err();
        assert!(matches!(quiet, ClientError::Timeout(_)), "{quiet}");
        c.emit("userLocationUpdate", "{}").await.unwrap();
        c.wait_until(
            deadline_in(2.0),
            "the second ticker",
            |p| matches!(p, Packet::Event { name, .. } if name == b"cryptoTickerResponse"),
        )
        .await
        .expect("still connected after several ping rounds");
    }

    #[tokio::test]
    async fn a_refused_connection_names_its_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = SioClient::connect(None, addr, "x", 4096, deadline_in(2.0))
            .await
            .err()
            .expect("nothing listens there");
        assert_eq!(err.kind(), "tcp-connect");
        assert!(err.to_string().contains("gateway running"), "{err}");
    }

    #[test]
    fn sources_cycle_over_the_loopback_range() {
        assert_eq!(source_addr(0, 0), None);
        assert_eq!(source_addr(0, 4), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(source_addr(5, 4), Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(source_addr(300, 1000), Some(IpAddr::from([127, 0, 0, 47])));
    }
}
