//! The gateway on Apache Kafka in one process, for the Kafka gateway tests: settings with short
//! waits, a gateway on a broker, a producer playing the domain services, and ticker events
//! that tell themselves apart.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use flux_bff::adapters::kafka::{KafkaClient, KafkaSettings};
use flux_bff::adapters::memory::MemoryCache;
use flux_bff::boot::{Ports, Settings};
use flux_bff::domain::Command as KafkaCommand;
use flux_bff::domain::topics::*;
use flux_bff::ports::CommandSink;
use serde_json::{Value, json};

use super::app::*;

/// The test's own producer: the proxy never cuts it.
pub const DIRECT: &str = "flux-test-direct";

pub fn kafka_settings(bootstrap: &str, client_id: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: vec![bootstrap.to_owned()],
        client_id: client_id.to_owned(),
        topic_partitions: 1,
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(3),
        metadata_refresh: Duration::from_secs(1),
        ..KafkaSettings::default()
    }
}

pub fn gateway_settings() -> Settings {
    let mut s = Settings::default();
    s.lifecycle.max_backoff = Duration::from_millis(500);
    s
}

pub async fn gateway(bootstrap: &str, client_id: &str) -> TestApp {
    let client = KafkaClient::new(&kafka_settings(bootstrap, client_id)).unwrap();
    let ports = Ports {
        source: Arc::new(client.event_source()),
        sink: Arc::new(client.command_sink()),
        cache: Arc::new(MemoryCache::default()),
        publisher: None,
        source_name: format!("Kafka brokers {bootstrap}"),
    };
    TestApp::spawn_ports(gateway_settings(), ports).await
}

/// A producer playing the domain services.
pub struct Producer(pub KafkaClient);

impl Producer {
    pub fn new(bootstrap: &str) -> Self {
        Self(KafkaClient::new(&kafka_settings(bootstrap, DIRECT)).unwrap())
    }

    pub async fn send(&self, topic: &str, key: Option<&str>, value: &[u8]) {
        self.0
            .command_sink()
            .send(KafkaCommand::new(
                topic,
                key.map(str::to_owned),
                value.to_vec(),
            ))
            .await
            .expect("produce to the broker");
    }

    pub async fn send_news_fixture(&self) {
        let news = fixture("news.service.event.updated.json");
        self.send_json(NEWS_EVENTS, Some("globalnews"), &news).await;
    }

    pub async fn send_json(&self, topic: &str, key: Option<&str>, value: &Value) {
        self.send(topic, key, value.to_string().as_bytes()).await;
    }
}

/// A ticker event for `product` carrying `n` as its `ts`, to tell events apart.
pub fn tick(product: &str, n: i64) -> Value {
    let mut tick = fixture("crypto.ticker.event.updated.json");
    tick["data"]["product_id"] = json!(product);
    tick["ts"] = json!(n);
    tick
}

/// The `ts` of every ticker event `client` received, in order.
pub fn ticks(client: &TestClient) -> Vec<i64> {
    client
        .received()
        .into_iter()
        .filter(|(e, _)| e == EV_TICKER)
        .filter_map(|(_, v)| v["data"]["ts"].as_i64())
        .collect()
}

/// Produces `value` to `partition` of `topic` directly (the producing services' partitioner
/// is not what is tested here).
pub async fn produce_to(
    client: &rskafka::client::Client,
    topic: &str,
    partition: i32,
    value: &Value,
) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client")
        .produce(
            vec![rskafka::record::Record {
                key: None,
                value: Some(value.to_string().into_bytes()),
                headers: Default::default(),
                timestamp: flux_bff::adapters::kafka::record_timestamp_now(),
            }],
            Compression::NoCompression,
        )
        .await
        .expect("produce");
}
