//! The gateway over real TCP on in-memory adapters, played with a real Socket.IO client
//! library (rust_socketio, websocket transport): the whole client-facing contract.

use std::time::Duration;

use crate::support::app::*;
use flux_bff::boot::Settings;
use flux_bff::domain::topics::*;
use serde_json::{Value, json};

#[tokio::test]
async fn session_init_is_the_first_event_and_carries_the_guest_id() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("  alice  ")).await;
    let init = c.wait_for("session:init").await;
    assert_eq!(init, json!({"userId": "alice", "userType": "guest"}));
    assert_eq!(c.events()[0], "session:init");

    let bad = TestClient::connect_with_auth(&app, json!({"guestId": 42})).await;
    let init = bad.wait_for("session:init").await;
    let id = init["userId"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 4),
        "{id}"
    );
}

#[tokio::test]
async fn get_user_id_is_answered_with_user_unique_id() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("bob")).await;
    c.wait_for("session:init").await;
    c.emit_empty("getUserId").await;
    assert_eq!(c.wait_for("userUniqueId").await, json!("bob"));
}

#[tokio::test]
async fn a_location_update_joins_rooms_hydrates_every_snapshot_and_sends_one_command() {
    // Arrange: every snapshot cached.
    let app = TestApp::spawn().await;
    app.cache_every_snapshot().await;
    let c = TestClient::connect(&app, Some("carol")).await;
    c.wait_for("session:init").await;

    // Act
    c.emit("userLocationUpdate", pune()).await;

    // Assert: hydration, shaped like the success replies (D4).
    let movers = c.wait_for(EV_MOVERS).await;
    assert_eq!(movers["status"], "success");
    assert_eq!(movers["source"], "cache");
    assert_eq!(movers["data"], fixture("crypto.movers.event.updated.json"));
    let coins = c.wait_for(EV_TOPCOINS).await;
    assert_eq!(coins["data"], fixture("crypto.topcoins.event.updated.json"));
    let news = c.wait_for(EV_NEWS).await;
    assert_eq!(news["scope"], "global");
    assert_eq!(
        news["data"],
        fixture("news.service.event.updated.json")["payload"]["data"]
    );
    let stocks = c.wait_for(EV_STOCKS).await;
    assert_eq!(
        stocks,
        json!({"status": "success", "data": fixture("stock.service.event.updated.json")["data"]})
    );
    assert_eq!(c.count(EV_TICKER), 0, "tickers are never hydrated (D3)");

    // One weather command, keyed by the socket, carrying the guest id and the location.
    let commands = app.wait_records(WEATHER_FETCH, 1).await;
    assert_eq!(commands[0]["event"], "locationUpdate");
    assert_eq!(commands[0]["userId"], "carol");
    assert_eq!(commands[0]["data"], pune());
    let key = app.bus.records(WEATHER_FETCH)[0].key.clone().unwrap();
    assert!(!key.is_empty());

    // The rooms: live pushes of every global stream and the city arrive.
    c.wait_in_room(&app, "Pune").await;
    c.clear();
    app.publish(
        TICKER_EVENTS,
        Some("BTC-USD"),
        &fixture("crypto.ticker.event.updated.json"),
    );
    let tick = c.wait_for(EV_TICKER).await;
    assert_eq!(
        tick,
        json!({"status": "success", "data": fixture("crypto.ticker.event.updated.json"), "error": null})
    );
    app.publish_fixture(STOCK_EVENTS).await;
    assert_eq!(c.wait_for(EV_STOCKS).await["error"], Value::Null);
}

#[tokio::test]
async fn identical_locations_within_the_window_send_one_command_per_user() {
    let app = TestApp::spawn().await;
    let a = TestClient::connect(&app, Some("dave")).await;
    let b = TestClient::connect(&app, Some("dave")).await; // same guest, another tab
    a.locate(&app, pune(), "Pune").await;
    app.wait_records(WEATHER_FETCH, 1).await;

    // Same location, other key order, other socket of the same user: a duplicate.
    let reordered = json!({"ip":"49.36.112.10","lon":73.8553,"lat":18.5196,"country":"IN","region":"Maharashtra","city":"Pune"});
    b.locate(&app, reordered, "Pune").await;
    a.locate(&app, pune(), "Pune").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.records(WEATHER_FETCH).len(), 1);

    // A different location is not a duplicate; another user is not either.
    a.locate(&app, location("Mumbai"), "Mumbai").await;
    app.wait_records(WEATHER_FETCH, 2).await;
    let other = TestClient::connect(&app, Some("erin")).await;
    other.locate(&app, pune(), "Pune").await;
    app.wait_records(WEATHER_FETCH, 3).await;

    // After the window, the same location is sent again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    a.locate(&app, pune(), "Pune").await;
    app.wait_records(WEATHER_FETCH, 4).await;
}

