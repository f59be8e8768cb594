//! `LimitSettings`: the `[limits]` section, bounds on what clients cause (dedup window,
//! refresh throttle, weather per city).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::weather::WEATHER_TTL;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct LimitSettings {
    /// Window in which an identical location from the same user sends no second command (D15).
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Smallest interval between two refreshes of one topic caused by cold requests (D12).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Entries of the in-process dedup window used while the cache is down (D15).
    pub local_dedup_entries: usize,
    /// How long a city's latest weather result is served at once to a joining socket, with
    /// no weather command (D23). At most 10 minutes, the time results are cached.
    #[serde(with = "humantime_serde")]
    pub weather_fresh: Duration,
    /// How long a city's weather command counts as outstanding when no result comes: until
    /// then, joins in that city send no other command (D23).
    #[serde(with = "humantime_serde")]
    pub weather_in_flight: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            dedup_window: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(5),
            local_dedup_entries: 10_000,
            weather_fresh: Duration::from_secs(300),
            weather_in_flight: Duration::from_secs(30),
        }
    }
}

impl LimitSettings {
    /// What is wrong with these settings, one line per problem naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.local_dedup_entries == 0 {
            problems.push("limits.local_dedup_entries: must be at least 1".to_owned());
        }
        if self.weather_fresh > WEATHER_TTL {
            problems.push(format!(
                "limits.weather_fresh: must be at most {WEATHER_TTL:?} (how long results are cached), got {:?}",
                self.weather_fresh
            ));
        }
        if self.weather_in_flight.is_zero() {
            problems.push("limits.weather_in_flight: must be more than 0".to_owned());
        }
        problems
    }
}
