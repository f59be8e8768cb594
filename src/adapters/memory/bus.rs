//! `MemoryBus`: the in-process event bus (topics, partitions, Kafka-like offsets) behind the
//! `EventSource`, `CommandSink` and `EventPublisher` ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use crate::domain::Command;
use crate::ports::{
    Accept, CommandSink, CommandSinkError, EventPublisher, EventSource, EventSourceError, Fetched,
    Next, Positions, Record, RecordStream,
};

/// Records kept per partition; older ones are dropped (like Kafka retention), offsets go on.
const RETENTION: usize = 20_000;

/// An in-process log of topics and partitions with Kafka-like offsets. Cloning shares it.
///
/// It implements [`EventSource`] and [`CommandSink`], so the gateway and the simulator can use
/// it in place of Kafka. [`MemoryBus::set_available`] simulates a broker outage for those
/// ports; [`MemoryBus::publish`] always works (a producer the outage does not concern).
#[derive(Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>, // std Mutex: never held across an .await
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, Vec<Partition>>,
    available: bool,
    version: u64,
}

#[derive(Default)]
struct Partition {
    base: i64,
    records: std::collections::VecDeque<Record>,
    headers: std::collections::VecDeque<Option<uuid::Uuid>>,
}

impl Partition {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }

    /// The offset of the first record appended at or after `since`, else the log end.
    fn first_since(&self, since: std::time::SystemTime) -> i64 {
        let newer = self
            .records
            .iter()
            .position(|r| r.timestamp.is_some_and(|at| at >= since));
        newer.map_or(self.end(), |n| self.base + n as i64)
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    available: true,
                    ..State::default()
                }),
                changed,
            }),
        }
    }

    /// Creates `topic` with `partitions` partitions if it does not exist yet.
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        let mut st = self.lock();
        let parts = st.topics.entry(topic.to_owned()).or_default();
        while parts.len() < partitions.max(1) {
            parts.push(Partition::default());
        }
        self.bump(&mut st);
    }

    /// Appends a record, as an outside producer would; returns (partition, offset).
    pub fn publish(&self, topic: &str, key: Option<&str>, value: Option<&[u8]>) -> (i32, i64) {
        self.append(
            topic,
            key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value.map(Bytes::copy_from_slice),
            None,
            // Domain services produce with kafkajs 2's default, Kafka's own partitioner.
            crate::domain::partitioner::murmur2_partition,
        )
    }

    /// Simulates a broker outage (`false`) and its end (`true`) for the port implementations.
    pub fn set_available(&self, available: bool) {
        let mut st = self.lock();
        st.available = available;
        self.bump(&mut st);
    }

    /// Every record of a topic still retained, in partition then offset order.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        let st = self.lock();
        st.topics
            .get(topic)
            .map(|parts| {
                parts
                    .iter()
                    .flat_map(|p| p.records.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The idempotency keys of the commands sent to `topic`, in partition then offset order.
    pub fn idempotency_keys(&self, topic: &str) -> Vec<Option<uuid::Uuid>> {
        let st = self.lock();
        st.topics
            .get(topic)
            .map(|parts| {
                parts
                    .iter()
                    .flat_map(|p| p.headers.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self, st: &mut State) {
        st.version += 1;
        self.shared.changed.send_replace(st.version);
    }

    fn append(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Option<Bytes>,
        idem: Option<uuid::Uuid>,
        partitioner: fn(&[u8], usize) -> i32,
    ) -> (i32, i64) {
        let mut st = self.lock();
        let parts = st.topics.entry(topic.to_owned()).or_default();
        if parts.is_empty() {
            parts.push(Partition::default());
        }
        let n = parts.len();
        let partition = match &key {
            Some(k) => partitioner(k, n) as usize,
            None => 0,
        };
        let part = &mut parts[partition];
        let offset = part.end();
        part.records.push_back(Record {
            topic: Arc::from(topic),
            partition: partition as i32,
            offset,
            key,
            value,
            // When it was appended, as Kafka's record timestamp.
            timestamp: Some(std::time::SystemTime::now()),
        });
        part.headers.push_back(idem);
        if part.records.len() > RETENTION {
            part.records.pop_front();
            part.headers.pop_front();
            part.base += 1;
        }
        self.bump(&mut st);
        (partition as i32, offset)
    }
}

impl EventPublisher for MemoryBus {
    fn publish(&self, topic: &str, key: Option<&str>, value: Option<&[u8]>) {
        MemoryBus::publish(self, topic, key, value);
    }
}

#[async_trait]
impl CommandSink for MemoryBus {
    async fn probe(&self) -> Result<(), CommandSinkError> {
        if self.lock().available {
            Ok(())
        } else {
            Err(CommandSinkError::Unavailable(
                "in-memory bus is offline".into(),
            ))
        }
    }

    async fn send(&self, command: Command) -> Result<(), CommandSinkError> {
        self.probe().await?;
        self.append(
            &command.topic,
            command.key.map(Bytes::from),
            Some(command.value),
            Some(command.idempotency_key),
            // As the Kafka sink: the original BFF's partitioner for commands.
            crate::domain::partitioner::legacy_partition,
        );
        Ok(())
    }
}

#[async_trait]
impl EventSource for MemoryBus {
    async fn subscribe(
        &self,
        topics: &[&str],
        from: &Positions,
    ) -> Result<RecordStream, EventSourceError> {
        let mut positions = from.clone();
        {
            let mut st = self.lock();
            if !st.available {
                return Err(EventSourceError::Unavailable(
                    "in-memory bus is offline".into(),
                ));
            }
            for topic in topics {
                let parts = st.topics.entry((*topic).to_owned()).or_default();
                if parts.is_empty() {
                    parts.push(Partition::default());
                }
                // A partition of a resumed topic that `from` does not list appeared since.
                let resumed = from.names_topic(topic);
                for (i, p) in parts.iter().enumerate() {
                    let start = match from.next(topic, i as i32) {
                        Some(Next::Offset(_)) => continue,
                        Some(Next::ProducedSince(at)) => p.first_since(at),
                        None if resumed => p.base,
                        None => p.end(),
                    };
                    positions.set(topic, i as i32, start);
                }
            }
        }
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        Ok(record_stream(self.clone(), topics, positions))
    }

    async fn latest_positions(&self, topics: &[&str]) -> Result<Positions, EventSourceError> {
        let mut st = self.lock();
        if !st.available {
            return Err(EventSourceError::Unavailable(
                "in-memory bus is offline".into(),
            ));
        }
        let mut positions = Positions::default();
        for topic in topics {
            let parts = st.topics.entry((*topic).to_owned()).or_default();
            if parts.is_empty() {
                parts.push(Partition::default());
            }
            for (i, p) in parts.iter().enumerate() {
                positions.set(topic, i as i32, p.end());
            }
        }
        Ok(positions)
    }

    async fn positions_since(
        &self,
        topics: &[&str],
        since: std::time::SystemTime,
    ) -> Result<Positions, EventSourceError> {
        let mut positions = self.latest_positions(topics).await?;
        let st = self.lock();
        for topic in topics {
            for (i, part) in st.topics.get(*topic).into_iter().flatten().enumerate() {
                positions.set(topic, i as i32, part.first_since(since));
            }
        }
        Ok(positions)
    }

    async fn last_accepted(
        &self,
        topic: &str,
        accept: Accept<'_>,
    ) -> Result<Option<Record>, EventSourceError> {
        let st = self.lock();
        if !st.available {
            return Err(EventSourceError::Unavailable(
                "in-memory bus is offline".into(),
            ));
        }
        let Some(parts) = st.topics.get(topic) else {
            return Ok(None);
        };
        let newest = parts
            .iter()
            .filter_map(|part| part.records.iter().rev().find(|record| accept(record)))
            .max_by_key(|record| (record.timestamp, record.partition));
        Ok(newest.cloned())
    }

    async fn lag(&self, positions: &Positions) -> Vec<(String, i32, i64)> {
        let st = self.lock();
        positions
            .iter()
            .filter_map(|(t, p, next)| {
                let part = st.topics.get(t)?.get(p as usize)?;
                Some((t.to_owned(), p, (part.end() - next).max(0)))
            })
            .collect()
    }
}

/// Polls the log for records past `positions`, waiting on the change signal when idle.
fn record_stream(bus: MemoryBus, topics: Vec<String>, positions: Positions) -> RecordStream {
    let rx = bus.shared.changed.subscribe();
    let state = (
        bus,
        topics,
        positions,
        rx,
        std::collections::VecDeque::new(),
        false,
    );
    Box::pin(futures::stream::unfold(
        state,
        |(bus, topics, mut positions, mut rx, mut ready, ended)| async move {
            if ended {
                return None;
            }
            loop {
                if let Some(record) = ready.pop_front() {
                    return Some((
                        Ok(Fetched::Record(record)),
                        (bus, topics, positions, rx, ready, false),
                    ));
                }
                rx.borrow_and_update();
                let offline = {
                    let mut st = bus.lock();
                    if st.available {
                        for topic in &topics {
                            let Some(parts) = st.topics.get_mut(topic) else {
                                continue;
                            };
                            for (i, part) in parts.iter().enumerate() {
                                let p = i as i32;
                                // A partition that appeared after subscribing is read from its start.
                                let next =
                                    positions.get(topic, p).unwrap_or(part.base).max(part.base);
                                let skip = (next - part.base) as usize;
                                for r in part.records.iter().skip(skip).take(1024) {
                                    ready.push_back(r.clone());
                                }
                                if let Some(last) = ready
                                    .back()
                                    .filter(|r| r.topic.as_ref() == topic && r.partition == p)
                                {
                                    positions.set(topic, p, last.offset + 1);
                                } else {
                                    positions.set(topic, p, next);
                                }
                            }
                        }
                    }
                    !st.available
                };
                if offline {
                    let err = EventSourceError::Unavailable("in-memory bus went offline".into());
                    return Some((Err(err), (bus, topics, positions, rx, ready, true)));
                }
                if ready.is_empty() && rx.changed().await.is_err() {
                    return None;
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_partition_listed_by_time_starts_at_its_first_record_appended_since() {
        let bus = MemoryBus::new();
        bus.publish("t", None, Some(b"before"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let since = SystemTime::now();
        tokio::time::sleep(Duration::from_millis(5)).await;
        bus.publish("t", None, Some(b"after"));
        let mut from = Positions::default();
        from.set_next("t", 0, Next::ProducedSince(since));
        let mut stream = bus.subscribe(&["t"], &from).await.unwrap();
        let first = stream.next().await.unwrap().unwrap().into_record().unwrap();
        assert_eq!(first.value.as_deref(), Some(&b"after"[..]));
        assert_eq!(first.offset, 1);

        // Nothing appended since: the log end.
        let mut from = Positions::default();
        from.set_next("t", 0, Next::ProducedSince(SystemTime::now()));
        let mut stream = bus.subscribe(&["t"], &from).await.unwrap();
        bus.publish("t", None, Some(b"later"));
        let first = stream.next().await.unwrap().unwrap().into_record().unwrap();
        assert_eq!(first.offset, 2);
    }
}
