//! Snapshots in two tiers (D24): the newest valid snapshot of each snapshot topic this process
//! has seen, in memory, read first; and the shared cache, written off the real-time path:
//! ingestion hands each write to one background writer and goes on emitting; a slow or failing
//! cache never delays a live push (D16). Pending writes are conflated per key (the newest
//! snapshot wins), and one writer keeps them in order, so an older snapshot never overwrites a
//! newer one. At start-up the in-process tier is warmed from the end of each snapshot topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{self, SnapshotWrite, topics};
use crate::ports::{EventSource, EventSourceError, Record, SnapshotCache};

use crate::telemetry::metrics::{SNAPSHOT_WARMUPS, SNAPSHOT_WRITES};

/// The in-process tier: per snapshot key, the newest valid snapshot seen and when it expires
/// (as its cache key would). Time is tokio's clock, so paused-time tests can move it.
///
/// Its gate orders a snapshot's live emit with the replies that read one: the ingest holds
/// it exclusively from storing a snapshot to the end of the snapshot's room emit
/// ([`publishing`](Self::publishing)), a reply shared from reading the snapshot to the end of
/// its push ([`reading`](Self::reading)). So a socket that joined the room meanwhile gets the
/// older snapshot before the newer event, or the newer snapshot: never the older one last,
/// which it would show until the next update (minutes for news).
#[derive(Debug, Default)]
pub struct LocalSnapshots {
    entries: Mutex<HashMap<&'static str, Entry>>, // std Mutex: never held across an .await
    gate: tokio::sync::RwLock<()>,
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires: Instant,
    /// When its record was produced, if known.
    produced_at: Option<SystemTime>,
    /// Read back at start-up ([`LocalSnapshots::warm`]), not consumed live: never emitted.
    warmed: bool,
}

/// What [`LocalSnapshots::store`] made of a live snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Kept: the newest.
    Kept,
    /// Not kept: one produced after it was read back at start-up (warm-up's pick, the newest
    /// of the log). The room has not had that one: this one is still owed to it, in order.
    OlderThanWarmed,
    /// Not kept: one produced after it was consumed live, and emitted. Emitted after it, this
    /// one would show in the room until the next update (D24).
    Older,
}

