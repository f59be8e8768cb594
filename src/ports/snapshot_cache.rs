//! `SnapshotCache`: a key/value store with expiry, used for snapshots and dedup windows.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// The cache cannot be reached (down, refused, wrong credentials).
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// The call did not complete within the adapter's timeout.
    #[error("cache call timed out after {0:?}")]
    Timeout(Duration),
}

/// Keys are relative (`crypto:top-movers`); the adapter adds its configured prefix.
/// Values are JSON text.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait SnapshotCache: Send + Sync {
    /// The value stored under `key`, or `None` when it is absent or expired.
    ///
    /// # Errors
    /// MUST return an error (never hang) when the cache is down or slow; callers treat it
    /// as a miss.
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError>;

    /// Stores `value` under `key`; it MUST expire after `ttl`.
    ///
    /// # Errors
    /// As for [`SnapshotCache::get`]; the write is then lost.
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError>;

    /// Stores `value` under `key` with expiry `ttl`, unless the key already holds exactly
    /// `value`: then nothing changes, its expiry included, and the answer is `false`.
    /// Atomic: of concurrent callers with the same value, across processes sharing the store,
    /// exactly one gets `true`. (The location dedup window: a different location replaces
    /// the stored one, the same one within the window is a duplicate.)
    ///
    /// # Errors
    /// As for [`SnapshotCache::get`].
    async fn set_unless_same(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError>;

    /// Removes `key` if it still holds exactly `value` (nothing happens otherwise, nor when it
    /// is absent), atomically.
    ///
    /// # Errors
    /// As for [`SnapshotCache::get`].
    async fn delete_if_same(&self, key: &str, value: &str) -> Result<(), CacheError>;

    /// Removes `key` (no error when it is absent).
    ///
    /// # Errors
    /// As for [`SnapshotCache::get`].
    async fn delete(&self, key: &str) -> Result<(), CacheError>;

    /// Whether the last call reached the cache. Used for metrics and degraded mode only.
    fn is_available(&self) -> bool {
        true
    }
}
