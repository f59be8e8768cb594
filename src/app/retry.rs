//! The back-off of every retry loop after a lost dependency (consumers, start-up refreshes,
//! snapshot warm-up).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

const FIRST: Duration = Duration::from_millis(200);

/// The delays between attempts: from 200 ms, doubling, with jitter, never above `max_backoff`
/// (`lifecycle.max_backoff`), for ever (D18). backon adds its jitter (up to the delay again)
/// after its cap, so the cap it is given is half of `max_backoff`: the waits end between half
/// of it and all of it, spread, so that replicas that lost a broker together do not all come
/// back in the same instant.
pub fn reconnect_backoff(max_backoff: Duration) -> impl Iterator<Item = Duration> + use<> {
    ExponentialBuilder::default()
        .with_min_delay(FIRST.min(max_backoff))
        .with_max_delay((max_backoff / 2).max(FIRST.min(max_backoff)))
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |delay| delay.min(max_backoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wait_is_longer_than_the_cap_and_the_waits_still_spread() {
        let cap = Duration::from_secs(30);
        let delays: Vec<Duration> = reconnect_backoff(cap).take(300).collect();
        assert!(delays.iter().all(|d| *d <= cap), "{delays:?}");
        assert!(delays[0] >= FIRST, "{delays:?}");
        // Jittered at the cap too: not one value repeated.
        let tail: std::collections::HashSet<_> = delays[100..].iter().collect();
        assert!(tail.len() > 100, "{delays:?}");
        assert!(delays[100..].iter().all(|d| *d >= cap / 2), "{delays:?}");
        // A cap below the first step is still a cap.
        let short = Duration::from_millis(50);
        assert!(reconnect_backoff(short).take(50).all(|d| d <= short));
    }
}
