//! Prometheus metrics (D20): every metric name of the crate with its description, and the
//! exporter, installed once per process.
//!
//! Counters, gauges and histograms are recorded with the `metrics` macros where things
//! happen, always under a name from here: this file is the list an operator reads.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const SOCKETS_CONNECTED: &str = "flux_sockets_connected";
pub const SOCKET_DISCONNECTS: &str = "flux_socket_disconnects_total";
pub const ROOM_JOINS: &str = "flux_room_joins_total";
pub const ROOM_MEMBERS: &str = "flux_room_members";
pub const EVENTS_CONSUMED: &str = "flux_events_consumed_total";
pub const EVENTS_REJECTED: &str = "flux_events_rejected_total";
pub const EVENTS_CONFLATED: &str = "flux_events_conflated_total";
pub const DELIVERIES: &str = "flux_room_emits_total";
pub const REPLIES: &str = "flux_replies_total";
pub const COMMANDS_PRODUCED: &str = "flux_commands_produced_total";
pub const COMMANDS_FAILED: &str = "flux_commands_failed_total";
pub const COMMANDS_REFUSED: &str = "flux_commands_refused_total";
pub const LOCATIONS_INVALID: &str = "flux_locations_invalid_total";
pub const WEATHER_JOINS: &str = "flux_weather_joins_total";
pub const DEDUP_HITS: &str = "flux_dedup_hits_total";
pub const DEDUP_FALLBACK: &str = "flux_dedup_local_fallback_total";
pub const CLIENT_EVENTS: &str = "flux_client_events_total";
pub const CLIENT_EVENTS_DROPPED: &str = "flux_client_events_dropped_total";
pub const SNAPSHOT_LOOKUPS: &str = "flux_snapshot_lookups_total";
pub const SNAPSHOT_WRITES: &str = "flux_snapshot_writes_total";
pub const SNAPSHOT_WARMUPS: &str = "flux_snapshot_warmups_total";
pub const KAFKA_LAG: &str = "flux_kafka_lag";
pub const FANOUT_BACKLOGGED: &str = "flux_fanout_backlogged_total";
pub const FANOUT_CONFLATED: &str = "flux_fanout_conflated_total";
pub const FANOUT_DROPPED: &str = "flux_fanout_ticker_drops_total";
pub const LAGGING_SOCKETS: &str = "flux_lagging_sockets";
pub const SLOW_DISCONNECTS: &str = "flux_slow_socket_disconnects_total";
pub const DEGRADED: &str = "flux_degraded";
pub const AUTH_REFUSED: &str = "flux_auth_refused_total";
pub const RECOVERY_SESSIONS: &str = "flux_recovery_sessions_total";
pub const RECOVERY_REFUSED: &str = "flux_recovery_refused_total";
pub const RECOVERY_REPLAYED: &str = "flux_recovery_replayed_events_total";
pub const RECOVERY_CONFLATED: &str = "flux_recovery_conflated_events_total";
pub const RECOVERY_JOURNAL: &str = "flux_recovery_journal_events";
pub const RECOVERY_HANDSHAKE: &str = "flux_recovery_handshake_seconds";
pub const RECOVERY_REPLAY: &str = "flux_recovery_replay_seconds";
pub const POLLING_SESSIONS: &str = "flux_polling_sessions";
pub const HTTP_CONNECTIONS_REFUSED: &str = "flux_http_connections_refused_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "flux_http_connections_open";
pub const WS_NEVER_JOINED: &str = "flux_ws_sessions_never_joined_total";
pub const KAFKA_RECORDS_PRODUCED: &str = "flux_kafka_records_produced_total";
pub const KAFKA_PRODUCE_ERRORS: &str = "flux_kafka_produce_errors_total";
pub const KAFKA_PRODUCE_RETRIES: &str = "flux_kafka_produce_retries_total";
pub const KAFKA_OFFSET_RESETS: &str = "flux_kafka_offset_resets_total";
pub const KAFKA_FETCH_ERRORS: &str = "flux_kafka_fetch_errors_total";
pub const KAFKA_UNDECODABLE_BATCHES: &str = "flux_kafka_undecodable_batches_total";
pub const CACHE_REQUESTS: &str = "flux_cache_requests_total";
pub const CACHE_UP: &str = "flux_cache_up";
pub const SIM_COMMANDS: &str = "flux_sim_commands_total";
pub const SIM_EVENTS_PUBLISHED: &str = "flux_sim_events_published_total";
pub const SIM_PUBLISH_FAILURES: &str = "flux_sim_publish_failures_total";
pub const READY: &str = "flux_ready";
pub const EVENT_AGE: &str = "flux_event_age_seconds";
pub const LAST_RECORD_TIMESTAMP: &str = "flux_kafka_last_record_timestamp_seconds";
pub const SOCKET_MESSAGES_SENT: &str = "flux_socket_messages_sent_total";
pub const SOCKET_BYTES_SENT: &str = "flux_socket_bytes_sent_total";
pub const SOCKET_DIRECT_WRITES: &str = "flux_socket_direct_writes_total";
pub const WS_COMPRESSED_FRAMES: &str = "flux_ws_compressed_frames_total";
pub const WS_INFLATE_FAILURES: &str = "flux_ws_inflate_failures_total";
pub const LOG_LINES_HELD_BACK: &str = "flux_log_lines_held_back_total";

