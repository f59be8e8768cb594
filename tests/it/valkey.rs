//! The Valkey snapshot cache against a real redis-server that each test spawns on a free
//! loopback port: the shared `SnapshotCache` contract (also run against the in-memory fake),
//! TTLs and prefixes as stored, degraded mode when the server dies or freezes, recovery on
//! restart, wrong credentials, metrics and the start-up warning.
//!
//! Needs `redis-server` on PATH (`sudo apt-get install -y redis-server`) or
//! `FLUX_TEST_REDIS_SERVER=/path/to/redis-server`. Run: `cargo test --test valkey`.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flux_bff::adapters::memory::MemoryCache;
use flux_bff::adapters::valkey::{ValkeySettings, ValkeySnapshotCache};
use flux_bff::ports::{CacheError, SnapshotCache};
use metrics_exporter_prometheus::PrometheusHandle;
use redis::Commands;

use crate::support::redis_server::RedisServer;
use crate::support::snapshot_cache_contract::{snapshot_cache_contract, unique_key};
use crate::support::tcp_proxy::TcpProxy;

const TIMEOUT: Duration = Duration::from_millis(250);
/// What a failing call may take: the timeout plus scheduling slack.
const FAIL_WITHIN: Duration = Duration::from_millis(300);

fn settings_for(server: &RedisServer) -> ValkeySettings {
    ValkeySettings {
        url: server.url(),
        key_prefix: format!("flux-test-{}:", uuid::Uuid::new_v4()),
        timeout: TIMEOUT,
        ..ValkeySettings::default()
    }
}

async fn connected(settings: &ValkeySettings) -> ValkeySnapshotCache {
    let cache = ValkeySnapshotCache::connect(settings)
        .await
        .expect("a valid configuration connects");
    wait_until(Duration::from_secs(2), || cache.is_available()).await;
    cache
}

async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `call`, asserting it fails within `FAIL_WITHIN`; returns the error.
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, CacheError>>,
) -> CacheError {
    let started = Instant::now();
    let result = call.await;
    let took = started.elapsed();
    assert!(
        took < FAIL_WITHIN,
        "{what} took {took:?} (limit {FAIL_WITHIN:?})"
    );
    result.expect_err(&format!("{what} must fail"))
}

#[tokio::test]
async fn memory_cache_honours_the_contract() {
    snapshot_cache_contract(&MemoryCache::default()).await;
}

#[tokio::test]
async fn valkey_cache_honours_the_contract() {
    let server = RedisServer::start();
    let cache = connected(&settings_for(&server)).await;
    snapshot_cache_contract(&cache).await;
    assert!(cache.is_available());
}

#[tokio::test]
async fn keys_carry_the_prefix_and_ttls_land_as_given() {
    // Arrange
    let server = RedisServer::start();
    let settings = settings_for(&server);
    let cache = connected(&settings).await;
    let snapshot = unique_key("snapshot");
    let dedup = unique_key("dedup");
    // Act
    cache
        .set(&snapshot, r#"{"v":1}"#, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(
        cache
            .set_unless_same(&dedup, "h", Duration::from_millis(2000))
            .await
            .unwrap()
    );
    // Assert
    let mut raw = server.raw();
    let stored: Option<String> = raw
        .get(format!("{}{snapshot}", settings.key_prefix))
        .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(r#"{"v":1}"#),
        "stored under prefix + key"
    );
    let unprefixed: Option<String> = raw.get(&snapshot).unwrap();
    assert_eq!(unprefixed, None, "nothing stored without the prefix");
    let pttl: i64 = raw
        .pttl(format!("{}{snapshot}", settings.key_prefix))
        .unwrap();
    assert!(
        (299_000..=300_000).contains(&pttl),
        "300 s ttl, got {pttl} ms"
    );
    let pttl: i64 = raw.pttl(format!("{}{dedup}", settings.key_prefix)).unwrap();
    assert!(
        (1_900..=2_000).contains(&pttl),
        "2000 ms window, got {pttl} ms"
    );
}