#[tokio::test]
async fn a_city_switch_leaves_the_old_weather_room() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("frank")).await;
    c.locate(&app, pune(), "Pune").await;
    c.locate(&app, location("Chennai"), "Chennai").await;
    c.clear();
    app.publish(crate::support::app::WEATHER, None, &weather("Pune"));
    app.publish(crate::support::app::WEATHER, None, &weather("Chennai"));
    let chennai = c.wait_for("weather.Chennai.update").await;
    assert_eq!(chennai["status"], "success");
    assert_eq!(chennai["data"]["city"], "Chennai");
    assert_eq!(
        chennai["data"]["airQuality"]["pm25"],
        chennai["data"]["airQuality"]["pm2_5"]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.count("weather.Pune.update"), 0, "left weather.Pune");
}

#[tokio::test]
async fn snapshot_requests_get_the_exact_hit_and_miss_payloads() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("gina")).await;
    c.wait_for("session:init").await;

    let cases = [
        (
            REQ_MOVERS,
            EV_MOVERS,
            json!({"status":"loading","message":"Data will refresh when backend reconnects"}),
        ),
        (
            REQ_TOPCOINS,
            EV_TOPCOINS,
            json!({"status":"loading","message":"Fetching latest crypto top coins"}),
        ),
        (
            REQ_STOCKS,
            EV_STOCKS,
            json!({"status":"loading","message":"Data will refresh when backend reconnects"}),
        ),
        (
            REQ_NEWS,
            EV_NEWS,
            json!({"status":"loading","message":"Fetching latest news"}),
        ),
    ];
    for (request, reply, miss) in &cases {
        c.emit_empty(request).await;
        assert_eq!(&c.wait_for(reply).await, miss, "{request} miss");
    }

    app.cache_every_snapshot().await;
    let hits = [
        json!({"status":"success","source":"cache","data": fixture("crypto.movers.event.updated.json")}),
        json!({"status":"success","source":"cache","data": fixture("crypto.topcoins.event.updated.json")}),
        json!({"status":"success","data": fixture("stock.service.event.updated.json")["data"]}),
        json!({"status":"success","scope":"global","data": fixture("news.service.event.updated.json")["payload"]["data"]}),
    ];
    for ((request, reply, _), hit) in cases.iter().zip(hits) {
        c.emit_empty(request).await;
        assert_eq!(
            c.wait_nth(reply, 2, WAIT).await.unwrap(),
            hit,
            "{request} hit"
        );
    }
}

#[tokio::test]
async fn cold_movers_and_news_requests_send_at_most_one_refresh_per_window() {
    let app = TestApp::spawn().await;
    let base_movers = app.records(TOPMOVERS_REFRESH).len();
    let base_news = app.records(NEWS_REFRESH).len();
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = TestClient::connect(&app, Some(&format!("h{i}"))).await;
        c.wait_for("session:init").await;
        clients.push(c);
    }
    for c in &clients {
        for _ in 0..3 {
            c.emit_empty(REQ_MOVERS).await;
            c.emit_empty(REQ_NEWS).await;
        }
    }
    for c in &clients {
        assert!(c.wait_nth(EV_MOVERS, 3, WAIT).await.is_some());
        assert!(c.wait_nth(EV_NEWS, 3, WAIT).await.is_some());
    }
    assert_eq!(app.records(TOPMOVERS_REFRESH).len(), base_movers + 1);
    assert_eq!(app.records(NEWS_REFRESH).len(), base_news + 1);
    let refresh = app.records(NEWS_REFRESH).pop().unwrap();
    assert_eq!(refresh["reason"], "refresh_cache");
    assert_eq!(refresh["requestedBy"], "bff");
}

