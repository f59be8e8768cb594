//! Socket.IO limits against hostile clients (issue 13): binary attachments (the contract has
//! none), a session that never joins the namespace (a half-open WebSocket), an event name too
//! long. Over a limit the socket is closed or the event dropped and counted; other clients
//! are served meanwhile.

use std::time::Duration;

use crate::support::app::*;
use flux_bff::boot::Settings;
use flux_bff::domain::topics::*;
use rust_socketio::Payload;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_packet_with_binary_attachments_closes_its_socket_only() {
    let app = TestApp::spawn().await;
    let hostile = TestClient::connect(&app, Some("binary")).await;
    let other = TestClient::connect(&app, Some("other")).await;
    hostile
        .client
        .emit(REQ_LOCATION, Payload::Binary(vec![0u8; 1024].into()))
        .await
        .expect("emit");
    // The gateway closes it as a packet it cannot parse (rust_socketio does not report a
    // close it did not ask for, so the gateway's count is what shows it).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metrics = app.metrics().await;
        if counter(
            &metrics,
            "flux_socket_disconnects_total",
            &["packet_parsing_error"],
        ) >= 1.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the socket that sent an attachment is closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hostile.client.emit(REQ_TOPCOINS, json!({})).await.is_err(),
        "the hostile client's connection is gone"
    );
    other.emit_empty(REQ_TOPCOINS).await;
    assert!(
        other.wait_nth(EV_TOPCOINS, 1, WAIT).await.is_some(),
        "the others are served"
    );
}

/// Sends `method target` (with `body`) on a new connection; the status and the body.
async fn http(app: &TestApp, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("an answer")
        .expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

async fn http_get(app: &TestApp, target: &str) -> (u16, String) {
    http(app, "GET", target, "").await
}

/// Opens an Engine.IO session on the polling transport; its `sid`.
async fn polling_session(app: &TestApp) -> String {
    let (status, body) = http_get(app, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    body.split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no sid in {body}"))
        .to_owned()
}

#[tokio::test]
async fn an_engine_io_session_that_never_joins_the_namespace_is_closed_after_connect_timeout() {
    let mut settings = Settings::default();
    settings.socketio.connect_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    // The Engine.IO handshake, then nothing: no namespace connect ("40").
    let sid = polling_session(&app).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = http_get(
        &app,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    assert!(
        status == 400 || body.starts_with('1'),
        "the session is gone after connect_timeout: {status} {body:?}"
    );
}

/// Found by review: the limit counted only sessions that had joined the namespace, so
/// handshakes that never join (each alive for `connect_timeout`) were not bounded by it.
#[tokio::test]
async fn polling_handshakes_that_never_join_count_against_max_polling_sessions() {
    let mut settings = Settings::default();
    settings.socketio.max_polling_sessions = 1;
    settings.socketio.connect_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    polling_session(&app).await; // never joins

    let (status, body) = http_get(&app, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 503, "a second one is refused at once: {body}");

    // Once the first is closed for not joining, its place is free again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (status, _) = http_get(&app, "/socket.io/?EIO=4&transport=polling").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the place of a session closed after connect_timeout is never given back"
        );
    }
}

/// Found by review: a session whose CONNECT was refused for its token counted as joined,
/// and so nowhere (it never became a socket): a client without a token could open polling
/// sessions past the limit.
#[tokio::test]
async fn a_polling_session_refused_for_its_token_still_counts_against_max_polling_sessions() {
    let mut settings = crate::auth::hs256_settings(None);
    settings.socketio.max_polling_sessions = 1;
    let app = TestApp::spawn_with(settings).await;
    let sid = polling_session(&app).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        http(&app, "POST", &target, r#"40{"token":"x"}"#).await.0,
        200
    );
    let (_, refusal) = http_get(&app, &target).await;
    assert!(refusal.contains("44{"), "refused: {refusal:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await; // past a recount

    let (status, body) = http_get(&app, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(
        status, 503,
        "the refused session still holds its place: {body}"
    );
}

#[tokio::test]
async fn a_polling_session_that_joined_counts_once_against_max_polling_sessions() {
    let mut settings = Settings::default();
    settings.socketio.max_polling_sessions = 2;
    let app = TestApp::spawn_with(settings).await;
    let sid = polling_session(&app).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(http(&app, "POST", &target, "40").await.0, 200, "joins");
    tokio::time::sleep(Duration::from_millis(1500)).await; // recounted among the sockets

    let (status, body) = http_get(&app, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "one of two places taken, not both: {body}");
}

#[tokio::test]
async fn an_event_name_over_max_event_name_is_dropped_and_counted() {
    let app = TestApp::spawn().await;
    let c = TestClient::connect(&app, Some("long-name")).await;
    let long = format!("{REQ_TOPCOINS}{}", "x".repeat(100));
    c.emit(&long, json!({})).await;
    c.emit_empty(REQ_TOPCOINS).await;
    assert!(
        c.wait_nth(EV_TOPCOINS, 1, WAIT).await.is_some(),
        "the socket goes on"
    );
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_client_events_dropped_total",
            &["event_name_too_long"]
        ) >= 1.0,
        "counted"
    );
}

#[tokio::test]
async fn polling_handshakes_beyond_max_polling_sessions_are_refused_websockets_are_not() {
    let mut settings = Settings::default();
    settings.socketio.max_polling_sessions = 1;
    let app = TestApp::spawn_with(settings).await;
    // One client on the polling transport, joined to the namespace, never upgrading.
    let sid = polling_session(&app).await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        http(&app, "POST", &target, "40").await.0,
        200,
        "namespace connect"
    );

    // The count is refreshed every second.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(&app, "/socket.io/?EIO=4&transport=polling").await;
        if status == 503 {
            assert!(body.contains("websocket"), "names the way out: {body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a second polling session is refused, got {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every spelling engineioxide takes for a polling handshake is refused too.
    for target in [
        "/socket.io?EIO=4&transport=polling",
        "/socket.io/?EIO=4&transport=polling=x",
        "/socket.io/?transport=polling&EIO=4&transport=websocket",
    ] {
        let (status, body) = http_get(&app, target).await;
        assert_eq!(status, 503, "{target}: {body}");
    }
    let ws = TestClient::connect(&app, Some("on-websocket")).await;
    ws.emit_empty(REQ_TOPCOINS).await;
    assert!(
        ws.wait_nth(EV_TOPCOINS, 1, WAIT).await.is_some(),
        "WebSockets still connect"
    );
    let metrics = app.metrics().await;
    assert!(
        counter(
            &metrics,
            "flux_http_connections_refused_total",
            &["max_polling_sessions"]
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_half_open_websocket_is_closed_after_connect_timeout_and_counted() {
    let mut settings = Settings::default();
    settings.socketio.connect_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(settings).await;
    let never_joined = |m: &str| counter(m, "flux_ws_sessions_never_joined_total", &[]);
    let before = never_joined(&app.metrics().await);

    // A joined client's session is not counted when it ends.
    let joined = TestClient::connect(&app, Some("joined")).await;
    joined.client.disconnect().await.expect("disconnect");

    // The upgrade, the engine's open packet, then nothing.
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: test\r\n\
              Upgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the half-open WebSocket is still open after 5 s"),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "it was upgraded"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );

    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = never_joined(&app.metrics().await);
        if now >= before + 1.0 {
            assert_eq!(now, before + 1.0, "only the half-open one is counted");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
