//! The Kafka adapters against a real Apache Kafka 4 broker (single-node KRaft),
//! spawned on a free loopback port per test (see `support/kafka_broker.rs` for the install hint).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::kafka_broker::KafkaBroker;
use crate::support::tcp_proxy::TcpProxy;
use flux_bff::adapters::kafka::{
    self, KafkaClient, KafkaCommandSink, KafkaError, KafkaEventSource, KafkaSettings,
};
use flux_bff::domain::Command;
use flux_bff::domain::partitioner::{legacy_partition, murmur2_legacy};
use flux_bff::ports::{
    CommandSink, CommandSinkError, EventSource, EventSourceError, Fetched, Next, Positions, Record,
    RecordStream,
};
use futures::StreamExt;
use rskafka::client::Client;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::Record as KafkaRecord;
use serde_json::Value;

/// The client id of the test's own producer: the fault-injection proxy never cuts it.
const DIRECT: &str = "flux-test-direct";

fn settings(bootstrap: String) -> KafkaSettings {
    KafkaSettings {
        brokers: vec![bootstrap],
        fetch_max_wait: Duration::from_millis(100),
        request_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(3),
        metadata_refresh: Duration::from_secs(1),
        ..KafkaSettings::default()
    }
}

async fn connect(broker: &KafkaBroker) -> KafkaClient {
    kafka::connect(&settings(broker.bootstrap()))
        .await
        .expect("the adapter connects to the broker")
}

fn unique(name: &str) -> String {
    format!("test-{name}-{}", uuid::Uuid::new_v4().simple())
}

fn record(key: Option<&str>, value: Option<&[u8]>) -> KafkaRecord {
    KafkaRecord {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: value.map(<[u8]>::to_vec),
        headers: BTreeMap::new(),
        timestamp: rskafka::chrono::DateTime::UNIX_EPOCH,
    }
}

/// Produces `values` to one partition as ONE batch (one produce request), as a real producer
/// with linger does; returns their offsets.
async fn produce(client: &Client, topic: &str, partition: i32, values: &[&str]) -> Vec<i64> {
    let partition_client = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let records = values
        .iter()
        .map(|v| record(None, Some(v.as_bytes())))
        .collect();
    partition_client
        .produce(records, Compression::NoCompression)
        .await
        .expect("produce")
}

/// The next `n` records of `stream`, failing on an error, the end, or after `within`.
async fn take(stream: &mut RecordStream, n: usize, within: Duration) -> Vec<Record> {
    let mut records = Vec::new();
    let deadline = Instant::now() + within;
    while records.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(Fetched::Record(record)))) => records.push(record),
            Ok(Some(Ok(Fetched::Passed { .. }))) => {}
            Ok(Some(Err(e))) => panic!("stream failed after {} records: {e}", records.len()),
            Ok(None) => panic!("stream ended after {} of {n} records", records.len()),
            Err(_) => panic!(
                "only {} of {n} records within {within:?}: {records:?}",
                records.len()
            ),
        }
    }
    records
}

/// Asserts that no record (nor error, nor end) arrives for `quiet`.
async fn assert_quiet(stream: &mut RecordStream, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(item) = tokio::time::timeout_at(deadline, stream.next()).await {
        if !matches!(item, Some(Ok(Fetched::Passed { .. }))) {
            panic!("expected nothing more, got {item:?}");
        }
    }
}

fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"<null>")).into_owned())
        .collect()
}

/// The message key the producing service uses on each fixture topic (fixtures/README.md).
fn fixture_key(topic: &str, value: &Value) -> Option<String> {
    match topic {
        "crypto.ticker.event.updated" => value["data"]["product_id"].as_str().map(str::to_owned),
        "news.service.event.updated" => Some("globalnews".into()),
        "weather.service.command.fetch" => Some("socket-6f1c2b9e".into()),
        "crypto.service.command.topmovers.refresh" => Some("cryptotopmovers".into()),
        "crypto.service.command.topcoins.refresh" => Some("cryptotopcoins".into()),
        "stock.service.command.topperformers.refresh" => Some("stocktopperformers".into()),
        "news.service.command.refresh" => Some("topglobalnews".into()),
        _ => None,
    }
}

/// Every fixture message: (topic, key, value) with values serialised compactly, the invalid
/// variants included (raw bytes, scalar JSON, tombstones).
fn fixture_messages() -> Vec<(String, Option<String>, Option<Vec<u8>>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut messages = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(topic) = name.strip_suffix(".invalid.json") {
            for variant in json.as_array().expect("invalid fixtures are arrays") {
                let value = if variant["tombstone"] == Value::Bool(true) {
                    None
                } else if let Some(raw) = variant["raw"].as_str() {
                    Some(raw.as_bytes().to_vec())
                } else {
                    Some(serde_json::to_vec(&variant["value"]).unwrap())
                };
                messages.push((
                    topic.to_owned(),
                    fixture_key(topic, &variant["value"]),
                    value,
                ));
            }
        } else {
            let topic = name.strip_suffix(".json").unwrap();
            let value = serde_json::to_vec(&json).unwrap();
            messages.push((topic.to_owned(), fixture_key(topic, &json), Some(value)));
        }
    }
    messages
}

