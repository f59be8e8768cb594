//! Pure rules of the gateway: what each event topic means, how it is validated, where it is
//! fanned out and cached; client identity, locations, rooms, dedup and commands; the payloads
//! and outgoing records ([`Payload`], [`Command`]) the ports carry; the partitioners Kafka
//! clients use; connection-state recovery's cuts, journal and session tokens.
//!
//! Imports nothing of the crate outside `domain`. Nothing here performs I/O or reads the
//! clock: time is passed in. The one value made here at random is a command's idempotency key.

pub mod commands;
pub mod events;
pub mod identity;
pub mod location;
pub mod partitioner;
pub mod payload;
pub mod recovery;
pub mod replies;
pub mod topics;
pub mod weather;

pub use commands::Command;
pub use events::{Delivery, Emit, Rejection, SnapshotWrite, conflate, route};
pub use payload::Payload;
