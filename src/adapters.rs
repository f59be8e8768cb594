//! Implementations of the ports: Socket.IO (socketioxide), in-memory adapters that run the
//! whole system in one process, and (in their own modules) Kafka and Valkey.

pub mod kafka;
pub mod memory;
pub mod socketio;
pub mod valkey;
