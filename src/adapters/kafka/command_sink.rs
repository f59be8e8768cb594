//! `KafkaCommandSink`: keyed commands to the partition Kafka's default partitioner picks,
//! acks = all, retried within `send_timeout` under the same `idempotency-key` header.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rskafka::chrono::{DateTime, TimeZone, Utc};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record as KafkaRecord;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{KafkaClient, Trouble, bounded, topics};
use crate::domain::Command;
use crate::domain::partitioner::legacy_partition;
use crate::ports::{CommandSink, CommandSinkError};
use crate::telemetry::metrics::{
    KAFKA_PRODUCE_ERRORS, KAFKA_PRODUCE_RETRIES, KAFKA_RECORDS_PRODUCED,
};

/// The record header carrying [`Command::idempotency_key`].
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);

/// Sends commands to Kafka. Cheap to clone; clones share metadata, connections and `flush`.
#[derive(Clone, Debug)]
pub struct KafkaCommandSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: KafkaClient,
    // std Mutex: never held across an .await
    topics: Mutex<HashMap<String, TopicState>>,
    round_robin: AtomicUsize,
    in_flight: watch::Sender<usize>,
}

#[derive(Debug)]
struct TopicState {
    partitions: i32,
    read_at: Instant,
    clients: HashMap<i32, Arc<PartitionClient>>,
}

/// Counts a send as in flight until dropped, so that `flush` can wait for it.
struct InFlight<'a>(&'a watch::Sender<usize>);

