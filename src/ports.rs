//! The ports of the gateway, as traits with their contracts; no implementations.
//!
//! - Driven (the application calls them; adapters implement them): [`EventSource`] (events
//!   in), [`CommandSink`] (commands out), [`SnapshotCache`], [`ClientFanout`] (connected
//!   clients), and [`EventPublisher`] (the admin hook of embedded mode).
//! - Driving ([`inbound`]: the Socket.IO and HTTP adapters call them; the services implement
//!   them): [`ClientRequests`], [`Authenticate`], [`SessionRecovery`], [`Readiness`].
//!
//! Every port is an `#[async_trait]` trait used behind `Arc<dyn …>` so that adapters can be
//! chosen at run time (embedded mode, Kafka mode) and replaced by fakes or mocks in tests.

pub mod client_fanout;
pub mod command_sink;
pub mod event_publisher;
pub mod event_source;
pub mod inbound;
pub mod snapshot_cache;

pub use client_fanout::{ClientFanout, EmitOptions, FanoutError};
pub use command_sink::{CommandSink, CommandSinkError};
pub use event_publisher::EventPublisher;
pub use event_source::{
    Accept, EventSource, EventSourceError, Fetched, Next, Positions, Record, RecordStream,
};
pub use inbound::{
    Admission, AuthRefusal, Authenticate, ClientRequests, Readiness, ReadinessReport,
    SessionRecovery,
};
pub use snapshot_cache::{CacheError, SnapshotCache};
