//! `ValkeySnapshotCache`: the snapshot cache on Valkey. Every call is bounded by the configured
//! timeout; a failure puts the cache in degraded mode (calls fail at once, a background probe
//! reconnects) so that the real-time path never waits on a dead cache.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bb8::{Pool, RunError};
use redis::{Arg, Cmd, FromRedisValue};
use tokio::time::{Instant, timeout, timeout_at};

use super::connection::{ConnectErrors, Connector, Failure, command_fix};
use super::settings::{ValkeySettings, describe_addr};
use crate::ports::{CacheError, SnapshotCache};
use crate::telemetry::metrics::{CACHE_REQUESTS, CACHE_UP};
use crate::telemetry::throttle::{LOG_BURST, LOG_PERIOD, LogThrottle};

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// First pause of the background probe after a failure; it doubles up to `PROBE_MAX_DELAY`,
/// which bounds how long a recovered server stays unused.
const PROBE_FIRST_DELAY: Duration = Duration::from_millis(100);
const PROBE_MAX_DELAY: Duration = Duration::from_secs(1);

/// Whether the cache is up, and the gauge `flux_cache_up` that shows it.
///
/// A change sets both under one lock, so that the last change sets both: set one after the
/// other, a call timing out (state DOWN) and one succeeding (state UP, gauge 1) could
/// interleave so that the gauge is set 0 last, and stays 0 while the cache works.
struct Availability {
    state: AtomicU8,     // read without the lock
    changing: Mutex<()>, // std Mutex: never held across an .await
}

impl Availability {
    fn new() -> Self {
        metrics::gauge!(CACHE_UP).set(0.0);
        Self {
            state: AtomicU8::new(UNKNOWN),
            changing: Mutex::new(()),
        }
    }