/// The buckets of [`EVENT_AGE`], in seconds: from a millisecond (the in-process path) to the
/// two minutes of the recovery window, close together around the 1 s SLO.
pub const EVENT_AGE_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 15.0, 60.0, 120.0,
];

/// How often histogram samples are folded into their buckets (bounds their memory between
/// scrapes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

type Collector = Box<dyn Fn() + Send + Sync>;

/// Run before each render: they read values kept elsewhere (the process, the engine).
static COLLECTORS: Mutex<Vec<Collector>> = Mutex::new(Vec::new()); // never held across an .await

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide exporter handle; installs the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(EVENT_AGE.to_owned()), &EVENT_AGE_BUCKETS)
            .expect("the event age buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests in one process): then this handle
        // renders nothing useful, which only matters for those tests.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        let process = metrics_process::Collector::default();
        process.describe();
        add_collector(move || process.collect());
        handle
    })
}

/// Runs `collect` before each render, to record values that are kept elsewhere.
pub fn add_collector(collect: impl Fn() + Send + Sync + 'static) {
    lock_collectors().push(Box::new(collect));
}

fn lock_collectors() -> std::sync::MutexGuard<'static, Vec<Collector>> {
    COLLECTORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    for collect in lock_collectors().iter() {
        collect();
    }
    handle.render()
}

