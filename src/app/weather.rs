//! Weather per city (D23): the latest result each city got, kept in process and in the shared
//! cache, served at once to a socket that joins while it is fresh; and at most one weather
//! command per city outstanding, until its result arrives or the in-flight timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::Payload;
use crate::domain::weather::{self, Gate, Recorded, WeatherBook, WeatherResult};
use crate::ports::SnapshotCache;

use super::limits::LimitSettings;
use crate::telemetry::metrics::SNAPSHOT_LOOKUPS;

/// Cities followed at once; the least recently used goes first (city names are client-chosen).
const CITIES: usize = 10_000;

/// What a join in a city finds.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    /// A fresh result, to send to the joining socket.
    Fresh(Payload),
    /// A command for the city is outstanding.
    InFlight,
    /// Nothing fresh and nothing outstanding.
    Nothing,
}

/// What a consumed result is to its city (D23).
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// A success result, now the city's latest: the value to write to the shared cache.
    Latest(String),
    /// A success result produced before the one held: neither kept nor cached, and not to be
    /// emitted after the held one.
    Superseded,
    /// Kept nowhere, forwarded to the room all the same (`unavailable`, no status: D8).
    Forwarded,
}

pub struct WeatherDesk {
    book: Mutex<WeatherBook>, // std Mutex: never held across an .await
    cache: Arc<dyn SnapshotCache>,
}

impl WeatherDesk {
    pub fn new(cache: Arc<dyn SnapshotCache>, limits: &LimitSettings) -> Self {
        Self {
            book: Mutex::new(WeatherBook::new(
                CITIES,
                limits.weather_fresh,
                limits.weather_in_flight,
            )),
            cache,
        }
    }

    /// What a join in `city` finds: the process's own view first; the shared cache only when
    /// this process holds no result for the city and no command is outstanding (every replica
    /// consumes every result, so the cache is newer only for a city this one never saw).
    pub async fn on_join(&self, city: &str) -> Found {
        match self.lock().gate(city, now()) {
            Gate::Fresh(payload) => return Found::Fresh(payload),
            Gate::InFlight => return Found::InFlight,
            Gate::Stale => return Found::Nothing,
            Gate::Unknown => {}
        }
        let Some((payload, received_ms)) = self.load(city).await else {
            return Found::Nothing;
        };
        let age = Duration::from_millis(epoch_ms(SystemTime::now()).saturating_sub(received_ms));
        let mut book = self.lock();
        let now = now();
        if let Some(at) = now.checked_sub(age) {
            book.adopt(city, payload, at);
        }
        match book.gate(city, now) {
            Gate::Fresh(payload) => Found::Fresh(payload),
            Gate::InFlight => Found::InFlight,
            Gate::Stale | Gate::Unknown => Found::Nothing,
        }
    }

    /// The city's fresh result in the process's own view, if any: what a join's reply sends,
    /// read again under the snapshot gate ([`LocalSnapshots::reading`]) just before the push,
    /// since a newer result may have been recorded and emitted since [`on_join`](Self::on_join).
    ///
    /// [`LocalSnapshots::reading`]: super::snapshots::LocalSnapshots::reading
    pub fn fresh(&self, city: &str) -> Option<Payload> {
        match self.lock().gate(city, now()) {
            Gate::Fresh(payload) => Some(payload),
            Gate::InFlight | Gate::Stale | Gate::Unknown => None,
        }
    }

    /// Claims the city's one outstanding command; `Some(claim)` when the caller may send it.
    pub fn claim(&self, city: &str) -> Option<Instant> {
        let at = now();
        self.lock().claim(city, at).then_some(at)
    }

    /// Gives back a claim whose command was not sent.
    pub fn release(&self, city: &str, claim: Instant) {
        self.lock().release(city, claim);
    }

    /// A consumed result, produced at `produced_at` (unknown: now): ends the city's
    /// outstanding command and keeps a success result as the latest, aged by when it was
    /// produced (capped at now), unless a newer one is held: a result read from a backlog
    /// after an outage is as old as it is, not fresh.
    pub fn judge(&self, result: &WeatherResult, produced_at: Option<SystemTime>) -> Verdict {
        let wall = SystemTime::now();
        let produced = produced_at.map_or(wall, |at| at.min(wall));
        let age = wall.duration_since(produced).unwrap_or_default();
        let recorded = self.lock().record(result, now().checked_sub(age));
        match (recorded, &result.latest) {
            (Recorded::Latest, Some(payload)) => {
                Verdict::Latest(weather::cache_value(payload, epoch_ms(produced)))
            }
            (Recorded::Superseded, _) => Verdict::Superseded,
            _ => Verdict::Forwarded,
        }
    }

    /// [`judge`](Self::judge), keeping only the value to write to the shared cache when the
    /// result became the latest (the tests' shorthand).
    #[cfg(test)]
    pub fn record(
        &self,
        result: &WeatherResult,
        produced_at: Option<SystemTime>,
    ) -> Option<String> {
        match self.judge(result, produced_at) {
            Verdict::Latest(value) => Some(value),
            Verdict::Superseded | Verdict::Forwarded => None,
        }
    }

    async fn load(&self, city: &str) -> Option<(Payload, u64)> {
        let (result, found) = match self.cache.get(&weather::cache_key(city)).await {
            Ok(Some(text)) => match weather::parse_cached(city, &text) {
                Some(found) => ("hit", Some(found)),
                None => {
                    tracing::warn!(city, "cached weather result unreadable; treated as a miss");
                    ("corrupt", None)
                }
            },
            Ok(None) => ("miss", None),
            Err(e) => {
                tracing::debug!(city, error = %e, "weather lookup failed; treated as a miss");
                ("error", None)
            }
        };
        metrics::counter!(SNAPSHOT_LOOKUPS, "key" => "weather", "result" => result).increment(1);
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WeatherBook> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// tokio's clock, so that paused-time tests can move it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::adapters::memory::MemoryCache;

    fn result(n: u32) -> WeatherResult {
        WeatherResult {
            city: "Pune".into(),
            latest: Some(Payload::new(
                &json!({"data": {"city": "Pune", "n": n}, "status": "success"}),
            )),
        }
    }

    /// Found by review: after an outage the backlog's results were stamped with the time they
    /// were read, so a result 20 minutes old was served as fresh (and cached so) and no
    /// command went out for the city; an older one read after a newer one replaced it.
    #[tokio::test]
    async fn a_result_read_late_is_as_old_as_when_it_was_produced() {
        let desk = WeatherDesk::new(Arc::new(MemoryCache::default()), &LimitSettings::default());
        let now = SystemTime::now();
        let long_ago = now - Duration::from_secs(20 * 60);
        let cached = desk.record(&result(1), Some(long_ago)).expect("the latest");
        assert_eq!(desk.fresh("Pune"), None, "20 minutes old: not fresh");
        assert_eq!(desk.on_join("Pune").await, Found::Nothing);
        assert_eq!(
            weather::parse_cached("Pune", &cached).map(|(_, at)| at),
            Some(epoch_ms(long_ago)),
            "cached with the time it was produced"
        );

        assert!(
            desk.record(&result(2), Some(now - Duration::from_secs(5)))
                .is_some()
        );
        assert_eq!(
            desk.record(&result(3), Some(now - Duration::from_secs(10))),
            None,
            "older than the one held: neither kept nor cached"
        );
        assert_eq!(desk.fresh("Pune"), result(2).latest);
    }
}