    fn get(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Sets the state and the gauge to match; returns the state before.
    fn set(&self, to: u8) -> u8 {
        if self.get() == to {
            return to; // whoever set it sets (or has set) the gauge too
        }
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.state.swap(to, Ordering::SeqCst);
        metrics::gauge!(CACHE_UP).set(if to == UP { 1.0 } else { 0.0 });
        previous
    }
}

/// The [`SnapshotCache`] on Valkey (or Redis) through a bb8 pool of multiplexed connections.
///
/// - Keys are `key_prefix + key`; values are stored as given (JSON text).
/// - Every call, pool checkout included, ends within `timeout`, with
///   [`CacheError::Timeout`] or [`CacheError::Unavailable`] when the server is slow or down.
/// - A call that finds the server unreachable, refusing the credentials, or silent puts the
///   cache in degraded mode: one warning is logged, [`SnapshotCache::is_available`] turns
///   false, and further calls fail at once (no waiting) while a background probe reconnects
///   (after 100 ms, then doubling up to 1 s). The first successful call or probe restores
///   normal mode, with one info line.
/// - A pooled connection found closed (the server restarted) does not degrade the cache: the
///   pool is replaced and the call retried once, except `set_unless_same`, which may have run
///   and fails instead.
/// - A command the server refuses while it works (NOPERM, MOVED, WRONGTYPE, OOM) fails that
///   call only, with a warning naming the code, the command and the fix (throttled per code).
/// - Metrics: `flux_cache_requests_total{op, result}` (`op` = `get` | `set` |
///   `set_unless_same` | `delete_if_same` | `delete`; `result` = `hit` | `miss` for `get`, `ok` for the others, or `error` |
///   `timeout`) and the gauge `flux_cache_up` (1 reachable, 0 not yet or not any more).
pub struct ValkeySnapshotCache {
    shared: Arc<Shared>,
}

struct Shared {
    host: String,
    prefix: String,
    timeout: Duration,
    pool_size: u32,
    connector: Connector,
    connect_errors: ConnectErrors,
    /// Replaced by a fresh pool when the cache goes down or a pooled connection turns out
    /// dead, dropping every connection of the old server at once instead of discovering them
    /// dead one call at a time.
    pool: RwLock<Generation>,
    state: Availability,
    /// Why the cache is down, for the errors returned while degraded.
    cause: Mutex<String>, // std Mutex: never held across an .await
    probing: AtomicBool,
    /// Warnings of commands the server refuses while it works, per error code.
    refusals: LogThrottle<String>,
}

/// The pool and how many times it was replaced. A call that found a connection dead replaces
/// the pool only if it is still the one the call used: the calls of a burst share one
/// multiplexed connection, so after a restart they all fail at once, and each replacing the
/// pool would drop the connection the previous replacement was opening (one connection per
/// call instead of one).
struct Generation {
    number: u64,
    pool: Pool<Connector>,
}

impl ValkeySnapshotCache {
    /// Builds the pool without connecting, then probes the server in the background: start-up
    /// never waits for Valkey. Until the probe or a call succeeds, `is_available()` is false
    /// (calls are still attempted). If the server cannot be reached or refuses the
    /// credentials, one warning names the host and the cause and the cache runs degraded.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// Only an invalid configuration: see [`ValkeySettings::validate`], and a password file
    /// that cannot be read.
    pub async fn connect(settings: &ValkeySettings) -> anyhow::Result<Self> {
        let info = settings.connection_info()?;
        let host = describe_addr(info.addr());
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            // redis builds its rustls config from the process-wide provider; an error only
            // means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(info)
            .map_err(|e| anyhow::anyhow!("valkey.url: cannot be used for {host}: {e}"))?;
        let connector = Connector::new(client, settings.timeout);
        let connect_errors = ConnectErrors::default();
        let pool = connector.pool(settings.pool_size, settings.timeout, &connect_errors);
        let shared = Arc::new(Shared {
            host,
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            pool_size: settings.pool_size,
            connector,
            connect_errors,
            pool: RwLock::new(Generation { number: 0, pool }),
            state: Availability::new(),
            cause: Mutex::new(String::new()),
            probing: AtomicBool::new(false),
            refusals: LogThrottle::new(LOG_BURST, LOG_PERIOD),
        });
        shared.spawn_probe();
        Ok(Self { shared })
    }

    /// `host:port` of the server, for logs.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.shared.prefix)
    }
}

impl std::fmt::Debug for ValkeySnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeySnapshotCache")
            .field("host", &self.shared.host)
            .field("prefix", &self.shared.prefix)
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

fn record(op: &'static str, result: &'static str) {
    metrics::counter!(CACHE_REQUESTS, "op" => op, "result" => result).increment(1);
}

fn outcome<T>(result: &Result<T, CacheError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CacheError::Timeout(_)) => "timeout",
        Err(CacheError::Unavailable(_)) => "error",
    }
}

/// The command's name (`GET`, `EVAL`), for logs.
fn command_name(cmd: &Cmd) -> String {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => String::from_utf8_lossy(name).to_uppercase(),
        _ => "a command".into(),
    }
}