impl LocalSnapshots {
    /// Held by the ingest from storing a snapshot to the end of its room emit.
    pub async fn publishing(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Held by a reply from reading a snapshot to the end of its push.
    pub async fn reading(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Whether [`store`](Self::store) kept the snapshot (the tests' shorthand).
    #[cfg(test)]
    pub fn put(&self, write: &SnapshotWrite, produced_at: Option<SystemTime>) -> bool {
        self.store(write, produced_at) == Stored::Kept
    }

    /// A snapshot consumed live, produced at `produced_at` (unknown: now): it replaces what is
    /// held, unless that was produced later. After an outage a topic's partitions are read
    /// back in no particular order between them, and a keyless snapshot topic spreads its
    /// records over all of them: the last one read is not always the newest. A record stamped
    /// in the future (its producer's clock ahead) counts as produced now, and an expired
    /// snapshot holds nothing off: neither may keep the next snapshots out. Returns whether
    /// it was kept, and if not, why.
    pub fn store(&self, write: &SnapshotWrite, produced_at: Option<SystemTime>) -> Stored {
        let produced_at = produced_at.map(|at| at.min(SystemTime::now()));
        let mut entries = self.lock();
        let newer_held = entries.get(write.key.key).filter(|held| {
            Instant::now() < held.expires
                && matches!((held.produced_at, produced_at), (Some(held), Some(this)) if held > this)
        });
        if let Some(held) = newer_held {
            return if held.warmed {
                Stored::OlderThanWarmed
            } else {
                Stored::Older
            };
        }
        let entry = Entry {
            value: write.value.clone(),
            expires: Instant::now() + write.key.ttl,
            produced_at,
            warmed: false,
        };
        entries.insert(write.key.key, entry);
        Stored::Kept
    }

    /// A snapshot read back from the log at start-up, produced at `produced_at` (now when
    /// unknown): kept only when nothing was consumed meanwhile and it has not expired yet.
    /// Stamped in the future, it counts as produced now, as in [`store`](Self::store): else every
    /// live snapshot would be refused as older until the producer's skew passed or it expired.
    /// Returns whether it was kept.
    pub fn warm(&self, write: SnapshotWrite, produced_at: Option<SystemTime>) -> bool {
        let produced_at = produced_at.map(|at| at.min(SystemTime::now()));
        let age = produced_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .unwrap_or_default();
        let Some(left) = write.key.ttl.checked_sub(age).filter(|l| !l.is_zero()) else {
            return false;
        };
        let mut entries = self.lock();
        if entries.contains_key(write.key.key) {
            return false;
        }
        let entry = Entry {
            value: write.value,
            expires: Instant::now() + left,
            produced_at,
            warmed: true,
        };
        entries.insert(write.key.key, entry);
        true
    }

    /// The snapshot held under `key`, unless it expired.
    pub fn get(&self, key: &str) -> Option<String> {
        let entries = self.lock();
        let entry = entries.get(key)?;
        (Instant::now() < entry.expires).then(|| entry.value.clone())
    }

    /// Whether a snapshot is held under `key` and has not expired (nothing copied).
    pub fn holds(&self, key: &str) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|entry| Instant::now() < entry.expires)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Warms `local` from the end of each snapshot topic: the newest record that is a valid
/// snapshot (a bad record is read past, never kept). Retries a topic with back-off while the
/// source is unavailable, until `shutdown`.
///
/// Reads only once `consuming` holds (the consumer took its start positions): a snapshot
/// produced before them is then the newest of the log here, and one produced after them is
/// consumed live. Read before them, one produced in between would be neither, and this
/// replica would serve the older one until the next (found by review: the two retry on
/// their own back-offs while the brokers are away at start).
pub async fn warm_up(
    source: Arc<dyn EventSource>,
    local: Arc<LocalSnapshots>,
    max_backoff: Duration,
    mut consuming: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        started = consuming.wait_for(|started| *started) => {
            if started.is_err() {
                return; // no consumer: nothing would be read live either
            }
        }
    }
    let warm_one = |topic: &'static str| {
        let (source, local, shutdown) = (source.clone(), local.clone(), shutdown.clone());
        async move {
            let accept = move |r: &Record| snapshot_of(topic, r).is_some();
            let mut delays = super::retry::reconnect_backoff(max_backoff);
            let mut failures = 0u32;
            loop {
                let outcome = match source.last_accepted(topic, &accept).await {
                    Ok(Some(record)) => {
                        let kept = snapshot_of(topic, &record)
                            .is_some_and(|write| local.warm(write, record.timestamp));
                        if kept { "warmed" } else { "skipped" }
                    }
                    Ok(None) => "none",
                    Err(e) => {
                        failures += 1;
                        // A lost broker is reported by the consumer; anything else (a partition
                        // without a leader, a batch that cannot be read) only here.
                        let quiet = matches!(e, EventSourceError::Unavailable(_));
                        if !quiet && failures.is_power_of_two() {
                            tracing::warn!(
                                topic,
                                error = %e,
                                failures,
                                "snapshot warm-up of this topic failed (the brokers answer); retrying with back-off: joining clients get its snapshot from the shared cache or the next live record meanwhile"
                            );
                        } else {
                            tracing::debug!(topic, error = %e, "snapshot warm-up failed; retrying");
                        }
                        let delay = delays.next().unwrap_or(max_backoff);
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                };
                tracing::debug!(topic, outcome, "snapshot warm-up");
                metrics::counter!(SNAPSHOT_WARMUPS, "stream" => topics::stream_name(topic), "outcome" => outcome)
                    .increment(1);
                return;
            }
        }
    };
    futures::future::join_all(topics::SNAPSHOT_TOPICS.map(warm_one)).await;
}

/// The snapshot a record of `topic` carries, if it is valid.
fn snapshot_of(topic: &str, record: &Record) -> Option<SnapshotWrite> {
    domain::route(topic, record.value.as_deref()).ok()?.snapshot
}

/// Hands snapshot writes to the background writer.
#[derive(Clone)]
pub struct SnapshotWriter {
    queue: Arc<WriteQueue>,
    local: Arc<LocalSnapshots>,
}

/// Weather keys the cache writes wait for at most (the snapshot keys, a fixed few, always
/// have a place): beyond them a stalled cache drops new cities' results, counted.
const WEATHER_WRITES_QUEUED: usize = 256;

/// The `key` label of every city's weather write (the keys are client-chosen).
const WEATHER_LABEL: &str = "weather";

/// The writes waiting for the writer task, the newest per key: a newer value replaces one
/// still queued for the same key, so that a full queue never keeps the older one and drops
/// the newer (found by review: with a channel, a stalled cache dropped the newest write of a
/// key while an older one of it waited, and wrote the older).
#[derive(Default)]
struct WriteQueue {
    // std Mutex: never held across an .await
    pending: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    writes: HashMap<String, Write>,
    weather: usize,
    closed: bool,
}

impl WriteQueue {
    /// Queues `write`, replacing one queued for its key; `false` when it is dropped (the
    /// writer stopped, or too many cities' weather waits).
    fn push(&self, write: Write) -> bool {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let is_weather = write.label == WEATHER_LABEL;
            let known = pending.writes.contains_key(&write.key);
            if pending.closed || (is_weather && !known && pending.weather >= WEATHER_WRITES_QUEUED)
            {
                return false;
            }
            if is_weather && !known {
                pending.weather += 1;
            }
            pending.writes.insert(write.key.clone(), write);
        }
        self.wake.notify_one();
        true
    }

    /// Everything queued, leaving the queue empty (and closed to new writes if `close`).
    fn take(&self, close: bool) -> HashMap<String, Write> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.closed |= close;
        pending.weather = 0;
        std::mem::take(&mut pending.writes)
    }
}

