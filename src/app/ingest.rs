//! Ingestion: records from the event topics are validated, fanned out to their rooms and
//! their snapshots handed to the background writer. The consumer survives anything a record
//! contains, and after losing the source it resumes from the last offset it handled (D11, D18).

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{self, topics};
use crate::ports::{ClientFanout, EventSource, Positions, Record};

use super::health::Health;
use super::metrics::{DELIVERIES, EVENTS_CONSUMED, EVENTS_REJECTED, KAFKA_LAG};
use super::snapshots::SnapshotWriter;

/// How often consumer lag is exported.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

pub struct Ingestor {
    source: Arc<dyn EventSource>,
    fanout: Arc<dyn ClientFanout>,
    snapshots: SnapshotWriter,
    health: Arc<Health>,
    max_backoff: Duration,
    /// Becomes `true` once the first subscription is open (start-up commands wait for it).
    subscribed: watch::Sender<bool>,
    /// Why the last subscription attempt failed, for the start-up failure message.
    last_error: watch::Sender<Option<String>>,
}

impl Ingestor {
    pub fn new(
        source: Arc<dyn EventSource>,
        fanout: Arc<dyn ClientFanout>,
        snapshots: SnapshotWriter,
        health: Arc<Health>,
        max_backoff: Duration,
    ) -> Self {
        Self {
            source,
            fanout,
            snapshots,
            health,
            max_backoff,
            subscribed: watch::channel(false).0,
            last_error: watch::channel(None).0,
        }
    }