impl<'a> InFlight<'a> {
    fn start(counter: &'a watch::Sender<usize>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl KafkaClient {
    /// The [`CommandSink`] port on this client.
    pub fn command_sink(&self) -> KafkaCommandSink {
        KafkaCommandSink::new(self.clone())
    }
}

impl KafkaCommandSink {
    pub fn new(client: KafkaClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                topics: Mutex::default(),
                round_robin: AtomicUsize::new(0),
                in_flight: watch::Sender::new(0),
            }),
        }
    }

    /// The partition a command goes to: the original BFF's (kafkajs' legacy murmur2 of the
    /// key, contract §0.2), round-robin for a command without key.
    pub fn partition_for(&self, key: Option<&str>, partitions: i32) -> i32 {
        let partitions = partitions.max(1);
        match key {
            Some(key) => legacy_partition(key.as_bytes(), partitions as usize),
            None => {
                let next = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
                (next % partitions as usize) as i32
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TopicState>> {
        self.inner
            .topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The partition count of `topic`, cached for `metadata_refresh`.
    async fn partitions(&self, topic: &str) -> Result<i32, Trouble> {
        let settings = self.inner.client.settings();
        if let Some(state) = self.lock().get(topic)
            && state.read_at.elapsed() < settings.metadata_refresh
        {
            return Ok(state.partitions);
        }
        let counts = topics::create_missing(&self.inner.client, &[topic]).await?;
        let Some(&partitions) = counts.get(topic) else {
            return Err(Trouble::Refused(format!(
                "unknown topic {topic}; create it (or turn kafka.create_topics on) and retry"
            )));
        };
        let mut topics = self.lock();
        let state = topics.entry(topic.to_owned()).or_insert(TopicState {
            partitions,
            read_at: Instant::now(),
            clients: HashMap::new(),
        });
        state.partitions = partitions;
        state.read_at = Instant::now();
        Ok(partitions)
    }

    async fn partition_client(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, Trouble> {
        if let Some(client) = self
            .lock()
            .get(topic)
            .and_then(|state| state.clients.get(&partition))
        {
            return Ok(Arc::clone(client));
        }
        let client = self.inner.client.partition_client(topic, partition).await?;
        if let Some(state) = self.lock().get_mut(topic) {
            state.clients.insert(partition, Arc::clone(&client));
        }
        Ok(client)
    }

    /// Forgets what is cached about `topic`, so that the next attempt reads fresh metadata.
    fn forget(&self, topic: &str) {
        self.lock().remove(topic);
    }

    async fn attempt(&self, command: &Command, record: &KafkaRecord) -> Result<(), Trouble> {
        let partitions = self.partitions(&command.topic).await?;
        let partition = self.partition_for(command.key.as_deref(), partitions);
        let client = self.partition_client(&command.topic, partition).await?;
        let limit = self.inner.client.settings().request_timeout * 2;
        bounded(
            limit,
            client.produce(vec![record.clone()], Compression::NoCompression),
        )
        .await
        .map(drop)
        .map_err(|e| Trouble::from_rskafka(&command.topic, &e))
    }
}

/// The wall clock as chrono time, for record timestamps (rskafka's chrono is built without
/// its `clock` feature).
pub fn record_timestamp_now() -> DateTime<Utc> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Utc.timestamp_millis_opt(millis)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

#[async_trait]
impl CommandSink for KafkaCommandSink {
    async fn probe(&self) -> Result<(), CommandSinkError> {
        self.inner
            .client
            .partition_counts()
            .await
            .map(|_| ())
            .map_err(|e| CommandSinkError::Unavailable(e.to_string()))
    }

    // No `err(Display)`: the caller logs a failure with its context, throttled; an error
    // event here would repeat each one unthrottled (a dozen a second in an outage).
    #[tracing::instrument(skip_all, fields(topic = %command.topic, key = ?command.key))]
    async fn send(&self, command: Command) -> Result<(), CommandSinkError> {
        let _in_flight = InFlight::start(&self.inner.in_flight);
        let settings = self.inner.client.settings();
        let deadline = Instant::now() + settings.send_timeout;
        let topic = command.topic.clone();
        let record = KafkaRecord {
            key: command.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value: Some(command.value.to_vec()),
            headers: BTreeMap::from([(
                IDEMPOTENCY_HEADER.to_owned(),
                command.idempotency_key.to_string().into_bytes(),
            )]),
            timestamp: record_timestamp_now(),
        };
        let mut pause = FIRST_RETRY;
        let mut failure = Failure::default();
        loop {
            let attempt = match tokio::time::timeout_at(deadline, self.attempt(&command, &record))
                .await
            {
                Ok(Ok(())) => {
                    metrics::counter!(KAFKA_RECORDS_PRODUCED, "topic" => topic).increment(1);
                    return Ok(());
                }
                // A broker verdict is final; transport trouble and stale metadata are not.
                Ok(Err(Trouble::Refused(reason))) => {
                    metrics::counter!(KAFKA_PRODUCE_ERRORS, "topic" => topic.clone(), "reason" => "rejected")
                            .increment(1);
                    return Err(CommandSinkError::Rejected(reason));
                }
                Ok(Err(Trouble::Unavailable(reason))) => Attempt::Unreachable(reason),
                Ok(Err(Trouble::Busy(reason))) => Attempt::Answered(reason),
                Ok(Err(Trouble::UnknownTopic(_))) => {
                    Attempt::Answered(format!("{topic}: unknown topic or partition"))
                }
                Err(_) => Attempt::Cut,
            };
            let (reason, answered) = failure.after(attempt);
            self.forget(&topic);
            if Instant::now() + pause >= deadline {
                let within = humantime_serde::re::humantime::format_duration(settings.send_timeout);
                // A broker that kept answering with an error refused the command: the brokers
                // can be reached (readiness stays, D33), and the cause is the broker's.
                let (label, error) = if answered {
                    let error = format!("{topic}: refused by the broker for {within}: {reason}");
                    ("rejected", CommandSinkError::Rejected(error))
                } else {
                    let error = format!("{topic}: not acknowledged within {within}: {reason}");
                    ("unavailable", CommandSinkError::Unavailable(error))
                };
                metrics::counter!(KAFKA_PRODUCE_ERRORS, "topic" => topic.clone(), "reason" => label)
                    .increment(1);
                return Err(error);
            }
            tracing::debug!(%reason, retry_in = ?pause, "command send failed, retrying with the same idempotency key");
            metrics::counter!(KAFKA_PRODUCE_RETRIES, "topic" => topic.clone()).increment(1);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    async fn flush(&self) -> Result<(), CommandSinkError> {
        let mut idle = self.inner.in_flight.subscribe();
        idle.wait_for(|n| *n == 0)
            .await
            .map(drop)
            .map_err(|_| CommandSinkError::Unavailable("command sink closed".into()))
    }
}

/// How an attempt that did not succeed ended.
#[derive(Debug)]
enum Attempt {
    /// A broker answered with a retriable error.
    Answered(String),
    /// No broker could be reached.
    Unreachable(String),
    /// The send's deadline cut it short.
    Cut,
}

/// What a send's failure is if it lasts: what the broker answered the last attempt that
/// ended (`None`: it could not be reached). An attempt the deadline cuts short tells nothing
/// new, so a broker that kept refusing is not taken for an unreachable one because its last
/// answer was slow (a loaded broker, found by CI).
#[derive(Debug, Default)]
struct Failure {
    last_answer: Option<String>,
}

impl Failure {
    /// The reason to give after `attempt`, and whether a broker answered.
    fn after(&mut self, attempt: Attempt) -> (String, bool) {
        match attempt {
            Attempt::Answered(reason) => {
                self.last_answer = Some(reason.clone());
                (reason, true)
            }
            Attempt::Unreachable(reason) => {
                self.last_answer = None;
                (reason, false)
            }
            Attempt::Cut => match &self.last_answer {
                Some(reason) => (reason.clone(), true),
                None => ("no acknowledgement in time".to_owned(), false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Attempt, Failure};

    #[test]
    fn an_attempt_cut_short_after_a_refusal_is_still_a_refusal() {
        let mut failure = Failure::default();
        failure.after(Attempt::Answered("NotEnoughReplicas".into()));
        assert_eq!(
            failure.after(Attempt::Cut),
            ("NotEnoughReplicas".into(), true)
        );
    }

    #[test]
    fn an_attempt_cut_short_with_no_answer_before_is_unacknowledged() {
        let mut failure = Failure::default();
        assert_eq!(
            failure.after(Attempt::Cut),
            ("no acknowledgement in time".into(), false)
        );
        failure.after(Attempt::Answered("NotEnoughReplicas".into()));
        failure.after(Attempt::Unreachable("connection refused".into()));
        assert_eq!(
            failure.after(Attempt::Cut),
            ("no acknowledgement in time".into(), false),
            "a broker that stopped answering is no longer the cause"
        );
    }

    #[test]
    fn keyed_commands_go_where_the_original_bff_put_them() {
        // kafkajs' LegacyPartitioner (the original's producer) among 3 partitions, for the
        // four start-up refresh keys and a socket id (vectors from kafkajs 2.2.4 on Node 20).
        let sink_partition =
            |key: &str| crate::domain::partitioner::legacy_partition(key.as_bytes(), 3);
        assert_eq!(sink_partition("cryptotopcoins"), 1);
        assert_eq!(sink_partition("cryptotopmovers"), 2);
        assert_eq!(sink_partition("stocktopperformers"), 1);
        assert_eq!(sink_partition("topglobalnews"), 2);
        assert_eq!(sink_partition("Zq3_xY9-AbCdEfGhIjKl"), 1);
        // Kafka's own partitioner would put two of these elsewhere.
        assert_ne!(
            crate::domain::partitioner::murmur2_partition(b"cryptotopcoins", 3),
            1
        );
    }
}
