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
