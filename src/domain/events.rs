//! The six event streams: validation of a record value, then the room emits and the snapshot
//! write it causes. A rejected value causes nothing at all.

use std::borrow::BorrowMut;

use serde_json::{Map, Value, json};

use super::payload::Payload;
use super::topics::*;
use super::weather::WeatherResult;

/// One emit to a room.
#[derive(Clone, Debug, PartialEq)]
pub struct Emit {
    pub room: String,
    pub event: String,
    pub payload: Payload,
}

/// A snapshot to store (JSON text) under a key with its TTL.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotWrite {
    pub key: SnapshotKey,
    pub value: String,
}

/// What an accepted record causes.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub emits: Vec<Emit>,
    pub snapshot: Option<SnapshotWrite>,
    /// For tickers: the product id, so that a lagging socket can be sent the latest price
    /// per product instead of every tick.
    pub conflation_key: Option<String>,
    /// When the consumer is behind, a later delivery of the same batch with the same room,
    /// event and key makes this one's emits pointless ([`conflate`]): tickers (per product)
    /// and successful weather results (per city: each is the whole current weather of its
    /// room). Other weather results (`unavailable`, no status) have none: the frontend ignores
    /// them (D8), so superseding a success with one would leave clients on older weather.
    pub supersede_key: Option<String>,
    /// For weather results that name their city: what the result means for the city's
    /// latest result and outstanding command (D23).
    pub weather: Option<WeatherResult>,
}

/// Why a record was refused. `reason` is a short, stable label used in metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{stream} event rejected: {reason}")]
pub struct Rejection {
    pub stream: &'static str,
    pub reason: &'static str,
}

/// The reasons any stream's record can be rejected for, whatever its schema (each stream's
/// validation adds its own).
pub const COMMON_REJECTIONS: [&str; 3] = ["tombstone", "invalid_json", "not_an_object"];

/// Validates the value of a record read from `topic` and says what it causes.
///
/// # Errors
/// A [`Rejection`] naming the stream and the reason when the value must be skipped.
pub fn route(topic: &str, value: Option<&[u8]>) -> Result<Delivery, Rejection> {
    let stream = stream_name(topic);
    let reject = |reason| Rejection { stream, reason };
    if stream == "unknown" {
        return Err(reject("unknown_topic"));
    }
    let bytes = match value {
        Some(b) if !b.iter().all(u8::is_ascii_whitespace) => b,
        _ => return Err(reject("tombstone")),
    };
    let parsed = parse_json(bytes).map_err(|_| reject("invalid_json"))?;
    let Value::Object(obj) = parsed else {
        return Err(reject("not_an_object"));
    };
    match topic {
        WEATHER_EVENTS => weather(obj),
        MOVERS_EVENTS => movers(obj),
        TOPCOINS_EVENTS => topcoins(obj),
        TICKER_EVENTS => ticker(obj),
        NEWS_EVENTS => news(obj),
        STOCK_EVENTS => stocks(obj),
        _ => unreachable!("stream_name covers every event topic"),
    }
    .map_err(reject)
}

/// Parses JSON as JavaScript's `JSON.parse` does, which the original BFF read with: an
/// unpaired UTF-16 surrogate escape (`"\ud83d"`, which `JSON.stringify` writes for an emoji
/// cut in half) is taken as U+FFFD, where serde_json refuses the whole value (a Rust string
/// cannot hold it; found by review: a news title cut mid-emoji lost the whole update).
fn parse_json(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice(bytes).or_else(|error| match replace_lone_surrogates(bytes) {
        Some(replaced) => serde_json::from_slice(&replaced),
        None => Err(error),
    })
}

/// `bytes` with every `\u` escape of an unpaired surrogate replaced by `\uFFFD` (as long:
/// nothing else moves), or `None` when there is none.
fn replace_lone_surrogates(bytes: &[u8]) -> Option<Vec<u8>> {
    /// The code unit of the `\uXXXX` escape at `at`, if there is one.
    fn unit(bytes: &[u8], at: usize) -> Option<u16> {
        let escape = bytes.get(at..at + 6)?;
        if escape[0] != b'\\' || escape[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&escape[2..]).ok()?, 16).ok()
    }
    let (high, low) = (0xD800..=0xDBFF, 0xDC00..=0xDFFF);
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(u) = unit(bytes, i) else {
            i += 2; // another escape (`\\` among them): its second byte is not a `\`
            continue;
        };
        let paired = high.contains(&u) && unit(bytes, i + 6).is_some_and(|v| low.contains(&v));
        if paired {
            i += 12;
        } else if high.contains(&u) || low.contains(&u) {
            out.get_or_insert_with(|| bytes.to_vec())[i..i + 6].copy_from_slice(b"\\uFFFD");
            i += 6;
        } else {
            i += 6;
        }
    }
    out
}

