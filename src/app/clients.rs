//! What clients ask for: their location (rooms, hydration, weather command), the four
//! snapshot requests, and the legacy `getUserId`. Replies go to the asking socket only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::domain::commands::{self, Reason, Refresh, RefreshThrottle};
use crate::domain::identity::ClientIdentity;
use crate::domain::location::{self, canonical_hash};
use crate::domain::replies::SnapshotRequest;
use crate::domain::topics::{self, EV_SESSION_INIT, EV_USER_UNIQUE_ID};
use crate::domain::{Command, Payload};
use crate::ports::{
    ClientFanout, ClientRequests, CommandSink, CommandSinkError, EmitOptions, SnapshotCache,
};

use super::dedup::Deduplicator;
use super::health::Health;
use super::limits::LimitSettings;
use super::retry::reconnect_backoff;
use super::snapshots::LocalSnapshots;
use super::weather::{Found, WeatherDesk};
use crate::telemetry::metrics::{
    COMMANDS_FAILED, COMMANDS_PRODUCED, COMMANDS_REFUSED, DEDUP_HITS, LOCATIONS_INVALID, REPLIES,
    ROOM_JOINS, SNAPSHOT_LOOKUPS, WEATHER_JOINS,
};
use crate::telemetry::throttle::{LOG_BURST, LOG_PERIOD, LogThrottle};

pub struct ClientService {
    /// The in-process tier of snapshots, read before the cache (D24).
    local: Arc<LocalSnapshots>,
    cache: Arc<dyn SnapshotCache>,
    sink: Arc<dyn CommandSink>,
    fanout: Arc<dyn ClientFanout>,
    health: Arc<Health>,
    weather: Arc<WeatherDesk>,
    dedup: Deduplicator,
    throttle: Mutex<RefreshThrottle>, // std Mutex: never held across an .await
    /// "command not sent" lines per topic (every client request fails during an outage).
    failure_log: LogThrottle<String>,
}

impl ClientService {
    pub fn new(
        local: Arc<LocalSnapshots>,
        cache: Arc<dyn SnapshotCache>,
        sink: Arc<dyn CommandSink>,
        fanout: Arc<dyn ClientFanout>,
        health: Arc<Health>,
        weather: Arc<WeatherDesk>,
        limits: &LimitSettings,
    ) -> Self {
        Self {
            dedup: Deduplicator::new(
                cache.clone(),
                limits.dedup_window,
                limits.local_dedup_entries,
            ),
            throttle: Mutex::new(RefreshThrottle::new(limits.refresh_interval)),
            failure_log: LogThrottle::new(LOG_BURST, LOG_PERIOD),
            local,
            cache,
            sink,
            fanout,
            health,
            weather,
        }
    }

    /// Moves the socket to `weather_room` and the global rooms; `false` when it is gone.
    async fn switch_rooms(&self, who: &ClientIdentity, weather_room: &str) -> bool {
        let stale: Vec<String> = match self.fanout.rooms_of(&who.socket_id).await {
            Ok(rooms) => rooms
                .into_iter()
                .filter(|r| r.starts_with("weather.") && r != weather_room)
                .collect(),
            Err(_) => return false,
        };
        if !stale.is_empty() {
            let _ = self.fanout.leave(&who.socket_id, &stale).await;
        }
        let rooms = [
            weather_room.to_owned(),
            topics::ROOM_CRYPTO.to_owned(),
            topics::ROOM_NEWS.to_owned(),
            topics::ROOM_STOCK.to_owned(),
        ];
        let joined = self.fanout.join(&who.socket_id, &rooms).await.is_ok();
        if joined {
            metrics::counter!(ROOM_JOINS).increment(1);
        }
        joined
    }

    async fn hydrate(&self, who: &ClientIdentity) {
        let cached = SnapshotRequest::ALL.map(|r| self.cached_snapshot(r));
        let cached = futures::future::join_all(cached).await;
        let _reading = self.local.reading().await;
        for (request, cached) in SnapshotRequest::ALL.into_iter().zip(cached) {
            if let Some(payload) = self.lookup(request, cached) {
                let name = request.reply_event();
                self.reply(who, name, &payload, "hydration", "hit").await;
            }
        }
    }