/// Milliseconds for `PX`, at least 1 (`PX 0` is an error in Valkey).
fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl SnapshotCache for ValkeySnapshotCache {
    #[tracing::instrument(level = "debug", skip(self))]
    async fn get(&self, key: &str) -> Result<Option<String>, CacheError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(key));
        let result = self.shared.exec::<Option<String>>(&cmd, true).await;
        let label = match &result {
            Ok(Some(_)) => "hit",
            Ok(None) => "miss",
            other => outcome(other),
        };
        record("get", label);
        result
    }

    #[tracing::instrument(level = "debug", skip(self, value))]
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("PX").arg(px(ttl));
        let result = self.shared.exec::<()>(&cmd, true).await;
        record("set", outcome(&result));
        result
    }

    #[tracing::instrument(level = "debug", skip(self, value))]
    async fn set_unless_same(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        // A script runs atomically on the server: compare and set in one step.
        const SET_UNLESS_SAME: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end \
             redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SET_UNLESS_SAME)
            .arg(1)
            .arg(self.key(key))
            .arg(value)
            .arg(px(ttl));
        // Not retried on a dropped connection: the first attempt may have stored the value,
        // and a retry would then report a duplicate. The caller's fallback handles the error;
        // the cache stays up (the pool is replaced, and the next call finds out).
        let result = self
            .shared
            .exec::<i64>(&cmd, false)
            .await
            .map(|stored| stored == 1);
        record("set_unless_same", outcome(&result));
        result
    }

    #[tracing::instrument(level = "debug", skip(self, value))]
    async fn delete_if_same(&self, key: &str, value: &str) -> Result<(), CacheError> {
        const DELETE_IF_SAME: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             redis.call('DEL', KEYS[1]) end return 0";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DELETE_IF_SAME).arg(1).arg(self.key(key)).arg(value);
        let result = self.shared.exec::<i64>(&cmd, true).await.map(drop);
        record("delete_if_same", outcome(&result));
        result
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(key));
        let result = self.shared.exec::<()>(&cmd, true).await;
        record("delete", outcome(&result));
        result
    }

    fn is_available(&self) -> bool {
        self.shared.state.get() == UP
    }
}

impl Shared {
    /// Runs `cmd` within the timeout, keeping the availability state up to date.
    async fn exec<T: FromRedisValue>(
        self: &Arc<Self>,
        cmd: &Cmd,
        retry_dropped: bool,
    ) -> Result<T, CacheError> {
        if self.state.get() == DOWN {
            self.spawn_probe();
            return Err(self.unavailable());
        }
        let deadline = Instant::now() + self.timeout;
        let mut retries_left = u8::from(retry_dropped);
        loop {
            let (generation, pool) = self.current_pool();
            match self.attempt(&pool, cmd, deadline).await {
                Ok(value) => {
                    self.mark_up();
                    return Ok(value);
                }
                Err(failure) if failure.is_dropped_connection() && retries_left > 0 => {
                    // The server probably restarted: its other pooled connections are dead
                    // too, so retry on a fresh pool (the one another call of the burst may
                    // have made already).
                    retries_left -= 1;
                    self.replace_pool(generation);
                }
                Err(Failure::Down {
                    cause,
                    dropped: true,
                }) if !retry_dropped => {
                    // Same, for a command that must not run twice. redis cannot tell whether
                    // it was sent before the connection closed, so it is not retried, but the
                    // next call, on a fresh pool, finds out whether the server is down.
                    self.replace_pool(generation);
                    tracing::debug!(
                        host = %self.host,
                        error = %cause,
                        "valkey connection closed under a call that is not retried"
                    );
                    return Err(CacheError::Unavailable(format!(
                        "Valkey at {} {cause}",
                        self.host
                    )));
                }
                Err(failure) => return Err(self.fail(failure, generation, cmd)),
            }
        }
    }

    /// The pool calls use now, and its generation, for [`Shared::replace_pool`].
    fn current_pool(&self) -> (u64, Pool<Connector>) {
        let current = self.pool.read().unwrap_or_else(|e| e.into_inner());
        (current.number, current.pool.clone())
    }

