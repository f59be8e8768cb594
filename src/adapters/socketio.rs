//! The Socket.IO adapter, on socketioxide: inbound, the namespace handlers that turn client
//! events into calls on the driving ports ([`inbound`]); outbound, the [`ClientFanout`] port
//! over the server's handle ([`fanout`]); the layer the HTTP adapter mounts; and its gauges.
//!
//! [`ClientFanout`]: crate::ports::ClientFanout

mod backlog;
mod fanout;
mod gauges;
mod inbound;
mod settings;

use std::time::Duration;

use socketioxide::layer::SocketIoLayer;
use socketioxide::{ParserConfig, SocketIo, TransportType};

pub use fanout::SocketIoFanout;
pub use gauges::{count_polling, export_room_sizes};
pub use inbound::{Inbound, JoinHook, register};
pub use settings::SocketIoSettings;

/// Declares the adapter's series at zero (sockets, disconnects by reason, client events
/// dropped by reason, the fan-out's lagging and conflated counts, polling sessions) and
/// exports the Engine.IO writers' counts (`flux_socket_messages_sent_total`,
/// `flux_socket_bytes_sent_total`, `flux_ws_compressed_frames_total`,
/// `flux_ws_inflate_failures_total`) at every render.
pub fn declare_metrics() {
    use crate::telemetry::metrics::{
        CLIENT_EVENTS_DROPPED, FANOUT_CONFLATED, FANOUT_DROPPED, LAGGING_SOCKETS, POLLING_SESSIONS,
        SLOW_DISCONNECTS, SOCKET_BYTES_SENT, SOCKET_DIRECT_WRITES, SOCKET_DISCONNECTS,
        SOCKET_MESSAGES_SENT, SOCKETS_CONNECTED, WS_COMPRESSED_FRAMES, WS_INFLATE_FAILURES,
        add_collector,
    };
    use engineioxide::stats::{self, InflateError};
    static ENGINE_COUNTS: std::sync::Once = std::sync::Once::new();
    metrics::gauge!(SOCKETS_CONNECTED).increment(0.0);
    metrics::gauge!(LAGGING_SOCKETS).increment(0.0);
    metrics::gauge!(POLLING_SESSIONS).increment(0.0);
    for reason in inbound::DISCONNECT_REASONS {
        metrics::counter!(SOCKET_DISCONNECTS, "reason" => inbound::reason_label(reason))
            .increment(0);
    }
    for reason in inbound::Dropped::ALL {
        metrics::counter!(CLIENT_EVENTS_DROPPED, "reason" => reason.label()).increment(0);
    }
    metrics::counter!(FANOUT_CONFLATED).increment(0);
    metrics::counter!(FANOUT_DROPPED).increment(0);
    metrics::counter!(SLOW_DISCONNECTS).increment(0);
    ENGINE_COUNTS.call_once(|| {
        add_collector(|| {
            metrics::counter!(SOCKET_MESSAGES_SENT)
                .absolute(engineioxide::stats::ws_messages_sent());
            metrics::counter!(SOCKET_BYTES_SENT).absolute(engineioxide::stats::ws_bytes_sent());
            metrics::counter!(SOCKET_DIRECT_WRITES).absolute(stats::ws_direct_writes());
            let (address, content, miss) = stats::ws_compressed_frames();
            for (cache, n) in [("address", address), ("content", content), ("miss", miss)] {
                metrics::counter!(WS_COMPRESSED_FRAMES, "cache" => cache).absolute(n);
            }
            for reason in [InflateError::TooLarge, InflateError::Corrupt] {
                metrics::counter!(WS_INFLATE_FAILURES, "reason" => reason.as_str())
                    .absolute(stats::ws_inflate_failures(reason));
            }
        });
    });
}

/// Builds the Socket.IO layer (path `/socket.io`, websocket and polling) and its handle.
pub fn layer(settings: &SocketIoSettings) -> (SocketIoLayer, SocketIo) {
    SocketIo::builder()
        .req_path("/socket.io")
        .transports([TransportType::Polling, TransportType::Websocket])
        .ping_interval(settings.ping_interval)
        .ping_timeout(settings.ping_timeout)
        .max_payload(settings.max_payload)
        .ws_max_message_size(settings.max_payload as usize)
        .ws_max_frame_size(settings.max_payload as usize)
        .max_buffer_size(settings.max_buffer)
        .ws_read_buffer_size(settings.ws_read_buffer)
        // permessage-deflate with the clients that offer it (every browser does).
        .ws_compression(
            settings
                .compression
                .then_some(settings::COMPRESSION_MIN_BYTES),
        )
        .ws_direct_writes(settings.direct_writes_per_second)
        // socketioxide's defaults let each socket buffer 10 MB of binary attachments for up
        // to 60 s; the gateway takes none (socketio.max_attachments).
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(settings.max_attachments)
                .max_incoming_binary_buf_size(settings.max_payload as usize)
                .packet_completion_timeout(Duration::from_secs(5)),
        )
        .connect_timeout(settings.connect_timeout)
        .build_layer()
}
