//! `KafkaEventSource`: broadcast reading of every partition of the event topics, with no
//! consumer group. One fetch loop per partition feeds a bounded channel; a supervisor picks up
//! new partitions and turns a lost broker into one `Err(Unavailable)` at the end of the stream.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use rskafka::chrono::{self, DateTime, Utc};
use rskafka::client::error::{Error as RsError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UndecodableBatch};
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::{KafkaClient, KafkaError, Trouble, bounded, record_timestamp_now, topics};
use crate::ports::{
    Accept, EventSource, EventSourceError, Fetched, Next, Positions, Record, RecordStream,
};
use crate::telemetry::metrics::{
    KAFKA_FETCH_ERRORS, KAFKA_OFFSET_RESETS, KAFKA_UNDECODABLE_BATCHES,
};

/// Records buffered between the fetch loops and the consumer of the stream.
const CHANNEL_CAPACITY: usize = 1024;

type Item = Result<Fetched, EventSourceError>;
type Seen = Arc<Mutex<HashMap<(String, i32), PartitionSeen>>>;

/// What the fetch loops of a source have seen of one partition, across subscriptions.
#[derive(Clone, Copy, Debug)]
struct PartitionSeen {
    /// The high watermark of the latest fetch.
    high_watermark: i64,
    /// When the partition was first opened: where to resume when its log went back before
    /// the caller handled any record of it.
    opened: DateTime<Utc>,
}

/// The offset and timestamp of the last record handled from a partition (see
/// [`Positions::last_handled`]), then of the last one its fetch loop sent.
type Last = Option<(i64, Option<SystemTime>)>;

impl PartitionSeen {
    fn new(high_watermark: i64) -> Self {
        Self {
            high_watermark,
            opened: record_timestamp_now(),
        }
    }
}

/// Where a partition's reading starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    At(i64),
    Earliest,
    Latest,
    /// The first record produced at or after this time, else the log end: the log end as it
    /// was then, for a partition that could not be read then (without a leader nothing is
    /// appended, and what is appended once it has one is new).
    Since(DateTime<Utc>),
}

/// A partition of a subscription: opened at an offset, or to be opened by its fetch loop
/// once it can be (it had no leader when the subscription began).
enum Opening {
    Now(Arc<PartitionClient>, i64),
    Later {
        topic: String,
        partition: i32,
        start: Start,
    },
}

impl Opening {
    fn partition(&self) -> (&str, i32) {
        match self {
            Self::Now(client, _) => (client.topic(), client.partition()),
            Self::Later {
                topic, partition, ..
            } => (topic, *partition),
        }
    }
}

/// Reads event topics from Kafka. Cheap to clone; every subscription has its own fetch loops.
#[derive(Clone, Debug)]
pub struct KafkaEventSource {
    client: KafkaClient,
    // std Mutex: never held across an .await
    seen: Seen,
    probe: Arc<SharedProbe>,
}

/// Whether the brokers answer, asked once for the failures seen together: when the brokers
/// are lost every partition's fetch fails at once, and each must know whether any broker
/// still answers before it ends the subscription or is retried alone. A probe that began
/// after a failure was seen answers for that failure; one that began before it does not.
#[derive(Debug, Default)]
struct SharedProbe(tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>);

impl SharedProbe {
    /// The answer of a probe that began at or after `failed_at`: the last one if it did,
    /// else `probe`'s, run now (callers meanwhile wait for it and share it).
    async fn answer<F>(&self, failed_at: tokio::time::Instant, probe: impl FnOnce() -> F) -> bool
    where
        F: Future<Output = bool>,
    {
        let mut last = self.0.lock().await;
        if let Some((began, answered)) = *last
            && began >= failed_at
        {
            return answered;
        }
        let began = tokio::time::Instant::now();
        let answered = probe().await;
        *last = Some((began, answered));
        answered
    }
}

impl KafkaClient {
    /// The [`EventSource`] port on this client.
    pub fn event_source(&self) -> KafkaEventSource {
        KafkaEventSource::new(self.clone())
    }
}

impl KafkaEventSource {
    pub fn new(client: KafkaClient) -> Self {
        Self {
            client,
            seen: Arc::default(),
            probe: Arc::default(),
        }
    }