    async fn attempt<T: FromRedisValue>(
        &self,
        pool: &Pool<Connector>,
        cmd: &Cmd,
        deadline: Instant,
    ) -> Result<T, Failure> {
        let checkout = async {
            let failed = self.connect_errors.failed();
            tokio::pin!(failed);
            loop {
                let conn = tokio::select! {
                    conn = pool.get() => conn.map_err(|e| match e {
                        RunError::User(e) => Failure::from_connect_error(&e),
                        RunError::TimedOut => self.connect_failure(),
                    })?,
                    () = &mut failed => return Err(self.connect_failure()),
                };
                // The guard goes back to the pool here, before the command runs: the leases
                // of one connection pipeline their commands, so a burst of calls must not
                // wait for a free connection (and time out as if the server were down).
                // A connection whose lease failed meanwhile is dropped by the pool instead.
                if !conn.is_broken() {
                    return Ok(conn.lease());
                }
            }
        };
        let mut lease = match timeout_at(deadline, checkout).await {
            Ok(lease) => lease?,
            // A connection attempt that failed just before the deadline is the better cause.
            Err(_) => {
                return Err(self.connect_failure());
            }
        };
        match timeout_at(deadline, cmd.query_async::<T>(&mut lease.inner)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let failure = Failure::from_redis(&error);
                if matches!(failure, Failure::Down { .. }) {
                    lease.mark_broken();
                }
                Err(failure)
            }
            Err(_) => {
                lease.mark_broken(); // a silent connection is not handed out again
                Err(Failure::Timeout)
            }
        }
    }

    fn connect_failure(&self) -> Failure {
        match self.connect_errors.last() {
            Some(error) => Failure::from_connect_error(&error),
            None => Failure::Timeout,
        }
    }

    /// Turns a failure of `cmd` on the pool of `generation` into the port's error, going
    /// degraded when the server is unusable.
    fn fail(self: &Arc<Self>, failure: Failure, generation: u64, cmd: &Cmd) -> CacheError {
        match failure {
            Failure::Timeout => {
                self.mark_down(
                    format!("did not answer within {:?}", self.timeout),
                    generation,
                );
                CacheError::Timeout(self.timeout)
            }
            Failure::Down { cause, .. } => {
                self.mark_down(cause.clone(), generation);
                CacheError::Unavailable(format!("Valkey at {} {cause}", self.host))
            }
            Failure::Command { code, message } => {
                // Not an outage, so flux_cache_up stays 1, but no fault of a moment either
                // (an ACL without EVAL, a cluster endpoint, noeviction at maxmemory): every
                // call like it fails until someone acts, so it must reach the log.
                let command = command_name(cmd);
                if let Some(held_back) = self.refusals.admit(&code) {
                    tracing::warn!(
                        host = %self.host,
                        code = %code,
                        command = %command,
                        error = %message,
                        fix = command_fix(&code),
                        held_back,
                        "valkey refused a command: the cache counts as up, and every call like it fails"
                    );
                }
                CacheError::Unavailable(format!(
                    "Valkey at {} refused {command}: {message}",
                    self.host
                ))
            }
        }
    }

    fn unavailable(&self) -> CacheError {
        let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone();
        CacheError::Unavailable(format!(
            "Valkey at {} {cause} (degraded mode, reconnecting in the background)",
            self.host
        ))
    }

    fn mark_up(&self) {
        let previous = self.state.set(UP);
        if previous == UP {
            return;
        }
        self.connect_errors.clear();
        if previous == DOWN {
            tracing::info!(host = %self.host, "valkey reachable again, leaving degraded mode");
        } else {
            tracing::info!(host = %self.host, "valkey connected");
        }
    }

    /// Goes degraded; on the change, replaces the pool if it is still that of `generation`
    /// (the one the failure was seen on).
    fn mark_down(self: &Arc<Self>, cause: String, generation: u64) {
        let changed = {
            let mut current = self.cause.lock().unwrap_or_else(|e| e.into_inner());
            let changed = *current != cause;
            current.clone_from(&cause);
            changed
        };
        let previous = self.state.set(DOWN);
        if previous != DOWN {
            tracing::warn!(
                host = %self.host,
                error = %cause,
                "valkey unavailable: running degraded (cache reads miss, writes are skipped), reconnecting in the background"
            );
            self.replace_pool(generation);
        } else if changed {
            tracing::warn!(host = %self.host, error = %cause, "valkey still unavailable, for another reason");
        }
        self.spawn_probe();
    }

    /// Replaces the pool of generation `seen`; does nothing if it was replaced already.
    fn replace_pool(&self, seen: u64) {
        let mut current = self.pool.write().unwrap_or_else(|e| e.into_inner());
        if current.number != seen {
            return; // another call saw the same failure and replaced it
        }
        current.pool = self
            .connector
            .pool(self.pool_size, self.timeout, &self.connect_errors);
        current.number += 1;
    }

    /// Starts the background probe unless one runs. It holds only a weak reference, so it
    /// ends when the cache is dropped, and it ends once the cache is up.
    fn spawn_probe(self: &Arc<Self>) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(probe_loop(weak));
    }

    async fn probe(&self) -> Result<(), Failure> {
        let conn = match timeout(self.timeout, self.connector.connect_and_check()).await {
            Ok(result) => result?,
            Err(_) => return Err(Failure::Timeout),
        };
        let (_, pool) = self.current_pool();
        let _ = pool.add(conn); // a full pool simply drops it
        Ok(())
    }
}

