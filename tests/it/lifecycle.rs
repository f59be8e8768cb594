//! The real binary: `--help`, configuration errors (exit 2), unknown settings (a warning),
//! SIGTERM (exit 0 within the deadline, after the clients were disconnected), the open-files
//! limit (raised to the hard limit, a warning when that is too low).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_flux-bff");

/// Kills the child when the test ends, also when it panics.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway(port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLUX_HTTP__HOST", "127.0.0.1")
        .env("FLUX_HTTP__PORT", port.to_string())
        .env("FLUX_LIFECYCLE__SHUTDOWN_DEADLINE", "5s")
        .env("FLUX_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway on port {port} never became healthy");
}

/// Sends SIGTERM to a gateway started with piped output; its exit status and everything it
/// wrote, once it exited.
async fn terminate(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut logs = String::new();
        let _ = stdout.read_to_string(&mut logs);
        let _ = stderr.read_to_string(&mut logs);
        (child.wait().unwrap(), logs)
    })
    .await
    .unwrap()
}

type Ws = crate::support::app::RawWs;

/// A client of the gateway on `port`, connected as `guest` and in Pune's rooms (the crypto
/// tickers' among them).
async fn joined(port: u16, guest: &str) -> Ws {
    let pune = crate::support::app::location("Pune");
    crate::support::app::raw_joined(format!("127.0.0.1:{port}"), guest, &pune).await
}

/// Reads `ws` until a message containing `needle`, within 10 s.
async fn read_until(ws: &mut Ws, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = next_before(ws, deadline)
            .await
            .expect("the message within 10 s");
        if msg.to_text().unwrap_or("").contains(needle) {
            return;
        }
    }
}

/// The next message of `ws`, or `None` at `deadline`.
async fn next_before(ws: &mut Ws, deadline: tokio::time::Instant) -> Option<Message> {
    let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
    Some(msg.expect("the stream goes on").expect("a message"))
}

/// The value of an unlabelled counter in a `/metrics` text.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported:\n{metrics}"))
}

/// The gateway's `/metrics` text.
async fn metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[test]
fn help_lists_the_configuration() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FLUX_"), "{text}");
    assert!(text.contains("embedded mode"), "{text}");
}

#[test]
fn an_invalid_setting_exits_2_and_names_the_field() {
    let out = gateway(free_port())
        .env("FLUX_HTTP__PORT", "eighty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("http.port") && err.contains("eighty"), "{err}");

    let out = gateway(free_port())
        .env("SERVER_PORT", "x1")
        .env_remove("FLUX_HTTP__PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVER_PORT"));
}

