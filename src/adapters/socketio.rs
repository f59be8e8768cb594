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
