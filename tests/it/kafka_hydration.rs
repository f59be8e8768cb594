//! Two-tier snapshots on Apache Kafka 4 (a broker spawned per test, D24): a replica keeps the
//! snapshots it consumed in process and, when fresh, warms them from the end of each snapshot
//! topic, so that hydration needs no Valkey: absent, unreachable or killed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::app::*;
use crate::support::kafka_app::*;
use crate::support::kafka_broker::KafkaBroker;
use crate::support::redis_server::RedisServer;
use flux_bff::adapters::kafka::KafkaClient;
use flux_bff::adapters::memory::MemoryBus;
use flux_bff::adapters::valkey::{ValkeySettings, ValkeySnapshotCache};
use flux_bff::boot::Ports;
use flux_bff::domain::topics::*;
use flux_bff::ports::SnapshotCache;
use serde_json::{Value, json};

/// A gateway on the broker with `cache` as its shared tier.
async fn replica(bootstrap: &str, client_id: &str, cache: Arc<dyn SnapshotCache>) -> TestApp {
    let client = KafkaClient::new(&kafka_settings(bootstrap, client_id)).unwrap();
    let ports = Ports {
        source: Arc::new(client.event_source()),
        sink: Arc::new(client.command_sink()),
        cache,
        publisher: None,
        source_name: format!("Kafka brokers {bootstrap}"),
    };
    TestApp::spawn_ports(gateway_settings(), ports).await
}

async fn valkey_at(url: String, prefix: &str) -> Arc<dyn SnapshotCache> {
    let settings = ValkeySettings {
        url,
        key_prefix: prefix.to_owned(),
        ..ValkeySettings::default()
    };
    Arc::new(
        ValkeySnapshotCache::connect(&settings)
            .await
            .expect("valid settings"),
    )
}

/// The news fixture with its first headline replaced, to tell versions apart.
fn news(title: &str) -> Value {
    let mut v = fixture("news.service.event.updated.json");
    v["payload"]["data"][0]["title"] = json!(title);
    v
}

/// Produces every snapshot fixture (news twice: the newer one must win), each followed by
/// more invalid records than one read-back step holds.
async fn produce_snapshots(producer: &Producer) {
    producer
        .send_json(NEWS_EVENTS, Some("globalnews"), &news("older"))
        .await;
    producer
        .send_json(NEWS_EVENTS, Some("globalnews"), &news("newest"))
        .await;
    for topic in [MOVERS_EVENTS, TOPCOINS_EVENTS, STOCK_EVENTS] {
        producer
            .send_json(topic, None, &fixture(&format!("{topic}.json")))
            .await;
    }
    for topic in SNAPSHOT_TOPICS {
        for i in 0..20 {
            producer
                .send(topic, None, format!("garbage {i}").as_bytes())
                .await;
        }
        producer.send_json(topic, None, &json!({})).await;
    }
}

/// Joins with a new client until one is hydrated with all four snapshots (the warm-up runs
/// beside start-up) and returns them by event.
async fn hydrated(app: &TestApp, guest: &str) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = TestClient::connect(app, Some(guest)).await;
        c.emit("userLocationUpdate", pune()).await;
        let mut got = Vec::new();
        for event in [EV_NEWS, EV_MOVERS, EV_TOPCOINS, EV_STOCKS] {
            if let Some(v) = c.wait_nth(event, 1, Duration::from_secs(1)).await {
                got.push((event.to_owned(), v));
            }
        }
        if got.len() == 4 {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "never hydrated with all four snapshots: {:?}",
            c.events()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_every_snapshot(got: &[(String, Value)]) {
    let by = |e: &str| &got.iter().find(|(n, _)| n == e).unwrap().1;
    let hydrated_news = by(EV_NEWS);
    assert_eq!(hydrated_news["status"], "success");
    assert_eq!(hydrated_news["data"], news("newest")["payload"]["data"]);
    assert_eq!(
        by(EV_MOVERS)["data"],
        fixture("crypto.movers.event.updated.json")
    );
    assert_eq!(
        by(EV_TOPCOINS)["data"],
        fixture("crypto.topcoins.event.updated.json")
    );
    assert_eq!(
        by(EV_STOCKS),
        &json!({"status": "success", "data": fixture("stock.service.event.updated.json")["data"]})
    );
}

async fn create_snapshot_topics(broker: &KafkaBroker) {
    let admin = broker.client("flux-test-admin").await;
    for topic in EVENT_TOPICS {
        broker.create_topic(&admin, topic, 1).await;
    }
}

#[tokio::test]
async fn a_fresh_replica_with_no_valkey_reachable_hydrates_every_snapshot_from_the_log() {
    // Arrange: the snapshots are in the log before the replica starts; nothing listens where
    // Valkey should be.
    let broker = KafkaBroker::start().await;
    create_snapshot_topics(&broker).await;
    produce_snapshots(&Producer::new(&broker.bootstrap())).await;
    let nowhere = format!(
        "redis://127.0.0.1:{}",
        crate::support::kafka_broker::free_port()
    );
    let cache = valkey_at(nowhere, "hydration:").await;

    // Act
    let app = replica(&broker.bootstrap(), "bff-fresh", cache.clone()).await;

    // Assert
    assert_every_snapshot(&hydrated(&app, "fresh-user").await);
    assert!(!cache.is_available(), "Valkey was never reachable");
}

#[tokio::test]
async fn with_valkey_killed_a_running_replica_and_a_fresh_one_hydrate_every_snapshot() {
    // Arrange: a replica on Kafka and Valkey consumes the snapshots live.
    let mut server = RedisServer::start();
    let broker = KafkaBroker::start().await;
    create_snapshot_topics(&broker).await;
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let running = replica(
        &broker.bootstrap(),
        "bff-running",
        valkey_at(server.url(), &prefix).await,
    )
    .await;
    produce_snapshots(&Producer::new(&broker.bootstrap())).await;
    for snapshot in [SNAP_MOVERS, SNAP_TOPCOINS, SNAP_NEWS, SNAP_STOCKS] {
        running.wait_cached(snapshot.key).await;
    }

    // Act: Valkey dies.
    server.kill();

    // Assert: the running replica hydrates from its own tier, a new one from the log.
    assert_every_snapshot(&hydrated(&running, "running-user").await);
    let fresh = replica(
        &broker.bootstrap(),
        "bff-fresh",
        valkey_at(server.url(), &prefix).await,
    )
    .await;
    assert_every_snapshot(&hydrated(&fresh, "fresh-user").await);
}

#[tokio::test]
async fn kafka_honours_the_tail_contract() {
    let broker = KafkaBroker::start().await;
    let admin = broker.client("flux-test-admin").await;
    let topic = format!("tail-{}", uuid::Uuid::new_v4().simple());
    broker.create_topic(&admin, &topic, 3).await;
    let client = KafkaClient::new(&kafka_settings(&broker.bootstrap(), DIRECT)).unwrap();
    crate::support::event_bus_contract::tail_contract(
        &client.event_source(),
        &client.command_sink(),
        &topic,
    )
    .await;
}

#[tokio::test]
async fn the_in_memory_bus_honours_the_tail_contract() {
    let bus = MemoryBus::new();
    bus.create_topic("tail", 3);
    crate::support::event_bus_contract::tail_contract(&bus, &bus, "tail").await;
}