    /// Notes a fetch of `topic`/`partition`: its high watermark.
    fn saw(&self, topic: &str, partition: i32, high_watermark: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry((topic.to_owned(), partition))
            .or_insert_with(|| PartitionSeen::new(high_watermark))
            .high_watermark = high_watermark;
    }

    /// Where a partition starts: where `from` lists it, else at its log start when `from`
    /// names its topic (it appeared since the caller last read it), else at its log end.
    fn start_of(topic: &str, partition: i32, from: &Positions) -> Start {
        match from.next(topic, partition) {
            Some(Next::Offset(offset)) => Start::At(offset),
            Some(Next::ProducedSince(at)) => Start::Since(date_time(at)),
            None if from.names_topic(topic) => Start::Earliest,
            None => Start::Latest,
        }
    }

    /// Whether any broker answers a metadata request within `request_timeout`, asked after
    /// a failure seen at `failed_at` ([`SharedProbe`]): a partition whose leader cannot be
    /// reached while this holds is that partition's trouble alone.
    async fn cluster_answers(&self, failed_at: tokio::time::Instant) -> bool {
        let limit = self.client.settings().request_timeout;
        let ask = || async {
            matches!(
                tokio::time::timeout(limit, self.client.partition_counts()).await,
                Ok(Ok(_))
            )
        };
        self.probe.answer(failed_at, ask).await
    }

    /// Whether `trouble` reading one partition ends the whole subscription: the brokers are
    /// lost (the consumer re-subscribes with back-off and every partition resumes) or the
    /// topic is gone. Anything else concerns this partition alone and is retried on it alone:
    /// its data (a response this client cannot read), or its leader (none elected, or not
    /// reachable while another broker answers, as when the only broker holding it is down):
    /// the other partitions read on (D31).
    async fn ends_subscription(&self, trouble: &Trouble) -> bool {
        match trouble {
            Trouble::Refused(_) | Trouble::Busy(_) => false,
            Trouble::UnknownTopic(_) => true,
            Trouble::Unavailable(_) => !self.cluster_answers(tokio::time::Instant::now()).await,
        }
    }

    /// Where to resume `topic`/`partition` by time if its log went back: after `last`, the
    /// last record handled or sent, else after the partition was first opened.
    fn since(&self, topic: &str, partition: i32, last: Last) -> DateTime<Utc> {
        if let Some(at) = last.and_then(|(_, at)| at) {
            return date_time(at);
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&(topic.to_owned(), partition))
            .map_or_else(record_timestamp_now, |s| s.opened)
    }

