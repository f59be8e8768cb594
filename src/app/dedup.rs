//! The location dedup window (D15): an atomic set-if-absent in the shared cache, so that
//! several instances and several sockets of one user share it; while the cache is down, an
//! in-process bounded window does the same for this instance.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::ports::SnapshotCache;

use super::metrics::DEDUP_FALLBACK;

pub struct Deduplicator {
    cache: Arc<dyn SnapshotCache>,
    window: Duration,
    local: Mutex<LruCache<String, Instant>>, // std Mutex: never held across an .await
}

impl Deduplicator {
    pub fn new(cache: Arc<dyn SnapshotCache>, window: Duration, local_entries: usize) -> Self {
        let cap = NonZeroUsize::new(local_entries.max(1)).expect("at least one entry");
        Self {
            cache,
            window,
            local: Mutex::new(LruCache::new(cap)),
        }
    }

    /// The cache key of a user's location window.
    pub fn key(user_id: &str, location_hash: &str) -> String {
        format!("dedup:location:{user_id}:{location_hash}")
    }

    /// Claims the window for this user and location: `true` if the command should be sent
    /// (nothing identical was sent within the window), `false` for a duplicate.
    pub async fn claim(&self, key: &str) -> bool {
        match self.cache.set_if_absent(key, "1", self.window).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::debug!(error = %e, "dedup falls back to the in-process window");
                metrics::counter!(DEDUP_FALLBACK).increment(1);
                self.claim_locally(key)
            }
        }
    }

    /// Gives the window back after a failed send, so that a retry is not suppressed.
    pub async fn release(&self, key: &str) {
        self.lock().pop(key);
        let _ = self.cache.delete(key).await;
    }

    fn claim_locally(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut local = self.lock();
        match local.get(key) {
            Some(t) if now.duration_since(*t) < self.window => false,
            _ => {
                local.put(key.to_owned(), now);
                true
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Instant>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryCache;

    #[tokio::test(start_paused = true)]
    async fn a_second_claim_within_the_window_is_a_duplicate() {
        let d = Deduplicator::new(Arc::new(MemoryCache::default()), Duration::from_secs(2), 10);
        assert!(d.claim("k").await);
        assert!(!d.claim("k").await);
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert!(d.claim("k").await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_window_works_while_the_cache_is_down_and_is_bounded() {
        let cache = Arc::new(MemoryCache::default());
        cache.set_available(false);
        let d = Deduplicator::new(cache, Duration::from_secs(2), 2);
        assert!(d.claim("a").await);
        assert!(!d.claim("a").await);
        assert!(d.claim("b").await);
        assert!(d.claim("c").await); // evicts "a": bounded memory
        assert!(d.claim("a").await);
        assert_eq!(d.lock().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_window_can_be_claimed_again() {
        let d = Deduplicator::new(Arc::new(MemoryCache::default()), Duration::from_secs(2), 10);
        assert!(d.claim("k").await);
        d.release("k").await;
        assert!(d.claim("k").await);
    }
}
