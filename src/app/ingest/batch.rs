//! One batch of records: validated, routed to their rooms in order (superseded tickers
//! conflated when the consumer is behind), journaled for recovery, snapshots handed to the
//! background writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::{self, topics};
use crate::ports::{EmitOptions, FanoutError, Record};
use crate::telemetry::metrics::{
    DELIVERIES, EVENT_AGE, EVENTS_CONFLATED, EVENTS_CONSUMED, EVENTS_REJECTED,
    LAST_RECORD_TIMESTAMP, SNAPSHOT_WRITES,
};

use super::super::recovery::{Recovery, now_ms};
use super::super::weather::Verdict;
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

    /// Keeps a live record's snapshot or city weather result (D24, D23), under the publishing
    /// gate. Returns `false` when the store refused it as produced before the one it holds.
    fn store(&self, delivery: &mut domain::Delivery, produced_at: Option<SystemTime>) -> bool {
        if let Some(result) = &delivery.weather {
            match self.weather.judge(result, produced_at) {
                Verdict::Latest(value) => self.snapshots.submit_weather(&result.city, value),
                Verdict::Superseded => {
                    metrics::counter!(SNAPSHOT_WRITES, "key" => "weather", "result" => "older")
                        .increment(1);
                    return false;
                }
                Verdict::Forwarded => {}
            }
        }
        match delivery.snapshot.take() {
            Some(write) => self.snapshots.submit(write, produced_at),
            None => true,
        }
    }

    /// Whether a snapshot read back for the journal (never emitted) is older than one read back
    /// before it (another partition of a keyless topic): journaled after the newer one, a
    /// client replaying the journal would end on it (found by review; the store judges live
    /// records). Not judged against the snapshot held: that is warm-up's pick, the newest of
    /// the log, and a replay owes every snapshot after the client's offset, in order.
    fn read_back_older(
        &self,
        delivery: &domain::Delivery,
        produced_at: Option<SystemTime>,
    ) -> bool {
        delivery
            .snapshot
            .as_ref()
            .is_some_and(|write| self.read_back.older_than_read(write.key.key, produced_at))
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
        // Whether each record was read back (asked once: the read-back moves on as it answers).
        let mut histories = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let stream = topics::stream_name(&record.topic);
            let history = self.read_back.is_history(record);
            histories.push(history);
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
            let mut live: Vec<(&mut domain::Delivery, Option<SystemTime>)> = deliveries
                .iter_mut()
                .zip(&origins)
                .filter(|(_, (_, _, history))| !history)
                .map(|(delivery, (_, record, _))| (delivery, record.timestamp))
                .collect();
            keep_newer_weather(&mut live);
            let mut live: Vec<&mut domain::Delivery> = live.into_iter().map(|(d, _)| d).collect();
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
        for ((stream, mut delivery), (index, record, history)) in
            streams.into_iter().zip(deliveries).zip(origins)
        {
            let topic = topics::event_topic_index(&record.topic);
            if let Some(journal) = journal.as_deref_mut() {
                while let Some(pass) = passes.next_if(|p| p.before <= index) {
                    pass.apply(journal);
                }
            }
            // A snapshot or a city's weather result is stored before its room emit, under the
            // gate that orders it with the replies reading them: a socket that joins meanwhile
            // gets it from its hydration (or its join's weather reply) or from the room, maybe
            // both, never the older one last (D4, D23). The gate is taken with the journal
            // held, as always (the journal first). The cache writes happen in the background
            // and never delay the emit.
            let _publishing =
                if !history && (delivery.snapshot.is_some() || delivery.weather.is_some()) {
                    Some(self.snapshots.publishing().await)
                } else {
                    None
                };
            let kept = if history {
                !self.read_back_older(&delivery, record.timestamp)
            } else {
                self.store(&mut delivery, record.timestamp)
            };
            if !kept {
                // Produced before what is held (or, read back, before a snapshot read back
                // already): a room that got the newer one, and a client replaying the journal,
                // must not get this one after it (D24). The journal's head moves past it here,
                // as past a record that emits nothing, so the cuts of the emits after it name
                // the same place as on a replica that emitted it.
                if let (Some(journal), Some(topic)) = (journal.as_deref_mut(), topic) {
                    journal.advance(topic, record.partition, record.offset);
                }
                continue;
            }
            let offsets = journal.as_deref_mut().and_then(|j| {
                Some(j.append_delivery(topic?, record.partition, record.offset, &delivery, now))
            });
            if history {
                continue;
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
                    Ok(()) => metrics::counter!(DELIVERIES, "stream" => stream).increment(1),
                    // Shutting down: the consumer stops before the transport closes, so
                    // this is at most the end of a batch.
                    Err(FanoutError::Closed) => {
                        tracing::debug!(room = %emit.room, "room emit after the transport closed");
                    }
                    Err(e) => tracing::warn!(room = %emit.room, error = %e, "room emit failed"),
                }
            }
            // The staleness a user sees: from the record's production to its emit.
            if let Some(at) = record.timestamp {
                let age = SystemTime::now().duration_since(at).unwrap_or_default();
                metrics::histogram!(EVENT_AGE, "stream" => stream).record(age.as_secs_f64());
            }
        }
        export_last_record_times(records, &histories);
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

/// Keeps a successful weather result read after a newer one of its city in the same batch
/// (another partition, after an outage) from conflating the newer one away: it is itself
/// refused as superseded, and the room would get neither (D8, D23). Times as the desk counts
/// them: capped at now, unknown as now.
fn keep_newer_weather(live: &mut [(&mut domain::Delivery, Option<SystemTime>)]) {
    let now = SystemTime::now();
    let mut newest: HashMap<String, SystemTime> = HashMap::new();
    for (delivery, produced_at) in live {
        if delivery.weather.is_none() {
            continue;
        }
        let Some(key) = &delivery.supersede_key else {
            continue;
        };
        let produced = produced_at.map_or(now, |at| at.min(now));
        match newest.get_mut(key) {
            // A tie too: the later one is judged against the earlier (clock readings apart by
            // a hair can make it older), so it must not conflate the earlier one away.
            Some(seen) if *seen >= produced => delivery.supersede_key = None,
            Some(seen) => *seen = produced,
            None => {
                newest.insert(key.clone(), produced);
            }
        }
    }
}

/// `flux_kafka_last_record_timestamp_seconds{topic}`: when a live record of each topic of the
/// batch was last read (once per topic, not per record). The wall clock at the read, not the
/// record's timestamp: a producer whose clock is behind must not look silent, and records
/// read back at start-up tell nothing of whether the topic is alive.
fn export_last_record_times(records: &[Record], histories: &[bool]) {
    let mut read: Vec<&str> = Vec::new();
    for (record, history) in records.iter().zip(histories) {
        if !history && !read.contains(&&*record.topic) {
            read.push(&record.topic);
        }
    }
    if read.is_empty() {
        return;
    }
    let now = epoch_seconds(SystemTime::now());
    for topic in read {
        metrics::gauge!(LAST_RECORD_TIMESTAMP, "topic" => topic.to_owned()).set(now);
    }
}

/// A time as Unix seconds.
pub(super) fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
