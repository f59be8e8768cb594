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
pub use router::{PollingHandshake, Routes, router};
pub use server::{Joined, SessionWatch, serve, serve_with};
pub use settings::{AdminSettings, HttpSettings};

/// Why a connection or request was refused: the `reason` label of
/// `flux_http_connections_refused_total`, each written here once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    MaxConnections,
    MaxConnectionsPerClient,
    HeaderTimeout,
    HeadTooLarge,
    MaxPollingSessions,
}

impl Refused {
    const ALL: [Self; 5] = [
        Self::MaxConnections,
        Self::MaxConnectionsPerClient,
        Self::HeaderTimeout,
        Self::HeadTooLarge,
        Self::MaxPollingSessions,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerClient => "max_connections_per_client",
            Self::HeaderTimeout => "header_timeout",
            Self::HeadTooLarge => "head_too_large",
            Self::MaxPollingSessions => "max_polling_sessions",
        }
    }

    /// Counts one refusal.
    fn count(self) {
        use crate::telemetry::metrics::HTTP_CONNECTIONS_REFUSED;
        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => self.label()).increment(1);
    }
}

/// Declares the server's series at zero: refusals by reason, open connections, WebSocket
/// sessions that never joined.
pub fn declare_metrics() {
    use crate::telemetry::metrics::{
        HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED, WS_NEVER_JOINED,
    };
    for reason in Refused::ALL {
        metrics::counter!(HTTP_CONNECTIONS_REFUSED, "reason" => reason.label()).increment(0);
    }
    metrics::gauge!(HTTP_CONNECTIONS_OPEN).increment(0.0);
    metrics::counter!(WS_NEVER_JOINED).increment(0);
}

#[cfg(test)]
mod tests {
    use super::Refused;

    #[test]
    fn each_refusal_has_its_own_label() {
        let mut labels: Vec<&str> = Refused::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Refused::ALL.len(), "{labels:?}");
    }
}
