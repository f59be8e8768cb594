//! flux-bff patch: a send that finds a WebSocket socket idle writes to the connection itself
//! (`EngineIoConfig::ws_direct_writes`); everything else goes through the socket's queue to
//! its writer task. Nothing may be lost or reordered where the two meet: behind a queued
//! packet, on a connection too full to take a message at once, with senders on two threads.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use engineioxide::{
    ProtocolVersion, Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
    stats,
};
use futures_util::StreamExt;
use http::Request;
use tokio::{
    io::DuplexStream,
    sync::{Mutex, mpsc},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::Role},
};

/// Longer than the time a socket must have been written nothing for a direct write (15 ms).
const IDLE: Duration = Duration::from_millis(40);

/// The direct-write counter is process-wide: the tests that read it run one at a time. (A
/// thread's direct-write window is thread-local: each test runs on a thread of its own.)
static SERIAL: Mutex<()> = Mutex::const_new(());

#[derive(Debug)]
struct Handler(mpsc::UnboundedSender<Arc<Socket<()>>>);
impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        self.0.send(socket).ok();
    }
    fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
    fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
    fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
}

/// A server with direct writes of `direct_writes` per second and thread, and the sockets
/// it connects.
struct Server {
    svc: EngineIoService<Handler>,
    sockets: mpsc::UnboundedReceiver<Arc<Socket<()>>>,
}

impl Server {
    fn new(direct_writes: u32) -> Self {
        Self::with_queue(direct_writes, 64)
    }

    /// With a send queue of `queue` packets per socket.
    fn with_queue(direct_writes: u32, queue: usize) -> Self {
        let (tx, sockets) = mpsc::unbounded_channel();
        let config = EngineIoConfig::builder()
            .ping_interval(Duration::from_secs(60))
            .ping_timeout(Duration::from_secs(60))
            .max_buffer_size(queue)
            .ws_direct_writes(direct_writes)
            .build();
        let svc = EngineIoService::with_config(Arc::new(Handler(tx)), config);
        Self { svc, sockets }
    }

    /// A WebSocket session over an in-memory connection that holds at most `buffer` bytes
    /// in flight (so that a large message or a slow reader fills it).
    async fn connect(&mut self, buffer: usize) -> (Arc<Socket<()>>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(buffer);
        let parts = Request::builder()
            .uri("ws://127.0.0.1/engine.io/?EIO=4&transport=websocket")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        tokio::spawn(self.svc.ws_init(server, ProtocolVersion::V4, None, parts));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let open = next_text(&mut client).await;
        assert!(open.starts_with("0{"), "the open packet: {open}");
        let socket = self.sockets.recv().await.expect("the session is connected");
        (socket, client)
    }
}

/// A session of its own server, its first ping read.
async fn connect(buffer: usize) -> (Arc<Socket<()>>, WebSocketStream<DuplexStream>) {
    let (socket, mut client) = Server::new(1_000_000).connect(buffer).await;
    pinged(&mut client).await;
    (socket, client)
}

/// Reads up to the session's first ping. The engine's heartbeat pings a new session at its
/// next pass (within 500 ms), through the queue; a test that counts direct writes waits for
/// it, so that a ping written just before a send does not make the socket busy.
async fn pinged(client: &mut WebSocketStream<DuplexStream>) {
    while next_frame(client, "the first ping").await != Message::text("2") {}
}

/// The next text message, pings skipped (the engine's heartbeat pings a new session).
async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> String {
    loop {
        match next_frame(client, "a message").await {
            Message::Text(text) if text.as_str() == "2" => continue,
            Message::Text(text) => return text.to_string(),
            other => panic!("a text message, got {other:?}"),
        }
    }
}

/// The next message of `client`, `what` is expected, within 5 s.
async fn next_frame(client: &mut WebSocketStream<DuplexStream>, what: &str) -> Message {
    tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within 5 s"))
        .expect("the connection is open")
        .expect("a valid frame")
}

fn emit(socket: &Socket<()>, msg: impl Into<String>) {
    socket
        .reserve()
        .expect("room in the queue")
        .emit(msg.into().into());
}

