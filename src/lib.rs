//! flux-bff: the real-time Backend-for-Frontend of the Flux platform.
//!
//! Hexagonal, in layers that depend downward only (README "Architecture"; the test
//! `tests/it/architecture.rs` holds the code to it):
//!
//! - [`domain`]: pure types and rules (validation, rooms, dedup, routing, recovery cuts).
//!   Imports nothing of the crate outside itself. No I/O.
//! - [`telemetry`]: metric names, the log throttle and the log subscriber; imports nothing
//!   of the crate either. Every layer above may use it.
//! - [`ports`]: the traits between the application and the outside world, driven
//!   (`EventSource`, `CommandSink`, `SnapshotCache`, `ClientFanout`, `EventPublisher`) and
//!   driving (what the Socket.IO and HTTP adapters call).
//! - [`app`]: the services, on the ports. [`sim`]: the simulator of the four domain services
//!   (embedded mode, `flux-sim`), on the ports too.
//! - [`adapters`]: implementations of the ports (Socket.IO, HTTP, Kafka, Valkey, in-memory);
//!   each knows the ports, the domain and telemetry, never the application nor another
//!   adapter.
//! - [`boot`]: the composition root, the only code that names concrete adapters; `main`
//!   calls it.

pub mod adapters;
pub mod app;
pub mod boot;
pub mod domain;
pub mod ports;
pub mod sim;
pub mod telemetry;