#[tokio::test]
async fn missing_null_and_garbage_arguments_crash_nothing() {
    let app = TestApp::spawn().await;
    // One client per argument: updates sent back to back supersede those still waiting
    // (D10), and each of these must be handled.
    let arguments = [
        Value::Null,
        json!("garbage"),
        json!([1, {"city": 5}]),
        json!({"city": {"nested": true}, "lat": "NaN"}),
    ];
    for (i, argument) in arguments.into_iter().enumerate() {
        let c = TestClient::connect(&app, Some(&format!("ivan-{i}"))).await;
        c.wait_for("session:init").await;
        c.emit("userLocationUpdate", argument.clone()).await;
        c.wait_in_room(&app, "Delhi").await;
        assert!(app.records(WEATHER_FETCH).is_empty(), "{argument}");
    }
    let c = TestClient::connect(&app, Some("ivan")).await;
    c.wait_for("session:init").await;
    c.emit_empty("userLocationUpdate").await;
    c.emit("cryptoTopCoinsRequest", json!({"unexpected": "argument"}))
        .await;
    c.emit("noSuchEvent", json!(1)).await;
    // The default room is joined, nothing is forwarded, and the socket still works.
    c.wait_in_room(&app, "Delhi").await;
    assert!(c.wait_nth(EV_TOPCOINS, 1, WAIT).await.is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.records(WEATHER_FETCH).is_empty());
    let healthz = reqwest::get(format!("{}healthz", app.url())).await.unwrap();
    assert!(healthz.status().is_success());
}

#[tokio::test]
async fn a_location_wrapped_in_an_array_is_not_an_object_and_goes_to_the_default_room() {
    // D6: a non-object argument is treated as `{}`, even an array holding a valid location.
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("olga")).await;
    c.wait_for("session:init").await;
    c.emit("userLocationUpdate", json!([pune()])).await;
    c.wait_in_room(&app, "Delhi").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(app.records(WEATHER_FETCH).is_empty());
    app.publish(WEATHER, None, &weather("Pune"));
    assert!(
        c.wait_nth("weather.Pune.update", 1, Duration::from_millis(300))
            .await
            .is_none(),
        "joined weather.Pune from an array argument"
    );
}

#[tokio::test]
async fn floods_are_rate_limited_and_counted() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("judy")).await;
    c.wait_for("session:init").await;
    let before = counter(
        &app.metrics().await,
        "flux_client_events_dropped_total",
        &["rate_limited"],
    );
    for _ in 0..60 {
        c.emit_empty(REQ_TOPCOINS).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replies = c.count(EV_TOPCOINS);
    // Burst 20 plus at most a few refills at 10/s while the flood was sent.
    assert!((20..=35).contains(&replies), "{replies} replies");
    let after = counter(
        &app.metrics().await,
        "flux_client_events_dropped_total",
        &["rate_limited"],
    );
    assert!(after - before >= 25.0, "dropped {}", after - before);
}

/// Its metrics are this test's own: the tests beside it disconnect sockets too.
#[test]
fn an_oversized_packet_closes_the_connection_and_is_counted() {
    with_own_metrics(|handle| async move {
        let mut settings = Settings::default();
        settings.socketio.max_payload = 4096;
        let app = TestApp::spawn_with(settings).await;
        let c = TestClient::connect(&app, Some("kim")).await;
        c.wait_for("session:init").await;
        let refused = |m: &str| {
            counter(
                m,
                "flux_socket_disconnects_total",
                &["reason=\"transport_error\""],
            )
        };
        let before = refused(&handle.render());
        c.emit("userLocationUpdate", json!({"city": "x".repeat(10_000)}))
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while refused(&handle.render()) <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the oversized packet was not refused"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // That socket is gone: its requests get no reply.
        let _ = c
            .client
            .emit(REQ_TOPCOINS, rust_socketio::Payload::Text(vec![]))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(c.count(EV_TOPCOINS), 0);
        // Others are unaffected.
        let d = TestClient::connect(&app, Some("lee")).await;
        d.wait_for("session:init").await;
    });
}

