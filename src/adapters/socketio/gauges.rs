//! Gauges of the Socket.IO server, exported by background tasks: sockets on the polling
//! transport (also the count the HTTP layer's polling-session limit reads) and room members.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socketioxide::{SocketIo, TransportType};
use tokio_util::sync::CancellationToken;

use super::fanout::namespace;
use crate::domain::topics::{ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK};
use crate::telemetry::metrics::{POLLING_SESSIONS, ROOM_MEMBERS};

/// Counts the sockets on the polling transport (Engine.IO sessions that have not upgraded to
/// WebSocket) into `polling`, once a second until `stop`: the HTTP layer refuses new polling
/// handshakes beyond `socketio.max_polling_sessions`. Also the gauge `flux_polling_sessions`.
pub async fn count_polling(io: SocketIo, polling: Arc<AtomicUsize>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(ns) = namespace(&io) else {
            return; // closed
        };
        let now = ns
            .sockets()
            .iter()
            .filter(|s| s.transport_type() == TransportType::Polling)
            .count();
        polling.store(now, Ordering::Relaxed);
        metrics::gauge!(POLLING_SESSIONS).set(now as f64);
    }
}

/// Exports room membership every few seconds (`flux_room_members{room}`; weather rooms are
/// summed, their names are client-chosen and unbounded).
pub async fn export_room_sizes(io: SocketIo, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(ns) = namespace(&io) else {
            return; // closed
        };
        for room in [ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK] {
            let members = ns.clone().to(room).sockets().len();
            metrics::gauge!(ROOM_MEMBERS, "room" => room).set(members as f64);
        }
        let weather: usize = match ns.clone().rooms().await {
            Ok(rooms) => rooms
                .iter()
                .filter(|r| r.starts_with("weather."))
                .map(|r| ns.clone().to(r.to_string()).sockets().len())
                .sum(),
            Err(_) => 0,
        };
        metrics::gauge!(ROOM_MEMBERS, "room" => "weather.*").set(weather as f64);
    }
}
