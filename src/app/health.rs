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
    pub fn new() -> Self {
        let health = Self::default();
        health.export_ready();
        health
    }

    pub fn set_consuming(&self, up: bool) {
        if self.consuming.swap(up, Ordering::SeqCst) != up {
            metrics::gauge!(DEGRADED, "dependency" => "kafka_consumer").set(if up {
                0.0
            } else {
                1.0
            });
            self.export_ready();
        }
    }

    pub fn set_producing(&self, up: bool) {
        if self.producing.swap(up, Ordering::SeqCst) != up {
            metrics::gauge!(DEGRADED, "dependency" => "kafka_producer").set(if up {
                0.0
            } else {
                1.0
            });
            self.export_ready();
        }
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.export_ready();
    }

    /// `flux_ready`: what `/readyz` answers, for dashboards and alerts; set when a flag
    /// changes (every sent command reports the producer up).
    fn export_ready(&self) {
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

/// Declares `flux_degraded` at zero for both Kafka dependencies (`flux_ready` is set by
/// [`Health::new`]).
pub fn declare_metrics() {
    for dependency in ["kafka_consumer", "kafka_producer"] {
        metrics::gauge!(DEGRADED, "dependency" => dependency).increment(0.0);
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
