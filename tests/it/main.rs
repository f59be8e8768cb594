//! The integration tests of flux-bff, in one binary (one link of the library instead of one
//! per file). Each module is one area; `support` holds what they share. Real servers (Apache
//! Kafka 4, redis-server) are started by the tests themselves and a test fails, never skips,
//! when it cannot start them.
//!
//! The metrics registry is one per process: a test that reads a counter reads the deltas of
//! its own labels (its topics, its reasons), never the total. Not here:
//! `tests/kafka_data_loss.rs`, which needs a process of its own: it resets the offsets of the
//! gateway's own event topics, which `kafka_gateway`'s broker-restart test asserts a kept log
//! never needs.

mod architecture;
mod auth;
mod compression;
mod gateway;
mod http_limits;
mod kafka;
mod kafka_gateway;
mod kafka_hydration;
mod lifecycle;
mod socketio_limits;
mod support;
mod valkey;
mod valkey_gateway;
mod weather_gateway;