/// The validation of one stream's record value (a JSON object).
type Validator = fn(Map<String, Value>) -> Result<Delivery, &'static str>;

/// Whether `cached` has the shape of the snapshot stored under `key`: the value passes the
/// validation of the record that would have written it. A snapshot read from the shared cache
/// may come from another writer (the original BFF caches values it never validated, contract
/// e.9: a movers side `unavailable`, stocks as `[]`), and is served only if it passes (D9).
pub fn valid_snapshot(key: SnapshotKey, cached: &str) -> bool {
    let Ok(value) = parse_json(cached.as_bytes()) else {
        return false;
    };
    let (record, validate): (Value, Validator) = match key {
        SNAP_MOVERS => (value, movers),
        SNAP_TOPCOINS => (value, topcoins),
        SNAP_STOCKS => (json!({ "data": value }), stocks),
        SNAP_NEWS => (json!({ "payload": { "data": value } }), news),
        _ => return false,
    };
    match record {
        Value::Object(obj) => validate(obj).is_ok(),
        _ => false,
    }
}

/// Longest city accepted in a room name (D10).
pub const MAX_CITY_LEN: usize = 100;

fn city_in(data: &Map<String, Value>) -> Result<&str, &'static str> {
    match data.get("city") {
        Some(Value::String(c)) if c.trim().is_empty() => Err("empty_city"),
        Some(Value::String(c)) if c.chars().count() > MAX_CITY_LEN => Err("city_too_long"),
        Some(Value::String(c)) => Ok(c),
        Some(_) => Err("city_not_a_string"),
        None => Err("missing_city"),
    }
}

fn weather(mut obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    let status = obj.get("status").and_then(Value::as_str).map(str::to_owned);
    if status.as_deref() == Some("unavailable") {
        // The real weather-service sends no city with an outage result, so such a record
        // cannot be routed; one that names its city is forwarded (D8).
        let city = obj
            .get("data")
            .and_then(Value::as_object)
            .and_then(|d| city_in(d).ok())
            .ok_or("unavailable_without_city")?;
        let reason = obj.get("reason").cloned().unwrap_or(Value::Null);
        let payload = json!({"status": "unavailable", "reason": reason});
        // No supersede key: it tells nothing of the weather, which a room keeps showing.
        let mut delivery = one(weather_room(city), weather_event(city), &payload, None);
        delivery.weather = Some(WeatherResult {
            city: city.to_owned(),
            latest: None,
        });
        return Ok(delivery);
    }
    let mut data = match obj.remove("data") {
        Some(Value::Object(d)) => d,
        Some(_) => return Err("data_not_an_object"),
        None => return Err("missing_data"),
    };
    let city = city_in(&data)?.to_owned();
    if let Some(Value::Object(aq)) = data.get_mut("airQuality") {
        if let Some(v) = aq.get("pm2_5").cloned() {
            aq.entry("pm25").or_insert(v);
        }
        if let Some(v) = aq.get("us-epa-index").cloned() {
            aq.entry("usEpaIndex").or_insert(v);
        }
    }
    let mut payload = Map::new();
    payload.insert("data".into(), Value::Object(data));
    if status.as_deref() == Some("success") {
        payload.insert("status".into(), Value::from("success"));
    }
    let success = status.as_deref() == Some("success");
    let mut delivery = one(
        weather_room(&city),
        weather_event(&city),
        &Value::Object(payload),
        None,
    );
    delivery.weather = Some(WeatherResult {
        city: city.clone(),
        latest: success.then(|| delivery.emits[0].payload.clone()),
    });
    // Only a result the frontend shows makes an older one pointless (D8).
    delivery.supersede_key = success.then_some(city);
    Ok(delivery)
}

fn has_array_data(side: Option<&Value>) -> bool {
    matches!(side.and_then(|s| s.get("data")), Some(Value::Array(_)))
}

