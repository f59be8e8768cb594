//! One batch of records: validated, routed to their rooms in order (superseded tickers
//! conflated when the consumer is behind), journaled for recovery, snapshots handed to the
//! background writer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::{self, topics};
use crate::ports::{EmitOptions, FanoutError, Record};
use crate::telemetry::metrics::{
    DELIVERIES, EVENT_AGE, EVENTS_CONFLATED, EVENTS_CONSUMED, EVENTS_REJECTED,
    LAST_RECORD_TIMESTAMP,
};

use super::super::recovery::{Recovery, now_ms};
use super::Ingestor;

/// A partition read past records not delivered (a [`Fetched::Passed`](crate::ports::Fetched)):
/// a transaction marker, an aborted transaction, a batch that cannot be decoded (D32). It came
/// before `records[before]` of its batch (`before == records.len()`: after all of them).
#[derive(Debug)]
pub(super) struct Pass {
    pub(super) before: usize,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) next_offset: i64,
}

impl Pass {
    /// Moves the recovery journal's head of the partition to `next_offset`, as past a handled
    /// record. Without it a cut taken after a marker names the marker's offset, which a replica
    /// that started reading at the log's end (past it) does not hold (`too_old`), and that
    /// replica's cuts are ahead of this one's on the partition until its next record (D26).
    fn apply(&self, journal: &mut domain::recovery::Journal) {
        if let Some(t) = topics::event_topic_index(&self.topic) {
            journal.pass(t, self.partition, self.next_offset);
        }
    }
}

impl Ingestor {
    /// Tells recovery once the window read back at start-up is behind (D26).
    pub(super) fn mark_caught_up(&self) {
        if let Some(recovery) = &self.recovery
            && !recovery.is_caught_up()
            && self.read_back.is_done()
        {
            recovery.set_caught_up();
        }
    }

    /// Validates records read together and fans them out, in order; when the consumer is
    /// `behind`, a ticker superseded by a newer one of the batch is not emitted.
    /// Never fails: a bad record is counted and logged, and the others go on.
    pub async fn handle(&self, records: &[Record], behind: bool) {
        self.handle_passing(records, &[], behind).await;
    }