#[tokio::test]
async fn an_idle_socket_is_written_by_the_sender_and_nothing_overtakes_the_queue() {
    let _serial = SERIAL.lock().await;
    let (socket, mut client) = connect(64 * 1024).await;
    tokio::time::sleep(IDLE).await;
    let before = stats::ws_direct_writes();

    emit(&socket, "direct");
    assert_eq!(
        stats::ws_direct_writes() - before,
        1,
        "an idle socket's message is written at once by the sender"
    );
    // Right after a write, the next one is the writer task's (more may follow to batch).
    emit(&socket, "soon after");
    assert_eq!(stats::ws_direct_writes() - before, 1);
    assert_eq!(next_text(&mut client).await, "4direct");
    assert_eq!(next_text(&mut client).await, "4soon after");

    tokio::time::sleep(IDLE).await;
    // A packet queued first (a plain `emit` always queues): the next send waits behind it
    // even though the socket has been idle.
    socket.emit("queued").unwrap();
    emit(&socket, "behind");
    assert_eq!(stats::ws_direct_writes() - before, 1);
    assert_eq!(next_text(&mut client).await, "4queued");
    assert_eq!(next_text(&mut client).await, "4behind");

    // Two of the three sends since the first found the socket busy: this thread writes
    // nothing itself in its next window (under load the writer tasks batch). One send to
    // an idle socket later, it does again.
    tokio::time::sleep(IDLE).await;
    emit(&socket, "not yet");
    assert_eq!(stats::ws_direct_writes() - before, 1);
    tokio::time::sleep(IDLE).await;
    emit(&socket, "direct again");
    assert_eq!(stats::ws_direct_writes() - before, 2);
    assert_eq!(next_text(&mut client).await, "4not yet");
    assert_eq!(next_text(&mut client).await, "4direct again");
}

#[tokio::test]
async fn a_direct_write_the_connection_cannot_take_at_once_is_finished_by_the_writer() {
    let _serial = SERIAL.lock().await;
    // 64 bytes in flight: a 2000-byte message is written in part, the rest waits for room.
    let (socket, mut client) = connect(64).await;
    let large = "x".repeat(2000);
    tokio::time::sleep(IDLE).await;
    let before = stats::ws_direct_writes();
    emit(&socket, large.clone());
    assert_eq!(
        stats::ws_direct_writes(),
        before,
        "begun by the sender, not finished by it"
    );
    // Nothing else is sent and nothing here polls the server: only the writer task, woken
    // by the sender, can finish the write (a lost wake-up times out).
    assert_eq!(next_text(&mut client).await, format!("4{large}"));

    // A message sent behind an unfinished write is queued behind it.
    tokio::time::sleep(IDLE).await;
    emit(&socket, large.clone());
    emit(&socket, "after it");
    assert_eq!(next_text(&mut client).await, format!("4{large}"));
    assert_eq!(next_text(&mut client).await, "4after it");
}