fn movers(obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    if obj.get("topGainers").is_none_or(Value::is_null) {
        return Err("missing_top_gainers");
    }
    if obj.get("topLosers").is_none_or(Value::is_null) {
        return Err("missing_top_losers");
    }
    if !has_array_data(obj.get("topGainers")) || !has_array_data(obj.get("topLosers")) {
        return Err("side_without_data");
    }
    // The dashboard upper-cases each mover's `symbol` (contract §d.3): one without a string
    // there throws in the movers panel, and the snapshot would replace a good one.
    let mut movers = ["topGainers", "topLosers"]
        .iter()
        .filter_map(|side| obj[*side]["data"].as_array())
        .flatten();
    if !movers.all(|m| m.get("symbol").is_some_and(Value::is_string)) {
        return Err("invalid_mover");
    }
    let snapshot = serde_json::to_string(&obj).expect("JSON value");
    let payload = json!({
        "status": "success",
        "data": {"topGainers": obj["topGainers"], "topLosers": obj["topLosers"]},
        "error": null,
    });
    Ok(one(
        ROOM_CRYPTO.into(),
        EV_MOVERS.into(),
        &payload,
        Some(SnapshotWrite {
            key: SNAP_MOVERS,
            value: snapshot,
        }),
    ))
}

fn topcoins(obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    match obj.get("topCoins") {
        None | Some(Value::Null) => return Err("missing_top_coins"),
        Some(Value::Array(a)) if a.is_empty() => return Err("empty_top_coins"),
        // The dashboard reads `symbol` and `name` of each (contract §d.3).
        Some(Value::Array(a)) if !a.iter().all(Value::is_object) => {
            return Err("invalid_coin");
        }
        Some(Value::Array(_)) => {}
        Some(_) => return Err("top_coins_not_an_array"),
    }
    let payload =
        json!({"status": "success", "data": {"topCoins": obj["topCoins"]}, "error": null});
    let snapshot = serde_json::to_string(&obj).expect("JSON value");
    Ok(one(
        ROOM_CRYPTO.into(),
        EV_TOPCOINS.into(),
        &payload,
        Some(SnapshotWrite {
            key: SNAP_TOPCOINS,
            value: snapshot,
        }),
    ))
}

fn ticker(obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    let Some(Value::Object(data)) = obj.get("data") else {
        return Err("missing_ticker");
    };
    if data.get("type").and_then(Value::as_str) != Some("ticker") {
        return Err("not_a_ticker");
    }
    let product = match data.get("product_id") {
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        _ => return Err("missing_product_id"),
    };
    let payload = json!({"status": "success", "data": obj, "error": null});
    let mut delivery = one(ROOM_CRYPTO.into(), EV_TICKER.into(), &payload, None);
    delivery.supersede_key = Some(product.clone());
    delivery.conflation_key = Some(product);
    Ok(delivery)
}

fn news(mut obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    let articles = match obj.get_mut("payload") {
        Some(Value::Object(p)) => match p.remove("data") {
            Some(Value::Array(a)) if a.is_empty() => return Err("empty_articles"),
            // The news card reads each article's fields (contract §d.3).
            Some(Value::Array(a)) if !a.iter().all(Value::is_object) => {
                return Err("invalid_article");
            }
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => return Err("missing_articles"),
            Some(_) => return Err("articles_not_an_array"),
        },
        Some(Value::Null) | None => return Err("missing_payload"),
        Some(_) => return Err("payload_not_an_object"),
    };
    let articles = Value::Array(articles);
    let payload = json!({"status": "success", "scope": "global", "data": articles});
    Ok(one(
        ROOM_NEWS.into(),
        EV_NEWS.into(),
        &payload,
        Some(SnapshotWrite {
            key: SNAP_NEWS,
            value: serde_json::to_string(&articles).expect("JSON value"),
        }),
    ))
}

const STOCK_NUMBERS: [&str; 6] = [
    "currentPrice",
    "previousClose",
    "changePercent",
    "open",
    "high",
    "low",
];

fn valid_performers(list: Option<&Value>) -> bool {
    let Some(Value::Array(items)) = list else {
        return false;
    };
    items.iter().all(|item| {
        item.get("symbol").is_some_and(Value::is_string)
            && STOCK_NUMBERS
                .iter()
                .all(|f| item.get(*f).is_some_and(Value::is_number))
    })
}

