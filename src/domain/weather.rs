//! Weather per city (D23): the latest result each city got, and the one weather command per
//! city that may be outstanding (single flight). Time is passed in; nothing here reads the
//! clock or performs I/O.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;
use serde_json::Value;
use serde_json::value::RawValue;

use super::payload::Payload;

/// How long a city's latest result stays in the shared cache (D23).
pub const WEATHER_TTL: Duration = Duration::from_secs(600);

/// The cache key of a city's latest result (relative to the cache prefix; city verbatim).
pub fn cache_key(city: &str) -> String {
    format!("weather:{city}")
}

/// A weather record that named its city: it ends the city's outstanding command. `latest` is
/// the room payload when it is a `success` result (the only kind a client shows), kept as the
/// city's latest; an `unavailable` result or one without status keeps nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct WeatherResult {
    pub city: String,
    pub latest: Option<Payload>,
}

/// The cached form of a city's latest result: `{"receivedAt":<epoch ms>,"payload":<room payload>}`.
pub fn cache_value(payload: &Payload, received_at_ms: u64) -> String {
    format!(
        r#"{{"receivedAt":{received_at_ms},"payload":{}}}"#,
        payload.as_str()
    )
}

/// Reads a cached result back: the payload and when it was received, or `None` when the text
/// is not what [`cache_value`] writes for this city (treated as a miss).
pub fn parse_cached(city: &str, text: &str) -> Option<(Payload, u64)> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Cached<'a> {
        received_at: u64,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    let cached: Cached<'_> = serde_json::from_str(text).ok()?;
    let payload: Value = serde_json::from_str(cached.payload.get()).ok()?;
    let names_city = payload
        .get("data")
        .and_then(|d| d.get("city"))
        .and_then(Value::as_str)
        == Some(city);
    let success = payload.get("status").and_then(Value::as_str) == Some("success");
    (names_city && success).then(|| {
        (
            Payload::from_json(cached.payload.get().to_owned()),
            cached.received_at,
        )
    })
}

/// What [`WeatherBook::record`] made of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A success result, now the city's latest.
    Latest,
    /// A success result produced before the one held: not kept, and the room must not get it
    /// after the held one, which it would show until the city's next result.
    Superseded,
    /// Nothing kept: not a success result, or one produced longer ago than the clock reaches
    /// while nothing is held.
    NotKept,
}

/// What a join in a city calls for.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// The city's latest result is fresh: send it to the joining socket, no command.
    Fresh(Payload),
    /// A command for the city is outstanding: nothing to do, its result reaches the room.
    InFlight,
    /// Nothing held for the city in process, nothing outstanding: look in the shared cache.
    Unknown,
    /// The held result is stale and nothing is outstanding: a command may go.
    Stale,
}

#[derive(Debug, Default)]
struct City {
    latest: Option<(Payload, Instant)>,
    /// When the outstanding command was claimed.
    in_flight: Option<Instant>,
}

/// Per city (least recently used first out when full): the latest result and the outstanding
/// command.
#[derive(Debug)]
pub struct WeatherBook {
    cities: LruCache<String, City>,
    fresh_for: Duration,
    in_flight_for: Duration,
}

