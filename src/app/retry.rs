//! The back-off of every retry loop after a lost dependency (consumers, start-up refreshes,
//! snapshot warm-up).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// The delays between attempts: from 200 ms, doubling to `max_backoff`
/// (`lifecycle.max_backoff`), with jitter, for ever (D18).
pub fn reconnect_backoff(max_backoff: Duration) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
}