    async fn open(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, EventSourceError> {
        self.client
            .partition_client(topic, partition)
            .await
            .map_err(to_port_error)
    }

    /// A client for `topic`/`partition` and the offset `start` names there.
    async fn open_at(
        &self,
        topic: &str,
        partition: i32,
        start: Start,
    ) -> Result<(Arc<PartitionClient>, i64), Trouble> {
        let client = self.client.partition_client(topic, partition).await?;
        let limit = self.client.settings().request_timeout * 2;
        let offset = match start {
            Start::At(offset) => Ok(offset),
            Start::Earliest => bounded(limit, client.get_offset(OffsetAt::Earliest)).await,
            Start::Latest => latest(&client, limit).await,
            Start::Since(at) => first_since(&client, at, limit).await,
        }
        .map_err(|e| Trouble::from_rskafka(topic, &e))?;
        Ok((client, offset))
    }

    /// Opens every partition of `topics`, each where [`start_of`](Self::start_of) says. A
    /// partition that cannot be opened while the brokers answer (no leader) is left to its
    /// fetch loop ([`Opening::Later`]); one the brokers do not answer for fails it all.
    async fn open_all(
        &self,
        topics: &[&str],
        from: &Positions,
    ) -> Result<(HashMap<String, i32>, Vec<Opening>), EventSourceError> {
        let counts = topics::create_missing(&self.client, topics)
            .await
            .map_err(|e| match e {
                KafkaError::CreateTopic { topic, reason } => {
                    tracing::warn!(%topic, %reason, "cannot create kafka topic");
                    EventSourceError::TopicNotCreated { topic, reason }
                }
                e => to_port_error(e.into()),
            })?;
        let mut known = HashMap::new();
        let mut wanted = Vec::new();
        for topic in topics {
            let count = *counts
                .get(*topic)
                .ok_or_else(|| EventSourceError::UnknownTopic((*topic).to_owned()))?;
            known.insert((*topic).to_owned(), count);
            wanted.extend((0..count).map(|p| (*topic, p, Self::start_of(topic, p, from))));
        }
        let opened = futures::future::try_join_all(wanted.into_iter().map(
            |(topic, partition, start)| async move {
                match self.open_at(topic, partition, start).await {
                    Ok((client, offset)) => {
                        tracing::debug!(topic, partition, offset, "starting partition");
                        Ok(Opening::Now(client, offset))
                    }
                    Err(trouble) if self.ends_subscription(&trouble).await => {
                        Err(to_port_error(trouble))
                    }
                    Err(trouble) => {
                        tracing::warn!(
                            topic,
                            partition,
                            reason = %trouble,
                            "kafka partition cannot be read now (the brokers answer); the other partitions start, this one when it can be read"
                        );
                        // Its log end, as it is now, whenever it is read.
                        let start = match start {
                            Start::Latest => Start::Since(record_timestamp_now()),
                            start => start,
                        };
                        Ok(Opening::Later {
                            topic: topic.to_owned(),
                            partition,
                            start,
                        })
                    }
                }
            },
        ))
        .await?;
        Ok((known, opened))
    }
}

#[async_trait]
impl EventSource for KafkaEventSource {
    // No `err(Display)`: the caller logs a failure with its context, throttled; an error
    // event here would repeat each one unthrottled (a dozen a second in an outage).
    #[tracing::instrument(skip_all, fields(topics = ?topics))]
    async fn subscribe(
        &self,
        topics: &[&str],
        from: &Positions,
    ) -> Result<RecordStream, EventSourceError> {
        let (known, opened) = self.open_all(topics, from).await?;
        for topic in topics {
            // At zero from the start, so that the first failure is an increase to the alert.
            for outcome in ["retried", "ended"] {
                let topic = (*topic).to_owned();
                metrics::counter!(KAFKA_FETCH_ERRORS, "topic" => topic, "outcome" => outcome)
                    .increment(0);
            }
        }
        let opened = opened
            .into_iter()
            .map(|opening| {
                let (topic, partition) = opening.partition();
                let last = from
                    .last_handled(topic, partition)
                    .filter(|(last, _)| match &opening {
                        Opening::Now(_, offset) => last < offset,
                        Opening::Later { start, .. } => {
                            matches!(start, Start::At(offset) if last < offset)
                        }
                    });
                (opening, last)
            })
            .collect();
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let supervisor = tokio::spawn(supervise(self.clone(), known, opened, tx));
        Ok(Box::pin(Subscription {
            rx,
            supervisor: supervisor.abort_handle(),
            done: false,
        }))
    }

    async fn latest_positions(&self, topics: &[&str]) -> Result<Positions, EventSourceError> {
        let (_, opened) = self.open_all(topics, &Positions::default()).await?;
        let mut positions = Positions::default();
        for opening in opened {
            match opening {
                Opening::Now(client, offset) => {
                    positions.set(client.topic(), client.partition(), offset);
                }
                Opening::Later {
                    topic, partition, ..
                } => positions.set_next(&topic, partition, Next::ProducedSince(SystemTime::now())),
            }
        }
        Ok(positions)
    }

    /// ListOffsets by timestamp per partition (Kafka answers the first record at or after it),
    /// kept within the log; the log end when no record is that new.
    async fn positions_since(
        &self,
        topics: &[&str],
        since: std::time::SystemTime,
    ) -> Result<Positions, EventSourceError> {
        let (_, opened) = self.open_all(topics, &Positions::default()).await?;
        let ms = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let since = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
        let limit = self.client.settings().request_timeout * 2;
        let mut positions = Positions::default();
        // A partition that cannot be read now has nothing to read back either: it starts
        // where the positions of the caller's first subscription say.
        let opened = opened.into_iter().filter_map(|opening| match opening {
            Opening::Now(client, end) => Some((client, end)),
            Opening::Later { .. } => None,
        });
        for (client, end) in opened {
            let (topic, partition) = (client.topic(), client.partition());
            let offset = first_since_before(&client, since, end, limit)
                .await
                .map_err(|e| to_source_error(topic, partition, &e))?;
            positions.set(topic, partition, offset);
        }
        Ok(positions)
    }

