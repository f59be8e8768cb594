//! What `/readyz` and the degraded-mode flags report: whether the event consumers run and
//! whether the command producer reaches a broker (D33: a broker refusing commands is not down).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::ports::{Readiness, ReadinessReport, SnapshotCache};
use crate::telemetry::metrics::{DEGRADED, READY};

/// Shared health flags. Embedded mode starts ready; Kafka mode becomes ready once the
/// consumers run and the producer answered.
#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
    producing: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    /// Flags all down (consumers and producer not started yet), exported so: `flux_degraded`
    /// names a dependency down from the start, not only once it was up and went down (found
    /// by review: a producer whose first sends failed showed 0).
    pub fn new() -> Self {
        let health = Self::default();
        health.export();
        health
    }

    pub fn set_consuming(&self, up: bool) {
        if self.consuming.swap(up, Ordering::SeqCst) != up {
            self.export();
        }
    }

    pub fn set_producing(&self, up: bool) {
        if self.producing.swap(up, Ordering::SeqCst) != up {
            self.export();
        }
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.export();
    }

    /// `flux_degraded` per dependency and `flux_ready` (what `/readyz` answers), for
    /// dashboards and alerts; set when a flag changes (every sent command reports the
    /// producer up).
    fn export(&self) {
        let degraded = |up: bool| if up { 0.0 } else { 1.0 };
        metrics::gauge!(DEGRADED, "dependency" => "kafka_consumer").set(degraded(self.consuming()));
        metrics::gauge!(DEGRADED, "dependency" => "kafka_producer").set(degraded(self.producing()));
        metrics::gauge!(READY).set(if self.ready() { 1.0 } else { 0.0 });
    }

    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    /// Whether commands can be sent now (D18: refused and counted while Kafka is down).
    pub fn producing(&self) -> bool {
        self.producing.load(Ordering::SeqCst)
    }

    /// Ready: consumers and producer run, and no shutdown is under way.
    pub fn ready(&self) -> bool {
        self.consuming() && self.producing() && !self.shutting_down.load(Ordering::SeqCst)
    }
}

/// What `/readyz` reports: the health flags and whether the cache answers.
pub struct Status {
    health: Arc<Health>,
    cache: Arc<dyn SnapshotCache>,
}

impl Status {
    pub fn new(health: Arc<Health>, cache: Arc<dyn SnapshotCache>) -> Self {
        Self { health, cache }
    }
}

impl Readiness for Status {
    fn readiness(&self) -> ReadinessReport {
        ReadinessReport {
            ready: self.health.ready(),
            kafka_consumer: self.health.consuming(),
            kafka_producer: self.health.producing(),
            cache: self.cache.is_available(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exported value of `flux_degraded{dependency="…"}`.
    fn degraded(text: &str, dependency: &str) -> Option<f64> {
        let series = format!("flux_degraded{{dependency=\"{dependency}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn a_dependency_down_from_the_start_is_reported_degraded() {
        let text = crate::telemetry::metrics::testing::with_own_metrics(|handle| async move {
            let health = Health::new();
            health.set_consuming(true);
            // The producer's first sends fail: it never was up.
            health.set_producing(false);
            handle.render()
        });
        assert_eq!(degraded(&text, "kafka_producer"), Some(1.0), "{text}");
        assert_eq!(degraded(&text, "kafka_consumer"), Some(0.0), "{text}");
        assert!(text.contains("flux_ready 0"), "{text}");
    }
}
