//! What the integration tests share: the gateway on in-memory adapters or on Kafka, the real
//! servers they start (Apache Kafka, redis-server), a TCP proxy that cuts connections, and
//! the port contracts written once for the fakes and the real adapters.
//!
//! A `mod.rs` so that `tests/kafka_data_loss.rs`, a test binary of its own, can include this
//! module with `#[path]` and its children resolve in this folder.
#![allow(dead_code)] // each test binary uses a part of it

pub mod app;
pub mod event_bus_contract;
pub mod kafka_app;
pub mod kafka_broker;
pub mod redis_server;
pub mod snapshot_cache_contract;
pub mod tcp_proxy;