async fn probe_loop(weak: Weak<Shared>) {
    let mut delay = PROBE_FIRST_DELAY;
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.state.get() == UP {
            shared.probing.store(false, Ordering::SeqCst);
            // Went down again between the check and the store, without starting a probe?
            if shared.state.get() == UP || shared.probing.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        // The probe does not use the pool: a failure of it concerns the pool there is.
        let (generation, _) = shared.current_pool();
        match shared.probe().await {
            Ok(()) => shared.mark_up(),
            Err(Failure::Timeout) => shared.mark_down(
                format!("did not answer within {:?}", shared.timeout),
                generation,
            ),
            Err(Failure::Down { cause, .. }) => shared.mark_down(cause, generation),
            Err(Failure::Command { message, .. }) => {
                shared.mark_down(format!("failed: {message}"), generation);
            }
        }
        if shared.state.get() == UP {
            continue;
        }
        drop(shared);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(PROBE_MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::AtomicU64;

    use metrics::{
        Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// A recorder whose `flux_cache_up` is slow to set, as if the thread setting it were
    /// preempted: it widens the gap between a state change and its gauge update.
    #[derive(Default)]
    struct SlowGauge(Arc<SlowGaugeValue>);

    #[derive(Default)]
    struct SlowGaugeValue(AtomicU64);

    impl SlowGauge {
        fn value(&self) -> f64 {
            f64::from_bits(self.0.0.load(Ordering::SeqCst))
        }
    }

    impl GaugeFn for SlowGaugeValue {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            std::thread::sleep(Duration::from_micros(20));
            self.0.store(value.to_bits(), Ordering::SeqCst);
        }
    }

    impl Recorder for SlowGauge {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            assert_eq!(key.name(), CACHE_UP);
            Gauge::from_arc(Arc::clone(&self.0))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn the_gauge_ends_as_the_state_however_a_going_down_and_a_coming_up_interleave() {
        let recorder = SlowGauge::default();
        let rounds: Vec<Availability> = metrics::with_local_recorder(&recorder, || {
            (0..1_000).map(|_| Availability::new()).collect()
        });
        let step = Barrier::new(3);
        let mut wrong = Vec::new(); // not asserted in the loop: a panic there would hang the others
        std::thread::scope(|scope| {
            for to in [UP, DOWN] {
                let (recorder, rounds, step) = (&recorder, &rounds, &step);
                scope.spawn(move || {
                    metrics::with_local_recorder(recorder, || {
                        for availability in rounds {
                            step.wait();
                            availability.set(to);
                            step.wait();
                        }
                    });
                });
            }
            for (round, availability) in rounds.iter().enumerate() {
                step.wait(); // both change the state of this round
                step.wait();
                let expected = if availability.get() == UP { 1.0 } else { 0.0 };
                if recorder.value() != expected {
                    wrong.push(round);
                }
            }
        });
        assert!(
            wrong.is_empty(),
            "the gauge differs from the state after {} of {} rounds, first {:?}",
            wrong.len(),
            rounds.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
}
