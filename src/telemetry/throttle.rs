//! A throttle for warnings that can repeat for every record or request.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Keeps a warning that can repeat for every record or request (a producer sending malformed
/// events, commands failing during a broker outage) from flooding the log: per key, `burst`
/// lines at once and then one per `period`. Each line let through says how many were held
/// back since the previous one; the metrics still count every occurrence.
///
/// Keys are few and fixed (a stream and a reason, a topic), so the map stays small.
pub struct LogThrottle<K> {
    quota: Quota,
    keys: Mutex<HashMap<K, (DefaultDirectRateLimiter, u64)>>, // never held across an .await
}

impl<K: Eq + Hash + Clone> LogThrottle<K> {
    /// # Panics
    /// If `burst` is 0 or `period` is zero.
    pub fn new(burst: u32, period: Duration) -> Self {
        let quota = Quota::with_period(period)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(burst).expect("a non-zero burst"));
        Self {
            quota,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many occurrences of `key`
    /// were held back since the last one logged; `None` when it is held back.
    pub fn admit(&self, key: &K) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let (limiter, held) = keys
            .entry(key.clone())
            .or_insert_with(|| (RateLimiter::direct(self.quota), 0));
        if limiter.check().is_ok() {
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

/// The warning lines a repeated warning may print at once, then one per [`LOG_PERIOD`].
pub const LOG_BURST: u32 = 20;
pub const LOG_PERIOD: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_held_back_and_the_next_line_counts_what_was_held() {
        let throttle = LogThrottle::new(3, Duration::from_millis(40));
        let admitted: Vec<_> = (0..10).map(|_| throttle.admit(&"a")).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // Another key has its own allowance.
        assert_eq!(throttle.admit(&"b"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.admit(&"a"), Some(7));
    }
}
