//! WebSocket permessage-deflate (`socketio.compression`): negotiated with a client that
//! offers it, room events and replies compressed once and sent as RSV1 frames that inflate to
//! the very packets a plain client gets; plain frames for a client that does not offer it and
//! for everyone when the setting is off; compressed client messages inflated, a deflate bomb
//! or a corrupt stream closing that socket only, counted.
//!
//! The clients are raw tokio-tungstenite sockets (the patched tungstenite, which hands RSV1
//! messages over as frames when asked to); the test inflates them itself with flate2.

use std::collections::HashMap;
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::support::app::*;
use flux_bff::boot::Settings;
use flux_bff::domain::topics::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The compressed-frame counts are the process's: the tests of this file that negotiate
/// compression run one at a time (no test of another file of this binary negotiates it), so
/// that a test's before/after difference is its own.
static COUNTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the gateway answers to a browser's offer.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// What Chromium and Node's `ws` offer.
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A raw Socket.IO client: the upgrade (with or without the offer) and the extension the
/// gateway answered.
async fn open(app: &TestApp, offer: bool) -> (Ws, Option<String>) {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let mut request = url.into_client_request().unwrap();
    if offer {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Extensions", OFFER.parse().unwrap());
    }
    // Accept RSV1 messages whether offered or not, so that a compressed frame sent to a
    // client that did not negotiate would be seen (and fail the test), not refused.
    let config = WebSocketConfig::default().accept_rsv1_messages(true);
    let (ws, response) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .unwrap();
    let extension = response
        .headers()
        .get("sec-websocket-extensions")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, extension)
}

/// One text message: its text (inflated if compressed) and whether it came compressed.
/// Engine.IO pings are answered on the way. `None` when the connection ends or errs.
async fn next(ws: &mut Ws) -> Option<(String, bool)> {
    next_within(ws, Duration::from_secs(10))
        .await
        .expect("a message within 10 s")
}

/// [`next`], or `Err` when nothing arrives within `wait`.
async fn next_within(
    ws: &mut Ws,
    wait: Duration,
) -> Result<Option<(String, bool)>, tokio::time::error::Elapsed> {
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await?;
        let (text, compressed) = match msg {
            Some(Ok(Message::Text(t))) => (t.to_string(), false),
            Some(Ok(Message::Frame(f))) => {
                assert!(f.header().rsv1, "only RSV1 messages come as frames");
                assert_eq!(f.header().opcode, OpCode::Data(Data::Text));
                (String::from_utf8(inflate(f.payload())).unwrap(), true)
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(None),
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        };
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
            continue;
        }
        return Ok(Some((text, compressed)));
    }
}

/// Waits for event `name`: its whole Engine.IO text and whether it came compressed.
async fn wait_event(ws: &mut Ws, name: &str) -> (String, bool) {
    let prefix = format!("42[\"{name}\"");
    loop {
        let (text, compressed) = next(ws)
            .await
            .unwrap_or_else(|| panic!("closed before {name}"));
        if text.starts_with(&prefix) {
            return (text, compressed);
        }
    }
}

/// Waits for every event of `names`, in any order: each one's text and whether it came
/// compressed.
async fn collect(ws: &mut Ws, names: &[&str]) -> HashMap<String, (String, bool)> {
    let mut got = HashMap::new();
    while got.len() < names.len() {
        let (text, compressed) = next(ws).await.expect("closed while waiting");
        if let Some(name) = names
            .iter()
            .find(|n| text.starts_with(&format!("42[\"{n}\"")))
        {
            got.insert((*name).to_owned(), (text, compressed));
        }
    }
    got
}

/// Sends `userLocationUpdate` for `city` and waits until the socket is in the city's rooms
/// (the global rooms are joined with it): it gets the city's weather, published as probes.
async fn join(app: &TestApp, ws: &mut Ws, city: &str) {
    ws.send(Message::text(user_location_update(city)))
        .await
        .unwrap();
    let event = format!("42[\"weather.{city}.update\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never joined {city}"
        );
        app.publish(WEATHER, None, &probe(city));
        if let Ok(msg) = next_within(ws, Duration::from_millis(50)).await {
            let (text, _) = msg.expect("closed while joining");
            if text.starts_with(&event) {
                return;
            }
        }
    }
}

