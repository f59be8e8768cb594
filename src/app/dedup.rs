//! The location dedup window (D15, contract §b "Dedup rules"): per user, the last location
//! sent (its canonical hash) is kept for the window under `dedup:location:<userId>` (D14) in
//! the shared cache, so that several instances and several sockets of one user share it. The
//! same location within the window is a duplicate and does not extend it; another location
//! replaces it and is sent. Compare-and-set is one atomic step in the cache. While the cache
//! is down, an in-process bounded window does the same for this instance.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

use crate::ports::SnapshotCache;

use crate::telemetry::metrics::DEDUP_FALLBACK;

pub struct Deduplicator {
    cache: Arc<dyn SnapshotCache>,
    window: Duration,
    /// User id → (hash of the last location sent, when).
    local: Mutex<LruCache<String, (String, Instant)>>, // std Mutex: never held across an .await
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

    /// The cache key of a user's location window (D14).
    pub fn key(user_id: &str) -> String {
        format!("dedup:location:{user_id}")
    }

    /// The stored value: the hash as a JSON string (D14: values are JSON).
    fn value(location_hash: &str) -> String {
        serde_json::Value::from(location_hash).to_string()
    }

    /// Claims the window for this user and location: `true` if the command should be sent
    /// (this location was not the last one sent within the window), `false` for a duplicate.
    pub async fn claim(&self, user_id: &str, location_hash: &str) -> bool {
        let key = Self::key(user_id);
        match self
            .cache
            .set_unless_same(&key, &Self::value(location_hash), self.window)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::debug!(error = %e, "dedup falls back to the in-process window");
                metrics::counter!(DEDUP_FALLBACK).increment(1);
                self.claim_locally(user_id, location_hash)
            }
        }
    }

    /// Gives the window back after a failed send of this location, so that a retry is not
    /// suppressed; a window another location took meanwhile stays.
    pub async fn release(&self, user_id: &str, location_hash: &str) {
        {
            let mut local = self.lock();
            if matches!(local.peek(user_id), Some((hash, _)) if hash == location_hash) {
                local.pop(user_id);
            }
        }
        let _ = self
            .cache
            .delete_if_same(&Self::key(user_id), &Self::value(location_hash))
            .await;
    }

    fn claim_locally(&self, user_id: &str, location_hash: &str) -> bool {
        let now = Instant::now();
        let mut local = self.lock();
        match local.get(user_id) {
            Some((hash, at)) if hash == location_hash && now.duration_since(*at) < self.window => {
                false
            }
            _ => {
                local.put(user_id.to_owned(), (location_hash.to_owned(), now));
                true
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (String, Instant)>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::MemoryCache;

    fn dedup(cache: Arc<MemoryCache>, entries: usize) -> Deduplicator {
        Deduplicator::new(cache, Duration::from_secs(2), entries)
    }

    /// A window on the shared cache, or on the local fallback when it is not `available`.
    fn dedup_on(available: bool) -> Deduplicator {
        let cache = Arc::new(MemoryCache::default());
        cache.set_available(available);
        dedup(cache, 10)
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_location_within_the_window_is_a_duplicate_and_does_not_extend_it() {
        let d = dedup(Arc::new(MemoryCache::default()), 10);
        assert!(d.claim("u", "A").await);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(!d.claim("u", "A").await);
        // The window counts from the last location sent, not from the duplicate.
        tokio::time::advance(Duration::from_millis(501)).await;
        assert!(d.claim("u", "A").await);
    }

    #[tokio::test(start_paused = true)]
    async fn another_location_replaces_the_last_one_sent() {
        // Contract: a duplicate is the same hash as the stored record (the last one sent), so
        // A, B, A within the window sends all three.
        for available in [true, false] {
            let d = dedup_on(available);
            assert!(d.claim("u", "A").await);
            assert!(d.claim("u", "B").await);
            assert!(d.claim("u", "A").await, "cache available: {available}");
            assert!(!d.claim("u", "A").await);
            // Other users have their own window.
            assert!(d.claim("v", "A").await);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_stored_under_the_user_key_of_d14() {
        let cache = Arc::new(MemoryCache::default());
        let d = dedup(cache.clone(), 10);
        assert!(d.claim("u", "A").await);
        assert_eq!(
            cache.get("dedup:location:u").await.unwrap().as_deref(),
            Some(r#""A""#)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_window_works_while_the_cache_is_down_and_is_bounded() {
        let cache = Arc::new(MemoryCache::default());
        cache.set_available(false);
        let d = dedup(cache, 2);
        assert!(d.claim("a", "A").await);
        assert!(!d.claim("a", "A").await);
        assert!(d.claim("b", "A").await);
        assert!(d.claim("c", "A").await); // evicts "a": bounded memory
        assert!(d.claim("a", "A").await);
        assert_eq!(d.lock().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_window_can_be_claimed_again() {
        let d = dedup(Arc::new(MemoryCache::default()), 10);
        assert!(d.claim("u", "A").await);
        d.release("u", "A").await;
        assert!(d.claim("u", "A").await);
    }

    #[tokio::test(start_paused = true)]
    async fn releasing_a_location_keeps_the_window_another_location_took_since() {
        for available in [true, false] {
            let d = dedup_on(available);
            assert!(d.claim("u", "A").await);
            assert!(d.claim("u", "B").await);
            // A's send failed after B was claimed: B's window stays.
            d.release("u", "A").await;
            assert!(!d.claim("u", "B").await, "cache available: {available}");
        }
    }
}