#[tokio::test]
async fn the_four_startup_refreshes_go_out_once_in_order() {
    let app = TestApp::spawn().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all: Vec<_> = [
        TOPCOINS_REFRESH,
        TOPMOVERS_REFRESH,
        STOCKS_REFRESH,
        NEWS_REFRESH,
    ]
    .iter()
    .map(|t| app.records(t))
    .collect();
    for (records, reason) in all
        .iter()
        .zip(["startup", "startup", "startup", "initial_refresh"])
    {
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["reason"], reason);
    }
    let keys: Vec<_> = [
        TOPCOINS_REFRESH,
        TOPMOVERS_REFRESH,
        STOCKS_REFRESH,
        NEWS_REFRESH,
    ]
    .iter()
    .map(|t| app.bus.records(t)[0].key.clone().unwrap())
    .collect();
    assert_eq!(
        keys,
        [
            "cryptotopcoins",
            "cryptotopmovers",
            "stocktopperformers",
            "topglobalnews"
        ]
    );
}

/// Its metrics are this test's own: the tests beside it reject news too.
#[test]
fn live_pushes_skip_rejected_events_and_the_consumer_goes_on() {
    with_own_metrics(|handle| async move {
        let app = TestApp::spawn().await;
        let c = TestClient::connect(&app, Some("mia")).await;
        c.locate(&app, pune(), "Pune").await;
        c.clear();
        app.bus.publish(NEWS_EVENTS, None, Some(b"not json"));
        app.bus.publish(NEWS_EVENTS, None, None);
        app.publish(NEWS_EVENTS, None, &json!({"payload": {"data": []}}));
        app.publish_fixture(NEWS_EVENTS).await;
        let news = c.wait_for(EV_NEWS).await;
        assert_eq!(news["status"], "success");
        assert_eq!(c.count(EV_NEWS), 1);
        let m = handle.render();
        assert_eq!(
            counter(&m, "flux_events_rejected_total", &["stream=\"news\""]),
            3.0,
            "{m}"
        );
    });
}

#[tokio::test]
async fn the_legacy_second_argument_of_a_location_update_is_ignored() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("nina")).await;
    c.client
        .emit(
            "userLocationUpdate",
            rust_socketio::Payload::Text(vec![pune(), json!("legacy-user-id")]),
        )
        .await
        .unwrap();
    c.wait_in_room(&app, "Pune").await;
    let commands = app.wait_records(WEATHER_FETCH, 1).await;
    assert_eq!(commands[0]["userId"], "nina");
    assert_eq!(commands[0]["data"], pune());
}

