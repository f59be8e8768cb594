//! A loopback TCP proxy a test controls, to inject network faults between a client and a
//! server: `cut()` drops every connection and refuses new ones, `restore()` lets them through.
//!
//! Kafka clients connect to the address the broker advertises, so the broker advertises the
//! proxy and every client goes through it. To still reach the broker while cut (to produce
//! "during the outage"), connections of a spared Kafka `client_id` survive cuts: the proxy reads
//! the client id from the header of the first request of each connection.
//!
//! `bytes_up()` counts what clients sent to the server through the proxy: a test can tell a
//! client that polls once per long-poll from one that spins.
//!
//! `corrupt(pattern)` flips the last byte of `pattern` wherever it appears in what the server
//! sends (a record value in a fetch response: its batch then fails its CRC), until `heal()`.
//! `mark_gzip(value)` instead marks the batch holding that value as gzip-compressed and fixes
//! its CRC: a batch that passes its CRC but whose records cannot be decoded.
//!
//! `start_raw` proxies any protocol (no client id is read, so nothing can be spared), and
//! `delay(latency)` holds every chunk that long before passing it on, in both directions: a
//! slow network on which pipelined commands share one wait and serialized ones add up.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct TcpProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    /// Not Kafka: forward from the first byte without reading a client id.
    raw: bool,
    latency: Mutex<Duration>,
    cut: AtomicBool,
    bytes_up: AtomicU64,
    spared: Mutex<Vec<String>>,
    corrupt: Mutex<Option<(Vec<u8>, Spoil)>>,
    // std Mutex: never held across an .await
    connections: Mutex<Vec<(Option<String>, AbortHandle)>>,
}

impl Shared {
    fn is_spared(&self, client_id: Option<&str>) -> bool {
        client_id.is_some_and(|id| self.spared.lock().unwrap().iter().any(|s| s == id))
    }
}

impl TcpProxy {
    /// Listens on a free loopback port; `upstream` may be set later with [`Self::set_upstream`].
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::spawn(upstream, false).await
    }

    /// Like [`Self::start`], for a protocol other than Kafka.
    pub async fn start_raw(upstream: SocketAddr) -> Self {
        Self::spawn(upstream, true).await
    }

    async fn spawn(upstream: SocketAddr, raw: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            raw,
            latency: Mutex::default(),
            cut: AtomicBool::new(false),
            bytes_up: AtomicU64::new(0),
            spared: Mutex::default(),
            corrupt: Mutex::default(),
            connections: Mutex::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            accept,
        }
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Connections whose Kafka client id is `client_id` are never cut.
    pub fn spare(&self, client_id: &str) {
        self.shared
            .spared
            .lock()
            .unwrap()
            .push(client_id.to_owned());
    }

    /// Drops every (non-spared) connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let mut connections = self.shared.connections.lock().unwrap();
        connections.retain(|(client_id, task)| {
            if self.shared.is_spared(client_id.as_deref()) {
                true
            } else {
                task.abort();
                false
            }
        });
    }

    /// Holds every chunk `latency` before forwarding it (zero: none), from now on.
    pub fn delay(&self, latency: Duration) {
        *self.shared.latency.lock().unwrap() = latency;
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Flips the last byte of every `pattern` the server sends, until [`Self::heal`]. A pattern
    /// split across two reads of the proxy passes intact: keep it short.
    pub fn corrupt(&self, pattern: &[u8]) {
        *self.shared.corrupt.lock().unwrap() = Some((pattern.to_vec(), Spoil::Byte));
    }

    /// Marks as gzip-compressed (and re-checksums) every record batch the server sends whose
    /// one record has a null key and the value `value` (under 60 bytes), until [`Self::heal`].
    pub fn mark_gzip(&self, value: &[u8]) {
        assert!(value.len() < 60, "one-byte varints only");
        *self.shared.corrupt.lock().unwrap() = Some((value.to_vec(), Spoil::Codec));
    }

    pub fn heal(&self) {
        *self.shared.corrupt.lock().unwrap() = None;
    }

    /// Bytes clients have sent to the server through the proxy so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for (_, task) in self.shared.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let shared_for_task = Arc::clone(&shared);
        let (id_tx, id_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = serve(client, shared_for_task, id_tx).await;
        });
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Register the connection once its client id is known, so that `cut` can sort it.
            if let Ok(client_id) = id_rx.await {
                if shared.cut.load(Ordering::SeqCst) && !shared.is_spared(client_id.as_deref()) {
                    task.abort(); // cut while this one was connecting
                    return;
                }
                let mut connections = shared.connections.lock().unwrap();
                connections.retain(|(_, t)| !t.is_finished());
                connections.push((client_id, task.abort_handle()));
            }
        });
    }
}

