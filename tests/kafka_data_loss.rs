//! The gateway when the broker comes back with empty storage (issue 10), under live traffic.
//! A test binary of its own: the metrics registry is per process, and the broker-restart test
//! in `it/kafka_gateway.rs` asserts that a log kept across a restart causes no offset reset.

#[path = "it/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::app::*;
use crate::support::kafka_app::*;
use crate::support::kafka_broker::KafkaBroker;
use flux_bff::adapters::kafka::KafkaClient;
use flux_bff::domain::Command as KafkaCommand;
use flux_bff::domain::topics::*;
use flux_bff::ports::CommandSink;

#[tokio::test]
async fn a_broker_that_lost_its_data_is_read_from_its_new_log_under_live_traffic() {
    let mut broker = KafkaBroker::start().await;
    let app = gateway(&broker.bootstrap(), "bff-lost").await;
    let c = Arc::new(TestClient::connect(&app, Some("lost")).await);
    c.emit("userLocationUpdate", location("Kochi")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Live traffic: a tick every 50 ms; the ones the broker acknowledged, and when.
    let sink = KafkaClient::new(&kafka_settings(&broker.bootstrap(), DIRECT))
        .unwrap()
        .command_sink();
    let acked: Arc<std::sync::Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let producing = tokio::spawn({
        let acked = Arc::clone(&acked);
        async move {
            for n in 0.. {
                let value = tick("BTC-USD", n).to_string();
                let command = KafkaCommand::new(TICKER_EVENTS, Some("BTC-USD".into()), value);
                if sink.send(command).await.is_ok() {
                    acked.lock().unwrap().push((n, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // When each tick first reached the client.
    let seen: Arc<std::sync::Mutex<HashMap<i64, Instant>>> = Arc::default();
    let watching = tokio::spawn({
        let (c, seen) = (Arc::clone(&c), Arc::clone(&seen));
        async move {
            loop {
                let now = Instant::now();
                let got = ticks(&c);
                {
                    let mut seen = seen.lock().unwrap();
                    for n in got {
                        seen.entry(n).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    assert!(
        c.wait_nth(EV_TICKER, 10, Duration::from_secs(10))
            .await
            .is_some()
    );

    // Act: the broker comes back on the same port with empty storage: topics and offsets
    // start again at 0, below the gateway's positions.
    broker.restart_empty().await;
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(30);
    while acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, at)| *at > restarted)
        .count()
        < 40
    {
        assert!(
            Instant::now() < deadline,
            "the producer never got going again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    producing.abort();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    watching.abort();

    let seen = seen.lock().unwrap().clone();
    let after: Vec<(i64, Instant)> = acked
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|(_, at)| *at > restarted)
        .collect();
    eprintln!(
        "got {:?}\nafter {:?}",
        ticks(&c),
        after.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for (n, at) in &after {
        let arrived = seen
            .get(n)
            .unwrap_or_else(|| panic!("tick {n}, produced after the restart, never arrived"));
        let took = arrived.saturating_duration_since(*at);
        assert!(
            took < Duration::from_secs(2),
            "tick {n} arrived {took:?} after it was produced"
        );
    }
    let got = ticks(&c);
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "nothing delivered twice: {got:?}");
    let resets = counter(
        &app.metrics().await,
        "flux_kafka_offset_resets_total",
        &[TICKER_EVENTS],
    );
    assert!(resets >= 1.0, "the reset is counted");
}
