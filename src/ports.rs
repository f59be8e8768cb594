//! The four ports of the gateway: how the application talks to Kafka (events in, commands out),
//! to the snapshot cache and to connected clients. Pure trait definitions, no implementations.
//!
//! Every port is an `#[async_trait]` trait used behind `Arc<dyn …>` so that adapters can be
//! chosen at run time (embedded mode, Kafka mode) and replaced by fakes or mocks in tests.

pub mod client_fanout;
pub mod command_sink;
pub mod event_source;
pub mod snapshot_cache;

pub use client_fanout::{ClientFanout, EmitOptions, FanoutError};
pub use command_sink::{CommandSink, CommandSinkError};
pub use event_source::{
    Accept, EventSource, EventSourceError, Positions, Record, RecordStream, TailRecord,
};
pub use snapshot_cache::{CacheError, SnapshotCache};
