//! In-memory adapters that behave like the real infrastructure: an event bus with Kafka-like
//! topics, partitions and offsets (carrying events and commands), a cache that honours TTLs and
//! set-if-absent, and a fanout that records what it was asked to deliver.

mod bus;
mod cache;
mod fanout;

pub use bus::MemoryBus;
pub use cache::MemoryCache;
pub use fanout::{Delivered, RecordingFanout, Target};