    /// Reads each partition backwards from its end ([`partition_tail`]); of the partitions'
    /// newest accepted records, the one with the latest record timestamp wins.
    // No `err(Display)`: the caller logs a failure with its context, throttled; an error
    // event here would repeat each one unthrottled (a dozen a second in an outage).
    #[tracing::instrument(skip_all, fields(topic))]
    async fn last_accepted(
        &self,
        topic: &str,
        accept: Accept<'_>,
    ) -> Result<Option<Record>, EventSourceError> {
        let counts = self
            .client
            .partition_counts()
            .await
            .map_err(|e| to_port_error(e.into()))?;
        let Some(&count) = counts.get(topic) else {
            return Ok(None);
        };
        let mut newest: Option<(DateTime<Utc>, Record)> = None;
        for partition in 0..count {
            let client = self.open(topic, partition).await?;
            let found = partition_tail(&client, self.client.settings(), accept)
                .await
                .map_err(|e| to_source_error(topic, partition, &e))?;
            if let Some((at, record)) = found
                && newest.as_ref().is_none_or(|(seen, _)| at >= *seen)
            {
                newest = Some((at, record));
            }
        }
        Ok(newest.map(|(_, record)| record))
    }

    /// From the high watermarks of the latest fetches of this source's subscriptions.
    async fn lag(&self, positions: &Positions) -> Vec<(String, i32, i64)> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        positions
            .iter()
            .filter_map(|(topic, partition, next)| {
                let high = seen.get(&(topic.to_owned(), partition))?.high_watermark;
                Some((topic.to_owned(), partition, (high - next).max(0)))
            })
            .collect()
    }
}

/// The next offset that will be written to the partition (Kafka's "log end offset", its
/// high watermark for a consumer).
async fn latest(client: &PartitionClient, limit: Duration) -> Result<i64, RsError> {
    bounded(limit, client.get_offset(OffsetAt::Latest)).await
}

/// The offset of the first record produced at or after `since`, kept within the log: the log
/// end when no record is that new.
async fn first_since(
    client: &PartitionClient,
    since: DateTime<Utc>,
    limit: Duration,
) -> Result<i64, RsError> {
    let end = latest(client, limit).await?;
    first_since_before(client, since, end, limit).await
}

/// [`first_since`], with the log end read already.
async fn first_since_before(
    client: &PartitionClient,
    since: DateTime<Utc>,
    end: i64,
    limit: Duration,
) -> Result<i64, RsError> {
    let earliest = bounded(limit, client.get_offset(OffsetAt::Earliest)).await?;
    let at = bounded(limit, client.get_offset(OffsetAt::Timestamp(since))).await?;
    // Kafka answers -1 when no record is that new.
    Ok(if (earliest..end).contains(&at) {
        at
    } else {
        end
    })
}

/// Records read back per step by [`partition_tail`] at first; each step doubles, up to
/// [`TAIL_STEP_MAX`].
const TAIL_STEP: i64 = 8;
const TAIL_STEP_MAX: i64 = 512;

/// The newest record of one partition that `accept` takes, with its timestamp: reads windows
/// of offsets backwards from the log end (small at first) until one holds an accepted record or
/// the log start is reached. Gaps (compaction, transaction markers) are stepped over.
async fn partition_tail(
    client: &PartitionClient,
    settings: &super::KafkaSettings,
    accept: Accept<'_>,
) -> Result<Option<(DateTime<Utc>, Record)>, RsError> {
    let limit = settings.request_timeout * 2;
    let end = latest(client, limit).await?;
    let start = bounded(limit, client.get_offset(OffsetAt::Earliest)).await?;
    let topic: Arc<str> = Arc::from(client.topic());
    let partition = client.partition();
    let mut upper = end;
    let mut step = TAIL_STEP;
    while upper > start {
        let lower = (upper - step).max(start);
        let mut window = Vec::new();
        let mut cursor = lower;
        while cursor < upper {
            let fetched = bounded(
                settings.fetch_timeout(),
                client.fetch(cursor, 1..settings.fetch_max_bytes, 0),
            )
            .await;
            let (records, next) = match fetched {
                Ok(fetched) => (fetched.records, fetched.next_offset),
                // Retention removed the window meanwhile: the log start is reached.
                Err(RsError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                }) => return Ok(None),
                Err(e) => return Err(e),
            };
            let before = cursor;
            let mut past = false;
            for r in records {
                if r.offset >= upper {
                    past = true;
                } else if r.offset >= cursor {
                    cursor = r.offset + 1;
                    window.push(r);
                }
            }
            if past {
                break;
            }
            // Past batches that returned nothing (markers, undecodable batches).
            cursor = cursor.max(next.min(upper));
            if cursor == before {
                cursor += 1;
            }
        }
        for r in window.into_iter().rev() {
            let at = r.record.timestamp;
            let record = port_record(&topic, partition, r);
            if accept(&record) {
                return Ok(Some((at, record)));
            }
        }
        upper = lower;
        step = (step * 2).min(TAIL_STEP_MAX);
    }
    Ok(None)
}