    /// The snapshot as a success reply: the process's own first, else `cached`, what
    /// [`cached_snapshot`](Self::cached_snapshot) found. Called under the
    /// [`reading`](LocalSnapshots::reading) gate, held until the reply is pushed.
    fn lookup(&self, request: SnapshotRequest, cached: Cached) -> Option<Payload> {
        let key = request.snapshot().key;
        let (result, hit) = match self.local.get(key).and_then(|text| request.hit(&text)) {
            Some(hit) => ("local", Some(hit)),
            None => cached,
        };
        metrics::counter!(SNAPSHOT_LOOKUPS, "key" => key, "result" => result).increment(1);
        hit
    }

    /// The shared cache's snapshot as a success reply (D24), when the process has none of its
    /// own, and if it is valid (another writer may share the key); a cache error or timeout
    /// counts as a miss. Read before the gate: the cache may take its timeout.
    async fn cached_snapshot(&self, request: SnapshotRequest) -> Cached {
        let key = request.snapshot().key;
        if self.local.holds(key) {
            return ("local", None);
        }
        match self.cache.get(key).await {
            Ok(Some(text)) => match request.cached_hit(&text) {
                Some(p) => ("hit", Some(p)),
                None => ("corrupt", None),
            },
            Ok(None) => ("miss", None),
            Err(e) => {
                tracing::debug!(key, error = %e, "snapshot lookup failed; treated as a miss");
                ("error", None)
            }
        }
    }

    /// One command per city outstanding (D23), then the per-user dedup window (D15) for the
    /// command that would go; whatever stops it gives the city's claim back.
    async fn send_weather_command(&self, who: &ClientIdentity, city: &str, location: &Value) {
        if !self.health.consuming() {
            metrics::counter!(COMMANDS_REFUSED, "topic" => topics::WEATHER_FETCH).increment(1);
            return;
        }
        let Some(claim) = self.weather.claim(city) else {
            metrics::counter!(WEATHER_JOINS, "outcome" => "in_flight").increment(1);
            return;
        };
        metrics::counter!(WEATHER_JOINS, "outcome" => "command").increment(1);
        let hash = canonical_hash(location);
        if !self.dedup.claim(&who.user_id, &hash).await {
            self.weather.release(city, claim);
            metrics::counter!(DEDUP_HITS).increment(1);
            return;
        }
        let command =
            commands::weather_fetch(&who.socket_id, &who.user_id, location, SystemTime::now());
        if self.send(command).await.is_err() {
            self.weather.release(city, claim);
            self.dedup.release(&who.user_id, &hash).await;
        }
    }

    async fn refresh(&self, what: Refresh, reason: Reason) -> Result<(), CommandSinkError> {
        if !self.health.consuming() {
            metrics::counter!(COMMANDS_REFUSED, "topic" => what.topic()).increment(1);
            return Ok(());
        }
        if !self.lock_throttle().try_acquire(what, Instant::now()) {
            return Ok(());
        }
        let result = self
            .send(commands::refresh(what, reason, SystemTime::now()))
            .await;
        if result.is_err() {
            self.lock_throttle().release(what);
        }
        result
    }