#[tokio::test]
async fn a_broker_outage_is_a_degraded_mode_and_nothing_produced_meanwhile_is_lost() {
    let app = TestApp::spawn().await;
    app.publish_fixture(NEWS_EVENTS).await;
    app.wait_cached("news:global").await;
    let c = TestClient::connect(&app, Some("olga")).await;
    c.locate(&app, pune(), "Pune").await;
    let readyz = || async {
        reqwest::get(format!("{}readyz", app.url()))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(readyz().await, 200);

    // Act: the broker goes away; a domain service keeps producing.
    let sent_before_outage = app.wait_records(WEATHER_FETCH, 1).await.len();
    app.bus.set_available(false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while readyz().await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never went 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        let mut tick = fixture("crypto.ticker.event.updated.json");
        tick["ts"] = json!(i);
        app.publish(TICKER_EVENTS, Some("BTC-USD"), &tick);
    }

    // Degraded: the socket stays, hydration is served, commands are refused and counted.
    c.clear();
    let before = counter(&app.metrics().await, "flux_commands_refused_total", &[]);
    c.emit("userLocationUpdate", location("Goa")).await;
    assert_eq!(c.wait_for(EV_NEWS).await["status"], "success");
    c.emit_empty(REQ_MOVERS).await;
    assert_eq!(c.wait_for(EV_MOVERS).await["status"], "loading");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(counter(&app.metrics().await, "flux_commands_refused_total", &[]) >= before + 2.0);
    assert_eq!(app.records(WEATHER_FETCH).len(), sent_before_outage);

    // Recovery: ready again, and every tick produced during the outage arrives once, in order.
    app.bus.set_available(true);
    for i in 0..5 {
        let tick = c
            .wait_nth(EV_TICKER, i + 1, WAIT)
            .await
            .expect("tick after recovery");
        assert_eq!(tick["data"]["ts"], json!(i));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.count(EV_TICKER), 5);
    assert_eq!(readyz().await, 200);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_conflated_to_the_latest_price_per_product() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut settings = Settings::default();
    settings.socketio.max_buffer = 16;
    let app = TestApp::spawn_with(settings).await;
    // The stalled client: raw websocket, joins crypto.global, then stops reading.
    let mut ws = raw_joined(&app, "stalled").await;
    let healthy = TestClient::connect(&app, Some("healthy")).await;
    healthy.locate(&app, location("Lucknow"), "Lucknow").await;
    healthy.clear();

    // Act: a burst far beyond what the stalled client's TCP buffers can hold.
    let products = ["BTC-USD", "ETH-USD", "SOL-USD"];
    let total = 30_000usize;
    let base = fixture("crypto.ticker.event.updated.json");
    for i in 0..total {
        let product = products[i % products.len()];
        let tick = padded_tick(&base, product, i, 400);
        app.publish(TICKER_EVENTS, Some(product), &tick);
    }

    // The reading client ends up with the latest price of every product within moments
    // (a burst this size is conflated for it too: only the latest per product matters).
    let latest_of = |c: &TestClient| {
        let mut last: std::collections::HashMap<String, i64> = Default::default();
        for (e, v) in c.received() {
            if e == EV_TICKER {
                let product = v["data"]["data"]["product_id"].as_str().unwrap().to_owned();
                last.insert(product, v["data"]["ts"].as_i64().unwrap());
            }
        }
        last
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = latest_of(&healthy);
        let fresh = last
            .values()
            .filter(|ts| **ts >= (total - products.len()) as i64)
            .count();
        if fresh == products.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reading client lacks the latest prices: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = app.metrics().await;
    assert!(
        counter(&m, "flux_fanout_conflated_total", &[]) > 0.0,
        "nothing was conflated"
    );

    // The stalled client resumes: after its queue drains, the last tick of each product it
    // sees is the latest one published for that product.
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut received = 0usize;
    while last
        .values()
        .filter(|ts| **ts >= (total - products.len()) as i64)
        .count()
        < products.len()
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(Ok(msg))) = tokio::time::timeout(left, ws.next()).await else {
            panic!(
                "the stalled client never got the latest prices: {last:?} after {received} ticks"
            );
        };
        let text = msg.to_text().unwrap_or("").to_owned();
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
        }
        let Some(body) = text.strip_prefix("42") else {
            continue;
        };
        let v: Value = serde_json::from_str(body).unwrap();
        if v[0] == EV_TICKER {
            received += 1;
            let product = v[1]["data"]["data"]["product_id"]
                .as_str()
                .unwrap()
                .to_owned();
            last.insert(product, v[1]["data"]["ts"].as_i64().unwrap());
        }
    }
    assert!(
        received < total,
        "conflated: {received} ticks instead of {total}"
    );
}

#[tokio::test]
async fn polling_requests_from_the_frontend_origin_get_cors_headers() {
    // FRONTEND_URL's origin is granted on the Engine.IO polling transport and its preflight,
    // with a browser's headers (which the gateway trims from Socket.IO requests).
    let mut settings = Settings::default();
    settings.http.cors_origin = Some("https://flux.example".into());
    let app = TestApp::spawn_with(settings).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/socket.io/?EIO=4&transport=polling", app.addr);

    let open = http
        .get(&url)
        .header("Origin", "https://flux.example")
        .header("User-Agent", "Mozilla/5.0")
        .header("Cookie", "flux_session=abc")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    let allowed = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        allowed(&open, "access-control-allow-origin").as_deref(),
        Some("https://flux.example")
    );
    assert_eq!(
        allowed(&open, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let body = open.text().await.unwrap();
    assert!(
        body.starts_with("0{\"sid\""),
        "engine.io open packet: {body}"
    );

    // The browser's preflight for the polling POST.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://flux.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed(&preflight, "access-control-allow-origin").as_deref(),
        Some("https://flux.example")
    );
    let methods = allowed(&preflight, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST"),
        "a preflight answer allows POST: {methods:?}"
    );
}

