//! Tests of the simulator: every value it produces is shaped like its fixture and accepted by
//! the gateway; and, on the in-memory bus, it publishes, answers commands, survives a lost
//! subscription and stops on shutdown.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::adapters::memory::MemoryBus;
use crate::domain::route;

fn fixture(topic: &str) -> Value {
    let text = match topic {
        WEATHER_EVENTS => include_str!("../../fixtures/weather.service.event.updated.json"),
        MOVERS_EVENTS => include_str!("../../fixtures/crypto.movers.event.updated.json"),
        TOPCOINS_EVENTS => include_str!("../../fixtures/crypto.topcoins.event.updated.json"),
        TICKER_EVENTS => include_str!("../../fixtures/crypto.ticker.event.updated.json"),
        NEWS_EVENTS => include_str!("../../fixtures/news.service.event.updated.json"),
        STOCK_EVENTS => include_str!("../../fixtures/stock.service.event.updated.json"),
        other => panic!("no fixture for {other}"),
    };
    serde_json::from_str(text).unwrap()
}

/// Fields that are `string | null` in the real feeds (news cards).
const NULLABLE: [&str; 2] = ["description", "image"];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Fails unless `got` has the keys, key order and value types of `want`, recursively (array
/// items are compared with the fixture's first item).
fn assert_same_shape(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let (gk, wk): (Vec<_>, Vec<_>) = (g.keys().collect(), w.keys().collect());
            assert_eq!(gk, wk, "keys of {path}");
            for (k, v) in g {
                assert_same_shape(v, &w[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert!(!g.is_empty(), "{path} is empty");
            if let Some(first) = w.first() {
                for (i, item) in g.iter().enumerate() {
                    assert_same_shape(item, first, &format!("{path}[{i}]"));
                }
            }
        }
        (g, w) => {
            let nullable = NULLABLE.iter().any(|f| path.ends_with(&format!(".{f}")));
            let ok = kind(g) == kind(w) || (nullable && (g.is_null() || w.is_null()));
            assert!(ok, "{path}: {} where the fixture has {}", kind(g), kind(w));
        }
    }
}

/// Checks one produced event: right key, fixture shape, accepted by the gateway.
fn check_event(command: &Command) {
    let value: Value = serde_json::from_slice(&command.value).unwrap();
    assert_same_shape(
        &value,
        &fixture(&command.topic),
        stream_name(&command.topic),
    );
    let mut floats = Vec::new();
    integral_floats(&value, stream_name(&command.topic), &mut floats);
    assert!(
        floats.is_empty(),
        "written as JSON.stringify would not (`9.0` for 9): {floats:?}"
    );
    let delivery = route(&command.topic, Some(&command.value))
        .unwrap_or_else(|r| panic!("gateway rejects {}: {r}\n{value}", command.topic));
    assert_eq!(delivery.emits.len(), 1);
    match command.topic.as_str() {
        TICKER_EVENTS => {
            let product = value["data"]["product_id"].as_str().unwrap();
            assert_eq!(command.key.as_deref(), Some(product));
        }
        NEWS_EVENTS => assert_eq!(command.key.as_deref(), Some("globalnews")),
        _ => assert_eq!(command.key, None, "{}", command.topic),
    }
}

/// The paths of numbers written with a fraction that is zero (`9.0`).
fn integral_floats(v: &Value, path: &str, found: &mut Vec<String>) {
    match v {
        Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|x| x.fract() == 0.0) => {
            found.push(format!("{path} = {n}"));
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                integral_floats(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(fields) => {
            for (k, item) in fields {
                integral_floats(item, &format!("{path}.{k}"), found);
            }
        }
        _ => {}
    }
}

#[test]
#[should_panic(expected = "keys of stocks.data.topGainers[0]")]
fn the_shape_check_catches_a_reordered_key() {
    let mut value = fixture(STOCK_EVENTS);
    let first = value["data"]["topGainers"][0].as_object_mut().unwrap();
    let open = first.shift_remove("open").unwrap();
    first.insert("aOpen".into(), open);
    assert_same_shape(&value, &fixture(STOCK_EVENTS), "stocks");
}

#[test]
#[should_panic(expected = "weather.data.humidity: string where the fixture has number")]
fn the_shape_check_catches_a_changed_type() {
    let mut value = fixture(WEATHER_EVENTS);
    value["data"]["humidity"] = json!("31");
    assert_same_shape(&value, &fixture(WEATHER_EVENTS), "weather");
}

fn record(topic: &str, value: &Value) -> Record {
    Record {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        key: Some("socket-1".into()),
        value: Some(value.to_string().into()),
        timestamp: None,
    }
}

fn fetch(city: &str) -> Value {
    json!({
        "event": "locationUpdate",
        "userId": "6f1c2b9e-4d3a-4f8e-9b7c-2a1d5e8f0c34",
        "data": {"city": city, "region": "Maharashtra", "country": "IN", "lat": 18.5196, "lon": 73.8553, "ip": "49.36.112.10"},
        "timestamp": "2026-03-12T15:45:03.118Z",
    })
}

fn refresh() -> Value {
    json!({"requestedBy": "bff", "reason": "startup", "timestamp": "2026-03-12T15:45:03.118Z"})
}

fn seeded(seed: u64) -> SimSettings {
    SimSettings {
        seed: Some(seed),
        ..SimSettings::default()
    }
}

#[test]
fn every_generated_event_matches_its_fixture_and_passes_the_gateway() {
    for seed in 0..20 {
        let mut world = World::new(&seeded(seed));
        let mut out = world.start();
        for _ in 0..30 {
            world.last_step -= Duration::from_secs(600);
            out.extend(world.tickers());
        }
        out.extend(world.answer(&record(TOPMOVERS_REFRESH, &refresh())));
        out.extend(world.answer(&record(TOPCOINS_REFRESH, &refresh())));
        out.extend(world.answer(&record(STOCKS_REFRESH, &refresh())));
        out.extend(world.answer(&record(NEWS_REFRESH, &refresh())));
        for city in ["Pune", "New Delhi", "São Paulo", "Zürich", "a.b c", "東京"] {
            out.extend(world.answer(&record(WEATHER_FETCH, &fetch(city))));
        }
        let topics: HashSet<&str> = out.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(topics, HashSet::from(EVENT_TOPICS), "seed {seed}");
        for command in &out {
            check_event(command);
        }
    }
}

#[test]
fn the_weather_answer_goes_to_the_commands_city_room() {
    let mut world = World::new(&seeded(1));
    let out = world.answer(&record(WEATHER_FETCH, &fetch("Pune")));
    assert_eq!(out.len(), 1);
    let delivery = route(WEATHER_EVENTS, Some(&out[0].value)).unwrap();
    assert_eq!(delivery.emits[0].room, "weather.Pune");
    assert_eq!(delivery.emits[0].event, "weather.Pune.update");
    let invalid = world.answer(&record(WEATHER_FETCH, &json!({"data": {}})));
    assert!(invalid.is_empty());
    let not_json = Record {
        value: Some("Pune,Maharashtra,IN".into()),
        ..record(WEATHER_FETCH, &Value::Null)
    };
    assert!(world.answer(&not_json).is_empty());
    assert!(
        world
            .answer(&record("some.other.topic", &refresh()))
            .is_empty()
    );
}

#[test]
fn refresh_commands_answer_with_their_own_snapshot() {
    let mut world = World::new(&seeded(2));
    let topic_of =
        |out: Vec<Command>| -> Vec<String> { out.into_iter().map(|c| c.topic).collect() };
    assert_eq!(
        topic_of(world.answer(&record(TOPMOVERS_REFRESH, &refresh()))),
        [MOVERS_EVENTS]
    );
    assert_eq!(
        topic_of(world.answer(&record(TOPCOINS_REFRESH, &refresh()))),
        [TOPCOINS_EVENTS]
    );
    assert_eq!(
        topic_of(world.answer(&record(STOCKS_REFRESH, &refresh()))),
        [STOCK_EVENTS]
    );
    let news = world.answer(&record(NEWS_REFRESH, &json!("anything")));
    let value: Value = serde_json::from_slice(&news[0].value).unwrap();
    assert_eq!(value["source"], "bff");
}

#[test]
fn the_top_coins_list_names_the_ticking_products() {
    let mut world = World::new(&SimSettings {
        products: 6,
        ..seeded(3)
    });
    let tickers: HashSet<String> = world.tickers().into_iter().filter_map(|c| c.key).collect();
    assert_eq!(tickers.len(), 6);
    let coins: Value = serde_json::from_slice(&world.top_coins().value).unwrap();
    let symbols: HashSet<String> = coins["topCoins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["symbol"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(symbols, tickers);
}

#[test]
fn settings_read_humantime_durations_and_default_the_rest() {
    let s: SimSettings = serde_json::from_value(
        json!({"ticker_interval": "200ms", "initial_delay": "30s", "seed": 4}),
    )
    .unwrap();
    assert_eq!(s.ticker_interval, Duration::from_millis(200));
    assert_eq!(s.initial_delay, Duration::from_secs(30));
    assert_eq!(s.seed, Some(4));
    assert_eq!(s.movers_interval, Duration::from_secs(90));
    assert_eq!(s.news_interval, Duration::from_secs(480));
    assert_eq!(s.stocks_interval, Duration::from_secs(120));
    assert_eq!((s.enabled, s.products), (true, 10));
}

// ---- on the in-memory bus ----

fn start(bus: &MemoryBus, settings: SimSettings) -> (JoinHandle<()>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let handle = spawn(
        settings,
        Arc::new(bus.clone()),
        Arc::new(bus.clone()),
        shutdown.clone(),
    );
    (handle, shutdown)
}

/// Values published to `topic` so far.
fn values(bus: &MemoryBus, topic: &str) -> Vec<Value> {
    bus.records(topic)
        .iter()
        .filter_map(|r| serde_json::from_slice(r.value.as_deref()?).ok())
        .collect()
}

/// Waits up to 5 s for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(handle: JoinHandle<()>, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("the simulator stops within 2 s of shutdown")
        .unwrap();
}

async fn send(bus: &MemoryBus, topic: &str, key: &str, value: &Value) {
    let command = Command::new(topic, Some(key.to_owned()), value.to_string());
    CommandSink::send(bus, command).await.unwrap();
}

fn quiet() -> SimSettings {
    SimSettings {
        ticker_interval: Duration::ZERO,
        movers_interval: Duration::ZERO,
        news_interval: Duration::ZERO,
        stocks_interval: Duration::ZERO,
        ..seeded(5)
    }
}

#[tokio::test]
async fn it_publishes_every_stream_periodically_and_answers_weather_fetches() {
    let bus = MemoryBus::new();
    let settings = SimSettings {
        ticker_interval: Duration::from_millis(20),
        movers_interval: Duration::from_millis(60),
        news_interval: Duration::from_millis(80),
        stocks_interval: Duration::from_millis(70),
        products: 4,
        ..seeded(6)
    };
    let (handle, shutdown) = start(&bus, settings);
    eventually("two rounds of every periodic stream", || {
        [MOVERS_EVENTS, TOPCOINS_EVENTS, NEWS_EVENTS, STOCK_EVENTS]
            .iter()
            .all(|t| bus.records(t).len() >= 3)
            && bus.records(TICKER_EVENTS).len() >= 4 * 5
    })
    .await;
    let products: HashSet<Option<bytes::Bytes>> = bus
        .records(TICKER_EVENTS)
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(products.len(), 4);

    send(&bus, WEATHER_FETCH, "socket-1", &fetch("Lyon")).await;
    eventually("the weather of Lyon", || {
        values(&bus, WEATHER_EVENTS)
            .iter()
            .any(|v| v["data"]["city"] == "Lyon")
    })
    .await;
    stop(handle, shutdown).await;
    for topic in EVENT_TOPICS {
        for r in bus.records(topic) {
            assert!(
                route(topic, r.value.as_deref()).is_ok(),
                "{topic} at {}",
                r.offset
            );
        }
    }
}

#[tokio::test]
async fn with_periodic_streams_off_it_publishes_at_start_and_on_refresh_commands() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(&bus, quiet());
    eventually("the start-up snapshots", || {
        EVENT_TOPICS
            .iter()
            .filter(|t| **t != WEATHER_EVENTS)
            .all(|t| !bus.records(t).is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bus.records(MOVERS_EVENTS).len(), 1);
    assert_eq!(bus.records(TICKER_EVENTS).len(), 10, "one tick per product");

    for topic in [
        TOPMOVERS_REFRESH,
        TOPCOINS_REFRESH,
        STOCKS_REFRESH,
        NEWS_REFRESH,
    ] {
        send(&bus, topic, "k", &refresh()).await;
    }
    eventually("an answer to every refresh", || {
        [MOVERS_EVENTS, TOPCOINS_EVENTS, NEWS_EVENTS, STOCK_EVENTS]
            .iter()
            .all(|t| bus.records(t).len() == 2)
    })
    .await;
    let news = values(&bus, NEWS_EVENTS);
    assert_eq!(
        (news[0]["source"].as_str(), news[1]["source"].as_str()),
        (Some("initial"), Some("bff"))
    );
    stop(handle, shutdown).await;
}

// Paused time: the delay is measured on tokio's clock, so a loaded machine cannot stretch the
// test's own sleeps past it.
#[tokio::test(start_paused = true)]
async fn nothing_is_published_before_the_initial_delay_and_queued_commands_are_answered() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(
        &bus,
        SimSettings {
            initial_delay: Duration::from_millis(400),
            ..quiet()
        },
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&bus, WEATHER_FETCH, "socket-1", &fetch("Pune")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for topic in EVENT_TOPICS {
        assert!(
            bus.records(topic).is_empty(),
            "{topic} published during the delay"
        );
    }
    eventually("snapshots and the queued weather answer", || {
        !bus.records(MOVERS_EVENTS).is_empty() && !bus.records(WEATHER_EVENTS).is_empty()
    })
    .await;
    stop(handle, shutdown).await;
}

#[tokio::test]
async fn after_a_lost_subscription_it_resubscribes_and_answers_each_command_once() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(&bus, quiet());
    eventually("start-up", || !bus.records(MOVERS_EVENTS).is_empty()).await;
    send(&bus, WEATHER_FETCH, "s", &fetch("Before")).await;
    eventually("the first answer", || {
        bus.records(WEATHER_EVENTS).len() == 1
    })
    .await;

    bus.set_available(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A producer the outage does not concern writes a command meanwhile.
    bus.publish(
        WEATHER_FETCH,
        Some("s"),
        Some(fetch("During").to_string().as_bytes()),
    );
    bus.set_available(true);
    send(&bus, WEATHER_FETCH, "s", &fetch("After")).await;

    eventually(
        "answers to the commands sent during and after the outage",
        || bus.records(WEATHER_EVENTS).len() >= 3,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cities: Vec<String> = values(&bus, WEATHER_EVENTS)
        .iter()
        .map(|v| v["data"]["city"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cities, ["Before", "During", "After"]);
    stop(handle, shutdown).await;
}

#[tokio::test]
async fn a_command_sent_during_an_outage_to_a_topic_never_read_before_is_answered() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(&bus, quiet());
    eventually("start-up", || bus.records(NEWS_EVENTS).len() == 1).await;
    bus.set_available(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    bus.publish(
        NEWS_REFRESH,
        Some("topglobalnews"),
        Some(refresh().to_string().as_bytes()),
    );
    bus.set_available(true);
    eventually("the answer to the news refresh", || {
        bus.records(NEWS_EVENTS).len() == 2
    })
    .await;
    stop(handle, shutdown).await;
}

#[tokio::test]
async fn when_disabled_it_does_nothing() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(
        &bus,
        SimSettings {
            enabled: false,
            ..SimSettings::default()
        },
    );
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .expect("a disabled simulator returns at once")
        .unwrap();
    shutdown.cancel();
    for topic in EVENT_TOPICS {
        assert!(bus.records(topic).is_empty());
    }
}

#[tokio::test]
async fn shutdown_stops_it_during_the_initial_delay() {
    let bus = MemoryBus::new();
    let (handle, shutdown) = start(
        &bus,
        SimSettings {
            initial_delay: Duration::from_secs(3600),
            ..seeded(8)
        },
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop(handle, shutdown).await;
    assert!(bus.records(TICKER_EVENTS).is_empty());
}
