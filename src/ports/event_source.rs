//! `EventSource`: a stream of records read from event topics, resumable from known offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// One record of a topic partition, as read from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// `None` for a tombstone (null value).
    pub value: Option<Bytes>,
    /// When the record was produced (its Kafka timestamp), when the adapter knows it.
    pub timestamp: Option<SystemTime>,
}

/// Tells a usable record from one to read past, for [`EventSource::last_accepted`].
pub type Accept<'a> = &'a (dyn Fn(&Record) -> bool + Send + Sync);

/// The next offset to read, per topic partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<(String, i32), i64>);

impl Positions {
    /// Records that `record` was handled: the next offset to read is the one after it.
    pub fn advance(&mut self, record: &Record) {
        let next = record.offset + 1;
        let entry = self
            .0
            .entry((record.topic.to_string(), record.partition))
            .or_insert(next);
        if *entry < next {
            *entry = next;
        }
    }

    /// Records that `topic`/`partition` was read up to `next_offset` past records that were
    /// not delivered ([`Fetched::Passed`]).
    pub fn pass(&mut self, topic: &str, partition: i32, next_offset: i64) {
        let entry = self
            .0
            .entry((topic.to_owned(), partition))
            .or_insert(next_offset);
        if *entry < next_offset {
            *entry = next_offset;
        }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0.get(&(topic.to_owned(), partition)).copied()
    }

    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.0.insert((topic.to_owned(), partition), next_offset);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().map(|((t, p), o)| (t.as_str(), *p, *o))
    }

    /// Whether any partition of `topic` has a position: the topic is resumed, and a
    /// partition of it that has none appeared since (read from its beginning).
    pub fn names_topic(&self, topic: &str) -> bool {
        self.iter().any(|(t, _, _)| t == topic)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a subscription yields, in offset order per partition.
#[derive(Clone, Debug, PartialEq)]
pub enum Fetched {
    Record(Record),
    /// The partition was read up to `next_offset` (the next offset to read) past records that
    /// are not delivered: transaction markers, records of aborted transactions, batches that
    /// cannot be decoded. Nothing below `next_offset` is still to come from it.
    Passed {
        topic: Arc<str>,
        partition: i32,
        next_offset: i64,
    },
}

impl Fetched {
    /// The record, if this is one.
    pub fn into_record(self) -> Option<Record> {
        match self {
            Self::Record(record) => Some(record),
            Self::Passed { .. } => None,
        }
    }
}

/// A live subscription. It ends with an `Err` (and then `None`) when the source is lost.
pub type RecordStream = BoxStream<'static, Result<Fetched, EventSourceError>>;

#[derive(Debug, thiserror::Error)]
pub enum EventSourceError {
    /// The broker cannot be reached or the connection was lost; re-subscribing later may work.
    #[error("event source unavailable: {0}")]
    Unavailable(String),
    /// A topic does not exist (and could not be created).
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// Anything else the adapter could not recover from.
    #[error("event source failed: {0}")]
    Other(String),
}

/// Reads records from the event topics.
///
/// Broadcast semantics: every subscriber sees every record of every partition; there is no
/// consumer group and no committed offset. Resuming is the caller's job, through `from`.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// Opens a stream over every partition of `topics`.
    ///
    /// - For a partition listed in `from`, reading MUST start at that offset (the next one to
    ///   read), so that nothing produced while the caller was disconnected is skipped and
    ///   nothing already handled is delivered again.
    /// - A partition of a topic that `from` names (a resumed subscription) but that `from` does
    ///   not list appeared since the caller last read that topic: it MUST be read from its
    ///   beginning, or what was produced to it before this call would be lost.
    /// - Any other partition that exists when subscribing (a topic `from` does not name) MUST
    ///   start at its latest offset (only records produced after the call are delivered).
    /// - A partition that appears later MUST be read from its beginning.
    /// - Records of one partition MUST be delivered in offset order.
    /// - Records that are not delivered (transaction markers, records of aborted
    ///   transactions, batches that cannot be decoded) MUST be announced by a
    ///   [`Fetched::Passed`] once the partition's position moved past them and no record
    ///   follows them in the same read, so that a caller waiting for a position sees it
    ///   reached. Records of a transaction still open MUST NOT be passed: they are delivered
    ///   once it commits, never if it aborts.
    ///
    /// # Errors
    /// - MUST return [`EventSourceError::Unavailable`] when no broker answers.
    /// - The returned stream MUST yield `Err(EventSourceError::Unavailable)` and then end when the
    ///   connection is lost; it MUST NOT end silently while the source is healthy.
    async fn subscribe(
        &self,
        topics: &[&str],
        from: &Positions,
    ) -> Result<RecordStream, EventSourceError>;

    /// The next offset of every partition of `topics` now: where `subscribe` with an empty
    /// `from` would start. Passing it as `from` to the first `subscribe` makes every later
    /// resume exact, also for partitions that delivered nothing before an outage.
    ///
    /// # Errors
    /// MUST return [`EventSourceError::Unavailable`] when no broker answers.
    async fn latest_positions(&self, topics: &[&str]) -> Result<Positions, EventSourceError>;

    /// Per partition of `topics`, the offset of the first record produced at or after `since`,
    /// else the partition's latest offset: where reading must start to see what was produced
    /// since then (connection-state recovery reads back its window at start-up). The default
    /// knows no times and answers [`EventSource::latest_positions`].
    ///
    /// # Errors
    /// MUST return [`EventSourceError::Unavailable`] when no broker answers.
    async fn positions_since(
        &self,
        topics: &[&str],
        _since: SystemTime,
    ) -> Result<Positions, EventSourceError> {
        self.latest_positions(topics).await
    }

    /// The newest record of `topic` that `accept` takes, read backwards from the end of the log
    /// (start-up warm-up: the last valid snapshot already produced).
    ///
    /// - Each partition MUST be read from its end towards its start, a few records at a time,
    ///   and no further back than its newest accepted record or its log start.
    /// - Of the partitions' newest accepted records, the one produced last MUST be returned
    ///   (the highest partition wins when the adapter cannot tell).
    /// - `Ok(None)` when no record is accepted or the topic does not exist. Nothing is created
    ///   and no subscription position changes.
    ///
    /// # Errors
    /// MUST return [`EventSourceError::Unavailable`] when no broker answers.
    async fn last_accepted(
        &self,
        topic: &str,
        accept: Accept<'_>,
    ) -> Result<Option<Record>, EventSourceError>;

    /// The lag (records not yet read) per topic partition for the given positions, when the
    /// adapter can tell. Used for metrics only; the default knows nothing.
    async fn lag(&self, _positions: &Positions) -> Vec<(String, i32, i64)> {
        Vec::new()
    }
}