/// Folds histogram samples into their buckets every few seconds until `stop`, so that their
/// memory stays bounded however rarely `/metrics` is scraped.
pub async fn run_upkeep(stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => handle().run_upkeep(),
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(SOCKETS_CONNECTED, "Socket.IO clients connected now.");
    describe_counter!(
        RECOVERY_SESSIONS,
        "Reconnections that asked for connection-state recovery, by outcome (recovered, refused)."
    );
    describe_counter!(
        RECOVERY_REFUSED,
        "Recovery attempts answered with a normal connection, by reason."
    );
    describe_counter!(
        RECOVERY_REPLAYED,
        "Events sent again to recovering clients."
    );
    describe_counter!(
        RECOVERY_CONFLATED,
        "Tickers left out of a replay over socketio.replay_budget (a newer one of the product followed)."
    );
    describe_gauge!(RECOVERY_JOURNAL, "Emits held by the recovery journal.");
    describe_counter!(
        AUTH_REFUSED,
        "Socket.IO connections refused by auth.token verification (D25), by reason."
    );
    describe_counter!(SOCKET_DISCONNECTS, "Socket disconnections, by reason.");
    describe_counter!(ROOM_JOINS, "Room joins.");
    describe_gauge!(
        ROOM_MEMBERS,
        "Sockets in each global room, and in all weather rooms."
    );
    describe_counter!(EVENTS_CONSUMED, "Event records accepted, by stream.");
    describe_counter!(
        EVENTS_REJECTED,
        "Event records rejected, by stream and reason."
    );
    describe_counter!(
        EVENTS_CONFLATED,
        "Ticker and weather emits skipped because a newer one for the same product or city was read in the same batch (the consumer was behind)."
    );
    describe_counter!(DELIVERIES, "Room emits made, by event stream.");
    describe_counter!(
        REPLIES,
        "Replies to client requests, by request and outcome."
    );
    describe_counter!(COMMANDS_PRODUCED, "Commands sent, by topic.");
    describe_counter!(
        COMMANDS_FAILED,
        "Commands that could not be sent, by topic."
    );
    describe_counter!(
        COMMANDS_REFUSED,
        "Commands not sent because Kafka is down, by topic."
    );
    describe_counter!(LOCATIONS_INVALID, "Locations not forwarded, by reason.");
    describe_counter!(
        WEATHER_JOINS,
        "Location updates by what the city's weather called for: fresh (served at once), in_flight (a command is outstanding), command (one may be sent)."
    );
    describe_counter!(
        DEDUP_HITS,
        "Location updates suppressed by the dedup window."
    );
    describe_counter!(
        DEDUP_FALLBACK,
        "Dedup decisions taken by the in-process window."
    );
    describe_counter!(CLIENT_EVENTS, "Client events received, by event.");
    describe_counter!(CLIENT_EVENTS_DROPPED, "Client events dropped, by reason.");
    describe_counter!(
        SNAPSHOT_LOOKUPS,
        "Snapshot cache lookups, by key and result."
    );
    describe_counter!(SNAPSHOT_WRITES, "Snapshot cache writes, by key and result.");
    describe_counter!(
        SNAPSHOT_WARMUPS,
        "Start-up reads of the last valid snapshot from the end of each snapshot topic, by stream and outcome (warmed, skipped: expired or already consumed live, none)."
    );
    describe_gauge!(KAFKA_LAG, "Records not yet read, by topic and partition.");
    describe_counter!(
        FANOUT_BACKLOGGED,
        "Messages held for a socket whose send queue was full, by kind."
    );
    describe_counter!(
        FANOUT_CONFLATED,
        "Tickers replaced by a newer one for a lagging socket."
    );
    describe_gauge!(LAGGING_SOCKETS, "Sockets with a backlog now.");
    describe_counter!(
        FANOUT_DROPPED,
        "Ticker deliveries a broadcast found a full queue for (before the socket was marked lagging)."
    );
    describe_counter!(
        SLOW_DISCONNECTS,
        "Sockets disconnected because their backlog overflowed."
    );
    describe_gauge!(DEGRADED, "1 while a dependency is down, by dependency.");
    describe_histogram!(
        RECOVERY_HANDSHAKE,
        "Time a recovering handshake took to decide, in seconds."
    );
    describe_histogram!(
        RECOVERY_REPLAY,
        "Time a recovered session's replay took, in seconds."
    );
    describe_gauge!(
        POLLING_SESSIONS,
        "Sockets on the polling transport (not upgraded to WebSocket)."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections refused or closed by a limit, by reason."
    );
    describe_gauge!(HTTP_CONNECTIONS_OPEN, "HTTP connections open now.");
    describe_counter!(
        WS_NEVER_JOINED,
        "WebSocket sessions that ended without joining the namespace."
    );
    describe_counter!(
        KAFKA_RECORDS_PRODUCED,
        "Records acknowledged by Kafka, by topic."
    );
    describe_counter!(
        KAFKA_PRODUCE_ERRORS,
        "Records Kafka did not acknowledge, by topic and reason."
    );
    describe_counter!(
        KAFKA_PRODUCE_RETRIES,
        "Produce attempts retried under the same idempotency key, by topic."
    );
    describe_counter!(
        KAFKA_OFFSET_RESETS,
        "Read positions moved because the log was not where it was (data loss), by topic."
    );
    describe_counter!(
        KAFKA_FETCH_ERRORS,
        "Fetches that failed, by topic and outcome: `ended` the subscription (a lost broker, \
         a partition without its leader), or `retried` on that partition alone with back-off \
         (anything else: the other partitions read on)."
    );
    describe_counter!(
        KAFKA_UNDECODABLE_BATCHES,
        "Record batches read past because their records cannot be decoded, by topic."
    );
    describe_counter!(CACHE_REQUESTS, "Valkey calls, by operation and result.");
    describe_gauge!(CACHE_UP, "1 while Valkey is reachable.");
    describe_counter!(
        SIM_COMMANDS,
        "Commands the built-in simulator answered, by topic."
    );
    describe_counter!(
        SIM_EVENTS_PUBLISHED,
        "Events the built-in simulator published, by stream."
    );
    describe_counter!(
        SIM_PUBLISH_FAILURES,
        "Events the built-in simulator could not publish, by stream."
    );
    describe_gauge!(
        READY,
        "1 while /readyz answers 200 (consumers and producer run, no shutdown under way)."
    );
    describe_histogram!(
        EVENT_AGE,
        metrics::Unit::Seconds,
        "Time from a record's Kafka timestamp to its emit to the sockets of its room, by stream: the staleness a user sees."
    );
    describe_gauge!(
        LAST_RECORD_TIMESTAMP,
        metrics::Unit::Seconds,
        "Unix time (the gateway's clock) when a live record of each event topic was last read, the consumer's start until one is (time() minus it: how long the topic has been silent)."
    );
    describe_counter!(
        LOG_LINES_HELD_BACK,
        "Library warnings not written to the log (summed up in one line per period), by library."
    );
    describe_counter!(
        SOCKET_MESSAGES_SENT,
        "Messages written to client WebSockets (deliveries, replies, pings)."
    );
    describe_counter!(
        SOCKET_BYTES_SENT,
        metrics::Unit::Bytes,
        "Payload bytes of the messages written to client WebSockets (compressed size when compressed)."
    );
    describe_counter!(
        SOCKET_DIRECT_WRITES,
        "Of the messages written to client WebSockets, those the sending thread wrote itself (socketio.direct_writes_per_second)."
    );
    describe_counter!(
        WS_COMPRESSED_FRAMES,
        "Messages looked up for a compressed (permessage-deflate) frame, by how it was found: \
         cache=\"address\" or \"content\" (reused, compressed earlier for another socket), \
         cache=\"miss\" (compressed now)."
    );
    describe_counter!(
        WS_INFLATE_FAILURES,
        "Compressed client messages refused (the socket is closed), by reason: too_large \
         (inflates past socketio.max_payload: a deflate bomb) or corrupt."
    );
}

/// Metrics of one test, apart from every other's.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

    /// Runs `test` on a runtime of this thread alone with a recorder of its own: what it and
    /// the tasks it spawns count is in the handle it is given, and nowhere else.
    pub(crate) fn with_own_metrics<F: Future>(
        test: impl FnOnce(PrometheusHandle) -> F,
    ) -> F::Output {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime");
        metrics::with_local_recorder(&recorder, || runtime.block_on(test(handle)))
    }
}