async fn serve(
    mut client: TcpStream,
    shared: Arc<Shared>,
    id_tx: tokio::sync::oneshot::Sender<Option<String>>,
) -> std::io::Result<()> {
    // The first Kafka request: length prefix, then api key, version, correlation id, client id.
    let mut first = Vec::new();
    let mut client_id = None;
    if !shared.raw {
        let mut len = [0u8; 4];
        client.read_exact(&mut len).await?;
        let size = usize::try_from(i32::from_be_bytes(len).max(0)).unwrap_or(0);
        let mut frame = vec![0u8; size];
        client.read_exact(&mut frame).await?;
        client_id = parse_client_id(&frame);
        first.extend_from_slice(&len);
        first.extend_from_slice(&frame);
    }
    if shared.cut.load(Ordering::SeqCst) && !shared.is_spared(client_id.as_deref()) {
        return Ok(()); // refused: dropping the socket closes it
    }
    let upstream = *shared.upstream.lock().unwrap();
    let mut server = TcpStream::connect(upstream).await?;
    let _ = id_tx.send(client_id);
    server.write_all(&first).await?;
    shared
        .bytes_up
        .fetch_add(first.len() as u64, Ordering::SeqCst);
    let delay = || async {
        let latency = *shared.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buf).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
            delay().await;
            server_write.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await?;
            if n == 0 {
                return client_write.shutdown().await;
            }
            if let Some((pattern, spoil)) = shared.corrupt.lock().unwrap().as_ref() {
                match spoil {
                    Spoil::Byte => corrupt(&mut buf[..n], pattern),
                    Spoil::Codec => mark_gzip(&mut buf[..n], pattern),
                }
            }
            delay().await;
            client_write.write_all(&buf[..n]).await?;
        }
    };
    tokio::try_join!(up, down)?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Spoil {
    Byte,
    Codec,
}

/// A record batch (magic 2) is: base offset 8, length 4, leader epoch 4, magic 1, CRC-32C 4
/// (of everything after it), attributes 2 (codec in the low 3 bits), 40 more header bytes,
/// then the records; a record with a null key and a short value starts with 6 one-byte
/// fields (length, attributes, timestamp delta, offset delta, key length, value length).
fn mark_gzip(bytes: &mut [u8], value: &[u8]) {
    let mut at = 0;
    while let Some(found) = bytes[at..].windows(value.len()).position(|w| w == value) {
        let pos = at + found;
        at = pos + value.len();
        let Some(start) = pos.checked_sub(61 + 6) else {
            continue;
        };
        let len = i32::from_be_bytes(bytes[start + 8..start + 12].try_into().unwrap());
        let end = start + 12 + usize::try_from(len).unwrap_or(0);
        if bytes[start + 16] != 2 || end > bytes.len() {
            continue;
        }
        bytes[start + 22] |= 1;
        let crc = crc32c(&bytes[start + 21..end]);
        bytes[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// CRC-32C (Castagnoli), bit by bit: a test's few batches need no table.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn corrupt(bytes: &mut [u8], pattern: &[u8]) {
    let mut at = 0;
    while let Some(found) = bytes[at..]
        .windows(pattern.len())
        .position(|w| w == pattern)
    {
        at += found + pattern.len();
        bytes[at - 1] ^= 0x20;
    }
}

fn parse_client_id(frame: &[u8]) -> Option<String> {
    let len = i16::from_be_bytes(frame.get(8..10)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let bytes = frame.get(10..10 + len)?;
    String::from_utf8(bytes.to_vec()).ok()
}