/// One queued write: the key (relative to the cache prefix), the value, its expiry, and the
/// `key` label of its metrics (weather keys are client-chosen, so they share one label).
struct Write {
    key: String,
    label: &'static str,
    value: String,
    ttl: Duration,
}

impl SnapshotWriter {
    /// Starts the writer task; when `shutdown` fires it writes what is queued and stops
    /// (later writes are dropped, counted).
    pub fn spawn(
        cache: Arc<dyn SnapshotCache>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_with(cache, Arc::default(), shutdown)
    }

    /// As [`SnapshotWriter::spawn`], keeping every snapshot in `local` too.
    pub fn spawn_with(
        cache: Arc<dyn SnapshotCache>,
        local: Arc<LocalSnapshots>,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let queue = Arc::new(WriteQueue::default());
        let task = tokio::spawn(run(cache, queue.clone(), shutdown));
        (Self { queue, local }, task)
    }

    /// Keeps the snapshot, produced at `produced_at`, in process at once, and queues its cache
    /// write (replacing one of its key still queued), never waited for. A snapshot older than
    /// the one held is neither kept nor written (counted as `result="older"`). Returns whether
    /// it is to be emitted and journaled: not one older than a snapshot consumed live, or a
    /// room would show it after the newer one (D24); one older only than warm-up's pick is (the
    /// room never had that one, and is owed every snapshot in order: found by review of the
    /// first version, which held these back).
    #[must_use = "an older snapshot must not be emitted"]
    pub fn submit(&self, write: SnapshotWrite, produced_at: Option<SystemTime>) -> bool {
        let stored = self.local.store(&write, produced_at);
        if stored != Stored::Kept {
            metrics::counter!(SNAPSHOT_WRITES, "key" => write.key.key, "result" => "older")
                .increment(1);
            return stored == Stored::OlderThanWarmed;
        }
        self.queue(Write {
            key: write.key.key.to_owned(),
            label: write.key.key,
            value: write.value,
            ttl: write.key.ttl,
        });
        true
    }