#[tokio::test]
async fn every_fixture_is_read_back_with_identical_bytes_and_key() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let messages = fixture_messages();
    let topics: Vec<String> = messages
        .iter()
        .map(|(t, _, _)| t.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(topics.len(), 11, "every fixture topic: {topics:?}");
    assert!(
        messages.iter().any(|(_, _, v)| v.is_none()),
        "a tombstone fixture"
    );
    for topic in &topics {
        broker.create_topic(&direct, topic, 1).await;
    }
    let source = KafkaEventSource::new(connect(&broker).await);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut stream = source
        .subscribe(&names, &Positions::default())
        .await
        .unwrap();

    for (topic, key, value) in &messages {
        let client = direct
            .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let mut r = record(key.as_deref(), value.as_deref());
        r.headers.insert("x".into(), b"y".to_vec());
        client
            .produce(vec![r], Compression::NoCompression)
            .await
            .unwrap();
    }
    let got = take(&mut stream, messages.len(), Duration::from_secs(20)).await;

    let mut by_topic: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in &got {
        by_topic.entry(&r.topic).or_default().push(r);
    }
    for topic in &topics {
        let sent: Vec<_> = messages.iter().filter(|(t, _, _)| t == topic).collect();
        let read = &by_topic[topic.as_str()];
        assert_eq!(read.len(), sent.len(), "{topic}");
        for ((_, key, value), r) in sent.iter().zip(read) {
            assert_eq!(
                r.key.as_deref(),
                key.as_deref().map(str::as_bytes),
                "{topic} key"
            );
            assert_eq!(r.value.as_deref(), value.as_deref(), "{topic} value bytes");
        }
        let offsets: Vec<i64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(
            offsets,
            (0..sent.len() as i64).collect::<Vec<_>>(),
            "{topic} offsets"
        );
    }
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn kafka_honours_the_event_bus_contract() {
    let broker = KafkaBroker::start().await;
    let client = connect(&broker).await;
    let topic = unique("contract");
    kafka::ensure_topics(&client, &[&topic], 3, 1)
        .await
        .unwrap();
    crate::support::event_bus_contract::event_bus_contract(
        &client.event_source(),
        &client.command_sink(),
        &topic,
    )
    .await;
}

#[tokio::test]
async fn the_in_memory_bus_honours_the_event_bus_contract() {
    let bus = flux_bff::adapters::memory::MemoryBus::new();
    let topic = unique("contract");
    bus.create_topic(&topic, 3);
    crate::support::event_bus_contract::event_bus_contract(&bus, &bus, &topic).await;
}

#[tokio::test]
async fn a_new_subscription_starts_after_the_records_already_in_the_log() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("latest");
    broker.create_topic(&direct, &topic, 1).await;
    // Several records per batch: the start position is the log end, not the last batch's base.
    produce(&direct, &topic, 0, &["old-0", "old-1", "old-2"]).await;
    produce(&direct, &topic, 0, &["old-3", "old-4", "old-5"]).await;

    let source = KafkaEventSource::new(connect(&broker).await);
    let mut stream = source
        .subscribe(&[&topic], &Positions::default())
        .await
        .unwrap();
    produce(&direct, &topic, 0, &["new-6", "new-7"]).await;

    let got = take(&mut stream, 2, Duration::from_secs(5)).await;
    assert_eq!(values(&got), ["new-6", "new-7"]);
    assert_eq!(got[0].offset, 6);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn resuming_from_positions_delivers_each_record_from_there_exactly_once() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("resume");
    broker.create_topic(&direct, &topic, 1).await;
    produce(&direct, &topic, 0, &["r0", "r1", "r2", "r3"]).await;
    produce(&direct, &topic, 0, &["r4", "r5", "r6"]).await;

    let source = KafkaEventSource::new(connect(&broker).await);
    let mut from = Positions::default();
    from.set(&topic, 0, 2); // r2 is the next one to read: in the middle of the first batch
    let mut stream = source.subscribe(&[&topic], &from).await.unwrap();
    let got = take(&mut stream, 5, Duration::from_secs(5)).await;
    assert_eq!(values(&got), ["r2", "r3", "r4", "r5", "r6"]);
    produce(&direct, &topic, 0, &["r7"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!((got[0].offset, values(&got)), (7, vec!["r7".to_owned()]));
    assert_quiet(&mut stream, Duration::from_millis(500)).await;

    let mut positions = Positions::default();
    for r in &got {
        positions.advance(r);
    }
    assert_eq!(source.lag(&positions).await, vec![(topic.clone(), 0, 0)]);
    positions.set(&topic, 0, 5);
    assert_eq!(source.lag(&positions).await, vec![(topic.clone(), 0, 3)]);
}

#[tokio::test]
async fn resuming_inside_the_last_batch_delivers_the_rest_of_it() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("resume-last");
    broker.create_topic(&direct, &topic, 1).await;
    produce(&direct, &topic, 0, &["x0", "x1", "x2", "x3"]).await;

    let source = KafkaEventSource::new(connect(&broker).await);
    let mut from = Positions::default();
    from.set(&topic, 0, 1);
    let mut stream = source.subscribe(&[&topic], &from).await.unwrap();
    let got = take(&mut stream, 3, Duration::from_secs(5)).await;
    assert_eq!(values(&got), ["x1", "x2", "x3"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn every_partition_is_read_completely_by_every_subscriber() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("partitions");
    broker.create_topic(&direct, &topic, 3).await;
    produce(&direct, &topic, 1, &["before"]).await;

    // Two independent gateway instances (own client each) and no consumer group.
    let first: Arc<dyn EventSource> = Arc::new(KafkaEventSource::new(connect(&broker).await));
    let second: Arc<dyn EventSource> = Arc::new(connect(&broker).await.event_source());
    let mut a = first
        .subscribe(&[&topic], &Positions::default())
        .await
        .unwrap();
    let mut b = second
        .subscribe(&[&topic], &Positions::default())
        .await
        .unwrap();

    let mut sent = HashSet::new();
    for round in 0..4 {
        for partition in 0..3 {
            let values = [
                format!("p{partition}-{round}a"),
                format!("p{partition}-{round}b"),
            ];
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            produce(&direct, &topic, partition, &refs).await;
            sent.extend(values);
        }
    }
    for stream in [&mut a, &mut b] {
        let got = take(stream, sent.len(), Duration::from_secs(20)).await;
        let got_values: HashSet<String> = values(&got).into_iter().collect();
        assert_eq!(got_values, sent, "every record, once");
        for partition in 0..3 {
            let offsets: Vec<i64> = got
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset)
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "partition {partition} in order: {offsets:?}"
            );
        }
        assert_quiet(stream, Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn subscribing_to_a_missing_topic_names_it_when_topic_creation_is_off() {
    let broker = KafkaBroker::start().await;
    let client = kafka::connect(&KafkaSettings {
        create_topics: false,
        ..settings(broker.bootstrap())
    })
    .await
    .unwrap();
    let missing = unique("missing");
    match client
        .event_source()
        .subscribe(&[&missing], &Positions::default())
        .await
    {
        Err(EventSourceError::UnknownTopic(topic)) => assert_eq!(topic, missing),
        Err(e) => panic!("expected UnknownTopic, got {e}"),
        Ok(_) => panic!("expected UnknownTopic, got a stream"),
    }
    match client
        .command_sink()
        .send(Command::new(&missing, None, "{}"))
        .await
    {
        Err(CommandSinkError::Rejected(reason)) => assert!(reason.contains(&missing), "{reason}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// Missing topics are created with the configured partitions, or by default with the
/// brokers' own (`num.partitions`, 3 on this broker; `default.replication.factor`), as Kafka's
/// own topic creation: not one partition on one broker whatever the cluster.
#[tokio::test]
async fn missing_topics_are_created_with_the_configured_or_the_brokers_partitions() {
    let broker = KafkaBroker::start_with_default_partitions(3).await;
    let direct = broker.client(DIRECT).await;
    for (configured, expected) in [(None, 3), (Some(2), 2)] {
        let client = kafka::connect(&KafkaSettings {
            topic_partitions: configured.unwrap_or(KafkaSettings::default().topic_partitions),
            ..settings(broker.bootstrap())
        })
        .await
        .unwrap();
        let (events, commands) = (unique("auto-events"), unique("auto-commands"));
        let mut stream = client
            .event_source()
            .subscribe(&[&events], &Positions::default())
            .await
            .expect("the event topic is created on subscribe");
        client
            .command_sink()
            .send(Command::new(&commands, Some("k".into()), "{}"))
            .await
            .expect("the command topic is created on first send");
        let topics = client.rskafka().await.unwrap().list_topics().await.unwrap();
        for name in [&events, &commands] {
            let topic = topics.iter().find(|t| &t.name == name).expect("created");
            assert_eq!(topic.partitions.len(), expected, "{name} ({configured:?})");
        }
        produce(&direct, &events, 1, &["e0"]).await;
        assert_eq!(
            values(&take(&mut stream, 1, Duration::from_secs(5)).await),
            ["e0"]
        );
    }
}

#[tokio::test]
async fn ensure_topics_creates_the_missing_ones_only() {
    let broker = KafkaBroker::start().await;
    let client = connect(&broker).await;
    let rskafka = client.rskafka().await.unwrap();
    let (a, b) = (unique("ensure-a"), unique("ensure-b"));
    broker.create_topic(&rskafka, &a, 1).await;
    let created = kafka::ensure_topics(&client, &[&a, &b], 2, 1)
        .await
        .unwrap();
    assert_eq!(created, vec![b.clone()]);
    let again = kafka::ensure_topics(&client, &[&a, &b], 2, 1)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    // A created topic reaches the metadata a moment later (KRaft propagates it).
    let deadline = Instant::now() + Duration::from_secs(10);
    let partitions = loop {
        let topics = rskafka.list_topics().await.unwrap();
        if let Some(t) = topics.iter().find(|t| t.name == b) {
            break t.partitions.len();
        }
        assert!(
            Instant::now() < deadline,
            "{b} never showed in the metadata"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(partitions, 2);
}

#[tokio::test]
async fn the_ports_exist_before_any_broker_answers_and_work_once_one_does() {
    let addr: std::net::SocketAddr =
        ([127, 0, 0, 1], crate::support::kafka_broker::free_port()).into();
    let client = KafkaClient::new(&settings(addr.to_string())).expect("no I/O in new");
    let source = client.event_source();
    let sink = client.command_sink();
    let topic = unique("lazy");
    let started = Instant::now();
    match source.subscribe(&[&topic], &Positions::default()).await {
        Err(EventSourceError::Unavailable(reason)) => {
            assert!(
                reason.contains(&addr.to_string()),
                "names the broker: {reason}"
            )
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("expected Unavailable, got a stream"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match sink.send(Command::new(&topic, None, "{}")).await {
        Err(CommandSinkError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }

    let _broker = KafkaBroker::start_advertising(addr, addr).await;
    let mut stream = source
        .subscribe(&[&topic], &Positions::default())
        .await
        .expect("subscribes once the broker answers");
    sink.send(Command::new(&topic, None, "hello"))
        .await
        .expect("sends once the broker answers");
    assert_eq!(
        values(&take(&mut stream, 1, Duration::from_secs(5)).await),
        ["hello"]
    );
}

/// Reads every record of `topic` from the beginning, straight from the broker.
async fn read_all(client: &Client, topic: &str, partitions: i32) -> Vec<(i32, KafkaRecord)> {
    let mut all = Vec::new();
    for partition in 0..partitions {
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let (records, _) = pc.fetch_records(0, 1..1_000_000, 100).await.unwrap();
        all.extend(records.into_iter().map(|r| (partition, r.record)));
    }
    all
}

#[tokio::test]
async fn commands_land_in_the_original_partition_with_key_value_and_idempotency_header() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("commands");
    broker.create_topic(&direct, &topic, 3).await;
    let sink = KafkaCommandSink::new(connect(&broker).await);

    // kafkajs' LegacyPartitioner (the original BFF's) on "foobar", from kafkajs 2.2.4 itself;
    // Kafka's own partitioner would pick partition 0.
    assert_eq!(murmur2_legacy(b"foobar"), -309_133_275);
    let expected_partition = 2;
    assert_eq!(legacy_partition(b"foobar", 3), expected_partition);

    let keyed = Command::new(&topic, Some("foobar".into()), r#"{"event":"x"}"#);
    let unkeyed = Command::new(&topic, None, r#"{"event":"y"}"#);
    sink.send(keyed.clone()).await.unwrap();
    sink.send(unkeyed.clone()).await.unwrap();
    sink.flush().await.unwrap();

    let all = read_all(&direct, &topic, 3).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let (partition, landed) = all
        .iter()
        .find(|(_, r)| r.key.as_deref() == Some(b"foobar".as_slice()))
        .expect("keyed command");
    assert_eq!(*partition, expected_partition);
    assert_eq!(landed.value.as_deref(), Some(keyed.value.as_ref()));
    assert_eq!(
        landed.headers.get("idempotency-key").map(Vec::as_slice),
        Some(keyed.idempotency_key.to_string().as_bytes())
    );
    let (_, other) = all
        .iter()
        .find(|(_, r)| r.key.is_none())
        .expect("unkeyed command");
    assert_eq!(other.value.as_deref(), Some(unkeyed.value.as_ref()));
    assert_eq!(
        other.headers.get("idempotency-key").map(Vec::as_slice),
        Some(unkeyed.idempotency_key.to_string().as_bytes())
    );
}

#[tokio::test]
async fn after_a_cut_the_stream_fails_and_resuming_delivers_the_records_of_the_outage_once() {
    // The broker listens behind the proxy and advertises the proxy: every client goes through it.
    let listen: std::net::SocketAddr =
        ([127, 0, 0, 1], crate::support::kafka_broker::free_port()).into();
    let proxy = TcpProxy::start(listen).await;
    proxy.spare(DIRECT);
    let broker = KafkaBroker::start_advertising(listen, proxy.addr).await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("outage");
    broker.create_topic(&direct, &topic, 2).await;

    let client = connect(&broker).await;
    let source = KafkaEventSource::new(client.clone());
    let sink = KafkaCommandSink::new(client);
    // Seeded with the log ends, so that partition 1, which delivers nothing before the cut,
    // is resumed exactly too.
    let mut positions = source.latest_positions(&[&topic]).await.unwrap();
    assert_eq!(positions.get(&topic, 1), Some(0));
    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    produce(&direct, &topic, 0, &["a0", "a1"]).await;
    for r in take(&mut stream, 2, Duration::from_secs(5)).await {
        positions.advance(&r);
    }

    proxy.cut();
    let cut_at = Instant::now();
    match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
        Ok(Some(Err(EventSourceError::Unavailable(reason)))) => {
            eprintln!("outage seen after {:?}: {reason}", cut_at.elapsed());
        }
        other => panic!("expected Err(Unavailable) within 15 s, got {other:?}"),
    }
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.next()).await,
            Ok(None)
        ),
        "the stream ends after its error"
    );
    let pending = tokio::spawn({
        let sink = sink.clone();
        let command = Command::new(&topic, Some("k".into()), "{}");
        async move { sink.send(command).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    sink.flush().await.unwrap();
    assert!(pending.is_finished(), "flush waits for the send in flight");
    match pending.await.unwrap() {
        Err(CommandSinkError::Unavailable(_)) => {}
        other => panic!("a send during the cut is Unavailable, got {other:?}"),
    }
    match source.subscribe(&[&topic], &positions).await {
        Err(EventSourceError::Unavailable(_)) => {}
        Err(e) => panic!("subscribing during the cut is Unavailable, got {e}"),
        Ok(_) => panic!("subscribing during the cut is Unavailable, got a stream"),
    }
    produce(&direct, &topic, 0, &["a2", "a3"]).await;
    produce(&direct, &topic, 1, &["b0", "b1"]).await;

    proxy.restore();
    let started = Instant::now();
    let mut stream = loop {
        match source.subscribe(&[&topic], &positions).await {
            Ok(stream) => break stream,
            Err(e) if started.elapsed() < Duration::from_secs(15) => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery after restore: {e}"),
        }
    };
    let got = take(&mut stream, 4, Duration::from_secs(10)).await;
    let mut got_values = values(&got);
    got_values.sort();
    assert_eq!(got_values, ["a2", "a3", "b0", "b1"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    sink.send(Command::new(&topic, Some("k".into()), "{}"))
        .await
        .expect("sends work again after the restore");
}

#[tokio::test]
async fn a_send_during_a_short_outage_is_retried_under_the_same_idempotency_key() {
    let listen: std::net::SocketAddr =
        ([127, 0, 0, 1], crate::support::kafka_broker::free_port()).into();
    let proxy = TcpProxy::start(listen).await;
    proxy.spare(DIRECT);
    let broker = KafkaBroker::start_advertising(listen, proxy.addr).await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("retry");
    broker.create_topic(&direct, &topic, 1).await;
    let sink = KafkaCommandSink::new(
        kafka::connect(&KafkaSettings {
            send_timeout: Duration::from_secs(10),
            ..settings(broker.bootstrap())
        })
        .await
        .unwrap(),
    );
    sink.send(Command::new(&topic, Some("warm-up".into()), "{}"))
        .await
        .unwrap();

    proxy.cut();
    let command = Command::new(&topic, Some("key".into()), r#"{"n":1}"#);
    let pending = tokio::spawn({
        let sink = sink.clone();
        let command = command.clone();
        async move { sink.send(command).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished(), "still retrying within send_timeout");
    proxy.restore();
    pending
        .await
        .unwrap()
        .expect("acknowledged once the broker is back");

    let all = read_all(&direct, &topic, 1).await;
    let landed: Vec<_> = all
        .iter()
        .filter(|(_, r)| r.key.as_deref() == Some(b"key".as_slice()))
        .collect();
    assert!(!landed.is_empty());
    for (_, r) in landed {
        assert_eq!(
            r.headers.get("idempotency-key").map(Vec::as_slice),
            Some(command.idempotency_key.to_string().as_bytes()),
            "every copy carries the command's idempotency key"
        );
    }
}

#[tokio::test]
async fn connect_fails_in_bounded_time_naming_the_broker_when_none_answers() {
    let broker = format!("127.0.0.1:{}", crate::support::kafka_broker::free_port());
    let started = Instant::now();
    let error = kafka::connect(&settings(broker.clone())).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, KafkaError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains(&broker), "{error}");
}

#[tokio::test]
async fn a_partition_ending_in_a_transaction_marker_is_read_past_it_without_spinning() {
    // Through a proxy that counts what the adapter sends: a fetch loop stuck on the marker
    // would fetch again at once, without the broker holding the request.
    let listen: std::net::SocketAddr =
        ([127, 0, 0, 1], crate::support::kafka_broker::free_port()).into();
    let proxy = TcpProxy::start(listen).await;
    let broker = KafkaBroker::start_advertising(listen, proxy.addr).await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("txn");
    broker.create_topic(&direct, &topic, 1).await;
    // Kafka's own producer, in one committed transaction: records 0..=2, the marker at 3.
    let args = [
        "--topic",
        &topic,
        "--num-records",
        "3",
        "--record-size",
        "8",
        "--throughput",
        "-1",
        "--transactional-id",
        "flux-test-txn",
        "--producer-props",
        &format!("bootstrap.servers={}", broker.bootstrap()),
    ];
    broker
        .tool(
            "org.apache.kafka.tools.ProducerPerformance",
            args.iter().map(|a| (*a).to_owned()).collect(),
        )
        .await;

    // A long fetch max wait: an idle partition costs two fetches a second, a spinning loop
    // about 40 (a round trip takes ~25 ms here).
    let client = kafka::connect(&KafkaSettings {
        fetch_max_wait: Duration::from_millis(500),
        ..settings(broker.bootstrap())
    })
    .await
    .unwrap();
    let source = KafkaEventSource::new(client);
    let end = source.latest_positions(&[&topic]).await.unwrap();
    assert_eq!(end.get(&topic, 0), Some(4), "three records and the marker");
    let mut from = Positions::default();
    from.set(&topic, 0, 0);
    let mut stream = source.subscribe(&[&topic], &from).await.unwrap();
    let got = take(&mut stream, 3, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2]);
    let at_marker = bytes_up_in(&proxy, Duration::from_secs(2)).await;

    produce(&direct, &topic, 0, &["after"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!((got[0].offset, values(&got)), (4, vec!["after".to_owned()]));
    let at_end = bytes_up_in(&proxy, Duration::from_secs(2)).await;
    assert!(
        at_marker < at_end * 3,
        "a partition ending in a marker is fetched like any idle one, not in a loop: \
         {at_marker} bytes in 2 s there, {at_end} at the log end"
    );
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn records_of_topics_compressed_by_the_broker_are_delivered() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let codecs = ["gzip", "zstd", "lz4", "snappy"];
    let topics: Vec<String> = codecs.iter().map(|c| unique(c)).collect();
    for (codec, topic) in codecs.iter().zip(&topics) {
        // The broker stores every batch of such a topic compressed with its codec, whatever
        // the producer sent (as a Java producer with compression.type set would).
        let config = format!("compression.type={codec}");
        broker
            .topics(&[
                "--create",
                "--topic",
                topic,
                "--partitions",
                "1",
                "--config",
                &config,
            ])
            .await;
        broker.wait_partitions(&direct, topic, 1).await;
    }
    let source = KafkaEventSource::new(connect(&broker).await);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut stream = source
        .subscribe(&names, &Positions::default())
        .await
        .unwrap();
    for (codec, topic) in codecs.iter().zip(&topics) {
        produce(
            &direct,
            topic,
            0,
            &[&format!("{codec}-0"), &format!("{codec}-1")],
        )
        .await;
    }
    let got = take(&mut stream, 8, Duration::from_secs(10)).await;
    let mut got_values = values(&got);
    got_values.sort();
    let mut expected: Vec<String> = codecs
        .iter()
        .flat_map(|c| [format!("{c}-0"), format!("{c}-1")])
        .collect();
    expected.sort();
    assert_eq!(got_values, expected);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

/// Two new one-partition topics, `good` and `bad`, on a broker the gateway's client reaches
/// through a proxy that can tamper with fetch responses; subscribed from their ends.
struct GoodAndBad {
    proxy: TcpProxy,
    broker: KafkaBroker,
    direct: Arc<Client>,
    good: String,
    bad: String,
    source: KafkaEventSource,
    stream: RecordStream,
}

impl GoodAndBad {
    async fn start() -> Self {
        let listen: std::net::SocketAddr =
            ([127, 0, 0, 1], crate::support::kafka_broker::free_port()).into();
        let proxy = TcpProxy::start(listen).await;
        let broker = KafkaBroker::start_advertising(listen, proxy.addr).await;
        let direct = broker.client(DIRECT).await;
        let (good, bad) = (unique("good"), unique("bad"));
        broker.create_topic(&direct, &good, 1).await;
        broker.create_topic(&direct, &bad, 1).await;
        let source = KafkaEventSource::new(connect(&broker).await);
        let stream = source
            .subscribe(&[&good, &bad], &Positions::default())
            .await
            .unwrap();
        Self {
            proxy,
            broker,
            direct,
            good,
            bad,
            source,
            stream,
        }
    }
}

#[tokio::test]
async fn a_partition_whose_fetches_fail_stops_neither_the_other_topics_nor_the_subscription() {
    let GoodAndBad {
        proxy,
        broker: _broker,
        direct,
        good,
        bad,
        mut stream,
        ..
    } = GoodAndBad::start().await;

    // Every fetch response holding this value arrives with a batch that fails its CRC: the
    // fetches of `bad` fail, and keep failing, until the proxy heals.
    proxy.corrupt(b"spoilt");
    produce(&direct, &bad, 0, &["spoilt"]).await;
    produce(&direct, &good, 0, &["g0"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(values(&got), ["g0"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(&direct, &good, 0, &["g1"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(5)).await;
    assert_eq!(
        values(&got),
        ["g1"],
        "the subscription goes on while one partition fails"
    );

    // Retried with back-off, the partition reads on once its fetches work again.
    proxy.heal();
    let got = take(&mut stream, 1, Duration::from_secs(40)).await;
    assert_eq!((got[0].topic.as_ref(), got[0].offset), (bad.as_str(), 0));
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn the_lag_of_a_partition_whose_fetches_fail_follows_its_log_end() {
    let GoodAndBad {
        proxy,
        broker: _broker,
        direct,
        bad,
        source,
        stream: _stream,
        ..
    } = GoodAndBad::start().await;

    let mut stuck = Positions::default();
    stuck.set(&bad, 0, 0);
    let lag_becomes = async |lag: i64, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = source.lag(&stuck).await;
            if now == [(bad.clone(), 0, lag)] {
                return;
            }
            assert!(Instant::now() < deadline, "{why}: the lag stays at {now:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    lag_becomes(0, "an empty partition is fetched").await;
    // Then the fetches of `bad` fail from offset 0 on (its first batch fails its CRC) while
    // its log grows: the consumer stays at 0, three records behind.
    proxy.corrupt(b"spoilt");
    produce(&direct, &bad, 0, &["spoilt"]).await;
    produce(&direct, &bad, 0, &["b1", "b2"]).await;
    lag_becomes(3, "a partition retried with back-off").await;
}

#[tokio::test]
async fn a_batch_that_cannot_be_decoded_is_read_past_and_stops_nothing_else() {
    let GoodAndBad {
        proxy,
        broker: _broker,
        direct,
        good,
        bad,
        mut stream,
        ..
    } = GoodAndBad::start().await;

    // The batch of "undecodable" arrives marked gzip over plain records, its CRC intact.
    proxy.mark_gzip(b"undecodable");
    produce(&direct, &bad, 0, &["undecodable"]).await;
    produce(&direct, &bad, 0, &["b1"]).await;
    produce(&direct, &good, 0, &["g0"]).await;
    let got = take(&mut stream, 2, Duration::from_secs(10)).await;
    let mut got: Vec<(String, i64)> = got
        .iter()
        .zip(values(&got))
        .map(|(r, v)| (v, r.offset))
        .collect();
    got.sort();
    assert_eq!(got, [("b1".to_owned(), 1), ("g0".to_owned(), 0)]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

/// Kafka's own producer: `records` records of 8 bytes at `per_second`, in transactions of
/// `transaction_ms` (committed when that elapses and at the end) with `transactional_id`.
fn transactional_producer(
    broker: &KafkaBroker,
    topic: &str,
    records: u32,
    per_second: u32,
    transaction_ms: u32,
    transactional_id: &str,
) -> Vec<String> {
    [
        "--topic",
        topic,
        "--num-records",
        &records.to_string(),
        "--record-size",
        "8",
        "--throughput",
        &per_second.to_string(),
        "--transactional-id",
        transactional_id,
        "--transaction-duration-ms",
        &transaction_ms.to_string(),
        "--producer-props",
        &format!("bootstrap.servers={}", broker.bootstrap()),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

#[tokio::test]
async fn the_records_of_a_transaction_held_open_are_all_delivered_once_it_commits() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("open-txn");
    broker.create_topic(&direct, &topic, 1).await;
    let source = KafkaEventSource::new(connect(&broker).await);
    let mut stream = source
        .subscribe(&[&topic], &Positions::default())
        .await
        .unwrap();

    // 20 records over 2 s in one transaction, committed at the end: while it is open the
    // log end moves on and the last stable offset stays at 0.
    let args = transactional_producer(&broker, &topic, 20, 10, 60_000, "flux-test-open");
    let producer = tokio::spawn(async move {
        broker
            .tool("org.apache.kafka.tools.ProducerPerformance", args)
            .await;
        broker
    });
    let got = take(&mut stream, 20, Duration::from_secs(30)).await;
    let _broker = producer.await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..20).collect::<Vec<i64>>(),
        "every record of the transaction, none stepped over while it was open"
    );
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn the_records_of_an_aborted_transaction_are_not_delivered() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("aborted");
    broker.create_topic(&direct, &topic, 1).await;
    produce(&direct, &topic, 0, &["before"]).await;

    // A transactional producer writes a few records, then dies with its transaction open;
    // Kafka's kafka-transactions aborts it (an abort marker after the records).
    let args = transactional_producer(&broker, &topic, 1_000, 10, 600_000, "flux-test-abort");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut producer = broker.spawn_tool("org.apache.kafka.tools.ProducerPerformance", &args);
    let partition = direct
        .partition_client(topic.as_str(), 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let started = Instant::now();
    // The high watermark: ListOffsets (read committed) answers the last stable offset, 1.
    while partition.fetch_records(0, 1..100_000, 0).await.unwrap().1 < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no transactional records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    producer.kill().unwrap();
    producer.wait().unwrap();
    let abort = [
        "--bootstrap-server",
        &broker.bootstrap(),
        "abort",
        "--topic",
        &topic,
        "--partition",
        "0",
        "--start-offset",
        "1",
    ];
    broker
        .tool(
            "org.apache.kafka.tools.TransactionsCommand",
            abort.iter().map(|a| (*a).to_owned()).collect(),
        )
        .await;
    produce(&direct, &topic, 0, &["after"]).await;

    let source = KafkaEventSource::new(connect(&broker).await);
    let mut from = Positions::default();
    from.set(&topic, 0, 0);
    let mut stream = source.subscribe(&[&topic], &from).await.unwrap();
    let got = take(&mut stream, 2, Duration::from_secs(10)).await;
    assert_eq!(values(&got), ["before", "after"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

/// What clients send through `proxy` in `window`, after a settling pause.
async fn bytes_up_in(proxy: &TcpProxy, window: Duration) -> u64 {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = proxy.bytes_up();
    tokio::time::sleep(window).await;
    proxy.bytes_up() - before
}

type Stamp = rskafka::chrono::DateTime<rskafka::chrono::Utc>;

/// Produces `values` to partition 0 with their record timestamps.
async fn produce_at(client: &Client, topic: &str, values: &[(impl AsRef<str>, Stamp)]) {
    produce_stamped(client, topic, 0, values).await;
}

/// Produces `values` to `partition` with their record timestamps.
async fn produce_stamped(
    client: &Client,
    topic: &str,
    partition: i32,
    values: &[(impl AsRef<str>, Stamp)],
) {
    let partition_client = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    let records = values
        .iter()
        .map(|(v, at)| KafkaRecord {
            timestamp: *at,
            ..record(None, Some(v.as_ref().as_bytes()))
        })
        .collect();
    partition_client
        .produce(records, Compression::NoCompression)
        .await
        .expect("produce");
}

/// `prefix0`, `prefix1`, … stamped by `at(i)`.
fn stamped(prefix: &str, n: i64, at: impl Fn(i64) -> Stamp) -> Vec<(String, Stamp)> {
    (0..n).map(|i| (format!("{prefix}{i}"), at(i))).collect()
}

/// Reads `n` records of `topic` from its start and returns the positions after them.
async fn read_from_start(source: &KafkaEventSource, topic: &str, n: usize) -> Positions {
    let mut from = Positions::default();
    from.set(topic, 0, 0);
    let mut stream = source.subscribe(&[topic], &from).await.unwrap();
    let mut positions = Positions::default();
    for r in take(&mut stream, n, Duration::from_secs(5)).await {
        positions.advance(&r);
    }
    positions
}

/// Deletes `topic` and creates it again with one partition (Kafka deletes in the background:
/// the creation is retried until it goes through).
async fn recreate(broker: &KafkaBroker, direct: &Client, topic: &str) {
    let controller = direct.controller_client().unwrap();
    controller.delete_topic(topic, 5_000).await.unwrap();
    let started = Instant::now();
    while let Err(e) = controller.create_topic(topic, 1, 1, 5_000).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "recreate {topic}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.wait_partitions(direct, topic, 1).await;
}

#[tokio::test]
async fn a_log_that_went_back_is_resumed_after_the_last_record_delivered() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("went-back");
    broker.create_topic(&direct, &topic, 1).await;
    let now = flux_bff::adapters::kafka::record_timestamp_now();
    let at = |s: i64| now - rskafka::chrono::TimeDelta::seconds(60 - s);
    let old = stamped("a", 8, at);
    produce_at(&direct, &topic, &old).await;
    let source = KafkaEventSource::new(connect(&broker).await);
    let mut positions = read_from_start(&source, &topic, 8).await;
    assert_eq!(positions.get(&topic, 0), Some(8));

    // The log goes back: the topic is deleted and created again with the first three records
    // as they were (a truncated log keeps what it had), then two new ones.
    recreate(&broker, &direct, &topic).await;
    produce_at(&direct, &topic, &old[..3]).await;
    produce_at(&direct, &topic, &[("new-0", at(59)), ("new-1", at(59))]).await;

    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    let got = take(&mut stream, 2, Duration::from_secs(10)).await;
    assert_eq!(
        values(&got),
        ["new-0", "new-1"],
        "nothing again, nothing lost"
    );
    assert_eq!(got[0].offset, 3);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
    for r in &got {
        positions.advance(r);
    }
    assert_eq!(
        positions.get(&topic, 0),
        Some(5),
        "the position follows the new log"
    );

    // Later, while not subscribed, the new log grows past the old position (8): resuming
    // there would skip m0..=m2.
    drop(stream);
    let newer = stamped("m", 10, |i| {
        now + rskafka::chrono::TimeDelta::milliseconds(i)
    });
    produce_at(&direct, &topic, &newer).await;
    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    let got = take(&mut stream, 10, Duration::from_secs(10)).await;
    assert_eq!(
        values(&got),
        ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]
    );
    assert_eq!(got[0].offset, 5);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_replaced_log_is_resumed_after_the_last_record_handled_not_the_last_fetched() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("handled");
    broker.create_topic(&direct, &topic, 1).await;
    let now = flux_bff::adapters::kafka::record_timestamp_now();
    let at = |s: i64| now - rskafka::chrono::TimeDelta::seconds(60 - s);
    produce_at(&direct, &topic, &stamped("a", 8, at)).await;
    let source = KafkaEventSource::new(connect(&broker).await);
    let mut from = Positions::default();
    from.set(&topic, 0, 0);
    let mut stream = source.subscribe(&[&topic], &from).await.unwrap();
    // The fetch loop reads all eight into the stream's buffer; the caller handles three.
    let mut positions = from.clone();
    for r in take(&mut stream, 3, Duration::from_secs(5)).await {
        positions.advance(&r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);

    // The log is replaced by one holding the same first two records, then records newer
    // than a2 (the last handled) but older than a7 (the last fetched).
    recreate(&broker, &direct, &topic).await;
    produce_at(&direct, &topic, &stamped("a", 2, at)).await;
    produce_at(&direct, &topic, &stamped("n", 6, |i| at(3 + i / 3))).await;

    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    let got = take(&mut stream, 6, Duration::from_secs(10)).await;
    assert_eq!(values(&got), ["n0", "n1", "n2", "n3", "n4", "n5"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_log_replaced_and_refilled_past_the_position_is_read_from_its_first_new_record() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("refilled");
    broker.create_topic(&direct, &topic, 1).await;
    let now = flux_bff::adapters::kafka::record_timestamp_now();
    let at = |s: i64| now - rskafka::chrono::TimeDelta::seconds(60 - s);
    produce_at(&direct, &topic, &stamped("a", 5, at)).await;
    let source = KafkaEventSource::new(connect(&broker).await);
    let positions = read_from_start(&source, &topic, 5).await;

    // The log is replaced by one that already holds more records than our position (5):
    // a fetch at 5 is valid there, and offsets alone would skip n0..=n4.
    recreate(&broker, &direct, &topic).await;
    produce_at(&direct, &topic, &stamped("n", 8, |_| at(50))).await;

    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    let got = take(&mut stream, 8, Duration::from_secs(10)).await;
    assert_eq!(
        values(&got),
        ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"]
    );
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_command_refused_for_too_few_in_sync_replicas_fails_in_time_then_lands_once_allowed() {
    let leader = KafkaBroker::start().await;
    let mut follower = leader.start_follower().await;
    let direct = leader.client(DIRECT).await;
    let topic = unique("isr");
    // Two replicas, led by node 1; rskafka produces with acks=all, which Kafka refuses with
    // NOT_ENOUGH_REPLICAS while fewer than min.insync.replicas (2) are in sync.
    leader
        .topics(&[
            "--create",
            "--topic",
            &topic,
            "--replica-assignment",
            "1:2",
            "--config",
            "min.insync.replicas=2",
        ])
        .await;
    leader.wait_partitions(&direct, &topic, 1).await;
    let sink = KafkaCommandSink::new(
        kafka::connect(&KafkaSettings {
            send_timeout: Duration::from_secs(30),
            ..settings(leader.bootstrap())
        })
        .await
        .unwrap(),
    );
    let short = KafkaCommandSink::new(connect(&leader).await); // send_timeout 3 s
    short
        .send(Command::new(&topic, Some("in-sync".into()), "{}"))
        .await
        .expect("both replicas in sync");

    // Act: the follower stops; the leader drops it from the ISR (replica.lag.time.max.ms).
    follower.stop(false);
    let started = Instant::now();
    while leader.in_sync(&topic).await != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the ISR never shrank"
        );
    }
    let started = Instant::now();
    match short
        .send(Command::new(&topic, Some("refused".into()), "{}"))
        .await
    {
        // The broker answered every attempt: refused, not unreachable (D33).
        Err(CommandSinkError::Rejected(reason)) => {
            assert!(
                reason.contains("NotEnoughReplicas"),
                "names the cause: {reason}"
            );
        }
        other => panic!("expected Rejected naming NotEnoughReplicas, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "retried within send_timeout (3 s), no longer: {took:?}"
    );

    // A send in flight lands once the follower is back in sync.
    let pending = tokio::spawn({
        let sink = sink.clone();
        let command = Command::new(&topic, Some("allowed".into()), "{}");
        async move { sink.send(command).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "still retrying");
    follower.restart().await;
    pending
        .await
        .unwrap()
        .expect("acknowledged once min.insync.replicas is met again");
    let all = read_all(&direct, &topic, 1).await;
    let keys: Vec<_> = all
        .iter()
        .map(|(_, r)| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(
        keys,
        ["in-sync", "allowed"],
        "the refused one never written, the other once"
    );
}

/// Produces `values` to `partition`, stamped now as a producer stamps them, through a client
/// of its own: the test's client may still hold a connection to a broker that was stopped.
async fn produce_to(broker: &KafkaBroker, topic: &str, partition: i32, values: &[&str]) {
    let client = broker.client(DIRECT).await;
    let now = flux_bff::adapters::kafka::record_timestamp_now();
    let stamped: Vec<(&str, Stamp)> = values.iter().map(|v| (*v, now)).collect();
    produce_stamped(&client, topic, partition, &stamped).await;
}

#[tokio::test]
async fn a_partition_whose_only_broker_is_down_stops_neither_the_others_nor_a_start() {
    let leader = KafkaBroker::start().await;
    let mut follower = leader.start_follower().await;
    let direct = leader.client(DIRECT).await;
    let topic = unique("leaderless");
    // Partition 0 on node 2 alone, partition 1 on node 1 alone (replication factor 1, the
    // brokers' default).
    leader
        .topics(&["--create", "--topic", &topic, "--replica-assignment", "2,1"])
        .await;
    leader.wait_partitions(&direct, &topic, 2).await;
    produce(&direct, &topic, 0, &["old"]).await;
    let source = KafkaEventSource::new(connect(&leader).await);

    // A start while node 2 is down: partition 0 has no leader.
    follower.stop(false);
    let positions =
        tokio::time::timeout(Duration::from_secs(30), source.latest_positions(&[&topic]))
            .await
            .expect("the positions of what can be read, in bounded time")
            .expect("the brokers answer: not an outage");
    assert_eq!(positions.get(&topic, 1), Some(0));
    assert!(
        matches!(positions.next(&topic, 0), Some(Next::ProducedSince(_))),
        "partition 0 is listed by time"
    );
    // The positions carry that start, not the source that read them.
    let source = KafkaEventSource::new(connect(&leader).await);
    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    produce_to(&leader, &topic, 1, &["a0"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(values(&got), ["a0"], "partition 1 is read meanwhile");

    // Node 2 is back: partition 0 starts at its first record produced since the start, not
    // at its start ("old"), however soon its fetch loop tries again (b0 is produced before
    // the loop's next try or after it).
    follower.restart().await;
    produce_to(&leader, &topic, 0, &["b0"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(40)).await;
    assert_eq!(values(&got), ["b0"]);

    // Node 2 crashes under a running subscription: partition 1 reads on.
    follower.stop(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce_to(&leader, &topic, 1, &["a1"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(15)).await;
    assert_eq!(values(&got), ["a1"], "the subscription goes on");
    follower.restart().await;
    produce_to(&leader, &topic, 0, &["b1"]).await;
    let got = take(&mut stream, 1, Duration::from_secs(40)).await;
    assert_eq!(values(&got), ["b1"], "partition 0 reads on where it was");
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_resume_after_retention_removed_the_last_record_handled_loses_nothing() {
    let broker = KafkaBroker::start().await;
    let direct = broker.client(DIRECT).await;
    let topic = unique("retention");
    broker.create_topic(&direct, &topic, 1).await;
    // One millisecond for all: resuming by time would skip every record at the position.
    let at = flux_bff::adapters::kafka::record_timestamp_now();
    produce_at(&direct, &topic, &stamped("r", 6, |_| at)).await;
    let source = KafkaEventSource::new(connect(&broker).await);
    let positions = read_from_start(&source, &topic, 3).await;
    assert_eq!(positions.get(&topic, 0), Some(3));

    // Retention (here a DeleteRecords) removes the log up to the position: r2, the last
    // record handled, is gone; r3 is not.
    direct
        .partition_client(&topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap()
        .delete_records(3, 5_000)
        .await
        .unwrap();
    let mut stream = source.subscribe(&[&topic], &positions).await.unwrap();
    let got = take(&mut stream, 3, Duration::from_secs(10)).await;
    assert_eq!(values(&got), ["r3", "r4", "r5"]);
    assert_quiet(&mut stream, Duration::from_millis(500)).await;
}