/// A client that stops reading: once the connection is full, what is sent to it waits in
/// the socket's queue — neither a direct write nor the writer task piles it into the
/// WebSocket's write buffer — so the queue fills and says so (the gateway's sign of a
/// lagging socket).
#[tokio::test]
async fn a_client_that_stops_reading_fills_the_socket_queue() {
    let _serial = SERIAL.lock().await;
    let mut server = Server::with_queue(1_000_000, 4);
    let (socket, mut client) = server.connect(64).await;
    pinged(&mut client).await;
    tokio::time::sleep(IDLE).await;
    // 2000 bytes into a connection that holds 64: the rest waits for room.
    emit(&socket, "x".repeat(2000));
    let mut queued = 0;
    loop {
        // Idle between sends, so that each could be a direct write if nothing prevented it.
        tokio::time::sleep(IDLE).await;
        match socket.reserve() {
            Ok(permit) => permit.emit(format!("m{queued}").into()),
            Err(_full) => break,
        }
        queued += 1;
        assert!(
            queued <= 4,
            "{queued} messages taken by a connection that is not read"
        );
    }
    assert_eq!(queued, 4, "the queue's four slots");
    // The client reads again: everything arrives, in order.
    assert_eq!(
        next_text(&mut client).await,
        format!("4{}", "x".repeat(2000))
    );
    for n in 0..4 {
        assert_eq!(next_text(&mut client).await, format!("4m{n}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_on_two_threads_through_a_full_connection_lose_and_reorder_nothing() {
    let _serial = SERIAL.lock().await;
    const N: usize = 3000;
    // Where each sender stops the other and writes to the idle socket itself: a, then b.
    const QUIET_EVERY: usize = 1000;
    const QUIET_AT: [usize; 2] = [250, 750];
    let (socket, mut client) = connect(256).await;
    let before = stats::ws_direct_writes();
    // Held shared for each send; exclusively, for a quiet point, by the sender that stops.
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let (sent, read) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let quiet_points_written_directly = Arc::new(AtomicUsize::new(0));
    let sender = |tag: &'static str, quiet_at: usize| {
        let (socket, gate) = (socket.clone(), gate.clone());
        let (sent, read) = (sent.clone(), read.clone());
        let quiet_direct = quiet_points_written_directly.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while i < N {
                if i % QUIET_EVERY == quiet_at {
                    // The other sender stopped, send to the idle socket (everything sent
                    // read, nothing for 40 ms) until a send is written directly: the first
                    // may find this thread's last window busy (the mix before) and be
                    // queued, or the task may have moved to the other worker; a window
                    // later, with the other sender still stopped, its next one is not.
                    let _quiet = gate.write().await;
                    for _attempt in 0..10 {
                        while read.load(Ordering::SeqCst) < sent.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        tokio::time::sleep(IDLE).await;
                        let direct = stats::ws_direct_writes();
                        emit(&socket, format!("{tag}{i}"));
                        sent.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                        if stats::ws_direct_writes() > direct {
                            quiet_direct.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    continue; // the other resumes: its sends meet this one's next
                }
                let _sending = gate.read().await;
                loop {
                    match socket.reserve() {
                        Ok(permit) => {
                            permit.emit(format!("{tag}{i}").into());
                            break;
                        }
                        Err(_full) => tokio::task::yield_now().await,
                    }
                }
                sent.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    let (a, b) = (sender("a", QUIET_AT[0]), sender("b", QUIET_AT[1]));
    let mut next = [0usize; 2];
    for n in 0..2 * N {
        let text = next_text(&mut client).await;
        let (tag, i) = text
            .strip_prefix('4')
            .and_then(|t| t.split_at_checked(1))
            .expect("a message packet");
        let k = usize::from(tag == "b");
        assert_eq!(
            i.parse::<usize>().unwrap(),
            next[k],
            "sender {tag}'s messages in order"
        );
        next[k] += 1;
        read.fetch_add(1, Ordering::SeqCst);
        if n % 700 == 0 {
            // A slow reader: the connection fills and the writes wait for room.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(next, [N, N]);
    // Between the quiet points, how many sends find the socket idle depends on the two
    // threads' timing (none on a loaded machine: the busy rule then keeps them all in the
    // queue); at each quiet point one is written directly, and the other sender's sends
    // that follow meet it.
    let quiet_points = 2 * N / QUIET_EVERY;
    assert_eq!(
        quiet_points_written_directly.load(Ordering::SeqCst),
        quiet_points,
        "a send to the idle socket at every quiet point is written directly"
    );
    let direct = stats::ws_direct_writes() - before;
    assert!(
        (quiet_points as u64..2 * N as u64).contains(&direct),
        "{direct} written out directly"
    );
}

/// A broadcast writes every socket of a room in one poll of its task: more writes than
/// tokio's cooperative budget allows a task per poll (128), which must not turn the later
/// ones into pretend-full connections left to the writer tasks.
#[tokio::test]
async fn a_broadcast_writes_every_idle_socket_of_a_large_room_itself() {
    let _serial = SERIAL.lock().await;
    let mut server = Server::new(1_000_000);
    let mut room = Vec::new();
    for _ in 0..300 {
        room.push(server.connect(4096).await);
    }
    for (_, client) in &mut room {
        pinged(client).await;
    }
    tokio::time::sleep(IDLE).await;
    let before = stats::ws_direct_writes();
    for (socket, _) in &room {
        emit(socket, "tick");
    }
    assert_eq!(stats::ws_direct_writes() - before, 300);
    for (_, client) in &mut room {
        assert_eq!(next_text(client).await, "4tick");
    }
}

/// Past its budget, a thread leaves the room's other sockets to their writer tasks. Time is
/// paused (the engine's clock is tokio's): the sends fall in one window however slow the
/// machine, so exactly one window's budget is written directly.
#[tokio::test(start_paused = true)]
async fn a_thread_writes_at_most_its_budget_itself() {
    let _serial = SERIAL.lock().await;
    // 1000 per second: 10 per window of 10 ms.
    let mut server = Server::new(1000);
    let mut room = Vec::new();
    for _ in 0..50 {
        room.push(server.connect(4096).await);
    }
    for (_, client) in &mut room {
        pinged(client).await;
    }
    tokio::time::sleep(IDLE).await;
    let before = stats::ws_direct_writes();
    let start = tokio::time::Instant::now();
    for (socket, _) in &room {
        emit(socket, "tick");
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "one window");
    assert_eq!(
        stats::ws_direct_writes() - before,
        10,
        "one window's budget"
    );
    for (_, client) in &mut room {
        assert_eq!(next_text(client).await, "4tick");
    }
}