/// Opens, connects the namespace and waits for `session:init`; returns what `open` does.
async fn connected(app: &TestApp, offer: bool, guest: &str) -> (Ws, Option<String>) {
    let (mut ws, extension) = open(app, offer).await;
    let (open_packet, _) = next(&mut ws).await.unwrap();
    assert!(open_packet.starts_with("0{"), "{open_packet}");
    ws.send(Message::text(format!(r#"40{{"guestId":"{guest}"}}"#)))
        .await
        .unwrap();
    let (init, compressed) = wait_event(&mut ws, "session:init").await;
    assert!(
        !compressed,
        "a packet below the threshold goes plain: {init}"
    );
    (ws, extension)
}

fn user_location_update(city: &str) -> String {
    format!(r#"42["userLocationUpdate",{}]"#, location(city))
}

/// A client message compressed as a browser sends it: raw deflate, sync flush, tail removed.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    assert_eq!(d.total_in() as usize, input.len(), "all input inflated");
    out
}

/// A text message with RSV1 set (a compressed message) with `payload` as its body.
fn compressed_frame(payload: Vec<u8>) -> Message {
    let header = FrameHeader {
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, Bytes::from(payload)))
}

#[tokio::test]
async fn a_client_that_offers_deflate_gets_compressed_frames_that_decode_to_the_same_packets() {
    let _counts = COUNTS.lock().await;
    let app = TestApp::spawn().await;
    app.cache_every_snapshot().await;
    let before = app.metrics().await;
    let (mut zipped, extension) = connected(&app, true, "zipped").await;
    assert_eq!(extension.as_deref(), Some(ACCEPTED));
    let (mut plain, extension) = connected(&app, false, "plain").await;
    assert_eq!(
        extension, None,
        "no extension for a client that offered none"
    );

    // Hydration: replies sent socket by socket (the rooms are joined before them).
    let snapshots = [EV_NEWS, EV_TOPCOINS, EV_MOVERS, EV_STOCKS];
    for ws in [&mut zipped, &mut plain] {
        ws.send(Message::text(user_location_update("Lucknow")))
            .await
            .unwrap();
    }
    let z = collect(&mut zipped, &snapshots).await;
    let p = collect(&mut plain, &snapshots).await;
    for event in snapshots {
        let ((z, z_compressed), (p, p_compressed)) = (&z[event], &p[event]);
        assert!(
            z_compressed,
            "{event} compressed for the client that negotiated it"
        );
        assert!(!p_compressed, "{event} plain for the other");
        assert_eq!(
            z, p,
            "{event}: the compressed frame decodes to the same packet"
        );
    }

    // Room events: a ticker (one broadcast) and a news snapshot (room, socket by socket).
    let tick = fixture("crypto.ticker.event.updated.json");
    app.publish(TICKER_EVENTS, Some("BTC-USD"), &tick);
    let (z, z_compressed) = wait_event(&mut zipped, EV_TICKER).await;
    let (p, p_compressed) = wait_event(&mut plain, EV_TICKER).await;
    assert!(z_compressed && !p_compressed);
    assert_eq!(z, p);
    let v: Value = serde_json::from_str(&z[2..]).unwrap();
    assert_eq!(v[1]["data"]["data"]["product_id"], json!("BTC-USD"));
    app.publish_fixture(NEWS_EVENTS).await;
    let (z, z_compressed) = wait_event(&mut zipped, EV_NEWS).await;
    let (p, _) = wait_event(&mut plain, EV_NEWS).await;
    assert!(z_compressed);
    assert_eq!(z, p);

    // One lookup per compressed message this test's one compressing socket got (4 replies, a
    // ticker, a news event, maybe more tickers), counted while no other test compresses.
    let m = app.metrics().await;
    let lookups = counter(&m, "flux_ws_compressed_frames_total", &[])
        - counter(&before, "flux_ws_compressed_frames_total", &[]);
    assert!(
        lookups >= 6.0,
        "{lookups} compressed frames counted:\n{}",
        m.lines()
            .filter(|l| l.contains("compressed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_room_event_is_compressed_once_for_every_socket() {
    let _counts = COUNTS.lock().await;
    let app = TestApp::spawn().await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut ws, _) = connected(&app, true, &format!("many-{i}")).await;
        join(&app, &mut ws, "Pune").await;
        clients.push(ws);
    }
    let before = app.metrics().await;
    let mut tick = fixture("crypto.ticker.event.updated.json");
    tick["data"]["product_id"] = json!("ONCE-USD");
    app.publish(TICKER_EVENTS, Some("ONCE-USD"), &tick);
    for ws in &mut clients {
        loop {
            let (text, compressed) = wait_event(ws, EV_TICKER).await;
            if text.contains("ONCE-USD") {
                assert!(compressed);
                break;
            }
        }
    }
    let after = app.metrics().await;
    let delta = |cache: &str| {
        let label = format!("cache=\"{cache}\"");
        counter(&after, "flux_ws_compressed_frames_total", &[&label])
            - counter(&before, "flux_ws_compressed_frames_total", &[&label])
    };
    // Every compressed message of the window went to the five sockets (the ticker, maybe the
    // room's weather): one compression for five deliveries at most. A compression per socket
    // would make every lookup a miss.
    let lookups = delta("address") + delta("content") + delta("miss");
    assert!(
        lookups >= 5.0 && delta("miss") * 5.0 <= lookups,
        "frames reused: address {} content {} miss {}",
        delta("address"),
        delta("content"),
        delta("miss")
    );
}

#[tokio::test]
async fn with_compression_off_every_client_gets_plain_frames() {
    let mut settings = Settings::default();
    settings.socketio.compression = false;
    let app = TestApp::spawn_with(settings).await;
    app.cache_every_snapshot().await;
    let (mut ws, extension) = connected(&app, true, "offered").await;
    assert_eq!(extension, None, "not negotiated when the setting is off");
    ws.send(Message::text(user_location_update("Lucknow")))
        .await
        .unwrap();
    let replies = collect(&mut ws, &[EV_NEWS, EV_TOPCOINS, EV_MOVERS, EV_STOCKS]).await;
    assert!(replies.values().all(|(_, compressed)| !compressed));
    app.publish(
        TICKER_EVENTS,
        None,
        &fixture("crypto.ticker.event.updated.json"),
    );
    let (_, compressed) = wait_event(&mut ws, EV_TICKER).await;
    assert!(!compressed);
}

/// A client that negotiated compression sends its `userLocationUpdate` deflated, as `send`
/// frames it; the join happens: the hydration replies come back.
async fn a_compressed_join_is_handled(name: &str, send: impl AsyncFnOnce(&mut Ws, Vec<u8>)) {
    let _counts = COUNTS.lock().await;
    let app = TestApp::spawn().await;
    app.cache_every_snapshot().await;
    let (mut ws, extension) = connected(&app, true, name).await;
    assert_eq!(extension.as_deref(), Some(ACCEPTED));
    send(&mut ws, deflate(user_location_update("Lucknow").as_bytes())).await;
    let (reply, _) = wait_event(&mut ws, EV_TOPCOINS).await;
    assert!(reply.contains("\"success\""), "{reply}");
}

#[tokio::test]
async fn a_compressed_client_message_is_inflated_and_handled() {
    a_compressed_join_is_handled("sends-compressed", async |ws, payload| {
        ws.send(compressed_frame(payload)).await.unwrap();
    })
    .await;
}

/// A compressed message in two frames, as RFC 7692 allows: RSV1 on the first frame only,
/// the rest of the deflate stream in a continuation frame.
#[tokio::test]
async fn a_compressed_client_message_in_two_frames_is_reassembled_and_inflated() {
    a_compressed_join_is_handled("sends-fragments", async |ws, payload| {
        let (head, tail) = payload.split_at(payload.len() / 2);
        let first = FrameHeader {
            is_final: false,
            rsv1: true,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let rest = FrameHeader {
            opcode: OpCode::Data(Data::Continue),
            ..FrameHeader::default()
        };
        for (header, part) in [(first, head), (rest, tail)] {
            let frame = Frame::from_payload(header, Bytes::from(part.to_vec()));
            ws.send(Message::Frame(frame)).await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn a_deflate_bomb_or_a_corrupt_message_closes_only_that_socket_and_is_counted() {
    let _counts = COUNTS.lock().await;
    let app = TestApp::spawn().await;
    let before = app.metrics().await;
    let (mut bomber, _) = connected(&app, true, "bomber").await;
    let (mut corrupt, _) = connected(&app, true, "corrupt").await;
    let (mut bystander, _) = connected(&app, true, "bystander").await;
    join(&app, &mut bystander, "Pune").await;

    // 10 MB of a Socket.IO event in 10 KB of deflate: far under socketio.max_payload (64 KB)
    // on the wire, far over it inflated.
    let mut huge = br#"42["userLocationUpdate",""#.to_vec();
    huge.resize(10 << 20, b'a');
    let bomb = deflate(&huge);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    bomber.send(compressed_frame(bomb)).await.unwrap();
    // Block type 3 does not exist.
    corrupt
        .send(compressed_frame(vec![0xff, 0xff, 0xff, 0xff]))
        .await
        .unwrap();
    for (name, ws) in [("bomber", &mut bomber), ("corrupt", &mut corrupt)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} was not closed"
            );
            match next(ws).await {
                None => break,
                Some((text, _)) => {
                    assert!(!text.starts_with("42[\"cryptoTickerResponse"), "{text}")
                }
            }
        }
    }

    // The others are not affected.
    let mut tick = fixture("crypto.ticker.event.updated.json");
    tick["data"]["product_id"] = json!("AFTER-USD");
    app.publish(TICKER_EVENTS, Some("AFTER-USD"), &tick);
    loop {
        let (text, _) = wait_event(&mut bystander, EV_TICKER).await;
        if text.contains("AFTER-USD") {
            break;
        }
    }
    let after = app.metrics().await;
    let delta = |reason: &str| {
        let label = format!("reason=\"{reason}\"");
        counter(&after, "flux_ws_inflate_failures_total", &[&label])
            - counter(&before, "flux_ws_inflate_failures_total", &[&label])
    };
    assert!(delta("too_large") >= 1.0, "the bomb is counted");
    assert!(delta("corrupt") >= 1.0, "the corrupt message is counted");
}
