//! Pure rules of the gateway: what each event topic means, how it is validated, where it is
//! fanned out and cached; client identity, locations, rooms, dedup and commands.
//! Nothing here performs I/O or reads the clock: time and randomness are passed in.

pub mod commands;
pub mod events;
pub mod identity;
pub mod location;
pub mod recovery;
pub mod replies;
pub mod topics;
pub mod weather;

pub use events::{Delivery, Emit, Rejection, SnapshotWrite, conflate, route};
