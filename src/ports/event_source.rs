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

/// Where to read next, per topic partition, and the last record handled there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<(String, i32), Position>);

/// Where reading of one partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The next offset to read.
    Offset(i64),
    /// The first record produced at or after this time, else the log end: the partition's log
    /// end as it was then, when the source could not read it then (a partition without a
    /// leader appends nothing, so what it holds once it has one again is newer).
    ProducedSince(SystemTime),
}

/// Where one partition is: where to read next, and the offset and timestamp of the last
/// record handled (a source tells by reading it again whether the log is still the one read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    next: Next,
    last: Option<(i64, Option<SystemTime>)>,
}

impl Positions {
    /// Records that `record` was handled: the next offset to read is the one after it, also
    /// when that is below the position held (the log went back, and reading follows it).
    pub fn advance(&mut self, record: &Record) {
        self.0.insert(
            (record.topic.to_string(), record.partition),
            Position {
                next: Next::Offset(record.offset + 1),
                last: Some((record.offset, record.timestamp)),
            },
        );
    }

    /// Records that `topic`/`partition` was read up to `next_offset` past records that were
    /// not delivered ([`Fetched::Passed`]); the last record handled stays what it was.
    pub fn pass(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.0
            .entry((topic.to_owned(), partition))
            .and_modify(|p| p.next = Next::Offset(next_offset))
            .or_insert(Position {
                next: Next::Offset(next_offset),
                last: None,
            });
    }

    /// The next offset to read from `topic`/`partition`, when it is known by offset.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        match self.next(topic, partition)? {
            Next::Offset(offset) => Some(offset),
            Next::ProducedSince(_) => None,
        }
    }

    /// Where to read next from `topic`/`partition`, when this lists it.
    pub fn next(&self, topic: &str, partition: i32) -> Option<Next> {
        Some(self.0.get(&(topic.to_owned(), partition))?.next)
    }

    /// The offset and timestamp of the last record handled from `topic`/`partition`, when one
    /// was since its position was last [`set`](Self::set).
    pub fn last_handled(&self, topic: &str, partition: i32) -> Option<(i64, Option<SystemTime>)> {
        self.0.get(&(topic.to_owned(), partition))?.last
    }

    /// Sets the next offset to read, with no record handled yet.
    pub fn set(&mut self, topic: &str, partition: i32, next_offset: i64) {
        self.set_next(topic, partition, Next::Offset(next_offset));
    }

    /// Sets where to read next, with no record handled yet.
    pub fn set_next(&mut self, topic: &str, partition: i32, next: Next) {
        self.0
            .insert((topic.to_owned(), partition), Position { next, last: None });
    }

    /// The partitions known by offset, with the next offset to read from each.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().filter_map(|((t, p), o)| match o.next {
            Next::Offset(next) => Some((t.as_str(), *p, next)),
            Next::ProducedSince(_) => None,
        })
    }

    /// Whether any partition of `topic` has a position: the topic is resumed, and a
    /// partition of it that has none appeared since (read from its beginning).
    pub fn names_topic(&self, topic: &str) -> bool {
        self.0.keys().any(|(t, _)| t == topic)
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

#[derive(Clone, Debug, thiserror::Error)]
pub enum EventSourceError {
    /// The broker cannot be reached or the connection was lost; re-subscribing later may work.
    #[error("event source unavailable: {0}")]
    Unavailable(String),
    /// A topic does not exist: creating topics is off, or a created one did not show in the
    /// metadata in time, or it went away.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A topic does not exist and creating it failed (replication factor above the brokers,
    /// no authorisation to create topics, …).
    #[error("topic {topic} does not exist and could not be created: {reason}")]
    TopicNotCreated { topic: String, reason: String },
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
    /// - When the log of such a partition is not the one the caller read (it went back, or was
    ///   replaced, also by one already past that offset), reading MUST resume after the last
    ///   record the caller handled ([`Positions::last_handled`]), not after the last one the
    ///   source fetched.
    /// - A partition of a topic that `from` names (a resumed subscription) but that `from` does
    ///   not list appeared since the caller last read that topic: it MUST be read from its
    ///   beginning, or what was produced to it before this call would be lost.
    /// - Any other partition that exists when subscribing (a topic `from` does not name) MUST
    ///   start at its latest offset (only records produced after the call are delivered).
    /// - A partition that appears later MUST be read from its beginning.
    /// - A partition that cannot be read while the brokers answer (it has no leader) MUST NOT
    ///   stop the others, neither when subscribing nor later: it is read, from where these
    ///   rules say, once it can be.
    /// - A partition that `from` lists by time ([`Next::ProducedSince`]) MUST start at its
    ///   first record produced at or after that time, else at its log end.
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
    /// A partition whose log end cannot be read while the brokers answer (no leader) is
    /// listed by time ([`Next::ProducedSince`] now): nothing is appended to it until it has a
    /// leader again, and what is appended then is read.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset,
            key: None,
            value: None,
            timestamp: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(offset as u64)),
        }
    }

    #[test]
    fn a_position_follows_the_log_read_also_when_it_went_back() {
        let mut positions = Positions::default();
        positions.advance(&record(7));
        assert_eq!(positions.get("t", 0), Some(8));
        // The log went back: its records 3 and 4 are the ones handled now.
        positions.advance(&record(3));
        positions.advance(&record(4));
        assert_eq!(positions.get("t", 0), Some(5));
        assert_eq!(
            positions.last_handled("t", 0),
            Some((4, record(4).timestamp))
        );
    }

    #[test]
    fn a_pass_moves_the_position_and_keeps_the_last_record_handled() {
        let mut positions = Positions::default();
        positions.advance(&record(4));
        positions.pass("t", 0, 6);
        assert_eq!(positions.get("t", 0), Some(6));
        assert_eq!(positions.last_handled("t", 0).map(|(o, _)| o), Some(4));
        positions.set("t", 0, 9);
        assert_eq!(positions.last_handled("t", 0), None);
        positions.pass("u", 1, 2);
        assert_eq!(positions.get("u", 1), Some(2));
    }

    #[test]
    fn a_partition_listed_by_time_names_its_topic_until_a_record_of_it_is_handled() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5);
        let mut positions = Positions::default();
        positions.set("t", 1, 3);
        positions.set_next("t", 0, Next::ProducedSince(at));
        assert_eq!(positions.get("t", 0), None);
        assert_eq!(positions.next("t", 0), Some(Next::ProducedSince(at)));
        assert_eq!(positions.iter().collect::<Vec<_>>(), [("t", 1, 3)]);
        positions.advance(&record(7));
        assert_eq!(positions.next("t", 0), Some(Next::Offset(8)));
        let mut by_time = Positions::default();
        by_time.set_next("u", 0, Next::ProducedSince(at));
        assert!(by_time.names_topic("u"));
    }
}