fn stocks(mut obj: Map<String, Value>) -> Result<Delivery, &'static str> {
    let data = match obj.remove("data") {
        Some(Value::Object(d)) => d,
        Some(Value::Null) | None => return Err("missing_data"),
        Some(_) => return Err("data_not_an_object"),
    };
    if !valid_performers(data.get("topGainers")) || !valid_performers(data.get("topLosers")) {
        return Err("invalid_performers");
    }
    match data.get("meta") {
        Some(Value::Object(meta)) => {
            // The dashboard joins `meta.exchanges` (contract §d.3): anything but an array
            // crashes the stock card, and the snapshot would replace a good one.
            if !meta.get("exchanges").is_some_and(Value::is_array) {
                return Err("invalid_meta");
            }
        }
        _ => return Err("missing_meta"),
    }
    let data = Value::Object(data);
    let payload = json!({"status": "success", "data": data, "error": null});
    Ok(one(
        ROOM_STOCK.into(),
        EV_STOCKS.into(),
        &payload,
        Some(SnapshotWrite {
            key: SNAP_STOCKS,
            value: serde_json::to_string(&data).expect("JSON value"),
        }),
    ))
}

/// Conflates a batch of deliveries read together (the consumer was behind): an emit of a
/// supersedable delivery (a ticker, a successful weather result) is dropped when a later
/// delivery of the same batch emits the same event to the same room with the same key, since
/// every client would get that newer price or weather anyway. Everything else, snapshots
/// included, stays, in order.
///
/// `batch` holds the deliveries, or references to those of them that are emitted.
/// Returns how many emits were dropped. A batch of one is never changed.
pub fn conflate<D: BorrowMut<Delivery>>(batch: &mut [D]) -> usize {
    if batch.len() < 2 {
        return 0;
    }
    let mut superseded = Vec::new();
    {
        let mut later = std::collections::HashSet::new();
        for (i, delivery) in batch.iter().enumerate().rev() {
            let delivery: &Delivery = delivery.borrow();
            let Some(key) = delivery.supersede_key.as_deref() else {
                continue;
            };
            for (j, emit) in delivery.emits.iter().enumerate().rev() {
                if !later.insert((emit.room.as_str(), emit.event.as_str(), key)) {
                    superseded.push((i, j));
                }
            }
        }
    }
    // Pushed from the last delivery and emit backwards, so removing in that order keeps the
    // indices still to remove valid.
    for &(i, j) in &superseded {
        batch[i].borrow_mut().emits.remove(j);
    }
    superseded.len()
}