impl WeatherBook {
    /// A result is fresh for `fresh_for`; a claimed command counts as outstanding until its
    /// result or for `in_flight_for`, whichever comes first.
    pub fn new(capacity: usize, fresh_for: Duration, in_flight_for: Duration) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("at least one city");
        Self {
            cities: LruCache::new(cap),
            fresh_for,
            in_flight_for,
        }
    }

    /// What a join in `city` at `now` calls for.
    pub fn gate(&mut self, city: &str, now: Instant) -> Gate {
        let Some(entry) = self.cities.get(city) else {
            return Gate::Unknown;
        };
        if let Some((payload, at)) = &entry.latest
            && now.saturating_duration_since(*at) < self.fresh_for
        {
            return Gate::Fresh(payload.clone());
        }
        if entry
            .in_flight
            .is_some_and(|since| now.saturating_duration_since(since) < self.in_flight_for)
        {
            return Gate::InFlight;
        }
        if entry.latest.is_some() {
            Gate::Stale
        } else {
            Gate::Unknown
        }
    }

    /// Claims the city's one outstanding command: `true` when the caller may send it (nothing
    /// fresh is held and no other command is outstanding), and then the mark is set at `now`.
    pub fn claim(&mut self, city: &str, now: Instant) -> bool {
        if matches!(self.gate(city, now), Gate::Fresh(_) | Gate::InFlight) {
            return false;
        }
        self.cities
            .get_or_insert_mut(city.to_owned(), City::default)
            .in_flight = Some(now);
        true
    }

    /// Gives back a claim made at `claimed_at` whose command was not sent; a later claim stays.
    pub fn release(&mut self, city: &str, claimed_at: Instant) {
        if let Some(entry) = self.cities.peek_mut(city)
            && entry.in_flight == Some(claimed_at)
        {
            entry.in_flight = None;
        }
    }

    /// A result for the city, produced at `at` (`None`: longer ago than this clock reaches):
    /// the outstanding command is over, and a success result becomes the latest unless a
    /// newer one is held (after an outage the backlog is read late, a keyless topic's
    /// partitions in no order).
    pub fn record(&mut self, result: &WeatherResult, at: Option<Instant>) -> Recorded {
        let entry = self
            .cities
            .get_or_insert_mut(result.city.clone(), City::default);
        entry.in_flight = None;
        let Some(payload) = &result.latest else {
            return Recorded::NotKept;
        };
        match (&entry.latest, at) {
            (Some((_, held)), Some(at)) if *held > at => Recorded::Superseded,
            // Held, so produced within the clock's reach: after this one.
            (Some(_), None) => Recorded::Superseded,
            (None, None) => Recorded::NotKept,
            (_, Some(at)) => {
                entry.latest = Some((payload.clone(), at));
                Recorded::Latest
            }
        }
    }

    /// Takes a result read from the shared cache, received at `at`, unless a newer one is held.
    pub fn adopt(&mut self, city: &str, payload: Payload, at: Instant) {
        let entry = self
            .cities
            .get_or_insert_mut(city.to_owned(), City::default);
        if entry.latest.as_ref().is_none_or(|(_, held)| *held < at) {
            entry.latest = Some((payload, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FRESH: Duration = Duration::from_secs(300);
    const IN_FLIGHT: Duration = Duration::from_secs(30);

    fn book() -> WeatherBook {
        WeatherBook::new(16, FRESH, IN_FLIGHT)
    }

    fn success(city: &str) -> WeatherResult {
        WeatherResult {
            city: city.into(),
            latest: Some(Payload::new(
                &json!({"data": {"city": city, "temperatureC": 30}, "status": "success"}),
            )),
        }
    }

    #[test]
    fn one_claim_per_city_until_its_result_arrives() {
        let mut b = book();
        let t0 = Instant::now();
        assert_eq!(b.gate("Pune", t0), Gate::Unknown);
        assert!(b.claim("Pune", t0));
        assert!(!b.claim("Pune", t0 + Duration::from_secs(1)));
        assert_eq!(b.gate("Pune", t0), Gate::InFlight);
        assert!(b.claim("Agra", t0), "cities are independent");
        b.record(&success("Pune"), Some(t0 + Duration::from_secs(2)));
        assert!(matches!(
            b.gate("Pune", t0 + Duration::from_secs(3)),
            Gate::Fresh(_)
        ));
    }

    #[test]
    fn a_fresh_result_is_served_until_it_is_older_than_the_fresh_window() {
        let mut b = book();
        let t0 = Instant::now();
        let result = success("Pune");
        b.record(&result, Some(t0));
        assert_eq!(
            b.gate("Pune", t0 + FRESH - Duration::from_millis(1)),
            Gate::Fresh(result.latest.clone().unwrap())
        );
        assert!(!b.claim("Pune", t0 + Duration::from_secs(1)));
        assert_eq!(b.gate("Pune", t0 + FRESH), Gate::Stale);
        assert!(b.claim("Pune", t0 + FRESH));
    }

    #[test]
    fn an_outstanding_command_times_out() {
        let mut b = book();
        let t0 = Instant::now();
        assert!(b.claim("Pune", t0));
        assert!(!b.claim("Pune", t0 + IN_FLIGHT - Duration::from_millis(1)));
        assert!(b.claim("Pune", t0 + IN_FLIGHT));
    }

    #[test]
    fn an_unavailable_result_ends_the_command_and_keeps_the_last_good_result() {
        let mut b = book();
        let t0 = Instant::now();
        b.record(&success("Pune"), Some(t0));
        let later = t0 + FRESH;
        assert!(b.claim("Pune", later));
        let unavailable = WeatherResult {
            city: "Pune".into(),
            latest: None,
        };
        assert_eq!(b.record(&unavailable, Some(later)), Recorded::NotKept);
        assert_eq!(b.gate("Pune", later), Gate::Stale, "not in flight any more");
        let mut fresh = book();
        fresh.record(
            &WeatherResult {
                city: "Agra".into(),
                latest: None,
            },
            Some(t0),
        );
        assert_eq!(fresh.gate("Agra", t0), Gate::Unknown, "nothing kept");
    }

    #[test]
    fn a_release_gives_back_only_its_own_claim() {
        let mut b = book();
        let t0 = Instant::now();
        assert!(b.claim("Pune", t0));
        b.release("Pune", t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.claim("Pune", t1));
        b.release("Pune", t0);
        assert_eq!(b.gate("Pune", t1), Gate::InFlight);
    }

    #[test]
    fn an_adopted_result_never_replaces_a_newer_one() {
        let mut b = book();
        let t0 = Instant::now();
        let newer = success("Pune");
        b.record(&newer, Some(t0 + Duration::from_secs(10)));
        let older = Payload::new(&json!({"data": {"city": "Pune"}, "status": "success"}));
        b.adopt("Pune", older, t0);
        assert_eq!(
            b.gate("Pune", t0 + Duration::from_secs(11)),
            Gate::Fresh(newer.latest.unwrap())
        );
    }

    #[test]
    fn a_result_produced_before_the_held_one_is_not_the_latest() {
        let mut b = book();
        let t0 = Instant::now();
        let newer = success("Pune");
        assert_eq!(
            b.record(&newer, Some(t0 + Duration::from_secs(5))),
            Recorded::Latest
        );
        assert!(b.claim("Pune", t0 + FRESH + Duration::from_secs(5)));
        let older = WeatherResult {
            city: "Pune".into(),
            latest: Some(Payload::new(&json!({"data": {"city": "Pune", "t": 0}}))),
        };
        assert_eq!(b.record(&older, Some(t0)), Recorded::Superseded);
        assert_eq!(
            b.record(&older, None),
            Recorded::Superseded,
            "too old for the clock"
        );
        assert_eq!(
            b.gate("Pune", t0 + Duration::from_secs(6)),
            Gate::Fresh(newer.latest.unwrap()),
            "and any result ends the outstanding command"
        );
    }

    #[test]
    fn cached_values_round_trip_and_anything_else_is_a_miss() {
        let payload = success("Pune").latest.unwrap();
        let text = cache_value(&payload, 1_700_000_000_000);
        assert_eq!(
            parse_cached("Pune", &text),
            Some((payload.clone(), 1_700_000_000_000))
        );
        assert_eq!(parse_cached("Agra", &text), None, "another city's result");
        assert_eq!(parse_cached("Pune", "{not json"), None);
        assert_eq!(parse_cached("Pune", r#"{"payload":{}}"#), None);
        let unavailable = Payload::new(&json!({"data": {"city": "Pune"}}));
        assert_eq!(parse_cached("Pune", &cache_value(&unavailable, 1)), None);
    }
}
