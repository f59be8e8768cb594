//! `MemoryCache`: the in-process `SnapshotCache`, with per-key expiry and a bound.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lru::LruCache;
use tokio::time::Instant;

use crate::ports::{CacheError, SnapshotCache};

/// A bounded in-process cache with per-key expiry (least recently used keys go first when
/// full). Used in embedded mode, as the dedup fallback while Valkey is down, and in tests.
/// Time is tokio's clock, so paused-time tests can move it.
pub struct MemoryCache {
    entries: Mutex<LruCache<String, (String, Instant)>>, // std Mutex: never held across an .await
    available: AtomicBool,
}

impl MemoryCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least one");
        Self {
            entries: Mutex::new(LruCache::new(cap)),
            available: AtomicBool::new(true),
        }
    }

    /// Simulates an outage: every call fails with [`CacheError::Unavailable`] until restored.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    /// The time to live left for `key`, if it is present.
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let mut map = self.lock();
        let (_, expiry) = map.get(key)?;
        expiry.checked_duration_since(Instant::now())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, (String, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), CacheError> {
        if self.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(CacheError::Unavailable("in-memory cache is offline".into()))
        }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(100_000)
    }
}

#[async_trait]
impl SnapshotCache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        self.check()?;
        let mut map = self.lock();
        let now = Instant::now();
        match map.get(key) {
            Some((v, expiry)) if *expiry > now => Ok(Some(v.clone())),
            Some(_) => {
                map.pop(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        self.check()?;
        self.lock()
            .put(key.to_owned(), (value.to_owned(), Instant::now() + ttl));
        Ok(())
    }

    async fn set_unless_same(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        self.check()?;
        let mut map = self.lock();
        let now = Instant::now();
        if matches!(map.get(key), Some((held, expiry)) if *expiry > now && held == value) {
            return Ok(false);
        }
        map.put(key.to_owned(), (value.to_owned(), now + ttl));
        Ok(true)
    }

    async fn delete_if_same(&self, key: &str, value: &str) -> Result<(), CacheError> {
        self.check()?;
        let mut map = self.lock();
        if matches!(map.peek(key), Some((held, _)) if held == value) {
            map.pop(key);
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.check()?;
        self.lock().pop(key);
        Ok(())
    }

    fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }
}