    /// [`Ingestor::handle`], with the partitions read past records not delivered among
    /// `records`: each is journaled in its place, before the emits of the records after it.
    pub(super) async fn handle_passing(&self, records: &[Record], passes: &[Pass], behind: bool) {
        let mut streams = Vec::with_capacity(records.len());
        let mut deliveries = Vec::with_capacity(records.len());
        let mut origins = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let stream = topics::stream_name(&record.topic);
            let history = self.read_back.is_history(record);
            match domain::route(&record.topic, record.value.as_deref()) {
                Ok(delivery) => {
                    if !history {
                        metrics::counter!(EVENTS_CONSUMED, "stream" => stream).increment(1);
                    }
                    streams.push(stream);
                    deliveries.push(delivery);
                    origins.push((index, record, history));
                }
                // Counted and logged where it was read live, not again at every start (D26).
                Err(_) if history => {}
                Err(rejection) => {
                    metrics::counter!(EVENTS_REJECTED, "stream" => stream, "reason" => rejection.reason)
                        .increment(1);
                    if let Some(held_back) = self.rejection_log.admit(&(stream, rejection.reason)) {
                        tracing::warn!(
                            topic = %record.topic,
                            partition = record.partition,
                            offset = record.offset,
                            reason = rejection.reason,
                            held_back,
                            "event rejected and skipped"
                        );
                    }
                }
            }
        }
        // Only what is emitted is conflated: records read back are journaled as they were,
        // since a replay within the budget sends every event (D26).
        let conflated = if behind {
            let mut live: Vec<&mut domain::Delivery> = deliveries
                .iter_mut()
                .zip(&origins)
                .filter(|(_, (_, _, history))| !history)
                .map(|(delivery, _)| delivery)
                .collect();
            domain::conflate(&mut live)
        } else {
            0
        };
        if conflated > 0 {
            metrics::counter!(EVENTS_CONFLATED).increment(conflated as u64);
        }
        // Held while emitting: a recovering socket is replayed what was journaled and joins
        // its rooms under this lock, so each emit reaches it exactly once (D26).
        let mut journal = match &self.recovery {
            Some(recovery) => Some(recovery.journal().await),
            None => None,
        };
        let now = now_ms();
        let mut passes = passes.iter().peekable();
        for ((stream, delivery), (index, record, history)) in
            streams.into_iter().zip(deliveries).zip(origins)
        {
            if let Some(journal) = journal.as_deref_mut() {
                while let Some(pass) = passes.next_if(|p| p.before <= index) {
                    pass.apply(journal);
                }
            }
            let offsets = journal.as_deref_mut().and_then(|j| {
                let topic = topics::event_topic_index(&record.topic)?;
                Some(j.append_delivery(topic, record.partition, record.offset, &delivery, now))
            });
            if history {
                continue;
            }
            // A snapshot or a city's weather result is stored before its room emit, under the
            // gate that orders it with the replies reading them: a socket that joins meanwhile
            // gets it from its hydration (or its join's weather reply) or from the room, maybe
            // both, never the older one last (D4, D23). The cache writes happen in the
            // background and never delay the emit.
            let _publishing = if delivery.snapshot.is_some() || delivery.weather.is_some() {
                Some(self.snapshots.publishing().await)
            } else {
                None
            };
            if let Some(result) = &delivery.weather
                && let Some(value) = self.weather.record(result, record.timestamp)
            {
                self.snapshots.submit_weather(&result.city, value);
            }
            if let Some(write) = delivery.snapshot {
                self.snapshots.submit(write, record.timestamp);
            }
            for (i, emit) in delivery.emits.iter().enumerate() {
                let offset = offsets.as_ref().and_then(|o| o.get(i));
                let options = EmitOptions {
                    latest: delivery.conflation_key.as_deref(),
                    offset,
                };
                let sent = self
                    .fanout
                    .to_room(&emit.room, &emit.event, &emit.payload, options)
                    .await;
                match sent {
                    Ok(()) => {}
                    // Shutting down: the consumer stops before the transport closes, so
                    // this is at most the end of a batch.
                    Err(FanoutError::Closed) => {
                        tracing::debug!(room = %emit.room, "room emit after the transport closed");
                    }
                    Err(e) => tracing::warn!(room = %emit.room, error = %e, "room emit failed"),
                }
                metrics::counter!(DELIVERIES, "stream" => stream).increment(1);
            }
            // The staleness a user sees: from the record's production to its emit.
            if let Some(at) = record.timestamp {
                let age = SystemTime::now().duration_since(at).unwrap_or_default();
                metrics::histogram!(EVENT_AGE, "stream" => stream).record(age.as_secs_f64());
            }
        }
        export_last_record_times(records);
        self.mark_caught_up();
        if let Some(journal) = journal.as_deref_mut() {
            for pass in passes {
                pass.apply(journal);
            }
            for record in records {
                if let Some(t) = topics::event_topic_index(&record.topic) {
                    journal.advance(t, record.partition, record.offset);
                }
            }
            journal.evict(now);
            Recovery::export(journal);
        }
    }
}

/// `flux_kafka_last_record_timestamp_seconds{topic}`: the newest record time of each topic of
/// the batch (once per topic, not per record).
fn export_last_record_times(records: &[Record]) {
    let mut newest: Vec<(&str, SystemTime)> = Vec::new();
    for record in records {
        let Some(at) = record.timestamp else {
            continue;
        };
        match newest.iter_mut().find(|(t, _)| *t == &*record.topic) {
            Some((_, seen)) => *seen = (*seen).max(at),
            None => newest.push((&record.topic, at)),
        }
    }
    for (topic, at) in newest {
        let seconds = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        metrics::gauge!(LAST_RECORD_TIMESTAMP, "topic" => topic.to_owned()).set(seconds);
    }
}
