//! Valkey (Redis-compatible) adapter: the [`SnapshotCache`](crate::ports::SnapshotCache) port on
//! a bb8-redis pool, bounded by a timeout per call, degrading instead of failing (D14–D16).
//! Holds no application logic: keys arrive relative and leave with the configured prefix.

mod connection;
mod settings;
mod snapshot_cache;

pub use settings::ValkeySettings;
pub use snapshot_cache::ValkeySnapshotCache;