/// A client that stops reading until its backlog overflows is dropped by closing its
/// connection, with no DISCONNECT packet: that packet needed room in its full queue (the
/// socket stayed, counted as dropped), and it stops the official client for good, where a
/// closed connection makes it reconnect and be hydrated again. Its metrics are this test's
/// own: `flux_lagging_sockets` is a gauge other tests move.
#[test]
fn a_client_whose_backlog_overflows_has_its_connection_closed() {
    with_own_metrics(|handle| overflowing_backlog(move || handle.render()));
}

async fn overflowing_backlog(metrics: impl Fn() -> String) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let mut settings = Settings::default();
    settings.socketio.max_buffer = 16;
    settings.socketio.max_backlog = 4;
    let app = TestApp::spawn_with(settings).await;
    let mut stalled = raw_joined(&app, "stalled").await;
    // Joined (its weather command is sent after the rooms are joined).
    app.wait_records(WEATHER_FETCH, 1).await;

    // Tickers it does not read, until it lags (its TCP buffers and queue full: 16 KB
    // ticks of 64 products, which the consumer does not conflate away) and the drainer has
    // counted it; then news, which a lagging socket's backlog keeps in order, beyond its
    // bound.
    let products: Vec<String> = (0..64).map(|i| format!("P{i}-USD")).collect();
    let base = fixture("crypto.ticker.event.updated.json");
    let news = fixture("news.service.event.updated.json");
    let mut total = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counter(&metrics(), "flux_lagging_sockets", &[]) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was not lagging after {total} ticks"
        );
        for _ in 0..300 {
            let product = &products[total % products.len()];
            let tick = padded_tick(&base, product, total, 16 * 1024);
            app.publish(TICKER_EVENTS, Some(product), &tick);
            total += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while counter(&metrics(), "flux_slow_socket_disconnects_total", &[]) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled client was never dropped"
        );
        for _ in 0..8 {
            app.publish(NEWS_EVENTS, Some("globalnews"), &news);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its disconnect handler ran (with the queue full, `disconnect` had done nothing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while counter(
        &metrics(),
        "flux_socket_disconnects_total",
        &["server_disconnect"],
    ) < 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped socket's disconnect handler did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing lags any more, and the gauge says so (it stayed at 1: only a drainer pass over
    // lagging sockets set it, and the overflow removed the last one elsewhere).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while counter(&metrics(), "flux_lagging_sockets", &[]) > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flux_lagging_sockets stayed above 0 after the only lagging client was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It reads again: what was written before, then the end of the connection, and no
    // DISCONNECT packet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stalled.next()).await {
            Err(_) => panic!("the connection of the dropped client stayed open"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(msg))) => {
                let text = msg.to_text().unwrap_or("");
                assert!(!text.starts_with("41"), "a DISCONNECT packet: {text}");
                if text == "1" {
                    break; // Engine.IO's close
                }
            }
        }
    }
}

/// The next text message of a raw client, within 10 s; a ping is answered.
async fn next_text(ws: &mut crate::support::app::RawWs) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .unwrap();
    let text = msg.to_text().unwrap_or("").to_owned();
    if text == "2" {
        ws.send(Message::text("3")).await.unwrap();
    }
    text
}

/// The ticker fixture for `product`, stamped `ts`, with `pad` bytes of filler.
fn padded_tick(base: &Value, product: &str, ts: usize, pad: usize) -> Value {
    let mut tick = base.clone();
    tick["data"]["product_id"] = json!(product);
    tick["ts"] = json!(ts);
    tick["pad"] = json!("x".repeat(pad));
    tick
}

/// A raw WebSocket client that has joined the Lucknow rooms (crypto.global among them) and
/// then reads only when the test tells it to.
async fn raw_joined(app: &TestApp, guest: &str) -> crate::support::app::RawWs {
    crate::support::app::raw_joined(app.addr, guest, &location("Lucknow")).await
}