    /// Sends the four start-up refreshes in order (D12), retrying each with back-off (reusing
    /// its idempotency key) until it is accepted or `stop` fires. One the broker refuses (its
    /// topic not allowed, or missing with topic creation off) is tried again after the others,
    /// so that it holds none of them back.
    pub async fn send_startup_refreshes(&self, stop: CancellationToken, max_backoff: Duration) {
        let mut pending: VecDeque<Command> = commands::startup_refreshes(SystemTime::now()).into();
        let mut delays = reconnect_backoff(max_backoff);
        while let Some(command) = pending.pop_front() {
            match self.send(command.clone()).await {
                Ok(()) => {
                    delays = reconnect_backoff(max_backoff);
                    continue;
                }
                Err(CommandSinkError::Rejected(_)) => pending.push_back(command),
                Err(_) => pending.push_front(command),
            }
            let delay = delays.next().unwrap_or(max_backoff);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("start-up refresh commands sent");
    }

    /// Until `stop`: while the producer is marked down (a send failed) and the consumers run,
    /// probes the broker every `period` and marks the producer up again when it answers, so
    /// that readiness does not wait for the next client command (a quiet replica would stay
    /// not ready; found by the chaos soak, issue 19).
    pub async fn watch_producer(&self, stop: CancellationToken, period: Duration) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if self.health.producing() || !self.health.consuming() {
                continue;
            }
            if self.sink.probe().await.is_ok() {
                tracing::info!("command producer reachable again");
                self.health.set_producing(true);
            }
        }
    }

    /// Sends a command and records the outcome in the metrics and the producer's health.
    pub async fn send(&self, command: Command) -> Result<(), CommandSinkError> {
        let topic = command.topic.clone();
        match self.sink.send(command).await {
            Ok(()) => {
                self.health.set_producing(true);
                metrics::counter!(COMMANDS_PRODUCED, "topic" => topic).increment(1);
                Ok(())
            }
            Err(e) => {
                // Only brokers that cannot be reached mark the producer down (D33): a refusal
                // is the brokers' verdict, which every replica gets; readiness dropping on
                // every replica would take the fan-out down too, and the probe, which reaches
                // the brokers, would mark the producer up again at once.
                if matches!(e, CommandSinkError::Unavailable(_)) {
                    self.health.set_producing(false);
                }
                if let Some(held_back) = self.failure_log.admit(&topic) {
                    tracing::warn!(topic = %topic, error = %e, held_back, "command not sent");
                }
                metrics::counter!(COMMANDS_FAILED, "topic" => topic).increment(1);
                Err(e)
            }
        }
    }

    async fn reply(
        &self,
        who: &ClientIdentity,
        event: &str,
        payload: &Payload,
        kind: &'static str,
        outcome: &'static str,
    ) {
        if self
            .fanout
            .to_socket(&who.socket_id, event, payload, EmitOptions::PLAIN)
            .await
            .is_ok()
        {
            metrics::counter!(REPLIES, "kind" => kind, "outcome" => outcome).increment(1);
        }
    }

    fn lock_throttle(&self) -> std::sync::MutexGuard<'_, RefreshThrottle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Declares the client service's series at zero: commands per topic (produced, failed,
/// refused), room joins.
pub fn declare_metrics() {
    for topic in topics::COMMAND_TOPICS {
        metrics::counter!(COMMANDS_PRODUCED, "topic" => topic).increment(0);
        metrics::counter!(COMMANDS_FAILED, "topic" => topic).increment(0);
        metrics::counter!(COMMANDS_REFUSED, "topic" => topic).increment(0);
    }
    metrics::counter!(ROOM_JOINS).increment(0);
}

#[async_trait]
impl ClientRequests for ClientService {
    /// The first event of every connection (D1).
    fn session_init(&self, who: &ClientIdentity) -> (&'static str, Payload) {
        (
            EV_SESSION_INIT,
            Payload::new(&json!({"userId": who.user_id, "userType": "guest"})),
        )
    }

    /// `getUserId` (legacy): answered with `userUniqueId` carrying the same id.
    async fn user_id(&self, who: &ClientIdentity) {
        let payload = Payload::new(&who.user_id);
        self.reply(who, EV_USER_UNIQUE_ID, &payload, "userId", "ok")
            .await;
    }

    /// `userLocationUpdate`: switch the weather room, join the global rooms, hydrate every
    /// cached snapshot (D4) and the city's weather when it is fresh (D23), then send the
    /// weather command unless the city's weather is fresh or already asked for, or the
    /// location is invalid, a duplicate within the window, or Kafka is down.
    async fn location_update(&self, who: &ClientIdentity, arg: Option<&Value>) {
        let intent = location::interpret(arg);
        if !self.switch_rooms(who, &intent.room).await {
            // Gone meanwhile: nothing to hydrate, and no command for a socket that cannot
            // receive its answer (nor a dedup entry or a city claim taken for it).
            return;
        }
        self.hydrate(who).await;
        let city = intent.city().to_owned();
        let city = city.as_str();
        let found = self.weather.on_join(city).await;
        if let Found::Fresh(found) = &found {
            // Under the gate, the newest result recorded: one emitted to the room since the
            // lookup must not be followed by this older one.
            let _reading = self.local.reading().await;
            let payload = self.weather.fresh(city);
            let event = topics::weather_event(city);
            let payload = payload.as_ref().unwrap_or(found);
            self.reply(who, &event, payload, "weather", "fresh").await;
        }
        match intent.forward {
            Err(reason) => {
                metrics::counter!(LOCATIONS_INVALID, "reason" => reason).increment(1);
                tracing::debug!(socket = %who.socket_id, reason, "location not forwarded");
            }
            Ok(location) => match found {
                Found::Fresh(_) => {
                    metrics::counter!(WEATHER_JOINS, "outcome" => "fresh").increment(1);
                }
                Found::InFlight => {
                    metrics::counter!(WEATHER_JOINS, "outcome" => "in_flight").increment(1);
                }
                Found::Nothing => self.send_weather_command(who, city, &location).await,
            },
        }
    }

    /// One of the four snapshot requests: the cached snapshot, or `loading` and (for movers
    /// and news) one throttled refresh command, or `error` when that command failed.
    async fn snapshot_request(&self, who: &ClientIdentity, request: SnapshotRequest) {
        let name = request.reply_event();
        let cached = self.cached_snapshot(request).await;
        {
            let _reading = self.local.reading().await;
            if let Some(hit) = self.lookup(request, cached) {
                self.reply(who, name, &hit, name, "hit").await;
                return;
            }
        }
        match request {
            // Movers: `loading` at once, then the refresh; a failed send adds an `error`.
            SnapshotRequest::TopMovers => {
                self.reply(who, name, &request.miss(), name, "loading")
                    .await;
                if let Err(e) = self.refresh(Refresh::TopMovers, Reason::Startup).await {
                    let payload = request.error(client_cause(&e));
                    self.reply(who, name, &payload, name, "error").await;
                }
            }
            // News: the refresh first, then `loading`, or only `error` when the send failed.
            SnapshotRequest::News => {
                match self.refresh(Refresh::News, Reason::RefreshCache).await {
                    Ok(()) => {
                        self.reply(who, name, &request.miss(), name, "loading")
                            .await;
                    }
                    Err(e) => {
                        let payload = request.error(client_cause(&e));
                        self.reply(who, name, &payload, name, "error").await;
                    }
                }
            }
            SnapshotRequest::TopCoins | SnapshotRequest::Stocks => {
                self.reply(who, name, &request.miss(), name, "loading")
                    .await;
            }
        }
    }
}

/// The `error` of a reply whose refresh command failed: its class only (D35). The adapter's
/// text names brokers, topics and what to check in the configuration: the log has it.
fn client_cause(error: &CommandSinkError) -> &'static str {
    match error {
        CommandSinkError::Unavailable(_) => "command sink unavailable",
        CommandSinkError::Rejected(_) => "command rejected",
    }
}

