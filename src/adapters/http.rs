//! The HTTP inbound adapter (hyper and axum): the server with its connection limits, the
//! routes (`/healthz`, `/readyz`, `/metrics`, the dashboard, `/admin/publish`), and the
//! mount of the Socket.IO layer at `/socket.io/`. It calls the application only through the
//! [`Readiness`](crate::ports::Readiness) and [`EventPublisher`](crate::ports::EventPublisher)
//! ports.

mod head;
mod limits;
mod router;
mod server;
mod settings;

pub use head::prepare_head;
pub use router::{Routes, router};
pub use server::{Joined, SessionWatch, serve, serve_with};
pub use settings::{AdminSettings, HttpSettings};

/// Every `reason` label of `flux_http_connections_refused_total`.
pub const REFUSAL_REASONS: [&str; 5] = [
    "max_connections",
    "max_connections_per_client",
    "header_timeout",
    "head_too_large",
    "max_polling_sessions",
];

/// Declares the server's series at zero: refusals by reason, open connections, WebSocket
/// sessions that never joined.
pub fn declare_metrics() {
    use crate::telemetry::metrics::{
        HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED, WS_NEVER_JOINED,
    };
    for reason in REFUSAL_REASONS {
        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(0.0);
    metrics::counter!(WS_NEVER_JOINED).increment(0);
}
