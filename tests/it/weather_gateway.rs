//! Weather per city over real TCP on in-memory adapters (D23): one command per city in
//! flight, the latest result served at once to joining sockets while it is fresh.

use std::sync::Arc;
use std::time::Duration;

use crate::support::app::*;
use flux_bff::adapters::memory::{MemoryBus, MemoryCache};
use flux_bff::boot::Settings;
use flux_bff::domain::topics::*;
use flux_bff::ports::SnapshotCache;
use serde_json::{Value, json};

const EVENT: &str = "weather.Surat.update";

/// Time for the gateway to handle location updates already sent (nothing is observable
/// when a join neither hydrates nor sends a command).
const SETTLE: Duration = Duration::from_millis(400);

fn settings(fresh: Duration, in_flight: Duration) -> Settings {
    let mut s = Settings::default();
    s.limits.weather_fresh = fresh;
    s.limits.weather_in_flight = in_flight;
    s
}

/// The payload the `weather.<city>` room gets for `weather(city)`.
fn room_payload(city: &str) -> Value {
    let mut data = weather(city)["data"].clone();
    let aq = data["airQuality"].as_object_mut().unwrap();
    aq.insert("pm25".into(), aq["pm2_5"].clone());
    aq.insert("usEpaIndex".into(), aq["us-epa-index"].clone());
    json!({"data": data, "status": "success"})
}

async fn clients(app: &TestApp, n: usize, prefix: &str) -> Vec<TestClient> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(TestClient::connect(app, Some(&format!("{prefix}-{i}"))).await);
    }
    all
}

#[tokio::test]
async fn n_clients_joining_one_city_send_one_command_and_each_gets_every_result_once() {
    // Arrange
    let app = TestApp::spawn().await;
    let all = clients(&app, 8, "storm").await;

    // Act: a storm of joins in one city, by eight different users.
    for c in &all {
        c.emit("userLocationUpdate", location("Surat")).await;
    }
    app.wait_records(WEATHER_FETCH, 1).await;
    tokio::time::sleep(SETTLE).await;

    // Assert: one command; each result reaches every client exactly once.
    assert_eq!(app.records(WEATHER_FETCH).len(), 1, "one command per city");
    app.publish(WEATHER, None, &weather("Surat"));
    for c in &all {
        assert_eq!(c.wait_for(EVENT).await, room_payload("Surat"));
    }
    let mut second = weather("Surat");
    second["data"]["temperatureC"] = json!(41.5);
    app.publish(WEATHER, None, &second);
    for c in &all {
        let got = c.wait_nth(EVENT, 2, WAIT).await.expect("the second result");
        assert_eq!(got["data"]["temperatureC"], 41.5);
    }
    tokio::time::sleep(SETTLE).await;
    for c in &all {
        assert_eq!(c.count(EVENT), 2, "exactly one delivery per result");
    }
    assert_eq!(app.records(WEATHER_FETCH).len(), 1);
}

#[tokio::test]
async fn a_client_joining_a_city_with_a_fresh_result_gets_it_at_once_and_no_command_goes() {
    // Arrange: a result for the city, delivered to the room.
    let app = TestApp::spawn().await;
    let first = TestClient::connect(&app, Some("fresh-a")).await;
    first.emit("userLocationUpdate", location("Surat")).await;
    app.wait_records(WEATHER_FETCH, 1).await;
    app.publish(WEATHER, None, &weather("Surat"));
    first.wait_for(EVENT).await;

    // Act: another user joins the city.
    let late = TestClient::connect(&app, Some("fresh-b")).await;
    late.emit("userLocationUpdate", location("Surat")).await;

    // Assert: the result at once, shaped like the room's; to that socket only; no command.
    assert_eq!(late.wait_for(EVENT).await, room_payload("Surat"));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(late.count(EVENT), 1);
    assert_eq!(first.count(EVENT), 1, "the room did not get it again");
    assert_eq!(app.records(WEATHER_FETCH).len(), 1, "no command");

    // An invalid location in that city (no command possible) is served too.
    let bare = TestClient::connect(&app, Some("fresh-c")).await;
    bare.emit("userLocationUpdate", json!({"city": "Surat"}))
        .await;
    assert_eq!(bare.wait_for(EVENT).await, room_payload("Surat"));
}

#[tokio::test]
async fn once_weather_fresh_has_passed_a_join_sends_a_new_command_and_gets_nothing_stale() {
    let app = TestApp::spawn_with(settings(
        Duration::from_millis(300),
        Duration::from_secs(30),
    ))
    .await;
    let first = TestClient::connect(&app, Some("stale-a")).await;
    first.emit("userLocationUpdate", location("Surat")).await;
    app.wait_records(WEATHER_FETCH, 1).await;
    app.publish(WEATHER, None, &weather("Surat"));
    first.wait_for(EVENT).await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let late = TestClient::connect(&app, Some("stale-b")).await;
    late.emit("userLocationUpdate", location("Surat")).await;

    let commands = app.wait_records(WEATHER_FETCH, 2).await;
    assert_eq!(commands[1]["userId"], "stale-b");
    tokio::time::sleep(SETTLE).await;
    assert_eq!(late.count(EVENT), 0, "a stale result is not served");
}

