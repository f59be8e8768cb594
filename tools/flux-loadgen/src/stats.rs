//! Latency and throughput bookkeeping: sharded HdrHistograms (one lock per receive batch,
//! not per delivery), a per-second timeline, and percentile summaries.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency tracked exactly (µs); larger values saturate at this bound.
const MAX_LATENCY_US: u64 = 120_000_000;

/// Microseconds since the Unix epoch (the clock `lg_ts` uses on both sides).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn new_histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig)
        .expect("static histogram bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of microsecond values.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// A histogram that collects microsecond durations from many tasks.
pub struct DurationHistogram {
    inner: Mutex<Histogram<u64>>,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self {
            inner: Mutex::new(new_histogram(3)),
        }
    }
}

impl DurationHistogram {
    pub fn record_us(&self, us: u64) {
        if let Ok(mut h) = self.inner.lock() {
            h.saturating_record(us.max(1));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        self.inner
            .lock()
            .map(|h| LatencySummary::of(&h))
            .unwrap_or_default()
    }
}

struct Shard {
    total: Histogram<u64>,
    /// One low-precision histogram per second since `start_us`.
    per_sec: Vec<Histogram<u64>>,
    late: u64,
}

/// Delivery latencies recorded by many clients, sharded to keep lock contention low.
pub struct DeliveryStats {
    shards: Vec<Mutex<Shard>>,
    start_us: u64,
    max_secs: usize,
    late_us: u64,
}

impl DeliveryStats {
    /// `start_us` is second 0 of the timeline; seconds past `max_secs` fold into the last.
    /// A delivery slower than `late_us` counts as late.
    pub fn new(shards: usize, start_us: u64, max_secs: usize, late_us: u64) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                Mutex::new(Shard {
                    total: new_histogram(3),
                    per_sec: Vec::new(),
                    late: 0,
                })
            })
            .collect();
        Self {
            shards,
            start_us,
            max_secs: max_secs.max(1),
            late_us,
        }
    }

    /// Records one batch of `(receive_us, latency_us)` pairs of client `client`.
    pub fn record_batch(&self, client: usize, batch: &[(u64, u64)]) {
        if batch.is_empty() {
            return;
        }
        let Ok(mut shard) = self.shards[client % self.shards.len()].lock() else {
            return;
        };
        for &(recv_us, lat_us) in batch {
            shard.total.saturating_record(lat_us.max(1));
            if lat_us > self.late_us {
                shard.late += 1;
            }
            let sec = ((recv_us.saturating_sub(self.start_us)) / 1_000_000) as usize;
            let sec = sec.min(self.max_secs - 1);
            while shard.per_sec.len() <= sec {
                shard.per_sec.push(new_histogram(2));
            }
            shard.per_sec[sec].saturating_record(lat_us.max(1));
        }
    }

    /// Merges the shards: the overall histogram, per-second summaries and the late count.
    pub fn merge(&self) -> (Histogram<u64>, Vec<LatencySummary>, u64) {
        let mut total = new_histogram(3);
        let mut per_sec: Vec<Histogram<u64>> = Vec::new();
        let mut late = 0;
        for shard in &self.shards {
            let Ok(shard) = shard.lock() else { continue };
            // Same bounds and precision on both sides: adding cannot fail.
            let _ = total.add(&shard.total);
            late += shard.late;
            for (i, h) in shard.per_sec.iter().enumerate() {
                while per_sec.len() <= i {
                    per_sec.push(new_histogram(2));
                }
                let _ = per_sec[i].add(h);
            }
        }
        let per_sec = per_sec.iter().map(LatencySummary::of).collect();
        (total, per_sec, late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_range_are_where_expected() {
        let stats = DeliveryStats::new(4, 0, 10, 500_000);
        // 1..=10_000 µs, spread over clients and over two seconds.
        let batch: Vec<(u64, u64)> = (1..=10_000u64).map(|v| (v * 150, v)).collect();
        for (i, chunk) in batch.chunks(100).enumerate() {
            stats.record_batch(i, chunk);
        }
        let (total, per_sec, late) = stats.merge();
        let s = LatencySummary::of(&total);
        assert_eq!(s.count, 10_000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p90_ms - 9.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.p999_ms - 9.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(late, 0);
        assert_eq!(per_sec.len(), 2);
        assert_eq!(per_sec[0].count + per_sec[1].count, 10_000);
    }

    #[test]
    fn late_and_out_of_range_deliveries_are_counted_not_lost() {
        let stats = DeliveryStats::new(1, 1_000_000, 3, 1_000);
        stats.record_batch(
            0,
            &[(1_500_000, 500), (2_500_000, 2_000), (99_000_000, u64::MAX)],
        );
        let (total, per_sec, late) = stats.merge();
        assert_eq!(total.len(), 3);
        assert_eq!(late, 2);
        // The far-future delivery folds into the last second of the timeline.
        assert_eq!(per_sec.len(), 3);
        assert_eq!(per_sec[2].count, 1);
        assert!(LatencySummary::of(&total).max_ms >= 0.99 * MAX_LATENCY_US as f64 / 1000.0);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeroes() {
        assert_eq!(
            DurationHistogram::default().summary(),
            LatencySummary::default()
        );
        let h = DurationHistogram::default();
        h.record_us(0);
        h.record_us(2_000);
        let s = h.summary();
        assert_eq!(s.count, 2);
        assert!((s.max_ms - 2.0).abs() < 0.01);
    }
}