#[tokio::test]
async fn a_setting_no_section_reads_is_named_in_a_warning_and_the_gateway_starts() {
    let port = free_port();
    let child = gateway(port)
        .env("FLUX_SOCKETIO__WS_WRITE_COALESCE", "1ms") // removed in 7928e71
        .env("FLUX_SOCKETIO__MAX_BUFFER", "128")
        .spawn()
        .unwrap();
    wait_healthy(port).await;
    let (status, logs) = terminate(child).await;
    assert!(status.success(), "{status:?}\n{logs}");
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("unknown setting"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0]
            .contains("socketio.ws_write_coalesce (set by FLUX_SOCKETIO__WS_WRITE_COALESCE)"),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn sigterm_disconnects_clients_and_exits_0_within_the_deadline() {
    // Arrange: the binary in embedded mode and one connected websocket client.
    let port = free_port();
    let mut child = gateway(port).spawn().unwrap();
    wait_healthy(port).await;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
    ws.send(Message::text(r#"40{"guestId":"zoe"}"#))
        .await
        .unwrap();
    let mut got_init = false;
    while !got_init {
        let msg = ws.next().await.unwrap().unwrap();
        got_init = msg.to_text().unwrap_or("").contains("session:init");
    }

    // Act
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Assert: the client's connection is closed before the process exits, with no DISCONNECT
    // packet: the official client takes that as final and would not reconnect to another
    // replica (D30).
    let mut disconnected = false;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match msg {
            Ok(Message::Text(t)) if t.as_str().starts_with("41") => {
                panic!("a DISCONNECT packet at shutdown: the client would not reconnect")
            }
            // A close frame: the gateway closed it, not the kernel at the process's exit
            // (which a connection reset or an end of stream would be).
            Ok(Message::Close(_)) => {
                disconnected = true;
                break;
            }
            Err(e) => panic!("the connection broke instead of being closed: {e}"),
            _ => {}
        }
    }
    assert!(disconnected, "the client got no close frame");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "took {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn metrics_show_connected_sockets_and_room_members() {
    let port = free_port();
    let _child = Running(
        gateway(port)
            .env("FLUX_SIM__ENABLED", "false")
            .spawn()
            .unwrap(),
    );
    wait_healthy(port).await;
    let _ws = joined(port, "yan").await;

    let deadline = Instant::now() + Duration::from_secs(8);
    let metrics = loop {
        let m = metrics(port).await;
        if m.contains(r#"flux_room_members{room="crypto.global"} 1"#) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "room members never exported:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("flux_sockets_connected 1"), "{metrics}");
    assert!(
        metrics.contains(r#"flux_room_members{room="weather.*"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_flood_of_malformed_events_is_counted_in_full_and_logged_in_moderation() {
    use std::io::BufRead;
    let port = free_port();
    let mut child = gateway(port)
        .env("FLUX_SIM__ENABLED", "false")
        .env("FLUX_ADMIN__PUBLISH", "true")
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Running(child);
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    wait_healthy(port).await;
    let started = Instant::now();
    let http = reqwest::Client::new();
    for chunk in 0..2 {
        let body: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    r#"{{"data":{{"type":"ticker","price":"{}"}}}}"#,
                    chunk * 1000 + i
                )
            })
            .collect();
        let r = http
            .post(format!(
                "http://127.0.0.1:{port}/admin/publish?topic=crypto.ticker.event.updated&key=k&format=ndjson"
            ))
            .body(body.join("\n"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(port).await;
        let rejected: f64 = m
            .lines()
            .filter(|l| {
                l.starts_with("flux_events_rejected_total{") && l.contains("missing_product_id")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if rejected >= 2000.0 {
            assert_eq!(rejected, 2000.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {rejected} of 2000 rejections counted:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the last lines reach the pipe.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("event rejected and skipped"))
        .cloned()
        .collect();
    // 20 at once, then one per second.
    let allowed = 20 + started.elapsed().as_secs() as usize + 1;
    assert!(
        !logged.is_empty() && logged.len() <= allowed,
        "{} rejection lines logged for 2000 rejections (at most {allowed} expected)",
        logged.len()
    );
    assert!(
        logged[0].contains(r#""reason":"missing_product_id""#),
        "{}",
        logged[0]
    );
    assert!(logged[0].contains(r#""held_back":0"#), "{}", logged[0]);
}

/// How many times [`sigterm_while_tickers_stream_never_panics`] stops the gateway. Before the
/// shutdown order was fixed, a run panicked often enough that this many caught it every time
/// (BENCHMARKS.md: "Shutdown under a live stream").
const SHUTDOWN_RUNS: usize = 25;

/// SIGTERM while tickers stream to a connected client (issue 19): the event consumer stops
/// before the Socket.IO server closes, so nothing is emitted into a closed server; the
/// process exits 0 and nothing panics, run after run.
#[tokio::test]
async fn sigterm_while_tickers_stream_never_panics() {
    let ticker = crate::support::app::fixture("crypto.ticker.event.updated.json").to_string();
    let batch: String = (0..50).map(|_| format!("{ticker}\n")).collect();
    for run in 0..SHUTDOWN_RUNS {
        // Arrange: the binary, a client in the ticker room, and a flood of tickers.
        let port = free_port();
        let child = gateway(port)
            .env("FLUX_ADMIN__PUBLISH", "true")
            .spawn()
            .unwrap();
        wait_healthy(port).await;
        let mut ws = joined(port, "stopper").await;
        let flood = {
            let (client, batch) = (reqwest::Client::new(), batch.clone());
            let publish = format!(
                "http://127.0.0.1:{port}/admin/publish?topic=crypto.ticker.event.updated&key=BTC-USD&format=ndjson"
            );
            tokio::spawn(async move {
                while client
                    .post(&publish)
                    .body(batch.clone())
                    .send()
                    .await
                    .is_ok()
                {}
            })
        };
        read_until(&mut ws, "cryptoTickerResponse").await;
        // Act: stop it mid-stream; the client keeps reading.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (exit, logs) = terminate(child).await;

        // Assert
        flood.abort();
        reader.abort();
        assert!(
            !logs.contains("panicked"),
            "run {run}: the gateway panicked while stopping:\n{logs}"
        );
        assert_eq!(exit.code(), Some(0), "run {run}:\n{logs}");
    }
}

/// Room events to sockets written nothing for a while are written by the broadcasting
/// thread itself (`socketio.direct_writes_per_second`, on by default); `0` turns that off.
/// The real binary: its metrics are its own, not shared with the other tests.
#[tokio::test]
async fn tickers_to_idle_sockets_are_written_directly_unless_turned_off() {
    let ticker = crate::support::app::fixture("crypto.ticker.event.updated.json").to_string();
    for direct_writes in [None, Some("0")] {
        let port = free_port();
        let mut cmd = gateway(port);
        // Two workers whatever the machine (the count of windows below depends on it).
        cmd.env("FLUX_ADMIN__PUBLISH", "true")
            .env("FLUX_SIM__ENABLED", "false")
            .env("TOKIO_WORKER_THREADS", "2");
        if let Some(per_second) = direct_writes {
            cmd.env("FLUX_SOCKETIO__DIRECT_WRITES_PER_SECOND", per_second);
        }
        let _child = Running(cmd.spawn().unwrap());
        wait_healthy(port).await;
        let mut clients = Vec::new();
        for guest in ["d1", "d2", "d3"] {
            clients.push(joined(port, guest).await);
        }
        // The heartbeat pings a new session at its next pass (every 500 ms here): read what
        // comes for 600 ms, so that no first ping is written just before a ticker (a socket
        // written less than 15 ms ago is busy). The next pings are 25 s away.
        let quiet = tokio::time::Instant::now() + Duration::from_millis(600);
        for ws in &mut clients {
            while next_before(ws, quiet).await.is_some() {}
        }
        let publish = format!(
            "http://127.0.0.1:{port}/admin/publish?topic=crypto.ticker.event.updated&key=BTC-USD"
        );
        let http = reqwest::Client::new();
        // Eight tickers 50 ms apart: each finds every socket idle (written nothing for 15 ms).
        // A worker thread whose last sends found their sockets busy (the joins' replies,
        // back to back) writes nothing directly in its next window: with two workers, up to
        // two tickers go through the writer tasks.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = http
                .post(&publish)
                .body(ticker.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "publish: {status}");
            for ws in &mut clients {
                read_until(ws, "cryptoTickerResponse").await;
            }
        }
        let m = metrics(port).await;
        let (direct, sent) = (
            counter(&m, "flux_socket_direct_writes_total"),
            counter(&m, "flux_socket_messages_sent_total"),
        );
        match direct_writes {
            None => assert!(
                direct >= 12.0,
                "most of the 24 tickers written directly: {direct} of {sent} messages"
            ),
            Some(_) => assert_eq!(direct, 0.0, "none when turned off ({sent} messages)"),
        }
        assert!(sent >= 24.0, "{sent} messages sent");
    }
}

/// SIGTERM before the event consumers ever subscribed (Kafka down at start-up; found by the
/// chaos soak, issue 19): exit 0 at once, no panic (the stop signal was awaited twice).
#[tokio::test]
async fn sigterm_before_the_consumers_subscribe_exits_0_without_a_panic() {
    let port = free_port();
    let nobody = format!("[\"127.0.0.1:{}\"]", free_port());
    let child = gateway(port)
        .env("FLUX_KAFKA__BROKERS", nobody)
        .spawn()
        .unwrap();
    wait_healthy(port).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (exit, logs) = terminate(child).await;
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(exit.code(), Some(0), "{logs}");
}

/// `gateway(port)` started with an open-files limit of `soft` and `hard` (`None`: this
/// process's hard limit), as containerd 2 and Docker 29 start containers (soft 1024).
fn gateway_with_open_files(port: u16, soft: u64, hard: Option<u64>) -> (Command, u64) {
    use std::os::unix::process::CommandExt;
    let (_, own_hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let hard = hard.unwrap_or(own_hard);
    let mut cmd = gateway(port);
    // SAFETY: between fork and exec the closure only calls setrlimit (async-signal-safe) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
    }
    (cmd, hard)
}

/// The `Max open files` soft and hard limits of a running process.
fn open_files_limits(pid: u32) -> (Option<u64>, Option<u64>) {
    let limits = rlimit::ProcLimits::read_process(pid as i32).unwrap();
    let files = limits
        .max_open_files
        .expect("Max open files in /proc/<pid>/limits");
    (files.soft_limit, files.hard_limit)
}

/// The gateway lifts its open-files soft limit to the hard one (Rust does not; a container
/// started at soft 1024 stopped accepting near 1000 clients) and logs the limit in effect.
#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    // Arrange: soft 256, the hard limit left as it is.
    let port = free_port();
    let (mut cmd, hard) = gateway_with_open_files(port, 256, None);
    assert!(
        hard >= 2048,
        "this test needs a hard open-files limit of at least 2048, not {hard}"
    );
    cmd.env("FLUX_SIM__ENABLED", "false")
        .env("FLUX_HTTP__MAX_CONNECTIONS", "1000");

    // Act
    let child = cmd.spawn().unwrap();
    wait_healthy(port).await;
    let (soft_now, hard_now) = open_files_limits(child.id());
    let (status, logs) = terminate(child).await;

    // Assert
    assert_eq!(hard_now, Some(hard), "the hard limit is left alone");
    assert_eq!(
        soft_now,
        Some(hard),
        "the soft limit is the hard one:\n{logs}"
    );
    assert!(status.success(), "{status:?}\n{logs}");
    let logged: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"open-files limit\""))
        .collect();
    assert_eq!(logged.len(), 1, "{logs}");
    assert!(logged[0].contains("\"INFO\""), "{}", logged[0]);
    assert!(
        logged[0].contains(&format!("\"limit\":{hard}")),
        "{}",
        logged[0]
    );
    assert!(
        !logs.contains("below http.max_connections"),
        "1000 connections fit in {hard}:\n{logs}"
    );
}

/// A hard limit below `http.max_connections` (plus headroom) is named in a warning that says
/// how to fix it; the gateway still starts.
#[tokio::test]
async fn an_open_files_limit_below_max_connections_is_named_in_a_warning() {
    let port = free_port();
    let (mut cmd, _) = gateway_with_open_files(port, 256, Some(1024));
    cmd.env("FLUX_SIM__ENABLED", "false")
        .env("FLUX_HTTP__MAX_CONNECTIONS", "20000");
    let child = cmd.spawn().unwrap();
    wait_healthy(port).await;
    let (status, logs) = terminate(child).await;
    assert!(status.success(), "{status:?}\n{logs}");
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("below http.max_connections"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    for needle in [
        "\"limit\":1024",
        "\"max_connections\":20000",
        "nofile hard limit",
    ] {
        assert!(warnings[0].contains(needle), "{needle}: {}", warnings[0]);
    }
}