/// Starts one fetch loop per partition, then re-reads partition counts periodically.
/// Ends (and so aborts every fetch loop) as soon as one loop ends.
async fn supervise(
    source: KafkaEventSource,
    mut known: HashMap<String, i32>,
    opened: Vec<(Opening, Last)>,
    tx: mpsc::Sender<Item>,
) {
    let settings = source.client.settings().clone();
    let mut loops = JoinSet::new();
    for (opening, last) in opened {
        loops.spawn(fetch_loop(source.clone(), opening, last, tx.clone()));
    }
    let mut tick = tokio::time::interval(settings.metadata_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            joined = loops.join_next(), if !loops.is_empty() => {
                if let Some(Err(e)) = joined
                    && e.is_panic()
                {
                    let _ = tx
                        .send(Err(EventSourceError::Other(format!("kafka fetch loop panicked: {e}"))))
                        .await;
                }
                // A loop only ends after sending its error, or when the stream was dropped.
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = pick_up_new_partitions(&source, &mut known, &mut loops, &tx).await {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// Starts reading, from their beginning, the partitions that appeared since the last look.
async fn pick_up_new_partitions(
    source: &KafkaEventSource,
    known: &mut HashMap<String, i32>,
    loops: &mut JoinSet<()>,
    tx: &mpsc::Sender<Item>,
) -> Result<(), EventSourceError> {
    let counts = source
        .client
        .partition_counts()
        .await
        .map_err(|e| to_port_error(e.into()))?;
    for (topic, count) in known.iter_mut() {
        let now = counts.get(topic).copied().unwrap_or(0);
        for partition in *count..now {
            tracing::info!(
                topic,
                partition,
                "new partition, reading it from its beginning"
            );
            // Offset 0: if retention already removed it, the fetch loop moves to the earliest.
            let opening = Opening::Later {
                topic: topic.clone(),
                partition,
                start: Start::At(0),
            };
            loops.spawn(fetch_loop(source.clone(), opening, None, tx.clone()));
        }
        *count = (*count).max(now);
    }
    Ok(())
}

/// The first wait before fetching a partition again after a fetch of it failed for a reason
/// other than a lost broker; it doubles per failure in a row, up to [`PARTITION_RETRY_MAX`].
const PARTITION_RETRY: Duration = Duration::from_millis(500);
const PARTITION_RETRY_MAX: Duration = Duration::from_secs(30);

/// Fetches one partition from `offset` on, in order, until the broker is lost or the stream
/// is dropped. `last` is the last record the caller handled there, if it is known. A fetch
/// that fails for another reason ([`ends_subscription`]) is retried on this partition alone,
/// with back-off; the other partitions read on.
async fn fetch_loop(
    source: KafkaEventSource,
    opening: Opening,
    mut last: Last,
    tx: mpsc::Sender<Item>,
) {
    let settings = source.client.settings().clone();
    let Some((client, mut offset)) = opened(&source, opening, &tx).await else {
        return;
    };
    let topic: Arc<str> = Arc::from(client.topic());
    let partition = client.partition();
    let max_wait_ms = i32::try_from(settings.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
    if let Some(moved) = resume_check(&source, &client, offset, last).await
        && moved != offset
    {
        reset(&topic, partition, offset, moved);
        offset = moved;
    }
    let mut retries = RetriedAlone::new(&topic, partition);
    loop {
        let fetched = bounded(
            settings.fetch_timeout(),
            client.fetch(offset, 1..settings.fetch_max_bytes, max_wait_ms),
        )
        .await;
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(RsError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => match out_of_range(
                &client,
                offset,
                source.since(&topic, partition, last),
                settings.request_timeout * 2,
            )
            .await
            {
                Ok(moved) => {
                    reset(&topic, partition, offset, moved);
                    offset = moved;
                    continue;
                }
                Err(e) => {
                    fail(&tx, &topic, partition, &e).await;
                    return;
                }
            },
            Err(e)
                if source
                    .ends_subscription(&Trouble::from_rskafka(&topic, &e))
                    .await =>
            {
                fail(&tx, &topic, partition, &e).await;
                return;
            }
            Err(e) => {
                let what = format!("kafka fetch of one partition at offset {offset} failed");
                let retry_at = tokio::time::Instant::now() + retries.failed(&what, &e);
                // No fetch answers a high watermark while this lasts: read the log end
                // within the back-off, so that the partition's lag keeps growing (and its
                // alert fires) instead of staying at its last value.
                let refresh = async {
                    let end = latest(&client, settings.request_timeout * 2).await;
                    if let Ok(end) = end {
                        source.saw(&topic, partition, end);
                    }
                    tokio::time::sleep_until(retry_at).await;
                };
                tokio::select! {
                    () = tx.closed() => return,
                    () = refresh => continue,
                }
            }
        };
        retries.failures = 0;
        for batch in &fetched.undecodable {
            undecodable(&topic, partition, batch);
        }
        let high_watermark = fetched.high_watermark;
        for record in fetched.records {
            if record.offset < offset {
                continue;
            }
            offset = record.offset + 1;
            last = Some((record.offset, record_time(record.record.timestamp)));
            let item = port_record(&topic, partition, record);
            if tx.send(Ok(Fetched::Record(item))).await.is_err() {
                return;
            }
        }
        // Past what the response held but did not return (transaction markers, aborted
        // transactions, undecodable batches), never past the last stable offset: the records
        // of a transaction still open are read when it commits. The broker holds a fetch at
        // the last stable offset like one at the log end, so waiting there does not spin.
        if fetched.next_offset > offset {
            offset = fetched.next_offset;
            let passed = Fetched::Passed {
                topic: Arc::clone(&topic),
                partition,
                next_offset: offset,
            };
            if tx.send(Ok(passed)).await.is_err() {
                return;
            }
        }
        source.saw(&topic, partition, high_watermark);
    }
}

/// A partition retried alone while the brokers answer: its failures in a row, the back-off
/// they give, and one warning at 1, 2, 4, … of them.
struct RetriedAlone<'a> {
    topic: &'a str,
    partition: i32,
    failures: u32,
}

impl<'a> RetriedAlone<'a> {
    fn new(topic: &'a str, partition: i32) -> Self {
        Self {
            topic,
            partition,
            failures: 0,
        }
    }

    /// Counts one more failure (`what` failed, for `reason`) and gives the wait before the
    /// next try.
    fn failed(&mut self, what: &str, reason: &dyn std::fmt::Display) -> Duration {
        self.failures += 1;
        let retry_in = partition_retry(self.failures);
        metrics::counter!(KAFKA_FETCH_ERRORS, "topic" => self.topic.to_owned(), "outcome" => "retried")
            .increment(1);
        if self.failures.is_power_of_two() {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                reason = %reason,
                failures = self.failures,
                ?retry_in,
                "{what} (the brokers answer); retrying it alone with back-off"
            );
        }
        retry_in
    }
}

/// The wait before trying a partition again after `failures` failures in a row.
fn partition_retry(failures: u32) -> Duration {
    PARTITION_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(PARTITION_RETRY_MAX)
}

/// The client and start offset of `opening`: opened at once, or retried alone with back-off
/// until it can be (the brokers answer, the partition has no leader). `None` when the
/// subscription ends meanwhile: the brokers are lost (its error is sent) or it was dropped.
async fn opened(
    source: &KafkaEventSource,
    opening: Opening,
    tx: &mpsc::Sender<Item>,
) -> Option<(Arc<PartitionClient>, i64)> {
    let (topic, partition, start) = match opening {
        Opening::Now(client, offset) => return Some((client, offset)),
        Opening::Later {
            topic,
            partition,
            start,
        } => (topic, partition, start),
    };
    let mut retries = RetriedAlone::new(&topic, partition);
    loop {
        let trouble = match source.open_at(&topic, partition, start).await {
            Ok((client, offset)) => {
                if retries.failures > 0 {
                    tracing::info!(
                        topic,
                        partition,
                        offset,
                        "kafka partition can be read again"
                    );
                }
                return Some((client, offset));
            }
            Err(trouble) => trouble,
        };
        if source.ends_subscription(&trouble).await {
            metrics::counter!(KAFKA_FETCH_ERRORS, "topic" => topic.clone(), "outcome" => "ended")
                .increment(1);
            tracing::warn!(topic, partition, reason = %trouble, "kafka partition cannot be opened, ending the subscription");
            let _ = tx.send(Err(partition_error(trouble, partition))).await;
            return None;
        }
        let retry_in = retries.failed("kafka partition cannot be opened (no leader?)", &trouble);
        tokio::select! {
            () = tx.closed() => return None,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
}

/// Counts and logs a batch read past because its records cannot be decoded.
fn undecodable(topic: &str, partition: i32, batch: &UndecodableBatch) {
    metrics::counter!(KAFKA_UNDECODABLE_BATCHES, "topic" => topic.to_owned()).increment(1);
    tracing::warn!(
        topic,
        partition,
        offset = batch.first_offset,
        last_offset = batch.last_offset,
        cause = %batch.cause,
        "kafka record batch cannot be decoded; reading on after it"
    );
}

/// Counts and logs a position moved because the log is not where it was.
fn reset(topic: &str, partition: i32, from: i64, to: i64) {
    metrics::counter!(KAFKA_OFFSET_RESETS, "topic" => topic.to_owned()).increment(1);
    tracing::warn!(
        topic,
        partition,
        from,
        to,
        "kafka log is not where the gateway left it (truncated, removed by retention, or the \
         broker lost its data): reading on from {to}"
    );
}

/// On resuming a partition after the last record the caller handled from it (`last`), reads
/// that record again: if it is gone or is another record (another timestamp), the log was
/// replaced since (a broker that lost its data and was refilled past our position before we
/// came back, a topic deleted and created again), and offsets alone cannot show it. Then the
/// position to resume from, found as for a log that went back ([`resume_by_time`]). `None`
/// when the log is the one we read, when no record was handled there, or when the check
/// cannot tell (the fetch loop then meets any error itself).
async fn resume_check(
    source: &KafkaEventSource,
    client: &PartitionClient,
    offset: i64,
    last: Last,
) -> Option<i64> {
    let (last_offset, at) = last?;
    let since = source.since(client.topic(), client.partition(), last);
    let limit = source.client.settings().request_timeout * 2;
    match bounded(limit, client.fetch(last_offset, 1..64 * 1024, 0)).await {
        Ok(fetched) => {
            match fetched.records.iter().find(|r| r.offset == last_offset) {
                Some(r) if record_time(r.record.timestamp) == at => return None,
                // Not visible yet (a new leader's high watermark can sit below it for a
                // moment): nothing tells the log was replaced. A log that was is met by the
                // fetch loop as one that went back.
                None if fetched.high_watermark <= last_offset => return None,
                _ => {}
            }
            resume_by_time(client, since, limit).await.ok()
        }
        Err(RsError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }) => match bounded(limit, client.get_offset(OffsetAt::Earliest)).await {
            // Retention (or a DeleteRecords) removed the last record handled, not the next
            // one: the log is the one read, and reading goes on where it was.
            Ok(earliest) if last_offset < earliest && earliest <= offset => None,
            _ => out_of_range(client, offset, since, limit).await.ok(),
        },
        Err(_) => None,
    }
}

/// Where to go on after `OffsetOutOfRange`: to the earliest offset when `offset` was removed
/// by retention. Beyond the log end (the broker lost its data, the topic was deleted and
/// created again, or the log was truncated), to the first record newer than `since`, the last
/// one delivered from this partition: after a data loss every record of the new log is new and
/// is delivered; after a truncation the records already delivered are not delivered again.
/// To the log end when no record is newer.
async fn out_of_range(
    client: &PartitionClient,
    offset: i64,
    since: DateTime<Utc>,
    limit: Duration,
) -> Result<i64, RsError> {
    let earliest = bounded(limit, client.get_offset(OffsetAt::Earliest)).await?;
    if offset < earliest {
        return Ok(earliest);
    }
    resume_by_time(client, since, limit).await
}

/// The first record newer than `since`, else the log end.
async fn resume_by_time(
    client: &PartitionClient,
    since: DateTime<Utc>,
    limit: Duration,
) -> Result<i64, RsError> {
    match just_after(since) {
        Some(after) => first_since(client, after, limit).await,
        None => latest(client, limit).await,
    }
}

/// The first record time after `at`; none after the latest time a record can carry.
fn just_after(at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    at.checked_add_signed(chrono::TimeDelta::milliseconds(1))
}

/// An rskafka record as the port's [`Record`].
fn port_record(topic: &Arc<str>, partition: i32, r: RecordAndOffset) -> Record {
    Record {
        topic: Arc::clone(topic),
        partition,
        offset: r.offset,
        key: r.record.key.map(Bytes::from),
        value: r.record.value.map(Bytes::from),
        timestamp: record_time(r.record.timestamp),
    }
}

/// A time as a record timestamp.
fn date_time(at: SystemTime) -> DateTime<Utc> {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// A record timestamp as a time, `None` for the "no timestamp" of old producers (-1).
fn record_time(at: DateTime<Utc>) -> Option<SystemTime> {
    u64::try_from(at.timestamp_millis())
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

async fn fail(tx: &mpsc::Sender<Item>, topic: &str, partition: i32, error: &RsError) {
    metrics::counter!(KAFKA_FETCH_ERRORS, "topic" => topic.to_owned(), "outcome" => "ended")
        .increment(1);
    tracing::warn!(topic, partition, error = %error, "kafka fetch failed, ending the subscription");
    let _ = tx.send(Err(to_source_error(topic, partition, error))).await;
}

fn to_source_error(topic: &str, partition: i32, error: &RsError) -> EventSourceError {
    partition_error(Trouble::from_rskafka(topic, error), partition)
}

/// The port's error for `trouble` with one partition, naming it.
fn partition_error(trouble: Trouble, partition: i32) -> EventSourceError {
    match trouble {
        Trouble::Unavailable(m) | Trouble::Busy(m) => {
            EventSourceError::Unavailable(format!("{m} (partition {partition})"))
        }
        Trouble::Refused(m) => EventSourceError::Other(format!("{m} (partition {partition})")),
        Trouble::UnknownTopic(t) => EventSourceError::UnknownTopic(t),
    }
}

fn to_port_error(trouble: Trouble) -> EventSourceError {
    match trouble {
        Trouble::Unavailable(m) | Trouble::Busy(m) => EventSourceError::Unavailable(m),
        Trouble::UnknownTopic(t) => EventSourceError::UnknownTopic(t),
        Trouble::Refused(m) => EventSourceError::Other(m),
    }
}

/// The stream handed to the caller: yields what the fetch loops send, ends right after the
/// first error, and stops every loop when dropped.
struct Subscription {
    rx: mpsc::Receiver<Item>,
    supervisor: AbortHandle,
    done: bool,
}

impl Stream for Subscription {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(record))) => Poll::Ready(Some(Ok(record))),
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.supervisor.abort();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(EventSourceError::Other(
                    "kafka fetch loops stopped unexpectedly; subscribe again".into(),
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_seen_together_share_one_probe_and_a_later_one_asks_again() {
        let probe = SharedProbe::default();
        let asked = AtomicU32::new(0);
        let ask = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            false
        };
        let failed_at = tokio::time::Instant::now();
        let answers = futures::future::join_all((0..8).map(|_| probe.answer(failed_at, ask))).await;
        assert_eq!(answers, [false; 8]);
        assert_eq!(asked.load(Ordering::SeqCst), 1, "eight failures, one probe");
        // A failure seen after that probe began is not answered by it.
        probe.answer(tokio::time::Instant::now(), ask).await;
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_latest_record_time_has_nothing_after_it_instead_of_a_panic() {
        // A record may carry it: resuming by time after it must not overflow.
        let latest =
            DateTime::<Utc>::from_timestamp_millis(DateTime::<Utc>::MAX_UTC.timestamp_millis())
                .unwrap();
        assert_eq!(just_after(latest), None);
        let at = DateTime::<Utc>::from_timestamp_millis(1_000).unwrap();
        assert_eq!(just_after(at).map(|t| t.timestamp_millis()), Some(1_001));
    }
}