#[tokio::test]
async fn a_timed_out_in_flight_command_lets_a_new_one_go() {
    let app = TestApp::spawn_with(settings(
        Duration::from_secs(300),
        Duration::from_millis(500),
    ))
    .await;
    let all = clients(&app, 3, "lost").await;
    all[0].emit("userLocationUpdate", location("Surat")).await;
    app.wait_records(WEATHER_FETCH, 1).await;

    // The result never comes: within the timeout, another join sends nothing.
    all[1].emit("userLocationUpdate", location("Surat")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.records(WEATHER_FETCH).len(), 1, "still in flight");

    // After it, the next join sends a new command.
    tokio::time::sleep(Duration::from_millis(400)).await;
    all[2].emit("userLocationUpdate", location("Surat")).await;
    let commands = app.wait_records(WEATHER_FETCH, 2).await;
    assert_eq!(commands[1]["userId"], "lost-2");
}

#[tokio::test]
async fn a_replica_that_never_saw_a_result_serves_it_from_the_shared_cache() {
    // Arrange: two replicas on one cache, each with its own bus; only `a` sees the result.
    let cache = Arc::new(MemoryCache::default());
    let a = TestApp::spawn_on(Settings::default(), MemoryBus::new(), cache.clone()).await;
    let b = TestApp::spawn_on(Settings::default(), MemoryBus::new(), cache.clone()).await;
    a.publish(WEATHER, None, &weather("Surat"));
    a.wait_cached("weather:Surat").await;
    let ttl = cache.ttl("weather:Surat").unwrap();
    assert!(
        ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600),
        "{ttl:?}"
    );

    // Act
    let c = TestClient::connect(&b, Some("shared")).await;
    c.emit("userLocationUpdate", location("Surat")).await;

    // Assert
    assert_eq!(c.wait_for(EVENT).await, room_payload("Surat"));
    tokio::time::sleep(SETTLE).await;
    assert!(b.records(WEATHER_FETCH).is_empty(), "no command on b");
}

/// Its metrics are this test's own: the tests beside it reject records too.
#[test]
fn a_corrupt_or_failed_result_changes_nothing_else() {
    with_own_metrics(|handle| async move {
        let cache = Arc::new(MemoryCache::default());
        let app = TestApp::spawn_on(Settings::default(), MemoryBus::new(), cache.clone()).await;
        // Garbage in the cache is a miss: the join sends its command.
        cache
            .set("weather:Surat", "{not json", Duration::from_secs(60))
            .await
            .unwrap();
        let c = TestClient::connect(&app, Some("corrupt")).await;
        c.emit("userLocationUpdate", location("Surat")).await;
        app.wait_records(WEATHER_FETCH, 1).await;

        // A good result, then an unavailable one and a rejected one: the good one stays latest.
        app.publish(WEATHER, None, &weather("Surat"));
        c.wait_for(EVENT).await;
        // The garbage seeded above is there from the start: wait for the good result itself.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let held = cache
                .get("weather:Surat")
                .await
                .unwrap()
                .unwrap_or_default();
            if serde_json::from_str::<Value>(&held)
                .is_ok_and(|v| v["payload"] == room_payload("Surat"))
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never cached: {held}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.publish(
            WEATHER,
            None,
            &json!({"status": "unavailable", "reason": "timeout", "data": {"city": "Surat"}}),
        );
        app.publish(
            WEATHER,
            None,
            &json!({"status": "success", "data": {"city": 7}}),
        );
        let unavailable = c.wait_nth(EVENT, 2, WAIT).await.unwrap();
        assert_eq!(unavailable["status"], "unavailable");
        let late = TestClient::connect(&app, Some("corrupt-late")).await;
        late.emit("userLocationUpdate", location("Surat")).await;
        assert_eq!(late.wait_for(EVENT).await, room_payload("Surat"));
        let cached = cache.get("weather:Surat").await.unwrap().unwrap();
        let cached: Value = serde_json::from_str(&cached).unwrap();
        assert_eq!(cached["payload"], room_payload("Surat"));
        assert_eq!(app.records(WEATHER_FETCH).len(), 1);
        // The rejected one was read, counted, and kept nowhere.
        let m = handle.render();
        assert_eq!(
            counter(&m, "flux_events_rejected_total", &["stream=\"weather\""]),
            1.0,
            "{m}"
        );
        assert_eq!(cache.get("weather:7").await.unwrap(), None);
    });
}
