//! flux-bff: the real-time Backend-for-Frontend of the Flux platform.
//!
//! - [`domain`]: pure types and rules (validation, rooms, dedup, routing). No I/O.
//! - [`ports`]: the traits the application needs from the outside world.
//! - [`adapters`]: implementations of the ports (Kafka, Valkey, Socket.IO, in-memory).
//! - [`app`]: services, configuration, wiring and lifecycle.
//! - [`sim`]: the built-in simulator of the four domain services (embedded mode).

pub mod adapters;
pub mod app;
pub mod domain;
pub mod ports;
pub mod sim;
pub mod telemetry;
