//! The HTTP server's limits against hostile clients (issue 13): a request head that never
//! ends (slowloris), a head too large, too many connections in total and per client address,
//! with `X-Forwarded-For` honoured only from trusted proxies. Over a limit the connection is
//! closed or refused with a status, never the process; the others are served meanwhile.

use std::time::{Duration, Instant};

use crate::support::app::*;
use flux_bff::boot::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `GET path` (with `X-Forwarded-For` when given) on `stream`, keeping the connection
/// open, and returns the status code of the answer (0 when the connection closed instead).
async fn get(stream: &mut TcpStream, path: &str, forwarded_for: Option<&str>) -> u16 {
    let xff = forwarded_for.map_or(String::new(), |f| format!("X-Forwarded-For: {f}\r\n"));
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{xff}\r\n");
    if stream.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    status(stream).await
}

/// Reads one answer's head and body (`/healthz` answers are small) and returns its status.
async fn status(stream: &mut TcpStream) -> u16 {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            Err(_) => panic!("no answer within 5 s: {:?}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closed `stream` within `within` (reads EOF or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_closed_after_the_header_timeout() {
    let mut settings = Settings::default();
    settings.http.header_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();

    let mut other = connect(&app).await;
    assert_eq!(
        get(&mut other, "/healthz", None).await,
        200,
        "others are served"
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "a head that never ends is closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_http_connections_refused_total",
            &["header_timeout"]
        ) >= 1.0,
        "counted"
    );
}

#[tokio::test]
async fn a_request_head_over_max_head_bytes_gets_431() {
    let mut settings = Settings::default();
    settings.http.max_head_bytes = 8192;
    let app = TestApp::spawn_with(settings).await;
    let mut stream = connect(&app).await;
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    assert_eq!(status(&mut stream).await, 431);
    let mut other = connect(&app).await;
    assert_eq!(get(&mut other, "/healthz", None).await, 200);
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_http_connections_refused_total",
            &["head_too_large"]
        ) >= 1.0
    );
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once_and_counted() {
    let mut settings = Settings::default();
    settings.http.max_connections = 3;
    let app = TestApp::spawn_with(settings).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        assert_eq!(get(&mut stream, "/healthz", None).await, 200);
        held.push(stream);
    }
    let mut over = connect(&app).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "the fourth connection is closed"
    );

    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect(&app).await;
    assert_eq!(
        get(&mut again, "/healthz", None).await,
        200,
        "a freed place is taken"
    );
    drop(again);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_http_connections_refused_total",
            &["\"max_connections\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn the_per_client_limit_counts_the_forwarded_client_of_a_trusted_proxy() {
    // 127.0.0.1 is a trusted proxy by default: its X-Forwarded-For names the client.
    let mut settings = Settings::default();
    settings.http.max_connections_per_client = 2;
    let app = TestApp::spawn_with(settings).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&app).await;
        assert_eq!(get(&mut stream, "/healthz", Some("203.0.113.7")).await, 200);
        held.push(stream);
    }
    let mut third = connect(&app).await;
    assert_eq!(
        get(&mut third, "/healthz", Some("203.0.113.7")).await,
        429,
        "a third connection of the same client"
    );
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    let mut other_client = connect(&app).await;
    assert_eq!(
        get(
            &mut other_client,
            "/healthz",
            Some("198.51.100.1, 203.0.113.7")
        )
        .await,
        429,
        "the nearest untrusted hop is the client, not the first one"
    );
    let mut another = connect(&app).await;
    assert_eq!(
        get(&mut another, "/healthz", Some("198.51.100.1")).await,
        200
    );

    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut freed = connect(&app).await;
    assert_eq!(get(&mut freed, "/healthz", Some("203.0.113.7")).await, 200);
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_http_connections_refused_total",
            &["max_connections_per_client"]
        ) >= 2.0
    );
}

#[tokio::test]
async fn an_untrusted_peer_is_its_own_client_whatever_it_forwards() {
    let mut settings = Settings::default();
    settings.http.max_connections_per_client = 2;
    settings.http.trusted_proxies = Vec::new();
    let app = TestApp::spawn_with(settings).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut stream = connect(&app).await;
        let forwarded = format!("203.0.113.{i}");
        assert_eq!(get(&mut stream, "/healthz", Some(&forwarded)).await, 200);
        held.push(stream);
    }
    let mut third = connect(&app).await;
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "counted against 127.0.0.1 at accept, X-Forwarded-For ignored"
    );
}

#[tokio::test]
async fn an_upgraded_websocket_keeps_its_place_under_the_limits() {
    // hyper hands an upgraded socket over and ends its HTTP connection: the place must stay
    // taken as long as the WebSocket lives.
    let mut settings = Settings::default();
    settings.http.max_connections = 2;
    let app = TestApp::spawn_with(settings).await;
    let first = TestClient::connect(&app, Some("ws-1")).await;
    let _second = TestClient::connect(&app, Some("ws-2")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = connect(&app).await;
    assert!(
        closed_within(&mut over, Duration::from_secs(2)).await,
        "two WebSockets hold the two places"
    );

    first.client.disconnect().await.expect("disconnect");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(&app).await;
        if get(&mut again, "/healthz", None).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a WebSocket that ended gives its place back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
