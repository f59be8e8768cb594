//! The behaviour every event bus adapter shares, written once over the two ports and run
//! against each implementation (the in-memory bus and Kafka), so the fake cannot drift from
//! the real thing. The caller creates `topic` with 3 partitions.

#![allow(dead_code)]

use std::time::Duration;

use flux_bff::domain::Command;
use flux_bff::domain::partitioner::legacy_partition;
use flux_bff::ports::{CommandSink, EventSource, Fetched, Positions, Record, RecordStream};
use futures::StreamExt;

async fn next_records(stream: &mut RecordStream, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    while records.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Fetched::Record(record)))) => records.push(record),
            Ok(Some(Ok(Fetched::Passed { .. }))) => {}
            other => panic!("record {} of {n}: got {other:?}", records.len() + 1),
        }
    }
    records
}

async fn quiet(stream: &mut RecordStream) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    while let Ok(item) = tokio::time::timeout_at(deadline, stream.next()).await {
        if !matches!(item, Some(Ok(Fetched::Passed { .. }))) {
            panic!("expected nothing more, got {item:?}");
        }
    }
}

async fn send(sink: &dyn CommandSink, topic: &str, names: &[&str]) {
    for name in names {
        let command = Command::new(topic, Some((*name).to_owned()), format!("v-{name}"));
        sink.send(command).await.expect("send");
    }
}

fn values(records: &[Record]) -> Vec<String> {
    let mut values: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    values.sort();
    values
}

pub async fn event_bus_contract(source: &dyn EventSource, sink: &dyn CommandSink, topic: &str) {
    send(sink, topic, &["before-1", "before-2"]).await;

    // Starts at the log end; keyed commands in the partition the original BFF's partitioner
    // (kafkajs' legacy murmur2) picks, in offset order.
    let start = source
        .latest_positions(&[topic])
        .await
        .expect("latest positions");
    assert_eq!(start.iter().count(), 3, "every partition: {start:?}");
    let mut stream = source.subscribe(&[topic], &start).await.expect("subscribe");
    let names = ["a", "b", "c", "d", "e", "f"];
    send(sink, topic, &names).await;
    let got = next_records(&mut stream, names.len()).await;
    assert_eq!(values(&got), ["v-a", "v-b", "v-c", "v-d", "v-e", "v-f"]);
    for record in &got {
        let key = record.key.as_deref().expect("keyed");
        assert_eq!(record.partition, legacy_partition(key, 3), "{record:?}");
        assert_eq!(
            record.value.as_deref(),
            Some([b"v-", key].concat().as_slice())
        );
    }
    for partition in 0..3 {
        let offsets: Vec<i64> = got
            .iter()
            .filter(|r| r.partition == partition)
            .map(|r| r.offset)
            .collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
    }
    quiet(&mut stream).await;

    // Resuming from the handled positions: what came later, nothing twice.
    let mut positions = start.clone();
    for record in &got[..3] {
        positions.advance(record);
    }
    drop(stream);
    send(sink, topic, &["g", "h"]).await;
    let mut stream = source
        .subscribe(&[topic], &positions)
        .await
        .expect("resume");
    // Per partition, records arrive in offset order: the unhandled ones are those at or
    // past their partition's position.
    let unhandled: Vec<Record> = got
        .iter()
        .filter(|r| {
            positions
                .get(&r.topic, r.partition)
                .is_none_or(|next| r.offset >= next)
        })
        .cloned()
        .collect();
    let mut expected_values = values(&unhandled);
    expected_values.extend(["v-g".to_owned(), "v-h".to_owned()]);
    expected_values.sort();
    let resumed = next_records(&mut stream, expected_values.len()).await;
    assert_eq!(values(&resumed), expected_values);
    quiet(&mut stream).await;

    // A fresh subscription without positions sees only what comes after it.
    let mut fresh = source
        .subscribe(&[topic], &Positions::default())
        .await
        .expect("fresh");
    send(sink, topic, &["i"]).await;
    assert_eq!(values(&next_records(&mut fresh, 1).await), ["v-i"]);
    quiet(&mut fresh).await;
    drop(fresh);

    // Resuming without one partition of the topic: it appeared while the caller was away, so
    // it is read from its beginning (what was produced to it meanwhile is not lost).
    let live = source
        .latest_positions(&[topic])
        .await
        .expect("latest positions");
    let mut partial = Positions::default();
    for (t, p, next) in live.iter().filter(|(_, p, _)| *p != 2) {
        partial.set(t, p, next);
    }
    let mut stream = source
        .subscribe(&[topic], &partial)
        .await
        .expect("resume without partition 2");
    let sent = [
        "before-1", "before-2", "a", "b", "c", "d", "e", "f", "g", "h", "i",
    ];
    let mut expected: Vec<String> = sent
        .iter()
        .filter(|name| legacy_partition(name.as_bytes(), 3) == 2)
        .map(|name| format!("v-{name}"))
        .collect();
    expected.sort();
    assert!(
        !expected.is_empty(),
        "the test needs records on partition 2"
    );
    let got = next_records(&mut stream, expected.len()).await;
    assert!(got.iter().all(|r| r.partition == 2), "{got:?}");
    assert_eq!(values(&got), expected);
    quiet(&mut stream).await;
}

/// `last_accepted` (start-up warm-up, D24): the newest accepted record of the topic, read back
/// past records it does not accept, across partitions by production time. The caller creates
/// `topic` with 3 partitions (and no records).
pub async fn tail_contract(source: &dyn EventSource, sink: &dyn CommandSink, topic: &str) {
    use flux_bff::ports::Record;
    let good = |r: &Record| r.value.as_deref().is_some_and(|v| v.starts_with(b"good"));
    assert_eq!(
        source.last_accepted(topic, &good).await.expect("read"),
        None,
        "an empty topic"
    );
    let key_for = |partition: i32| {
        (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| legacy_partition(k.as_bytes(), 3) == partition)
            .expect("a key for every partition")
    };
    let (low, high) = (key_for(0), key_for(2));
    let put = |key: &str, value: &str| Command::new(topic, Some(key.to_owned()), value.to_owned());
    // Partition 2: an old good record, then one produced later, then more bad ones than a
    // small read-back step.
    sink.send(put(&high, "good-old")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(20)).await;
    sink.send(put(&high, "good-2")).await.expect("send");
    for i in 0..40 {
        sink.send(put(&high, &format!("bad-{i}")))
            .await
            .expect("send");
    }
    let found = source.last_accepted(topic, &good).await.expect("read");
    let found = found.expect("a good record");
    assert_eq!(found.value.as_deref(), Some(&b"good-2"[..]));
    assert_eq!(found.partition, 2);
    // Partition 0, produced last: it wins over the higher partition.
    tokio::time::sleep(Duration::from_millis(20)).await;
    sink.send(put(&low, "good-0")).await.expect("send");
    sink.send(put(&low, "bad-last")).await.expect("send");
    let found = source.last_accepted(topic, &good).await.expect("read");
    let found = found.expect("a good record");
    assert_eq!(found.value.as_deref(), Some(&b"good-0"[..]));
    assert_eq!(found.partition, 0);
    assert!(found.timestamp.is_some());
    // Nothing accepted: the whole log is read back, nothing is found.
    let none = |_: &Record| false;
    assert_eq!(
        source.last_accepted(topic, &none).await.expect("read"),
        None
    );
    assert_eq!(
        source
            .last_accepted(&format!("{topic}-absent"), &good)
            .await
            .expect("read"),
        None,
        "an unknown topic"
    );
}
