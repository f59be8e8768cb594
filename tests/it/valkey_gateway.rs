//! The gateway with a real Valkey (redis-server spawned per test): two instances sharing the
//! dedup window, the cache dying and coming back under live traffic, a wrong password.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::app::*;
use crate::support::redis_server::RedisServer;
use flux_bff::adapters::memory::MemoryBus;
use flux_bff::adapters::valkey::{ValkeySettings, ValkeySnapshotCache};
use flux_bff::boot::Settings;
use flux_bff::domain::topics::*;
use flux_bff::ports::SnapshotCache;
use serde_json::json;

async fn valkey(server: &RedisServer, prefix: &str) -> Arc<dyn SnapshotCache> {
    let settings = ValkeySettings {
        url: server.url(),
        key_prefix: prefix.to_owned(),
        ..ValkeySettings::default()
    };
    let cache = ValkeySnapshotCache::connect(&settings)
        .await
        .expect("valid settings");
    // Wait until the first background check reached the server.
    let deadline = Instant::now() + WAIT;
    while !cache.is_available() {
        assert!(
            Instant::now() < deadline,
            "Valkey at {} never came up",
            server.addr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Arc::new(cache)
}

#[tokio::test]
async fn two_instances_sharing_valkey_share_the_dedup_window() {
    let server = RedisServer::start();
    let bus = MemoryBus::new();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let a = TestApp::spawn_on(
        Settings::default(),
        bus.clone(),
        valkey(&server, &prefix).await,
    )
    .await;
    let b = TestApp::spawn_on(
        Settings::default(),
        bus.clone(),
        valkey(&server, &prefix).await,
    )
    .await;
    let on_a = TestClient::connect(&a, Some("pat")).await;
    let on_b = TestClient::connect(&b, Some("pat")).await;

    on_a.locate(&a, pune(), "Pune").await;
    a.wait_records(WEATHER_FETCH, 1).await;
    on_b.locate(&b, pune(), "Pune").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.records(WEATHER_FETCH).len(),
        1,
        "the second instance sent a duplicate"
    );

    // The window is in Valkey, under the prefix, with the 2 s expiry.
    let mut raw = server.raw();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}dedup:location:pat"))
        .query(&mut raw)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let pttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut raw).unwrap();
    assert!((1..=2000).contains(&pttl), "{pttl}");
}

#[tokio::test]
async fn the_cache_dying_under_live_traffic_degrades_and_recovers_without_a_restart() {
    let mut server = RedisServer::start();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let app = TestApp::spawn_on(
        Settings::default(),
        MemoryBus::new(),
        valkey(&server, &prefix).await,
    )
    .await;
    app.publish_fixture(TOPCOINS_EVENTS).await;
    app.wait_cached("crypto:top-coins").await;
    let c = TestClient::connect(&app, Some("quinn")).await;
    c.locate(&app, pune(), "Pune").await;
    // The gauge is process-wide (other tests' caches set it too); `/readyz` is per instance.
    let cache_up = || async {
        let r = reqwest::get(format!("{}readyz", app.url())).await.unwrap();
        r.json::<serde_json::Value>().await.unwrap()["cache"]
            .as_bool()
            .unwrap()
    };
    assert!(cache_up().await);

    // Act: Valkey dies.
    server.kill();

    // Snapshot requests answer within 300 ms, from the snapshot this process consumed (D24).
    c.clear();
    let asked = Instant::now();
    c.emit_empty(REQ_TOPCOINS).await;
    let reply = c.wait_for(EV_TOPCOINS).await;
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "reply took {:?}",
        asked.elapsed()
    );
    c.clear();
    let asked = Instant::now();
    c.emit_empty(REQ_TOPCOINS).await;
    let reply2 = c.wait_for(EV_TOPCOINS).await;
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "reply took {:?}",
        asked.elapsed()
    );
    assert_eq!(reply["status"], "success", "{reply}");
    assert_eq!(reply2["status"], "success", "{reply2}");

    // Live pushes keep arriving promptly.
    for i in 0..5 {
        let mut tick = fixture("crypto.ticker.event.updated.json");
        tick["ts"] = json!(i);
        let sent = Instant::now();
        app.publish(TICKER_EVENTS, Some("BTC-USD"), &tick);
        let got = c
            .wait_nth(EV_TICKER, i + 1, WAIT)
            .await
            .expect("tick while the cache is down");
        assert_eq!(got["data"]["ts"], json!(i));
        assert!(
            sent.elapsed() < Duration::from_millis(100),
            "push took {:?}",
            sent.elapsed()
        );
    }
    // Coins pushes too, although their snapshot cannot be written.
    app.publish_fixture(TOPCOINS_EVENTS).await;
    assert_eq!(
        c.wait_nth(EV_TOPCOINS, 2, WAIT).await.unwrap()["status"],
        "success"
    );

    // Dedup falls back to the local window: one command for two identical updates. (The
    // first one's result, a probe, ends Agra's outstanding command, so that the second one
    // reaches the dedup window instead of stopping at the city's single flight, D23.)
    let before = app.records(WEATHER_FETCH).len();
    let fallback_before = counter(&app.metrics().await, "flux_dedup_local_fallback_total", &[]);
    c.emit("userLocationUpdate", location("Agra")).await;
    app.wait_records(WEATHER_FETCH, before + 1).await;
    c.wait_in_room(&app, "Agra").await;
    c.emit("userLocationUpdate", location("Agra")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.records(WEATHER_FETCH).len(), before + 1);
    let m = app.metrics().await;
    assert!(counter(&m, "flux_dedup_local_fallback_total", &[]) >= fallback_before + 2.0);
    assert!(
        m.contains("flux_cache_up"),
        "/metrics exports the cache state"
    );
    assert!(!cache_up().await, "the cache shows as down");

    // Recovery: restart on the same port (empty); writes resume within 2 s.
    server.restart();
    let restarted = Instant::now();
    loop {
        app.publish_fixture(TOPCOINS_EVENTS).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if matches!(app.cache.get("crypto:top-coins").await, Ok(Some(_))) {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "no cache hit within 2 s of the restart"
        );
    }
    assert!(cache_up().await);
}

#[tokio::test]
async fn a_wrong_password_is_reported_clearly_and_the_gateway_runs_degraded() {
    let server = RedisServer::start_with_password("right-password");
    let port = crate::support::redis_server::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flux-bff"))
        .env_clear()
        .env("FLUX_HTTP__HOST", "127.0.0.1")
        .env("FLUX_HTTP__PORT", port.to_string())
        .env("FLUX_LOG__FORMAT", "json")
        .env("VALKEY_HOST", "127.0.0.1")
        .env("VALKEY_PORT", server.port().to_string())
        .env("VALKEY_PASSWORD", "wrong-password")
        // Embedded mode writing simulated data to a shared Valkey is refused.
        .env("FLUX_SIM__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            let body: serde_json::Value = r.json().await.unwrap();
            if body["cache"] == false {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not come up degraded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "the gateway crashed");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("WRONGPASS") && log.contains("VALKEY_PASSWORD"),
        "{log}"
    );
    assert!(
        !log.contains("wrong-password"),
        "the password leaked into the log"
    );
}