#[tokio::test]
async fn a_database_number_is_honoured() {
    let server = RedisServer::start();
    let settings = ValkeySettings {
        database: 3,
        ..settings_for(&server)
    };
    let cache = connected(&settings).await;
    let key = unique_key("db");
    cache.set(&key, "x", Duration::from_secs(60)).await.unwrap();
    let mut raw = server.raw();
    redis::cmd("SELECT").arg(3).exec(&mut raw).unwrap();
    let stored: Option<String> = raw.get(format!("{}{key}", settings.key_prefix)).unwrap();
    assert_eq!(stored.as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_sharing_one_server_let_exactly_one_caller_win() {
    // Two caches with the same prefix stand for two flux-bff processes.
    let server = RedisServer::start();
    let settings = settings_for(&server);
    let first = Arc::new(connected(&settings).await);
    let second = Arc::new(connected(&settings).await);
    for round in 0..5 {
        let key = unique_key("dedup-race");
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let cache = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                let key = key.clone();
                tokio::spawn(async move {
                    cache
                        .set_unless_same(&key, "h", Duration::from_secs(2))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap());
        }
        assert_eq!(
            winners, 1,
            "round {round}: exactly one winner across both instances"
        );
    }
}

#[tokio::test]
async fn a_killed_server_degrades_fast_and_a_restart_restores_normal_mode() {
    // Arrange
    let mut server = RedisServer::start();
    let cache = connected(&settings_for(&server)).await;
    let key = unique_key("outage");
    cache
        .set(&key, "before", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("before"));

    // Act: the server dies under open pooled connections.
    server.kill();

    // Assert: a burst of concurrent calls at the onset of the outage all fail fast.
    let burst = (0..50).map(|_| fails_fast("concurrent get at the onset", cache.get(&key)));
    for error in futures::future::join_all(burst).await {
        assert!(matches!(error, CacheError::Unavailable(_)), "{error:?}");
    }

    // Assert: every call fails within the timeout, and the cache reports itself down.
    for round in 0..3 {
        let error = fails_fast("get while down", cache.get(&key)).await;
        assert!(
            matches!(error, CacheError::Unavailable(_)),
            "round {round}: {error:?}"
        );
        fails_fast(
            "set while down",
            cache.set(&key, "lost", Duration::from_secs(60)),
        )
        .await;
        fails_fast(
            "set_unless_same while down",
            cache.set_unless_same(&key, "x", Duration::from_secs(2)),
        )
        .await;
        fails_fast("delete while down", cache.delete(&key)).await;
        assert!(!cache.is_available(), "round {round}: down");
    }
    let error = cache.get(&key).await.unwrap_err();
    assert!(
        error.to_string().contains(&server.addr()),
        "the error names the server: {error}"
    );

    // Act: the server comes back on the same port (empty: no persistence).
    server.restart();
    let back = Instant::now();

    // Assert: within 2 s, without a new adapter, calls succeed and the cache is up.
    loop {
        if cache
            .set(&key, "after", Duration::from_secs(60))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "writes resume within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("after"));
    assert!(cache.is_available(), "up again");
    assert!(back.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_restart_between_calls_costs_no_failed_call() {
    // Pooled connections die with the server; the next call must not fail because of them.
    let mut server = RedisServer::start();
    let cache = connected(&settings_for(&server)).await;
    let key = unique_key("blip");
    // Several calls at once leave several connections in the pool.
    let burst = (0..20).map(|_| cache.set(&key, "v", Duration::from_secs(60)));
    for result in futures::future::join_all(burst).await {
        result.unwrap();
    }
    server.restart();
    cache
        .set(&key, "v2", Duration::from_secs(60))
        .await
        .expect("dead pooled connections are replaced transparently");
    let burst = (0..20).map(|_| cache.get(&key));
    for result in futures::future::join_all(burst).await {
        assert_eq!(result.unwrap().as_deref(), Some("v2"));
    }
    assert!(cache.is_available());
}

#[tokio::test]
async fn a_restart_between_calls_does_not_degrade_the_cache_on_a_dedup_call() {
    // The dedup script is not retried on a dead pooled connection (it may have run), but a
    // restarted server is not a down one.
    let mut server = RedisServer::start();
    let cache = connected(&settings_for(&server)).await;
    let key = unique_key("blip-dedup");
    let burst = (0..20).map(|_| cache.set(&key, "v", Duration::from_secs(60)));
    for result in futures::future::join_all(burst).await {
        result.unwrap();
    }
    server.restart();
    let error = cache
        .set_unless_same(&key, "h", Duration::from_secs(2))
        .await
        .expect_err("the connection died under the call");
    assert!(matches!(error, CacheError::Unavailable(_)), "{error:?}");
    assert!(
        cache.is_available(),
        "a dead connection is not a dead server"
    );
    assert!(
        cache
            .set_unless_same(&key, "h", Duration::from_secs(2))
            .await
            .expect("the next call runs on a fresh pool"),
        "the failed call stored nothing"
    );
    assert!(cache.is_available());
}

/// `total_connections_received` from `INFO stats`: the connections the server accepted.
fn connections_received(raw: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(raw).unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_connections_received in:\n{info}"))
}

/// Found by review: after a restart every call of a burst found the shared connection dead
/// and replaced the pool, each new pool dropping the connection the previous one was
/// opening: a burst of 32 calls opened about 32 connections to the new server.
#[tokio::test]
async fn a_restart_under_a_burst_costs_one_new_connection_not_one_per_call() {
    // Arrange: one pooled connection, shared by every call.
    let mut server = RedisServer::start();
    let settings = ValkeySettings {
        pool_size: 1,
        ..settings_for(&server)
    };
    let cache = connected(&settings).await;
    let key = unique_key("restart-burst");
    cache.set(&key, "v", Duration::from_secs(60)).await.unwrap();
    for result in futures::future::join_all((0..32).map(|_| cache.get(&key))).await {
        assert_eq!(result.unwrap().as_deref(), Some("v"));
    }
    server.restart();
    let mut raw = server.raw();
    let before = connections_received(&mut raw);

    // Act: a burst on the dead connection.
    let results = futures::future::join_all((0..32).map(|_| cache.get(&key))).await;

    // Assert
    for result in results {
        assert_eq!(result.unwrap(), None, "the restarted server is empty");
    }
    let opened = connections_received(&mut raw) - before;
    assert!(
        opened <= 2,
        "{opened} connections opened for one restart (at most 2 expected)"
    );
    assert!(cache.is_available());
}

#[tokio::test]
async fn a_frozen_server_times_out_within_the_timeout_and_recovers_when_resumed() {
    // Arrange
    let server = RedisServer::start();
    let cache = connected(&settings_for(&server)).await;
    let key = unique_key("frozen");
    cache.set(&key, "v", Duration::from_secs(60)).await.unwrap();

    // Act: half-open: connections stay open, nothing answers.
    server.pause();

    // Assert
    let error = fails_fast("get on a frozen server", cache.get(&key)).await;
    assert!(
        matches!(error, CacheError::Timeout(t) if t == TIMEOUT),
        "{error:?}"
    );
    for _ in 0..5 {
        fails_fast("get while frozen", cache.get(&key)).await;
        fails_fast(
            "set_unless_same while frozen",
            cache.set_unless_same(&unique_key("f"), "x", Duration::from_secs(2)),
        )
        .await;
    }
    assert!(!cache.is_available());

    // Act + Assert: resumed, it answers again within 2 s.
    server.resume();
    let resumed = Instant::now();
    loop {
        if let Ok(value) = cache.get(&key).await {
            assert_eq!(value.as_deref(), Some("v"));
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(2),
            "recovers within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cache.is_available());
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    let server = RedisServer::start_tls();
    let settings = ValkeySettings {
        url: format!("rediss://127.0.0.1:{}/#insecure", server.port()), // self-signed
        ..settings_for(&server)
    };
    let cache = connected(&settings).await;
    let key = unique_key("tls");
    cache
        .set(&key, "over tls", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("over tls"));
}

#[tokio::test]
async fn an_untrusted_tls_certificate_degrades_instead_of_crashing() {
    let server = RedisServer::start_tls();
    let settings = ValkeySettings {
        url: format!("rediss://127.0.0.1:{}", server.port()), // verified: self-signed fails
        ..settings_for(&server)
    };
    let cache = ValkeySnapshotCache::connect(&settings).await.unwrap();
    let error = fails_fast("get with an untrusted certificate", cache.get("k")).await;
    assert!(matches!(error, CacheError::Unavailable(_)), "{error:?}");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    assert!(!cache.is_available());
}

#[tokio::test]
async fn an_unreachable_server_does_not_fail_start_up() {
    let port = crate::support::redis_server::free_port(); // nobody listens there
    let settings = ValkeySettings {
        url: format!("redis://127.0.0.1:{port}"),
        timeout: TIMEOUT,
        ..ValkeySettings::default()
    };
    let started = Instant::now();
    let cache = ValkeySnapshotCache::connect(&settings)
        .await
        .expect("an unreachable server is not a configuration error");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "connect does not wait for the server"
    );
    let error = fails_fast("get without a server", cache.get("k")).await;
    assert!(
        error.to_string().contains("refused the connection"),
        "{error}"
    );
    assert!(!cache.is_available());
}

#[tokio::test]
async fn only_an_invalid_configuration_fails_connect() {
    let bad_url = ValkeySettings {
        url: "http://127.0.0.1:6379".into(),
        ..ValkeySettings::default()
    };
    let error = ValkeySnapshotCache::connect(&bad_url).await.unwrap_err();
    assert!(error.to_string().starts_with("valkey.url:"), "{error}");

    let unreadable = ValkeySettings {
        password_file: Some("/nonexistent/flux/valkey-password".into()),
        ..ValkeySettings::default()
    };
    let error = ValkeySnapshotCache::connect(&unreadable).await.unwrap_err();
    assert!(
        format!("{error:#}").starts_with("valkey.password_file:"),
        "{error:#}"
    );
}

#[tokio::test]
async fn the_password_from_a_file_authenticates() {
    let server = RedisServer::start_with_password("s3cret-pw");
    let path = std::env::temp_dir().join(format!("flux-valkey-pw-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, "s3cret-pw\n").unwrap();
    let settings = ValkeySettings {
        password_file: Some(path.clone()),
        ..settings_for(&server)
    };
    let cache = connected(&settings).await;
    std::fs::remove_file(&path).ok();
    let key = unique_key("auth");
    cache
        .set(&key, "ok", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("ok"));
}

#[tokio::test]
async fn a_missing_password_is_reported_as_an_authentication_problem() {
    let server = RedisServer::start_with_password("s3cret-pw");
    let cache = ValkeySnapshotCache::connect(&settings_for(&server))
        .await
        .expect("degraded, not a crash");
    let error = fails_fast("get without the password", cache.get("k")).await;
    let message = error.to_string();
    assert!(matches!(error, CacheError::Unavailable(_)), "{error:?}");
    assert!(message.contains("authentication"), "{message}");
    assert!(message.contains("VALKEY_PASSWORD"), "{message}");
    assert!(!cache.is_available());
}

/// A `tracing` writer that keeps everything in memory.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of this test binary. One global subscriber: per-thread ones
/// (`with_default`) lose events when tests run in parallel (tracing's callsite cache).
fn all_logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other subscriber in this test binary");
        logs
    })
}

/// The log lines about one server (tests run in parallel, each with its own port).
fn logs_about(addr: &str) -> String {
    all_logs()
        .text()
        .lines()
        .filter(|line| line.contains(addr))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Runs `test` on a current-thread runtime (so that the adapter's background tasks run on
/// this thread too) with a private Prometheus recorder; returns the logs about `addr`.
fn with_logs_and_metrics<F: std::future::Future<Output = ()>>(
    addr: &str,
    test: impl FnOnce(PrometheusHandle) -> F,
) -> (String, PrometheusHandle) {
    all_logs();
    let handle = crate::support::app::with_own_metrics(test);
    (logs_about(addr), handle)
}

#[test]
fn a_wrong_password_starts_degraded_with_one_clear_warning() {
    let server = RedisServer::start_with_password("right-password");
    let settings = ValkeySettings {
        password: Some("wrong-password".into()),
        ..settings_for(&server)
    };
    let (logs, metrics) = with_logs_and_metrics(&server.addr(), |_| async {
        let cache = ValkeySnapshotCache::connect(&settings)
            .await
            .expect("a wrong password is not a start-up failure");
        for _ in 0..5 {
            let error = fails_fast("get with a wrong password", cache.get("k")).await;
            let message = error.to_string();
            assert!(matches!(error, CacheError::Unavailable(_)), "{error:?}");
            assert!(message.contains("authentication failed"), "{message}");
            assert!(message.contains(&server.addr()), "{message}");
        }
        assert!(!cache.is_available());
        // Let the background probe retry a few times: still one warning.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "exactly one warning, got:\n{logs}");
    let warning = warnings[0];
    for needle in [
        server.addr().as_str(),
        "WRONGPASS",
        "VALKEY_PASSWORD",
        "degraded",
    ] {
        assert!(
            warning.contains(needle),
            "warning lacks {needle:?}: {warning}"
        );
    }
    assert!(
        !all_logs().text().contains("wrong-password"),
        "the password never reaches the logs:\n{logs}"
    );
    let rendered = metrics.render();
    assert!(rendered.contains("flux_cache_up 0"), "{rendered}");
}

#[test]
fn metrics_count_hits_misses_errors_and_track_availability() {
    let mut server = RedisServer::start();
    let settings = settings_for(&server);
    let addr = server.addr();
    let (logs, metrics) = with_logs_and_metrics(&addr, |metrics| async move {
        let cache = connected(&settings).await;
        let key = unique_key("metrics");
        cache.get(&key).await.unwrap(); // miss
        cache.set(&key, "v", Duration::from_secs(60)).await.unwrap(); // ok
        cache.get(&key).await.unwrap(); // hit
        cache.get(&key).await.unwrap(); // hit
        cache
            .set_unless_same(&key, "v", Duration::from_secs(2))
            .await
            .unwrap(); // ok (false)
        cache.delete(&key).await.unwrap(); // ok
        assert!(
            metrics.render().contains("flux_cache_up 1"),
            "up while reachable"
        );
        server.kill();
        cache.get(&key).await.unwrap_err(); // error
        cache.get(&key).await.unwrap_err(); // error (fails fast)
        assert!(
            metrics.render().contains("flux_cache_up 0"),
            "down after the kill"
        );
        server.restart();
        wait_until(Duration::from_secs(2), || cache.is_available()).await;
    });
    let rendered = metrics.render();
    for line in [
        r#"flux_cache_requests_total{op="get",result="miss"} 1"#,
        r#"flux_cache_requests_total{op="get",result="hit"} 2"#,
        r#"flux_cache_requests_total{op="get",result="error"} 2"#,
        r#"flux_cache_requests_total{op="set",result="ok"} 1"#,
        r#"flux_cache_requests_total{op="set_unless_same",result="ok"} 1"#,
        r#"flux_cache_requests_total{op="delete",result="ok"} 1"#,
        "flux_cache_up 1",
    ] {
        assert!(rendered.contains(line), "missing {line:?} in:\n{rendered}");
    }
    // One line per state change, not one per call.
    assert_eq!(logs.matches("valkey unavailable").count(), 1, "{logs}");
    assert_eq!(logs.matches("valkey reachable again").count(), 1, "{logs}");
}

/// Found by review: a URL naming a replica flapped the cache on every write. The write got
/// READONLY and the cache went down, then the probe's PING (which a replica answers) put it
/// up again, and the next write did it all again: one warning and one info line per write.
#[test]
fn a_replica_url_goes_down_once_naming_the_fix_instead_of_flapping_on_every_write() {
    // Arrange: a replica of a primary that does not exist (it still answers PING and reads).
    let server = RedisServer::start();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(crate::support::redis_server::free_port())
        .exec(&mut server.raw())
        .unwrap();
    let settings = settings_for(&server);
    let addr = server.addr();
    let mut available = true;
    let (logs, metrics) = with_logs_and_metrics(&addr, |_| async {
        let cache = ValkeySnapshotCache::connect(&settings).await.unwrap();
        // The start-up probe's verdict first, so that it, not a write, names the cause.
        wait_until(Duration::from_secs(2), || {
            let logs = logs_about(&addr);
            logs.contains("valkey connected") || logs.contains("valkey unavailable")
        })
        .await;

        // Act: writes for a second.
        let key = unique_key("replica");
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let _ = cache.set(&key, "v", Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        available = cache.is_available();
    });

    // Assert: down once, with the cause and the fix.
    assert_eq!(logs.matches("valkey unavailable").count(), 1, "{logs}");
    assert!(!logs.contains("reachable again"), "{logs}");
    let warning = logs
        .lines()
        .find(|l| l.contains("valkey unavailable"))
        .unwrap();
    for needle in ["replica", "READONLY", "FLUX_VALKEY__URL", "primary"] {
        assert!(
            warning.contains(needle),
            "warning lacks {needle:?}: {warning}"
        );
    }
    assert!(!available, "a replica is no cache for writes");
    assert!(metrics.render().contains("flux_cache_up 0"));
}

/// Settings for the user `bff` (password `pw`) on `server`, created with the ACL `rules` on
/// the gateway's keys.
fn acl_user(server: &RedisServer, rules: &[&str]) -> ValkeySettings {
    let settings = ValkeySettings {
        username: Some("bff".into()),
        password: Some("pw".into()),
        ..settings_for(server)
    };
    let keys = format!("~{}*", settings.key_prefix);
    redis::cmd("ACL")
        .arg(&["SETUSER", "bff", "on", ">pw", &keys])
        .arg(rules)
        .exec(&mut server.raw())
        .unwrap();
    settings
}

/// `ROLE` is an @admin command: a user without it must still be served (the check is
/// skipped, not failed).
#[tokio::test]
async fn a_user_not_allowed_to_ask_the_role_still_connects() {
    let server = RedisServer::start();
    let settings = acl_user(&server, &["+@all", "-@dangerous"]);
    let cache = connected(&settings).await;
    let key = unique_key("no-role");
    cache.set(&key, "v", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("v"));
}

/// Found by review: an error that is no outage (here NOPERM from an ACL without EVAL; also
/// MOVED, WRONGTYPE, OOM) was logged at debug while the cache counted as up, so every dedup
/// call fell back to the in-process window with nothing in the log saying why.
#[test]
fn a_command_the_server_refuses_is_a_warning_naming_the_code_the_command_and_the_fix() {
    // Arrange: a user that may do anything but run scripts.
    let server = RedisServer::start();
    let settings = acl_user(&server, &["+@all", "-eval"]);
    let mut error = None;
    let (logs, _) = with_logs_and_metrics(&server.addr(), |_| async {
        let cache = connected(&settings).await;
        // Act
        error = cache
            .set_unless_same(&unique_key("noperm"), "h", Duration::from_secs(2))
            .await
            .err();
        assert!(cache.is_available(), "a refused command is not an outage");
    });
    // Assert
    let error = error.expect("EVAL is not allowed").to_string();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "one warning, got:\n{logs}");
    for needle in ["NOPERM", "EVAL", "ACL SETUSER", "+eval"] {
        assert!(
            warnings[0].contains(needle),
            "warning lacks {needle:?}: {}",
            warnings[0]
        );
    }
    assert!(!logs.contains("valkey unavailable"), "{logs}");
    assert!(
        error.contains("NOPERM"),
        "the caller's error names the code: {error}"
    );
}

/// The permissions the NOPERM warning asks for are enough for every call.
#[tokio::test]
async fn the_acl_the_noperm_warning_recommends_is_enough() {
    let server = RedisServer::start();
    let settings = acl_user(&server, &["+ping", "+get", "+set", "+del", "+eval"]);
    let cache = connected(&settings).await;
    let key = unique_key("least-privilege");
    cache.set(&key, "v", Duration::from_secs(60)).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("v"));
    assert!(
        cache
            .set_unless_same(&key, "h", Duration::from_secs(2))
            .await
            .unwrap()
    );
    cache.delete_if_same(&key, "h").await.unwrap();
    cache.delete(&key).await.unwrap();
    assert!(cache.is_available());
}

#[test]
fn a_burst_beyond_the_pool_size_shares_the_connections_instead_of_going_down() {
    // One pooled connection behind a link that holds every chunk 5 ms each way: 64 calls one
    // after another would take 640 ms, far beyond the 250 ms timeout; pipelined on the one
    // connection they take a few round trips.
    all_logs();
    let server = RedisServer::start();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let mut host = String::new();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // Arrange
            let proxy = TcpProxy::start_raw(server.addr().parse().unwrap()).await;
            host = proxy.addr.to_string();
            let settings = ValkeySettings {
                url: format!("redis://{}", proxy.addr),
                pool_size: 1,
                ..settings_for(&server)
            };
            let cache = connected(&settings).await;
            let key = unique_key("burst");
            cache.set(&key, "v", Duration::from_secs(60)).await.unwrap();
            proxy.delay(Duration::from_millis(5));

            // Act
            let burst = futures::future::join_all((0..64).map(|_| cache.get(&key)));
            let went_down = async {
                while cache.is_available() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            };
            let results = tokio::select! {
                results = burst => results,
                () = went_down => panic!("the cache went down during the burst"),
            };

            // Assert
            for result in results {
                assert_eq!(result.unwrap().as_deref(), Some("v"));
            }
            assert!(cache.is_available());
        });
    });
    let logs = logs_about(&host);
    assert!(
        !logs.contains("valkey unavailable"),
        "never degraded:\n{logs}"
    );
    let rendered = metrics.render();
    for line in [
        r#"flux_cache_requests_total{op="get",result="hit"} 64"#,
        "flux_cache_up 1",
    ] {
        assert!(rendered.contains(line), "missing {line:?} in:\n{rendered}");
    }
}