fn one(room: String, event: String, payload: &Value, snapshot: Option<SnapshotWrite>) -> Delivery {
    Delivery {
        emits: vec![Emit {
            room,
            event,
            payload: Payload::new(payload),
        }],
        snapshot,
        conflation_key: None,
        supersede_key: None,
        weather: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

    fn fixture(name: &str) -> Value {
        let text = fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn compact(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    type Emits = Vec<(String, String, Value)>;
    type Writes = Vec<(String, u64, Value)>;

    /// What the original emitted, adjusted by DECISIONS: movers under the frontend's event
    /// name (D2), no ticker cache (D3), air-quality aliases on weather (D8).
    fn adjusted_expectation(topic: &str, expected: &Value) -> (Emits, Writes) {
        let emits = expected["emits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut event = e["event"].as_str().unwrap().to_owned();
                if event == "topMoversResponse" {
                    event = EV_MOVERS.to_owned();
                }
                let mut payload = e["payload"].clone();
                if topic == WEATHER_EVENTS
                    && let Some(aq) = payload["data"]
                        .get_mut("airQuality")
                        .and_then(Value::as_object_mut)
                {
                    let pm = aq["pm2_5"].clone();
                    let epa = aq["us-epa-index"].clone();
                    aq.insert("pm25".into(), pm);
                    aq.insert("usEpaIndex".into(), epa);
                }
                (e["room"].as_str().unwrap().to_owned(), event, payload)
            })
            .collect();
        let writes = if topic == TICKER_EVENTS {
            Vec::new()
        } else {
            expected["cacheWrites"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| {
                    (
                        w["key"].as_str().unwrap().to_owned(),
                        w["ttlSeconds"].as_u64().unwrap(),
                        w["value"].clone(),
                    )
                })
                .collect()
        };
        (emits, writes)
    }

    #[test]
    fn every_valid_fixture_yields_the_expected_emits_and_cache_writes() {
        for topic in EVENT_TOPICS {
            let expected = fixture(&format!("expected/{topic}.expected.json"));
            let mut inputs = vec![fixture(&format!("{topic}.json"))];
            if let Some(next) = expected["input"].get("followedBy") {
                inputs.push(next["value"].clone());
            }
            let mut emits = Vec::new();
            let mut writes = Vec::new();
            for input in &inputs {
                let d =
                    route(topic, Some(&compact(input))).unwrap_or_else(|r| panic!("{topic}: {r}"));
                for e in d.emits {
                    emits.push((e.room, e.event, e.payload.to_value()));
                }
                if let Some(w) = d.snapshot {
                    let value: Value = serde_json::from_str(&w.value).unwrap();
                    writes.push((format!("bff:{}", w.key.key), w.key.ttl.as_secs(), value));
                }
            }
            let (want_emits, want_writes) = adjusted_expectation(topic, &expected);
            assert_eq!(emits, want_emits, "{topic}: emits");
            assert_eq!(writes, want_writes, "{topic}: cache writes");
        }
    }

    #[test]
    fn full_precision_numbers_reach_clients_and_the_cache_digit_for_digit() {
        // JSON.stringify writes the shortest text that reads back as the same double; the
        // gateway must neither round it on the way in nor write a different one out. (These
        // three are JSON.stringify's own output; without serde_json's `float_roundtrip` the
        // last two came out as …703 and …552.)
        let text = compact(&fixture("crypto.movers.event.updated.json"));
        let text = String::from_utf8(text)
            .unwrap()
            .replacen("3.184127563", "-0.8718549558346252", 1)
            .replacen("7.92113", "3.9166573353688707", 1)
            .replacen("2523184301", "980637693267.6553", 1);
        let d = route(MOVERS_EVENTS, Some(text.as_bytes())).unwrap();
        let pushed = d.emits[0].payload.as_str();
        let cached = &d.snapshot.as_ref().unwrap().value;
        for digits in [
            "-0.8718549558346252",
            "3.9166573353688707",
            "980637693267.6553",
        ] {
            assert!(
                pushed.contains(digits),
                "{digits} not in the push: {pushed}"
            );
            assert!(
                cached.contains(digits),
                "{digits} not in the snapshot: {cached}"
            );
        }
    }

    #[test]
    fn emitted_payloads_keep_the_contract_key_order() {
        let d = route(
            WEATHER_EVENTS,
            Some(&compact(&fixture("weather.service.event.updated.json"))),
        )
        .unwrap();
        assert!(
            d.emits[0]
                .payload
                .as_str()
                .starts_with(r#"{"data":{"city":"Pune""#)
        );
        assert!(
            d.emits[0]
                .payload
                .as_str()
                .ends_with(r#","status":"success"}"#)
        );
        let d = route(
            TICKER_EVENTS,
            Some(&compact(&fixture("crypto.ticker.event.updated.json"))),
        )
        .unwrap();
        assert!(
            d.emits[0]
                .payload
                .as_str()
                .starts_with(r#"{"status":"success","data":{"source":"coinbase""#)
        );
        assert_eq!(d.conflation_key.as_deref(), Some("BTC-USD"));
    }

    fn news_delivery() -> Delivery {
        route(
            NEWS_EVENTS,
            Some(&compact(&fixture("news.service.event.updated.json"))),
        )
        .unwrap()
    }

    fn tick(product: &str, price: &str) -> Delivery {
        let value = json!({"data": {"type": "ticker", "product_id": product, "price": price}});
        route(TICKER_EVENTS, Some(&compact(&value))).unwrap()
    }

    fn prices(batch: &[Delivery]) -> Vec<String> {
        batch
            .iter()
            .flat_map(|d| &d.emits)
            .map(|e| {
                let v: Value = serde_json::from_str(e.payload.as_str()).unwrap();
                match v["data"]["data"]["price"].as_str() {
                    Some(p) => format!("{}:{p}", v["data"]["data"]["product_id"].as_str().unwrap()),
                    None => e.event.clone(),
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_keeps_only_the_latest_ticker_per_product_and_everything_else_in_order() {
        let news = news_delivery();
        let mut batch = vec![
            tick("BTC-USD", "1"),
            tick("ETH-USD", "2"),
            news.clone(),
            tick("BTC-USD", "3"),
            tick("BTC-USD", "4"),
            tick("SOL-USD", "5"),
        ];
        let snapshots_before: Vec<_> = batch.iter().map(|d| d.snapshot.clone()).collect();
        assert_eq!(conflate(&mut batch), 2);
        assert_eq!(
            prices(&batch),
            [
                "ETH-USD:2",
                news.emits[0].event.as_str(),
                "BTC-USD:4",
                "SOL-USD:5"
            ]
        );
        // Snapshots are not touched; the snapshot writer conflates per key itself.
        let snapshots_after: Vec<_> = batch.iter().map(|d| d.snapshot.clone()).collect();
        assert_eq!(snapshots_before, snapshots_after);
    }

    #[test]
    fn a_batch_keeps_only_the_latest_weather_per_city() {
        let weather = |city: &str, temp: f64| {
            let mut v = fixture("weather.service.event.updated.json");
            v["data"]["city"] = json!(city);
            v["data"]["temperatureC"] = json!(temp);
            route(WEATHER_EVENTS, Some(&compact(&v))).unwrap()
        };
        let mut batch = vec![
            weather("Pune", 20.0),
            weather("Delhi", 30.0),
            weather("Pune", 21.0),
            tick("BTC-USD", "1"),
            weather("Pune", 22.0),
        ];
        assert_eq!(conflate(&mut batch), 2);
        let left: Vec<(String, f64)> = batch
            .iter()
            .flat_map(|d| &d.emits)
            .filter(|e| e.room.starts_with("weather."))
            .map(|e| {
                let v: Value = serde_json::from_str(e.payload.as_str()).unwrap();
                (e.room.clone(), v["data"]["temperatureC"].as_f64().unwrap())
            })
            .collect();
        assert_eq!(
            left,
            [
                ("weather.Delhi".to_owned(), 30.0),
                ("weather.Pune".to_owned(), 22.0)
            ]
        );
    }

    #[test]
    fn a_weather_result_the_frontend_ignores_does_not_supersede_a_success() {
        let success = |temp: f64| {
            let mut v = fixture("weather.service.event.updated.json");
            v["data"]["temperatureC"] = json!(temp);
            route(WEATHER_EVENTS, Some(&compact(&v))).unwrap()
        };
        let unavailable = route(
            WEATHER_EVENTS,
            Some(br#"{"status":"unavailable","reason":"timeout","data":{"city":"Pune"}}"#),
        )
        .unwrap();
        let mut v = fixture("weather.service.event.updated.json");
        v.as_object_mut().unwrap().remove("status");
        let without_status = route(WEATHER_EVENTS, Some(&compact(&v))).unwrap();
        let (success_20, success_22) = (success(20.0), success(22.0));
        assert_eq!(
            (
                unavailable.emits[0].room.as_str(),
                success_20.emits[0].room.as_str()
            ),
            ("weather.Pune", "weather.Pune")
        );

        let mut batch = vec![
            success_20.clone(),
            unavailable.clone(),
            without_status.clone(),
        ];
        assert_eq!(conflate(&mut batch), 0);
        assert_eq!(
            batch[0].emits, success_20.emits,
            "the room keeps the success it shows"
        );
        assert_eq!(
            batch[1].emits, unavailable.emits,
            "and still hears of the outage"
        );
        assert_eq!(batch[2].emits, without_status.emits);

        // A newer success still supersedes an older one, across the others.
        let mut batch = vec![success_20, unavailable, without_status, success_22.clone()];
        assert_eq!(conflate(&mut batch), 1);
        assert!(batch[0].emits.is_empty());
        assert_eq!(batch[3].emits, success_22.emits);
    }

    #[test]
    fn superseded_emits_of_one_delivery_are_removed_from_the_back() {
        // Every delivery has one emit today; one with several must not trip the removal.
        let mut twice = tick("BTC-USD", "1");
        twice.emits.push(twice.emits[0].clone());
        twice.emits.push(twice.emits[0].clone());
        let mut batch = vec![twice, tick("BTC-USD", "2")];
        assert_eq!(conflate(&mut batch), 3);
        assert_eq!(prices(&batch), ["BTC-USD:2"]);
    }

    #[test]
    fn a_batch_of_one_or_without_tickers_is_left_alone() {
        let mut one = vec![tick("BTC-USD", "1")];
        assert_eq!(conflate(&mut one), 0);
        assert_eq!(prices(&one), ["BTC-USD:1"]);
        let news = news_delivery();
        let mut batch = vec![news.clone(), news];
        assert_eq!(conflate(&mut batch), 0);
        assert_eq!(batch.iter().map(|d| d.emits.len()).sum::<usize>(), 2);
    }

    #[test]
    fn every_invalid_variant_is_rejected_with_a_reason() {
        for topic in EVENT_TOPICS {
            let variants = fixture(&format!("{topic}.invalid.json"));
            for v in variants.as_array().unwrap() {
                let bytes: Option<Vec<u8>> = if v.get("tombstone").is_some() {
                    None
                } else if let Some(raw) = v.get("raw") {
                    Some(raw.as_str().unwrap().as_bytes().to_vec())
                } else {
                    Some(compact(&v["value"]))
                };
                let result = route(topic, bytes.as_deref());
                let rejection = result.expect_err(&format!("{topic}: must reject {}", v["why"]));
                assert_eq!(rejection.stream, stream_name(topic));
                assert!(!rejection.reason.is_empty());
            }
        }
    }

    /// What the original cached from a value it accepted and this gateway rejects (the
    /// "stricter than original" variants) is refused when read back from the shared cache; what
    /// this gateway writes is served.
    #[test]
    fn a_cached_snapshot_is_served_only_with_the_shape_this_gateway_writes() {
        let snapshot_topics = [
            (MOVERS_EVENTS, SNAP_MOVERS, ""),
            (TOPCOINS_EVENTS, SNAP_TOPCOINS, ""),
            (STOCK_EVENTS, SNAP_STOCKS, "/data"),
            (NEWS_EVENTS, SNAP_NEWS, "/payload/data"),
        ];
        let mut refused = 0;
        for (topic, key, cached_at) in snapshot_topics {
            let valid = fixture(&format!("{topic}.json"));
            let write = route(topic, Some(&compact(&valid)))
                .unwrap()
                .snapshot
                .unwrap();
            assert_eq!(write.key, key);
            assert!(
                valid_snapshot(key, &write.value),
                "{topic}: {}",
                write.value
            );

            for v in fixture(&format!("{topic}.invalid.json"))
                .as_array()
                .unwrap()
            {
                if v["required"] != "reject (stricter than original)" {
                    continue;
                }
                let cached = v["value"].pointer(cached_at).unwrap().to_string();
                assert!(
                    !valid_snapshot(key, &cached),
                    "{topic}: {}: {cached}",
                    v["why"]
                );
                refused += 1;
            }
            assert!(!valid_snapshot(key, "{not json"));
        }
        assert!(
            refused >= 6,
            "the original's accepted-but-invalid variants: {refused}"
        );
    }

    #[test]
    fn an_empty_value_is_a_tombstone() {
        assert_eq!(
            route(NEWS_EVENTS, Some(b"")).unwrap_err().reason,
            "tombstone"
        );
        assert_eq!(route(NEWS_EVENTS, None).unwrap_err().reason, "tombstone");
        assert_eq!(
            route("other.topic", Some(b"{}")).unwrap_err().reason,
            "unknown_topic"
        );
    }

    #[test]
    fn an_unavailable_weather_result_that_names_its_city_is_forwarded() {
        let v = serde_json::json!({"status":"unavailable","reason":"timeout","data":{"city":"Pune"},"timestamp":1});
        let d = route(WEATHER_EVENTS, Some(&compact(&v))).unwrap();
        assert_eq!(d.emits[0].room, "weather.Pune");
        assert_eq!(
            d.emits[0].payload.to_value(),
            serde_json::json!({"status":"unavailable","reason":"timeout"})
        );
        assert!(d.snapshot.is_none());
        assert_eq!(
            d.weather,
            Some(WeatherResult {
                city: "Pune".into(),
                latest: None
            }),
            "ends the city's command, is not kept (D23)"
        );
    }

    #[test]
    fn a_success_weather_result_is_the_citys_latest_and_one_without_status_is_not() {
        let mut v = fixture("weather.service.event.updated.json");
        let d = route(WEATHER_EVENTS, Some(&compact(&v))).unwrap();
        let result = d.weather.unwrap();
        assert_eq!(result.city, "Pune");
        assert_eq!(result.latest, Some(d.emits[0].payload.clone()));
        v.as_object_mut().unwrap().remove("status");
        let d = route(WEATHER_EVENTS, Some(&compact(&v))).unwrap();
        assert_eq!(d.weather.unwrap().latest, None);
        let d = route(
            MOVERS_EVENTS,
            Some(&compact(&fixture("crypto.movers.event.updated.json"))),
        );
        assert_eq!(d.unwrap().weather, None);
    }

    #[test]
    fn stocks_with_partial_performers_are_rejected() {
        let mut v = fixture("stock.service.event.updated.json");
        v["data"]["topGainers"][0]
            .as_object_mut()
            .unwrap()
            .remove("open");
        assert_eq!(
            route(STOCK_EVENTS, Some(&compact(&v))).unwrap_err().reason,
            "invalid_performers"
        );
    }

    /// Found by review: list items the dashboard dereferences passed unchecked (only stocks'
    /// performers were), and would have replaced a good snapshot with one it cannot render.
    #[test]
    fn movers_coins_and_articles_the_dashboard_cannot_render_are_rejected() {
        for (side, symbol) in [
            ("topGainers", Value::Null),
            ("topLosers", json!(42)),
            ("topGainers", json!("")),
        ] {
            let mut v = fixture("crypto.movers.event.updated.json");
            v[side]["data"][0]["symbol"] = symbol.clone();
            let got = route(MOVERS_EVENTS, Some(&compact(&v)));
            if symbol == json!("") {
                assert!(got.is_ok(), "an empty symbol renders as nothing");
            } else {
                assert_eq!(got.unwrap_err().reason, "invalid_mover", "{side} {symbol}");
            }
        }
        let mut v = fixture("crypto.movers.event.updated.json");
        v["topLosers"]["data"][0] = Value::Null;
        assert_eq!(
            route(MOVERS_EVENTS, Some(&compact(&v))).unwrap_err().reason,
            "invalid_mover"
        );
        let mut v = fixture("crypto.topcoins.event.updated.json");
        v["topCoins"][1] = json!("ETH-USD");
        assert_eq!(
            route(TOPCOINS_EVENTS, Some(&compact(&v)))
                .unwrap_err()
                .reason,
            "invalid_coin"
        );
        let mut v = fixture("news.service.event.updated.json");
        v["payload"]["data"][2] = Value::Null;
        assert_eq!(
            route(NEWS_EVENTS, Some(&compact(&v))).unwrap_err().reason,
            "invalid_article"
        );
    }

    /// Found by review: a `meta` without its `exchanges` array passed, and would have
    /// replaced a good snapshot with one the stock card cannot render.
    #[test]
    fn stocks_whose_meta_has_no_exchanges_array_are_rejected() {
        for exchanges in [None, Some(json!("NYSE")), Some(Value::Null)] {
            let mut v = fixture("stock.service.event.updated.json");
            let meta = v["data"]["meta"].as_object_mut().unwrap();
            match exchanges {
                Some(e) => meta.insert("exchanges".into(), e),
                None => meta.remove("exchanges"),
            };
            assert_eq!(
                route(STOCK_EVENTS, Some(&compact(&v))).unwrap_err().reason,
                "invalid_meta"
            );
        }
    }

    #[test]
    fn an_unpaired_surrogate_escape_is_read_as_javascript_reads_it() {
        let news = |title: &str| {
            format!(
                r#"{{"payload":{{"data":[{{"id":"1","title":"{title}","description":"d"}}]}}}}"#
            )
        };
        // Cut mid-emoji, a lone low one, a lone high one before a pair: each is U+FFFD.
        for (title, read) in [
            (r"a \ud83d", "a \u{fffd}"),
            (r"\ude00b", "\u{fffd}b"),
            (r"\ud83d\ud83d\ude00", "\u{fffd}\u{1f600}"),
        ] {
            let delivery = route(NEWS_EVENTS, Some(news(title).as_bytes()))
                .unwrap_or_else(|e| panic!("{title}: {e:?}"));
            let value = delivery.emits[0].payload.to_value();
            assert_eq!(value["data"][0]["title"], read, "{title}");
        }
        // A pair stays a pair; an escaped backslash before `u` is no escape.
        assert_eq!(replace_lone_surrogates(br#""\ud83d\ude00""#), None);
        assert_eq!(replace_lone_surrogates(br#""\\ud83d""#), None);
        assert_eq!(
            replace_lone_surrogates(br#""\\\ud83d""#).as_deref(),
            Some(&br#""\\\uFFFD""#[..])
        );
        // Still invalid JSON otherwise.
        assert!(route(NEWS_EVENTS, Some(br#"{"payload": \ud83d}"#)).is_err());
    }
}
