//! `SocketIoSettings`: the Socket.IO transport's keys of the `[socketio]` section. (The
//! section's `conflate_after` and `recovery_*` keys belong to the services that use them.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::topics::LONGEST_CLIENT_EVENT;

/// Smallest Engine.IO message compressed when permessage-deflate is on, in bytes. Every
/// event of the contract is larger (a ticker about 450–560 bytes, which deflate without
/// context shrinks by about 37 %; weather about 500; snapshots 1.6–8 KB, 59–75 %), and every
/// per-socket control packet smaller (connect acknowledgement about 100 bytes with its
/// recovery `pid`, `session:init` about 40, pings 1): those are unique to each socket, so
/// compressing them would cost a compression per socket to save a handful of bytes, or grow
/// them (BENCHMARKS.md, "Bytes on the wire").
pub const COMPRESSION_MIN_BYTES: usize = 256;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SocketIoSettings {
    /// Largest packet a client may send, in bytes (D10).
    pub max_payload: u64,
    /// Client events allowed per second and socket, sustained (D10).
    pub rate_per_second: u32,
    /// Client events a socket may send in a burst above the rate (D10).
    pub burst: u32,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// Packets queued per socket for sending (Engine.IO's queue); beyond, the socket is lagging: tickers for it are
    /// conflated to the latest per product and other messages wait in its backlog.
    pub max_buffer: usize,
    /// Replies and snapshots a lagging socket's backlog may hold; beyond, the socket is
    /// disconnected (its client reconnects and is hydrated again).
    pub max_backlog: usize,
    /// Read buffer of each WebSocket connection, in bytes: held for the life of every
    /// connected client; a larger client message only needs more reads.
    pub ws_read_buffer: usize,
    /// Binary attachments a client packet may carry: the contract has none, so a packet with
    /// more closes the socket. Their bytes are bounded by `max_payload`.
    pub max_attachments: usize,
    /// Time from the Engine.IO handshake to the namespace connect; a session that has not
    /// joined by then (a half-open WebSocket) is closed.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest client event name, in bytes; a longer event is dropped and counted.
    pub max_event_name: usize,
    /// Sockets on the polling transport (not upgraded to WebSocket) at most, handshakes not
    /// joined yet included; beyond, a new polling handshake is refused with 503. 0: no limit.
    pub max_polling_sessions: usize,
    /// WebSocket permessage-deflate with the clients that offer it: each message of at least
    /// [`COMPRESSION_MIN_BYTES`] compressed once and the same frame sent to all of them.
    pub compression: bool,
    /// Messages per second each worker thread may write to WebSocket connections itself
    /// when a send finds nothing queued for the socket (one system call in the broadcast's
    /// loop, instead of waking the socket's writer task to make it); beyond, the writer
    /// tasks write, on every worker, batching what queued meanwhile. 0: never.
    pub direct_writes_per_second: u32,
}

impl Default for SocketIoSettings {
    fn default() -> Self {
        Self {
            max_payload: 64 * 1024,
            rate_per_second: 10,
            burst: 20,
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            max_buffer: 256,
            max_backlog: 256,
            ws_read_buffer: 512,
            max_attachments: 0,
            connect_timeout: Duration::from_secs(10),
            max_event_name: 64,
            max_polling_sessions: 2_000,
            compression: true,
            direct_writes_per_second: 100_000,
        }
    }
}

impl SocketIoSettings {
    /// What is wrong with these settings, one line per problem naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_payload < 1024 {
            problems.push("socketio.max_payload: must be at least 1024 bytes".to_owned());
        }
        if self.ws_read_buffer < 64 {
            problems.push("socketio.ws_read_buffer: must be at least 64 bytes".to_owned());
        }
        if self.rate_per_second == 0 || self.burst == 0 {
            problems
                .push("socketio.rate_per_second and socketio.burst: must be at least 1".to_owned());
        }
        // Zero would panic every session (a queue of no packets), or close every socket.
        for (key, value) in [
            ("max_buffer", self.max_buffer),
            ("max_backlog", self.max_backlog),
        ] {
            if value == 0 {
                problems.push(format!("socketio.{key}: must be at least 1"));
            }
        }
        if self.max_event_name < LONGEST_CLIENT_EVENT {
            problems.push(format!(
                "socketio.max_event_name: must be at least {LONGEST_CLIENT_EVENT} bytes (the longest client event of the contract), got {}",
                self.max_event_name
            ));
        }
        for (key, value) in [
            ("ping_interval", self.ping_interval),
            ("ping_timeout", self.ping_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value < Duration::from_millis(100) {
                problems.push(format!(
                    "socketio.{key}: must be at least 100ms, got {}",
                    humantime_serde::re::humantime::format_duration(value)
                ));
            }
        }
        problems
    }
}
