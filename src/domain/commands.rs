//! Commands the gateway sends to domain services (contract §b, D12), and the throttle on
//! refreshes caused by cold-cache requests.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Iso8601;

use bytes::Bytes;
use uuid::Uuid;

use super::topics::*;

/// A message to append to `topic`.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub topic: String,
    pub key: Option<String>,
    pub value: Bytes,
    /// Unique per logical command; a retried send MUST reuse it. Carried in the
    /// `idempotency-key` record header so that consumers can drop duplicates.
    pub idempotency_key: Uuid,
}

impl Command {
    pub fn new(topic: impl Into<String>, key: Option<String>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key,
            value: value.into(),
            idempotency_key: Uuid::new_v4(),
        }
    }

    /// The value as UTF-8 text (commands are JSON).
    pub fn value_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or("")
    }
}

/// `Date.prototype.toISOString()`: UTC, millisecond precision, `Z`.
pub fn iso_timestamp(at: SystemTime) -> String {
    let t = OffsetDateTime::from(at);
    let ms = t.millisecond();
    let t = t.replace_millisecond(ms).unwrap_or(t);
    let base = t
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Iso8601::DATE_TIME)
        .unwrap_or_default();
    // `Iso8601::DATE_TIME` prints `YYYY-MM-DDTHH:MM:SS.000000000`: keep seconds, add millis.
    format!("{}.{ms:03}Z", &base[..19])
}

/// Why a refresh is asked for, as the domain services expect it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Startup,
    InitialRefresh,
    RefreshCache,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::InitialRefresh => "initial_refresh",
            Reason::RefreshCache => "refresh_cache",
        }
    }
}

/// The refreshable snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refresh {
    TopCoins,
    TopMovers,
    Stocks,
    News,
}

impl Refresh {
    pub fn topic(self) -> &'static str {
        match self {
            Refresh::TopCoins => TOPCOINS_REFRESH,
            Refresh::TopMovers => TOPMOVERS_REFRESH,
            Refresh::Stocks => STOCKS_REFRESH,
            Refresh::News => NEWS_REFRESH,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Refresh::TopCoins => "cryptotopcoins",
            Refresh::TopMovers => "cryptotopmovers",
            Refresh::Stocks => "stocktopperformers",
            Refresh::News => "topglobalnews",
        }
    }
}

/// The four start-up refreshes, in the original's order.
pub fn startup_refreshes(at: SystemTime) -> Vec<Command> {
    [
        (Refresh::TopCoins, Reason::Startup),
        (Refresh::TopMovers, Reason::Startup),
        (Refresh::Stocks, Reason::Startup),
        (Refresh::News, Reason::InitialRefresh),
    ]
    .into_iter()
    .map(|(what, why)| refresh(what, why, at))
    .collect()
}

/// A refresh command: `{"requestedBy":"bff","reason":…,"timestamp":ISO}` under the topic's key.
pub fn refresh(what: Refresh, reason: Reason, at: SystemTime) -> Command {
    let value =
        json!({"requestedBy": "bff", "reason": reason.as_str(), "timestamp": iso_timestamp(at)});
    Command::new(what.topic(), Some(what.key().to_owned()), value.to_string())
}

/// The weather fetch for a validated location, keyed by the requesting socket.
pub fn weather_fetch(socket_id: &str, user_id: &str, location: &Value, at: SystemTime) -> Command {
    let value = json!({
        "event": "locationUpdate",
        "userId": user_id,
        "data": location,
        "timestamp": iso_timestamp(at),
    });
    Command::new(WEATHER_FETCH, Some(socket_id.to_owned()), value.to_string())
}

/// At most one refresh per topic per window, across all sockets of the instance (D12).
#[derive(Debug)]
pub struct RefreshThrottle {
    window: Duration,
    last: std::collections::HashMap<Refresh, Instant>,
}

impl RefreshThrottle {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: Default::default(),
        }
    }

    /// Whether a refresh of `what` may be sent at `now`; if so, the window starts again.
    pub fn try_acquire(&mut self, what: Refresh, now: Instant) -> bool {
        match self.last.get(&what) {
            Some(t) if now.duration_since(*t) < self.window => false,
            _ => {
                self.last.insert(what, now);
                true
            }
        }
    }

    /// Gives the slot back (the send failed, so the next request may try again).
    pub fn release(&mut self, what: Refresh) {
        self.last.remove(&what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_773_330_303_118)
    }

    #[test]
    fn timestamps_match_to_iso_string() {
        assert_eq!(iso_timestamp(at()), "2026-03-12T15:45:03.118Z");
        assert_eq!(
            iso_timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(5)),
            "1970-01-01T00:00:00.005Z"
        );
    }

    #[test]
    fn the_weather_command_matches_the_fixture() {
        let expected: Value = serde_json::from_str(include_str!(
            "../../fixtures/expected/weather.service.command.fetch.expected.json"
        ))
        .unwrap();
        let location = &expected["trigger"]["clientEmits"][1];
        let cmd = weather_fetch(
            "qW3rT5yU7iO9pA1sAAAF",
            "6f1c2b9e-4d3a-4f8e-9b7c-2a1d5e8f0c34",
            location,
            at(),
        );
        assert_eq!(cmd.topic, expected["produces"]["topic"]);
        assert_eq!(cmd.key.as_deref(), expected["produces"]["key"].as_str());
        let value: Value = serde_json::from_str(cmd.value_str()).unwrap();
        assert_eq!(value, expected["produces"]["value"]);
    }

    #[test]
    fn startup_refreshes_match_the_fixtures_in_order() {
        let cmds = startup_refreshes(at());
        let topics: Vec<_> = cmds.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                TOPCOINS_REFRESH,
                TOPMOVERS_REFRESH,
                STOCKS_REFRESH,
                NEWS_REFRESH
            ]
        );
        for (cmd, fixture) in cmds.iter().zip([
            include_str!("../../fixtures/crypto.service.command.topcoins.refresh.json"),
            include_str!("../../fixtures/crypto.service.command.topmovers.refresh.json"),
            include_str!("../../fixtures/stock.service.command.topperformers.refresh.json"),
            include_str!("../../fixtures/news.service.command.refresh.json"),
        ]) {
            let got: Value = serde_json::from_str(cmd.value_str()).unwrap();
            let want: Value = serde_json::from_str(fixture).unwrap();
            assert_eq!(got["requestedBy"], want["requestedBy"]);
            assert_eq!(got["reason"], want["reason"]);
            assert_eq!(
                got.as_object().unwrap().len(),
                want.as_object().unwrap().len()
            );
            assert!(got["timestamp"].as_str().unwrap().ends_with('Z'));
        }
    }

    #[test]
    fn the_throttle_allows_one_refresh_per_window_per_topic() {
        let mut t = RefreshThrottle::new(Duration::from_secs(5));
        let now = Instant::now();
        assert!(t.try_acquire(Refresh::News, now));
        assert!(!t.try_acquire(Refresh::News, now + Duration::from_secs(4)));
        assert!(t.try_acquire(Refresh::TopMovers, now + Duration::from_secs(4)));
        assert!(t.try_acquire(Refresh::News, now + Duration::from_secs(5)));
        t.release(Refresh::News);
        assert!(t.try_acquire(Refresh::News, now + Duration::from_secs(6)));
    }
}