    /// Resolves to `true` once the consumers have run once.
    pub fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed.subscribe()
    }

    /// Why the last subscription attempt failed, if it did.
    pub fn last_error(&self) -> watch::Receiver<Option<String>> {
        self.last_error.subscribe()
    }

    /// Consumes until `shutdown`, re-subscribing with back-off and jitter after every loss.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut positions = Positions::default();
        let mut delays = self.backoff();
        let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
        let mut attempt = 0u32;
        while !shutdown.is_cancelled() {
            match self.open(&mut positions).await {
                Ok(mut stream) => {
                    if attempt > 0 {
                        tracing::info!(attempts = attempt, "event consumers reconnected");
                    }
                    attempt = 0;
                    self.health.set_consuming(true);
                    self.subscribed.send_replace(true);
                    delays = self.backoff();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            _ = lag_tick.tick() => self.export_lag(&positions),
                            item = stream.next() => match item {
                                Some(Ok(record)) => {
                                    self.handle(&record).await;
                                    positions.advance(&record);
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "event consumers lost the broker; degraded mode until it is back");
                                    break;
                                }
                                None => {
                                    tracing::warn!("event stream ended; re-subscribing");
                                    break;
                                }
                            }
                        }
                    }
                    self.health.set_consuming(false);
                }
                Err(e) => {
                    self.last_error.send_replace(Some(e.to_string()));
                    attempt += 1;
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(error = %e, attempt, "cannot subscribe to the event topics; retrying with back-off");
                    }
                }
            }
            let delay = delays.next().unwrap_or(self.max_backoff);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Subscribes from `positions`; the first time, pins every partition's start first, so
    /// that a partition that delivers nothing before an outage is still resumed exactly.
    async fn open(
        &self,
        positions: &mut Positions,
    ) -> Result<crate::ports::RecordStream, crate::ports::EventSourceError> {
        if positions.is_empty() {
            *positions = self.source.latest_positions(&topics::EVENT_TOPICS).await?;
        }
        self.source
            .subscribe(&topics::EVENT_TOPICS, positions)
            .await
    }

    /// Validates one record and fans it out. Never fails: a bad record is counted and logged.
    pub async fn handle(&self, record: &Record) {
        let stream = topics::stream_name(&record.topic);
        match domain::route(&record.topic, record.value.as_deref()) {
            Ok(delivery) => {
                metrics::counter!(EVENTS_CONSUMED, "stream" => stream).increment(1);
                // Emit first: the cache write happens in the background and never delays it.
                for emit in &delivery.emits {
                    let sent = match &delivery.conflation_key {
                        Some(key) => {
                            self.fanout
                                .to_room_latest(&emit.room, &emit.event, &emit.payload, key)
                                .await
                        }
                        None => {
                            self.fanout
                                .to_room(&emit.room, &emit.event, &emit.payload)
                                .await
                        }
                    };
                    if let Err(e) = sent {
                        tracing::warn!(room = %emit.room, error = %e, "room emit failed");
                    }
                    metrics::counter!(DELIVERIES, "stream" => stream).increment(1);
                }
                if let Some(write) = delivery.snapshot {
                    self.snapshots.submit(write);
                }
            }
            Err(rejection) => {
                metrics::counter!(EVENTS_REJECTED, "stream" => stream, "reason" => rejection.reason)
                    .increment(1);
                tracing::warn!(
                    topic = %record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    reason = rejection.reason,
                    "event rejected and skipped"
                );
            }
        }
    }

    fn export_lag(&self, positions: &Positions) {
        if positions.is_empty() {
            return;
        }
        let source = self.source.clone();
        let positions = positions.clone();
        tokio::spawn(async move {
            for (topic, partition, lag) in source.lag(&positions).await {
                metrics::gauge!(KAFKA_LAG, "topic" => topic, "partition" => partition.to_string())
                    .set(lag as f64);
            }
        });
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::client_fanout::MockClientFanout;
    use crate::ports::snapshot_cache::MockSnapshotCache;
    use crate::ports::{CacheError, Payload};

    fn record(topic: &str, value: &str) -> Record {
        Record {
            topic: Arc::from(topic),
            partition: 0,
            offset: 7,
            key: None,
            value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    fn ingestor(
        fanout: MockClientFanout,
        cache: MockSnapshotCache,
    ) -> (Ingestor, CancellationToken) {
        let stop = CancellationToken::new();
        let (writer, _) = SnapshotWriter::spawn(Arc::new(cache), stop.clone());
        let ingestor = Ingestor::new(
            Arc::new(crate::adapters::memory::MemoryBus::new()),
            Arc::new(fanout),
            writer,
            Arc::new(Health::new()),
            Duration::from_secs(1),
        );
        (ingestor, stop)
    }

    #[tokio::test]
    async fn a_failing_cache_write_does_not_stop_the_live_emit() {
        let mut fanout = MockClientFanout::new();
        fanout
            .expect_to_room()
            .withf(|room, event, _| room == "crypto.global" && event == "cryptoTopCoinsResponse")
            .times(1)
            .returning(|_, _, _| Ok(()));
        let mut cache = MockSnapshotCache::new();
        cache
            .expect_set()
            .returning(|_, _, _| Err(CacheError::Unavailable("down".into())));
        let (ingestor, stop) = ingestor(fanout, cache);
        ingestor
            .handle(&record(
                topics::TOPCOINS_EVENTS,
                r#"{"topCoins":[{"symbol":"BTC-USD"}]}"#,
            ))
            .await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_rejected_record_emits_nothing_and_writes_nothing() {
        let mut fanout = MockClientFanout::new();
        fanout.expect_to_room().never();
        let mut cache = MockSnapshotCache::new();
        cache.expect_set().never();
        let (ingestor, stop) = ingestor(fanout, cache);
        ingestor
            .handle(&record(topics::TOPCOINS_EVENTS, r#"{"topCoins":[]}"#))
            .await;
        ingestor
            .handle(&record(topics::NEWS_EVENTS, "not json"))
            .await;
        tokio::task::yield_now().await;
        stop.cancel();
    }

    #[tokio::test]
    async fn a_failing_room_emit_is_logged_and_the_snapshot_is_still_written() {
        let mut fanout = MockClientFanout::new();
        fanout
            .expect_to_room()
            .times(1)
            .returning(|_, _, _| Err(crate::ports::FanoutError::Transport("boom".into())));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut cache = MockSnapshotCache::new();
        cache.expect_set().times(1).returning(move |k, _, _| {
            tx.send(k.to_owned()).unwrap();
            Ok(())
        });
        let (ingestor, stop) = ingestor(fanout, cache);
        ingestor
            .handle(&record(
                topics::TOPCOINS_EVENTS,
                r#"{"topCoins":[{"symbol":"BTC-USD"}]}"#,
            ))
            .await;
        assert_eq!(rx.recv().await.as_deref(), Some("crypto:top-coins"));
        stop.cancel();
        let _ = Payload::new(&1);
    }
}
