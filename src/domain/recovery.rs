//! Connection-state recovery (issue 12, D26): what a reconnecting client missed, worked out
//! from Kafka positions so that any replica can answer.
//!
//! socket.io-client (4.6+) keeps two strings: the session id (`pid`) of the CONNECT reply, and
//! the last argument of the last room event it received (the "offset"). It sends both back
//! when it reconnects. Here:
//!
//! - the **offset** of an event is a [`Cut`]: for every partition of the event topics, how far
//!   this replica had emitted when it emitted that event (Kafka offset and, for a record with
//!   several emits, the emit's index), with the emit time. Every replica reads every
//!   partition (D11), so every replica can tell which of its own emits lie beyond a cut;
//! - the **pid** is a signed [`SessionClaims`] token (HMAC-SHA256): the user id and an expiry,
//!   so no session store is shared between replicas;
//! - a [`Journal`] is the bounded tail of what this replica emitted (and, after a start, read
//!   back from the log): [`Journal::replay`] picks, in emission order, the events of the
//!   client's rooms that its cut does not cover.
//!
//! Nothing here reads the clock: times are passed in, in milliseconds since the Unix epoch.

mod cut;
mod journal;
mod session;

pub use cut::{Cut, Position};
pub use journal::{Entry, Journal, Refusal, Replay};
pub use session::{SessionClaims, TokenError};