/// Its metrics are this test's own: `flux_lagging_sockets` is a gauge other tests move.
#[test]
fn a_client_that_catches_up_gets_live_tickers_again_while_another_still_lags() {
    with_own_metrics(|handle| async move {
        let mut settings = Settings::default();
        settings.socketio.max_buffer = 16;
        let app = TestApp::spawn_with(settings).await;
        // One client never reads again: the fan-out stays in its lagging mode throughout.
        let _stalled = raw_joined(&app, "stalled").await;
        let mut resumed = raw_joined(&app, "resumed").await;

        // Tickers neither reads, until both are lagging: their TCP buffers full (16 KB ticks),
        // their queues full, found by the fan-out.
        let products = ["BTC-USD", "ETH-USD", "SOL-USD"];
        let base = fixture("crypto.ticker.event.updated.json");
        let tick = |product: &str, ts: usize| padded_tick(&base, product, ts, 16 * 1024);
        let lagging = |m: &str| {
            m.lines()
                .find_map(|l| l.strip_prefix("flux_lagging_sockets "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // The gauge as this test's recorder holds it, read after a scrape of /metrics: the
        // scrape's round trip paces the checks as it did when they read the scrape (read
        // straight from the recorder, the loop below never found both sockets lagging at once).
        let lagging_now = || async {
            let _ = app.metrics().await;
            lagging(&handle.render())
        };
        let mut total = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while lagging_now().await < 2.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "both clients should be lagging after {total} ticks"
            );
            for _ in 0..300 {
                let product = products[total % products.len()];
                app.publish(TICKER_EVENTS, Some(product), &tick(product, total));
                total += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // `resumed` reads again and catches up; then a new ticker must reach it live.
        let mut seen_last = std::collections::HashSet::new();
        while seen_last.len() < products.len() {
            let text = next_text(&mut resumed).await;
            if let Some(body) = text.strip_prefix("42")
                && let Ok(v) = serde_json::from_str::<Value>(body)
                && v[0] == EV_TICKER
                && v[1]["data"]["ts"].as_i64().unwrap_or(0) >= (total - products.len()) as i64
            {
                seen_last.insert(
                    v[1]["data"]["data"]["product_id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
        // Give the drainer (every 20 ms) time to see that it caught up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lagging_now().await > 1.0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the client that caught up is still counted as lagging"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lagging_now().await, 1.0, "the stalled one still lags");

        app.publish(TICKER_EVENTS, Some("ADA-USD"), &tick("ADA-USD", total + 1));
        loop {
            let text = next_text(&mut resumed).await;
            if text.contains("ADA-USD") {
                break;
            }
        }
    });
}

/// A cache whose dedup claim (`set_unless_same`) answers after `delay`, as a slow Valkey.
struct SlowClaims {
    inner: flux_bff::adapters::memory::MemoryCache,
    delay: Duration,
}

#[async_trait::async_trait]
impl flux_bff::ports::SnapshotCache for SlowClaims {
    async fn get(&self, key: &str) -> Result<Option<String>, flux_bff::ports::CacheError> {
        self.inner.get(key).await
    }
    async fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), flux_bff::ports::CacheError> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_unless_same(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, flux_bff::ports::CacheError> {
        tokio::time::sleep(self.delay).await;
        self.inner.set_unless_same(key, value, ttl).await
    }
    async fn delete_if_same(
        &self,
        key: &str,
        value: &str,
    ) -> Result<(), flux_bff::ports::CacheError> {
        self.inner.delete_if_same(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), flux_bff::ports::CacheError> {
        self.inner.delete(key).await
    }
}

/// Found by review: a shutdown flushed the producer while a client event received before it
/// was still being handled (waiting for the cache), so its command was never sent (D19).
#[tokio::test]
async fn a_shutdown_lets_client_events_received_before_it_send_their_commands() {
    let bus = flux_bff::adapters::memory::MemoryBus::new();
    let cache = std::sync::Arc::new(SlowClaims {
        inner: flux_bff::adapters::memory::MemoryCache::default(),
        delay: Duration::from_millis(500),
    });
    let app = TestApp::spawn_on(Settings::default(), bus.clone(), cache).await;
    let c = TestClient::connect(&app, Some("leaving")).await;
    c.wait_for("session:init").await;

    c.emit("userLocationUpdate", pune()).await;
    tokio::time::sleep(Duration::from_millis(100)).await; // being handled: claiming
    app.stop().await;

    assert_eq!(
        bus.records(WEATHER_FETCH).len(),
        1,
        "the weather command was sent before the gateway stopped"
    );
}

/// Found by review: a recovered socket whose replay overflowed its queue lags, and its
/// backlog recorded its rooms before the replay's end put it back in them: until the drainer's
/// next pass, the tickers of those rooms skipped it (broadcasts skip lagging sockets) and did
/// not reach its backlog either. Every product ticked once after the reconnect must arrive.
#[tokio::test]
async fn a_socket_that_lags_from_its_replay_gets_the_tickers_of_the_rooms_it_rejoined() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut settings = Settings::default();
    settings.socketio.max_buffer = 4;
    settings.recovery.replay_budget = 1_000;
    let app = TestApp::spawn_with(settings).await;
    let base = fixture("crypto.ticker.event.updated.json");
    let tick = |product: &str, ts: usize| padded_tick(&base, product, ts, 16);
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);

    // A client with a session id and the offset of a ticker it got.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(r#"40{"guestId":"again"}"#))
        .await
        .unwrap();
    let mut pid = String::new();
    let mut offset = String::new();
    let mut joined = false;
    while offset.is_empty() {
        let text = next_text(&mut ws).await;
        if let Some(connect) = text.strip_prefix("40") {
            let v: Value = serde_json::from_str(connect).unwrap();
            pid = v["pid"].as_str().expect("recovery is on").to_owned();
        } else if text.contains("session:init") && !joined {
            joined = true;
            let joining = format!(r#"42["userLocationUpdate",{}]"#, location("Lucknow"));
            ws.send(Message::text(joining)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            app.publish(TICKER_EVENTS, Some("FIRST-USD"), &tick("FIRST-USD", 0));
        } else if let Some(body) = text.strip_prefix("42")
            && let Ok(v) = serde_json::from_str::<Value>(body)
            && v[0] == EV_TICKER
            && let Some(last) = v.as_array().and_then(|a| a.last()).and_then(Value::as_str)
        {
            offset = last.to_owned();
        }
    }
    drop(ws);

    // Missed while away: more than its queue holds, so the replay makes it lag.
    for i in 0..40 {
        let product = format!("MISSED{i}-USD");
        app.publish(TICKER_EVENTS, Some(&product), &tick(&product, i + 1));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back with its session; meanwhile one ticker every half millisecond, each of another
    // product, for 300 ms: some come right after the replay put it back in its rooms.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let connect = json!({"guestId": "again", "pid": pid, "offset": offset});
    ws.send(Message::text(format!("40{connect}")))
        .await
        .unwrap();
    let publisher = {
        let bus = app.bus.clone();
        let base = base.clone();
        tokio::spawn(async move {
            for i in 0..600 {
                let product = format!("LIVE{i}-USD");
                let value = padded_tick(&base, &product, 1_000 + i, 16).to_string();
                bus.publish(TICKER_EVENTS, Some(&product), Some(value.as_bytes()));
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        })
    };
    let mut seen = std::collections::HashSet::new();
    let mut recovered = None;
    let mut last_message = tokio::time::Instant::now();
    loop {
        let left = Duration::from_secs(2).saturating_sub(last_message.elapsed());
        let Ok(Some(Ok(msg))) = tokio::time::timeout(left, ws.next()).await else {
            break;
        };
        last_message = tokio::time::Instant::now();
        let text = msg.to_text().unwrap_or("").to_owned();
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
        } else if let Some(connect) = text.strip_prefix("40") {
            let v: Value = serde_json::from_str(connect).unwrap();
            recovered = Some(v["pid"] == json!(pid));
        } else if let Some(body) = text.strip_prefix("42")
            && let Ok(v) = serde_json::from_str::<Value>(body)
            && v[0] == EV_TICKER
        {
            let product = v[1].to_string();
            if let Some(start) = product.find("LIVE").or_else(|| product.find("MISSED")) {
                let end = start + product[start..].find("-USD").unwrap();
                seen.insert(product[start..end].to_owned());
            }
        }
    }
    publisher.await.unwrap();
    assert_eq!(recovered, Some(true), "the session is recovered");
    let missing: Vec<String> = (0..40)
        .map(|i| format!("MISSED{i}"))
        .chain((0..600).map(|i| format!("LIVE{i}")))
        .filter(|p| !seen.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} products never arrived: {missing:?}",
        missing.len()
    );
}