    /// Queues a city's latest weather result (D23), as [`SnapshotWriter::submit`]; dropped
    /// and counted when [`WEATHER_WRITES_QUEUED`] other cities' results wait (the cache is
    /// stalled).
    pub fn submit_weather(&self, city: &str, value: String) {
        self.queue(Write {
            key: crate::domain::weather::cache_key(city),
            label: WEATHER_LABEL,
            value,
            ttl: crate::domain::weather::WEATHER_TTL,
        });
    }

    /// The in-process tier's [`publishing`](LocalSnapshots::publishing) gate.
    pub async fn publishing(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.local.publishing().await
    }

    fn queue(&self, write: Write) {
        if !self.queue.push(write) {
            metrics::counter!(SNAPSHOT_WRITES, "result" => "dropped").increment(1);
        }
    }
}

/// Writes what is queued, the newest value per key, until `shutdown`; then what is queued
/// by then, and nothing after.
async fn run(cache: Arc<dyn SnapshotCache>, queue: Arc<WriteQueue>, shutdown: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = queue.wake.notified() => false,
            () = shutdown.cancelled() => true,
        };
        for (_, w) in queue.take(stopping) {
            let result = match cache.set(&w.key, &w.value, w.ttl).await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::debug!(key = %w.key, error = %e, "snapshot write failed");
                    "error"
                }
            };
            metrics::counter!(SNAPSHOT_WRITES, "key" => w.label, "result" => result).increment(1);
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::topics::{SNAP_NEWS, SNAP_TOPCOINS};

    fn write(key: crate::domain::topics::SnapshotKey, value: &str) -> SnapshotWrite {
        SnapshotWrite {
            key,
            value: value.into(),
        }
    }

    /// A source whose warm-up reads fail with `error`, counting them.
    struct FailingTail(EventSourceError, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl EventSource for FailingTail {
        async fn subscribe(
            &self,
            _: &[&str],
            _: &crate::ports::Positions,
        ) -> Result<crate::ports::RecordStream, EventSourceError> {
            unreachable!("warm-up only reads tails")
        }
        async fn latest_positions(
            &self,
            _: &[&str],
        ) -> Result<crate::ports::Positions, EventSourceError> {
            unreachable!("warm-up only reads tails")
        }
        async fn last_accepted(
            &self,
            _: &str,
            _: crate::ports::Accept<'_>,
        ) -> Result<Option<Record>, EventSourceError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(self.0.clone())
        }
        async fn lag(&self, _: &crate::ports::Positions) -> Vec<(String, i32, i64)> {
            Vec::new()
        }
    }

    /// What `warm_up` over a source failing with `error` logs at warn, in 60 s of its retries.
    fn warm_up_warnings(error: EventSourceError) -> (String, usize) {
        let lines = crate::telemetry::logging::testing::Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let source = Arc::new(FailingTail(error, Default::default()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let stop = CancellationToken::new();
                let warming = warm_up(
                    source.clone(),
                    Arc::new(LocalSnapshots::default()),
                    Duration::from_secs(1),
                    watch::channel(true).1,
                    stop.clone(),
                );
                let _ = tokio::time::timeout(Duration::from_secs(60), warming).await;
            });
        });
        (
            lines.text(),
            source.1.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    #[test]
    fn a_warm_up_that_keeps_failing_while_the_brokers_answer_is_a_warning_not_silence() {
        let (text, reads) = warm_up_warnings(EventSourceError::Other(
            "crypto.topcoins.event.updated: Leader not available (partition 0)".into(),
        ));
        let warnings = text
            .lines()
            .filter(|l| l.contains("snapshot warm-up"))
            .count();
        assert!(reads > 4 * 16, "retried for each topic: {reads}");
        // Per topic, at failures 1, 2, 4, 8, … only.
        let topics = topics::SNAPSHOT_TOPICS.len();
        assert!(
            (topics..=topics * 8).contains(&warnings),
            "{warnings} warnings over {reads} reads:\n{text}"
        );
        assert!(text.contains("Leader not available"), "{text}");
        // A lost broker is the consumer's to report.
        let (text, _) = warm_up_warnings(EventSourceError::Unavailable("no broker".into()));
        assert!(text.is_empty(), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_held_until_it_would_expire_from_the_cache() {
        let local = LocalSnapshots::default();
        local.put(&write(SNAP_NEWS, "[1]"), None);
        assert_eq!(local.get(SNAP_NEWS.key).as_deref(), Some("[1]"));
        assert_eq!(local.get(SNAP_TOPCOINS.key), None);
        tokio::time::advance(SNAP_NEWS.ttl - Duration::from_millis(1)).await;
        assert!(local.get(SNAP_NEWS.key).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(local.get(SNAP_NEWS.key), None, "expired like its cache key");
    }

    /// After an outage the partitions of a keyless snapshot topic are read back in no order
    /// between them: a snapshot produced before the one held is neither kept nor written to
    /// the cache; one of unknown time replaces it, as does a later one.
    #[tokio::test]
    async fn an_older_snapshot_read_after_a_newer_one_is_not_kept_nor_written() {
        let cache = Arc::new(crate::adapters::memory::MemoryCache::default());
        let local = Arc::new(LocalSnapshots::default());
        let stop = CancellationToken::new();
        let (writer, task) = SnapshotWriter::spawn_with(cache.clone(), local.clone(), stop.clone());
        let t = SystemTime::now();
        assert!(writer.submit(write(SNAP_TOPCOINS, "{\"n\":10}"), Some(t)));
        assert!(!writer.submit(
            write(SNAP_TOPCOINS, "{\"n\":5}"),
            Some(t - Duration::from_secs(5)),
        ));
        assert_eq!(local.get(SNAP_TOPCOINS.key).as_deref(), Some("{\"n\":10}"));
        drop(writer);
        stop.cancel();
        task.await.unwrap();
        let cached = cache.get(SNAP_TOPCOINS.key).await.unwrap();
        assert_eq!(cached.as_deref(), Some("{\"n\":10}"));

        assert!(local.put(&write(SNAP_TOPCOINS, "{\"n\":0}"), None));
        assert!(local.put(&write(SNAP_TOPCOINS, "{\"n\":11}"), Some(t)));
        assert!(local.put(
            &write(SNAP_TOPCOINS, "{\"n\":12}"),
            Some(t + Duration::from_secs(1))
        ));
        assert_eq!(local.get(SNAP_TOPCOINS.key).as_deref(), Some("{\"n\":12}"));
    }

    /// Found by review: a snapshot stamped an hour ahead kept every later one out, even
    /// after it expired.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_from_a_clock_ahead_or_an_expired_one_keeps_no_later_snapshot_out() {
        let local = LocalSnapshots::default();
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        assert!(local.put(&write(SNAP_NEWS, "[\"ahead\"]"), Some(ahead)));
        assert!(
            local.put(&write(SNAP_NEWS, "[\"next\"]"), Some(SystemTime::now())),
            "counted as produced when it was read"
        );
        assert_eq!(local.get(SNAP_NEWS.key).as_deref(), Some("[\"next\"]"));

        let t = SystemTime::now();
        assert!(local.put(&write(SNAP_TOPCOINS, "{\"n\":2}"), Some(t)));
        let older = Some(t - Duration::from_secs(5));
        assert!(!local.put(&write(SNAP_TOPCOINS, "{\"n\":1}"), older));
        tokio::time::advance(SNAP_TOPCOINS.ttl).await;
        assert!(
            local.put(&write(SNAP_TOPCOINS, "{\"n\":1}"), older),
            "an expired snapshot is no longer held"
        );
        assert_eq!(local.get(SNAP_TOPCOINS.key).as_deref(), Some("{\"n\":1}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_warmed_snapshot_never_replaces_one_consumed_live_and_keeps_its_age() {
        let local = LocalSnapshots::default();
        local.put(&write(SNAP_NEWS, "[\"live\"]"), None);
        assert!(!local.warm(write(SNAP_NEWS, "[\"log\"]"), None));
        assert_eq!(local.get(SNAP_NEWS.key).as_deref(), Some("[\"live\"]"));

        let produced = SystemTime::now() - (SNAP_TOPCOINS.ttl - Duration::from_secs(10));
        assert!(local.warm(write(SNAP_TOPCOINS, "{}"), Some(produced)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(local.get(SNAP_TOPCOINS.key), None, "expired with its age");

        let local = LocalSnapshots::default();
        let too_old = SystemTime::now() - SNAP_TOPCOINS.ttl;
        assert!(!local.warm(write(SNAP_TOPCOINS, "{}"), Some(too_old)));
        assert_eq!(local.get(SNAP_TOPCOINS.key), None);
    }

    /// A live snapshot older than warm-up's pick is not kept (hydration keeps the newest) but
    /// is still owed to the room, which never had the warmed one: after a restart, the records
    /// between where live reading began and warm-up's read come after it, all older.
    #[tokio::test]
    async fn a_live_snapshot_older_than_the_warmed_one_is_emitted_but_not_kept() {
        let cache = Arc::new(crate::adapters::memory::MemoryCache::default());
        let local = Arc::new(LocalSnapshots::default());
        let stop = CancellationToken::new();
        let (writer, task) = SnapshotWriter::spawn_with(cache.clone(), local.clone(), stop.clone());
        let t = SystemTime::now();
        assert!(local.warm(write(SNAP_TOPCOINS, "{\"n\":10}"), Some(t)));
        let older = Some(t - Duration::from_secs(5));
        assert!(writer.submit(write(SNAP_TOPCOINS, "{\"n\":9}"), older));
        assert_eq!(local.get(SNAP_TOPCOINS.key).as_deref(), Some("{\"n\":10}"));
        // Consumed live, the newer one holds the older ones off the room too.
        assert!(writer.submit(write(SNAP_TOPCOINS, "{\"n\":11}"), Some(t)));
        assert!(!writer.submit(write(SNAP_TOPCOINS, "{\"n\":8}"), older));
        drop(writer);
        stop.cancel();
        task.await.unwrap();
    }

    /// Found by review: a snapshot warmed from a record stamped an hour ahead (its producer's
    /// clock) refused every live one as older, for up to its whole expiry, and joins were
    /// hydrated with it.
    #[tokio::test(start_paused = true)]
    async fn a_warmed_snapshot_from_a_clock_ahead_keeps_no_live_snapshot_out() {
        let local = LocalSnapshots::default();
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        assert!(local.warm(write(SNAP_TOPCOINS, "{\"n\":1}"), Some(ahead)));
        assert!(local.put(&write(SNAP_TOPCOINS, "{\"n\":2}"), Some(SystemTime::now())));
        assert_eq!(local.get(SNAP_TOPCOINS.key).as_deref(), Some("{\"n\":2}"));
    }

    #[tokio::test]
    async fn warm_up_keeps_the_newest_valid_snapshot_of_each_topic_and_never_a_bad_one() {
        let bus = crate::adapters::memory::MemoryBus::new();
        bus.publish(
            topics::TOPCOINS_EVENTS,
            None,
            Some(br#"{"topCoins":[{"n":1}]}"#),
        );
        bus.publish(
            topics::TOPCOINS_EVENTS,
            None,
            Some(br#"{"topCoins":[{"n":2}]}"#),
        );
        bus.publish(topics::TOPCOINS_EVENTS, None, Some(br#"{"topCoins":[]}"#));
        bus.publish(topics::TOPCOINS_EVENTS, None, Some(b"not json"));
        bus.publish(topics::NEWS_EVENTS, None, Some(b"not json"));
        let local = Arc::new(LocalSnapshots::default());
        warm_up(
            Arc::new(bus),
            local.clone(),
            Duration::from_secs(1),
            watch::channel(true).1,
            CancellationToken::new(),
        )
        .await;
        assert_eq!(
            local.get(SNAP_TOPCOINS.key).as_deref(),
            Some(r#"{"topCoins":[{"n":2}]}"#)
        );
        assert_eq!(local.get(SNAP_NEWS.key), None);
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_reads_the_log_only_once_the_consumer_took_its_start_positions() {
        let source = Arc::new(FailingTail(
            EventSourceError::Unavailable("no broker".into()),
            Default::default(),
        ));
        let (started, consuming) = watch::channel(false);
        let stop = CancellationToken::new();
        let warming = tokio::spawn(warm_up(
            source.clone(),
            Arc::new(LocalSnapshots::default()),
            Duration::from_secs(1),
            consuming,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reads = || source.1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(reads(), 0, "nothing read before the consumer's start");
        started.send_replace(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(reads() >= topics::SNAPSHOT_TOPICS.len(), "{}", reads());
        stop.cancel();
        warming.await.unwrap();
    }

    /// A cache whose writes wait for permits of `gate`, as a stalled Valkey's do.
    struct Stalled {
        inner: crate::adapters::memory::MemoryCache,
        gate: tokio::sync::Semaphore,
        writing: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl SnapshotCache for Stalled {
        async fn get(&self, key: &str) -> Result<Option<String>, crate::ports::CacheError> {
            self.inner.get(key).await
        }
        async fn set(
            &self,
            key: &str,
            value: &str,
            ttl: Duration,
        ) -> Result<(), crate::ports::CacheError> {
            self.writing.notify_one();
            self.gate.acquire().await.unwrap().forget();
            self.inner.set(key, value, ttl).await
        }
        async fn set_unless_same(
            &self,
            _: &str,
            _: &str,
            _: Duration,
        ) -> Result<bool, crate::ports::CacheError> {
            unreachable!("the writer only sets")
        }
        async fn delete_if_same(&self, _: &str, _: &str) -> Result<(), crate::ports::CacheError> {
            unreachable!("the writer only sets")
        }
        async fn delete(&self, _: &str) -> Result<(), crate::ports::CacheError> {
            unreachable!("the writer only sets")
        }
    }

    /// Found by review: with a channel, a full queue dropped a key's newest write while an
    /// older one of it waited, and the cache kept the older.
    #[tokio::test]
    async fn a_stalled_cache_is_written_the_newest_value_of_each_key_queued() {
        use crate::domain::weather::cache_key;
        let cache = Arc::new(Stalled {
            inner: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
            writing: Default::default(),
        });
        let stop = CancellationToken::new();
        let (writer, task) = SnapshotWriter::spawn(cache.clone(), stop.clone());
        writer.submit_weather("Mumbai", "\"m\"".into());
        cache.writing.notified().await; // the writer stalls on it
        writer.submit_weather("Pune", "\"old\"".into());
        for i in 1..WEATHER_WRITES_QUEUED {
            writer.submit_weather(&format!("City{i}"), "\"x\"".into());
        }
        writer.submit_weather("Late", "\"x\"".into()); // past the bound: dropped
        writer.submit_weather("Pune", "\"new\"".into());
        assert!(
            writer.submit(write(SNAP_NEWS, "[1]"), None),
            "snapshots always have a place"
        );
        cache.gate.add_permits(usize::MAX >> 4);
        drop(writer);
        stop.cancel();
        task.await.unwrap();
        let cached = |key: String| {
            let cache = cache.clone();
            async move { cache.inner.get(&key).await.unwrap() }
        };
        assert_eq!(cached(cache_key("Pune")).await.as_deref(), Some("\"new\""));
        assert_eq!(cached(cache_key("Mumbai")).await.as_deref(), Some("\"m\""));
        assert_eq!(cached(cache_key("Late")).await, None);
        assert_eq!(
            cached(SNAP_NEWS.key.to_owned()).await.as_deref(),
            Some("[1]")
        );
    }
}