/// What the shared cache gave for a snapshot: the `result` label of its lookup, and the
/// reply when it had a valid one.
type Cached = (&'static str, Option<Payload>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{MemoryCache, RecordingFanout, Target};
    use crate::app::limits::LimitSettings;
    use crate::ports::CacheError;
    use crate::ports::command_sink::MockCommandSink;
    use crate::ports::snapshot_cache::MockSnapshotCache;
    use futures::FutureExt as _;

    fn who() -> ClientIdentity {
        ClientIdentity {
            socket_id: "s1".into(),
            user_id: "u1".into(),
            ip: None,
        }
    }

    fn pune() -> Value {
        json!({"city":"Pune","region":"Maharashtra","country":"IN","lat":18.52,"lon":73.85,"ip":"49.36.112.10"})
    }

    /// A sink whose one send fails: the broker is down.
    fn sink_failing_once() -> MockCommandSink {
        let mut sink = MockCommandSink::new();
        sink.expect_send()
            .times(1)
            .returning(|_| Err(CommandSinkError::Unavailable("broker down".into())));
        sink
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_up_refresh_the_broker_refuses_holds_none_of_the_others_back() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sink = MockCommandSink::new();
        let log = sent.clone();
        let mut refusals = 2;
        sink.expect_send().returning(move |command| {
            let topic = command.topic.clone();
            log.lock().unwrap().push(topic.clone());
            if topic == crate::domain::topics::TOPCOINS_REFRESH && refusals > 0 {
                refusals -= 1;
                return Err(CommandSinkError::Rejected(format!(
                    "{topic}: not authorized"
                )));
            }
            Ok(())
        });
        let (svc, _) = service(Arc::new(MemoryCache::default()), sink);
        tokio::time::timeout(
            Duration::from_secs(60),
            svc.send_startup_refreshes(CancellationToken::new(), Duration::from_secs(1)),
        )
        .await
        .expect("all sent, the refused one after the others");
        let order: Vec<String> = commands::startup_refreshes(SystemTime::now())
            .into_iter()
            .map(|c| c.topic)
            .collect();
        let refused = crate::domain::topics::TOPCOINS_REFRESH.to_owned();
        assert_eq!(order[0], refused, "the first of D12's order");
        let mut expected = order.clone();
        expected.push(refused.clone());
        expected.push(refused);
        assert_eq!(*sent.lock().unwrap(), expected);
    }

    fn service(
        cache: Arc<dyn SnapshotCache>,
        sink: MockCommandSink,
    ) -> (ClientService, Arc<RecordingFanout>) {
        let fanout = Arc::new(RecordingFanout::default());
        fanout.connect("s1");
        let health = Arc::new(Health::new());
        health.set_consuming(true);
        let limits = LimitSettings::default();
        let weather = Arc::new(WeatherDesk::new(cache.clone(), &limits));
        let svc = ClientService::new(
            Arc::default(),
            cache,
            Arc::new(sink),
            fanout.clone(),
            health,
            weather,
            &limits,
        );
        (svc, fanout)
    }

    /// A service on `local`, `cache`, `fanout` and `weather` that sends no command (Kafka not
    /// consuming, and a sink that expects none).
    fn quiet_service(
        local: Arc<LocalSnapshots>,
        cache: Arc<MemoryCache>,
        fanout: crate::ports::client_fanout::MockClientFanout,
        weather: Arc<WeatherDesk>,
    ) -> ClientService {
        let limits = LimitSettings::default();
        let sink = Arc::new(MockCommandSink::new());
        let health = Arc::new(Health::new());
        ClientService::new(
            local,
            cache,
            sink,
            Arc::new(fanout),
            health,
            weather,
            &limits,
        )
    }

    #[tokio::test]
    async fn a_cache_error_skips_hydration_but_rooms_and_the_command_still_happen() {
        let mut cache = MockSnapshotCache::new();
        cache
            .expect_get()
            .returning(|_| Err(CacheError::Timeout(std::time::Duration::from_millis(250))));
        cache.expect_set_unless_same().returning(|_, _, _| Ok(true));
        let mut sink = MockCommandSink::new();
        sink.expect_send()
            .withf(|c| c.topic == topics::WEATHER_FETCH && c.key.as_deref() == Some("s1"))
            .times(1)
            .returning(|_| Ok(()));
        let (svc, fanout) = service(Arc::new(cache), sink);
        svc.location_update(&who(), Some(&pune())).await;
        assert!(
            fanout.delivered().is_empty(),
            "no hydration on a cache error"
        );
        let rooms = fanout.rooms_of("s1").await.unwrap();
        assert_eq!(
            rooms,
            [
                "crypto.global",
                "news.global",
                "stock.global",
                "weather.Pune"
            ]
        );
    }

    /// A reply pushes the snapshot it read while it holds the gate that keeps the ingest from
    /// storing and emitting a newer one: the socket gets the older snapshot before the newer
    /// event, never after it.
    #[tokio::test]
    async fn a_reply_pushes_its_snapshot_before_a_newer_one_can_be_published() {
        let local = Arc::new(LocalSnapshots::default());
        local.put(
            &crate::domain::SnapshotWrite {
                key: topics::SNAP_NEWS,
                value: r#"[{"title":"t"}]"#.into(),
            },
            None,
        );
        let mut fanout = crate::ports::client_fanout::MockClientFanout::new();
        fanout.expect_to_socket().times(1).returning({
            let local = local.clone();
            move |_, event, _, _| {
                assert_eq!(event, "newsUpdate");
                assert!(
                    local.publishing().now_or_never().is_none(),
                    "a newer snapshot waits for the push"
                );
                Ok(())
            }
        });
        let limits = LimitSettings::default();
        let cache = Arc::new(MemoryCache::default());
        let weather = Arc::new(WeatherDesk::new(cache.clone(), &limits));
        let svc = quiet_service(local.clone(), cache, fanout, weather);
        svc.snapshot_request(&who(), SnapshotRequest::News).await;
        assert!(
            local.publishing().now_or_never().is_some(),
            "the gate is let go"
        );
    }

    /// A join's fresh weather reply is pushed under the gate, with the newest result
    /// recorded: a newer one waits to be recorded and emitted until the push is done (D23).
    #[tokio::test]
    async fn a_fresh_weather_reply_is_pushed_before_a_newer_result_can_be_published() {
        let local = Arc::new(LocalSnapshots::default());
        let limits = LimitSettings::default();
        let cache = Arc::new(MemoryCache::default());
        let weather = Arc::new(WeatherDesk::new(cache.clone(), &limits));
        weather.record(
            &crate::domain::weather::WeatherResult {
                city: "Pune".into(),
                latest: Some(Payload::new(&json!({"data": {"city": "Pune"}}))),
            },
            None,
        );
        let mut fanout = crate::ports::client_fanout::MockClientFanout::new();
        fanout.expect_rooms_of().returning(|_| Ok(Vec::new()));
        fanout.expect_join().returning(|_, _| Ok(()));
        fanout
            .expect_to_socket()
            .withf(|_, event, _, _| event == "weather.Pune.update")
            .times(1)
            .returning({
                let local = local.clone();
                move |_, _, payload, _| {
                    assert_eq!(payload.to_value()["data"]["city"], "Pune");
                    assert!(
                        local.publishing().now_or_never().is_none(),
                        "a newer result waits for the push"
                    );
                    Ok(())
                }
            });
        let svc = quiet_service(local.clone(), cache, fanout, weather);
        svc.location_update(&who(), Some(&pune())).await;
        assert!(
            local.publishing().now_or_never().is_some(),
            "the gate is let go"
        );
    }

    /// Another writer of the shared cache (the original BFF during a migration) may leave
    /// values this gateway never stores (contract e.9): they are not served, a valid one is.
    #[tokio::test]
    async fn hydration_serves_only_valid_snapshots_from_the_shared_cache() {
        let cache = Arc::new(MemoryCache::default());
        let ttl = Duration::from_secs(60);
        let unavailable = r#"{"status":"unavailable","reason":"rate_limited"}"#;
        let movers = format!(r#"{{"topGainers":{unavailable},"topLosers":{unavailable}}}"#);
        for (key, value) in [
            (topics::SNAP_STOCKS.key, "[]"),
            (topics::SNAP_MOVERS.key, movers.as_str()),
            (topics::SNAP_NEWS.key, r#"[{"title":"t"}]"#),
        ] {
            cache.set(key, value, ttl).await.unwrap();
        }
        let mut sink = MockCommandSink::new();
        sink.expect_send().returning(|_| Ok(()));
        let (svc, fanout) = service(cache, sink);
        svc.location_update(&who(), Some(&pune())).await;
        let events: Vec<_> = fanout.delivered().iter().map(|d| d.event.clone()).collect();
        assert_eq!(events, ["newsUpdate"]);
    }

    #[tokio::test]
    async fn a_sink_error_on_a_cold_news_request_gives_the_contract_error_reply() {
        let sink = sink_failing_once();
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), sink);
        svc.snapshot_request(&who(), SnapshotRequest::News).await;
        let got = fanout.delivered();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].target, Target::Socket("s1".into()));
        assert_eq!(got[0].event, "newsUpdate");
        let payload = got[0].payload.to_value();
        assert_eq!(payload["status"], "error");
        assert_eq!(payload["message"], "Failed to fetch news");
        // The class only: the sink's text ("broker down" here) names brokers and topics.
        assert_eq!(payload["error"], "command sink unavailable");
    }

    #[tokio::test]
    async fn a_cold_movers_request_replies_loading_first_then_error_when_the_refresh_fails() {
        let sink = sink_failing_once();
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), sink);
        svc.snapshot_request(&who(), SnapshotRequest::TopMovers)
            .await;
        let got: Vec<_> = fanout
            .delivered()
            .iter()
            .map(|d| (d.event.clone(), d.payload.to_value()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "cryptoTopMoversResponse");
        assert_eq!(
            got[0].1,
            json!({"status": "loading", "message": "Data will refresh when backend reconnects"})
        );
        assert_eq!(
            got[1].1,
            json!({
                "status": "error",
                "message": "Failed to fetch top movers",
                "error": "command sink unavailable"
            })
        );
    }

    #[tokio::test]
    async fn a_cold_movers_request_does_not_wait_for_the_refresh_to_reply_loading() {
        // The sink holds the send until the test has seen the `loading` reply.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(held);
        let mut sink = MockCommandSink::new();
        sink.expect_send().times(1).returning(move |_| {
            // Far longer than the test waits for `loading`: sent after the refresh, it fails.
            let _ = held
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(30));
            Ok(())
        });
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), sink);
        let svc = Arc::new(svc);
        let request = tokio::task::spawn_blocking({
            let svc = svc.clone();
            move || {
                tokio::runtime::Handle::current()
                    .block_on(svc.snapshot_request(&who(), SnapshotRequest::TopMovers))
            }
        });
        let got = fanout.wait_for(1, std::time::Duration::from_secs(2)).await;
        assert_eq!(got.len(), 1, "no loading reply while the refresh was held");
        assert_eq!(got[0].payload.to_value()["status"], "loading");
        release.send(()).unwrap();
        request.await.unwrap();
        assert_eq!(
            fanout.delivered().len(),
            1,
            "no reply after a successful refresh"
        );
    }

    #[tokio::test]
    async fn a_failed_weather_send_releases_the_dedup_window() {
        let mut sink = MockCommandSink::new();
        let mut calls = 0;
        sink.expect_send().times(2).returning(move |_| {
            calls += 1;
            if calls == 1 {
                Err(CommandSinkError::Unavailable("x".into()))
            } else {
                Ok(())
            }
        });
        let (svc, _) = service(Arc::new(MemoryCache::default()), sink);
        svc.location_update(&who(), Some(&pune())).await;
        svc.location_update(&who(), Some(&pune())).await;
    }

    #[tokio::test]
    async fn a_location_update_of_a_socket_gone_meanwhile_sends_nothing() {
        // No command expected: the mock sink fails the test on any send.
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), MockCommandSink::new());
        fanout.disconnect("s1");
        svc.location_update(&who(), Some(&pune())).await;
        assert!(fanout.delivered().is_empty(), "{:?}", fanout.delivered());
    }

    fn who_else(user: &str) -> ClientIdentity {
        ClientIdentity {
            socket_id: "s1".into(),
            user_id: user.into(),
            ip: None,
        }
    }

    #[tokio::test]
    async fn a_join_while_the_citys_command_is_outstanding_sends_nothing() {
        let mut sink = MockCommandSink::new();
        sink.expect_send()
            .withf(|c| c.topic == topics::WEATHER_FETCH)
            .times(1)
            .returning(|_| Ok(()));
        let (svc, _) = service(Arc::new(MemoryCache::default()), sink);
        svc.location_update(&who_else("u1"), Some(&pune())).await;
        svc.location_update(&who_else("u2"), Some(&pune())).await;
        svc.location_update(&who_else("u3"), Some(&pune())).await;
    }

    #[tokio::test]
    async fn a_dedup_hit_gives_the_citys_claim_back() {
        let mut cache = MockSnapshotCache::new();
        cache.expect_get().returning(|_| Ok(None));
        let mut claims = 0;
        cache.expect_set_unless_same().returning(move |_, _, _| {
            claims += 1;
            Ok(claims > 1) // the first user's location is a duplicate
        });
        let mut sink = MockCommandSink::new();
        sink.expect_send()
            .withf(|c| serde_json::from_slice::<Value>(&c.value).is_ok_and(|v| v["userId"] == "u2"))
            .times(1)
            .returning(|_| Ok(()));
        let (svc, _) = service(Arc::new(cache), sink);
        svc.location_update(&who_else("u1"), Some(&pune())).await;
        svc.location_update(&who_else("u2"), Some(&pune())).await;
    }

    #[tokio::test]
    async fn a_fresh_result_goes_to_the_joining_socket_only_and_no_command() {
        let mut sink = MockCommandSink::new();
        sink.expect_send().never();
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), sink);
        let payload = Payload::new(&json!({"data": {"city": "Pune"}, "status": "success"}));
        svc.weather
            .record(
                &crate::domain::weather::WeatherResult {
                    city: "Pune".into(),
                    latest: Some(payload.clone()),
                },
                None,
            )
            .unwrap();
        svc.location_update(&who(), Some(&pune())).await;
        let got = fanout.delivered();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].target, Target::Socket("s1".into()));
        assert_eq!(got[0].event, "weather.Pune.update");
        assert_eq!(got[0].payload, payload);
    }

    #[tokio::test]
    async fn commands_are_refused_while_kafka_is_down() {
        let mut sink = MockCommandSink::new();
        sink.expect_send().never();
        let (svc, fanout) = service(Arc::new(MemoryCache::default()), sink);
        svc.health.set_consuming(false);
        svc.location_update(&who(), Some(&pune())).await;
        svc.snapshot_request(&who(), SnapshotRequest::TopMovers)
            .await;
        let got = fanout.delivered();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].payload.to_value()["status"], "loading");
    }

    #[tokio::test]
    async fn a_command_the_brokers_refuse_fails_and_leaves_the_producer_up() {
        let mut sink = MockCommandSink::new();
        let mut answers = [true, false].into_iter();
        sink.expect_send().times(2).returning(move |_| {
            if answers.next() == Some(true) {
                Ok(())
            } else {
                Err(CommandSinkError::Rejected("NotEnoughReplicas".into()))
            }
        });
        let (svc, _) = service(Arc::new(MemoryCache::default()), sink);
        let news = || commands::refresh(Refresh::News, Reason::RefreshCache, SystemTime::now());
        svc.send(news()).await.expect("accepted");
        assert!(svc.health.ready());

        let refused = svc.send(news()).await;

        assert!(matches!(refused, Err(CommandSinkError::Rejected(_))));
        assert!(svc.health.producing(), "the brokers answered: not down");
        assert!(
            svc.health.ready(),
            "a refusal does not take the replica out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_producer_marked_down_is_marked_up_when_the_broker_answers_again() {
        // A send failed during an outage; no client sends anything after it.
        let mut sink = sink_failing_once();
        let mut answers = [false, true].into_iter();
        sink.expect_probe().returning(move || match answers.next() {
            Some(true) => Ok(()),
            _ => Err(CommandSinkError::Unavailable("still down".into())),
        });
        let (svc, _) = service(Arc::new(MemoryCache::default()), sink);
        let svc = Arc::new(svc);
        let _ = svc
            .send(commands::refresh(
                Refresh::News,
                Reason::RefreshCache,
                SystemTime::now(),
            ))
            .await;
        assert!(!svc.health.producing());
        let stop = CancellationToken::new();
        let watch = {
            let (svc, stop) = (svc.clone(), stop.clone());
            tokio::spawn(async move { svc.watch_producer(stop, Duration::from_secs(2)).await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!svc.health.producing(), "the first probe found no broker");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(svc.health.producing(), "the second probe found it");
        assert!(svc.health.ready(), "ready again without a command");
        stop.cancel();
        watch.await.unwrap();
    }
}
