//! A lean WebSocket client (RFC 6455) on a tokio `TcpStream`: just the upgrade handshake,
//! masked client frames and a batch reader that parses every complete frame of one read
//! without copying. permessage-deflate (RFC 7692) is offered with `--deflate` (and with
//! `--browser-headers`, as Chromium does); when the server accepts it, compressed messages
//! are inflated one by one (the gateway keeps no context between messages), each distinct one
//! once per thread: see [`with_inflated`]. The client's own messages are always sent
//! uncompressed.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest message the reader accepts; a bigger frame means a broken peer.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Why a WebSocket connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error(
        "tcp connect from {src:?} to {dst} failed: {source} (is the gateway running? raise ulimit -n?)"
    )]
    Connect {
        src: Option<IpAddr>,
        dst: SocketAddr,
        source: io::Error,
    },
    #[error("websocket upgrade refused: server answered {0:?} (is the path /socket.io/ served?)")]
    Upgrade(String),
    #[error("websocket i/o: {0}")]
    Io(#[from] io::Error),
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
    #[error("connection closed by the server")]
    Closed,
}

/// One parsed frame header: where its payload sits in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate).
    pub rsv1: bool,
    pub opcode: u8,
    /// Masking key, if the frame is masked (server frames normally are not).
    pub mask: Option<[u8; 4]>,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses a frame header at the start of `buf`; `Ok(None)` if more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv1 = buf[0] & 0x40 != 0;
    if buf[0] & 0x30 != 0 {
        return Err(WsError::Protocol("RSV2 or RSV3 set"));
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let len7 = (buf[1] & 0x7F) as usize;
    let (payload_len, mut header_len) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len > MAX_MESSAGE as u64 {
                return Err(WsError::Protocol("frame larger than 16 MiB"));
            }
            (len as usize, 10)
        }
        n => (n, 2),
    };
    let mask = if masked {
        if buf.len() < header_len + 4 {
            return Ok(None);
        }
        let mut m = [0u8; 4];
        m.copy_from_slice(&buf[header_len..header_len + 4]);
        header_len += 4;
        Some(m)
    } else {
        None
    };
    if payload_len > MAX_MESSAGE {
        return Err(WsError::Protocol("frame larger than 16 MiB"));
    }
    Ok(Some(FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Whether upgrades carry [`BROWSER_HEADER_LINES`] (`--browser-headers`).
pub static BROWSER_HEADERS: AtomicBool = AtomicBool::new(false);

/// Whether upgrades offer permessage-deflate (`--deflate`; the browser headers offer it too).
pub static DEFLATE: AtomicBool = AtomicBool::new(false);

/// The offer Chromium and Node's `ws` send.
const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// What Chromium adds to a socket.io-client WebSocket upgrade, with a typical session cookie.
const BROWSER_HEADER_LINES: &str = "Pragma: no-cache\r\nCache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
    Chrome/156.0.0.0 Safari/537.36\r\n\
    Origin: https://flux.example.com\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-GB,en-US;q=0.9,en;q=0.8,hi;q=0.7\r\n\
    Cookie: flux_session=3f9c1e0a7b5d4c2e8f6a1b3c5d7e9f0a; _ga=GA1.1.1234567890.1764201600; \
    theme=dark\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Whether an upgrade response head accepts permessage-deflate.
fn deflate_accepted(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                && value.split(',').any(|ext| {
                    ext.trim()
                        .to_ascii_lowercase()
                        .starts_with("permessage-deflate")
                })
        })
    })
}

/// Standard base64 (with padding) of a short byte string, for `Sec-WebSocket-Key`.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A connected WebSocket (client side).
pub struct WsStream {
    io: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Reassembly of a fragmented message (rare: servers here send whole messages).
    frag: Vec<u8>,
    frag_active: bool,
    /// Bytes on the wire of the fragments reassembled so far (headers included).
    frag_wire: usize,
    out: Vec<u8>,
    /// Bytes read from the socket after the upgrade response (WebSocket frames as sent).
    read_bytes: u64,
    /// permessage-deflate negotiated.
    deflate: bool,
    /// The message being reassembled is compressed.
    frag_rsv1: bool,
    /// Data messages read, and how many of them were compressed.
    messages: u64,
    compressed: u64,
}

thread_local! {
    /// The last distinct compressed messages this thread inflated, by a hash of their bytes.
    static INFLATED: RefCell<InflatedCache> = RefCell::new(InflatedCache::new());
}

/// Enough that clients that fell behind (each reading older messages) still share entries:
/// with 256, a load generator starved of CPU inflated ever more distinct messages, fell
/// further behind and never caught up.
const INFLATED_SLOTS: usize = 4096;

/// Messages this process really inflated (the others were found in [`INFLATED`]).
pub static INFLATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A hash of a compressed message, its bytes, and what it inflated to.
type Inflated = (u64, Vec<u8>, Vec<u8>);

/// Compressed message → inflated message, direct-mapped; an entry matches only when its
/// compressed bytes equal the message's.
struct InflatedCache {
    slots: Vec<Option<Inflated>>,
    inflater: Inflater,
}

impl InflatedCache {
    fn new() -> Self {
        Self {
            slots: vec![None; INFLATED_SLOTS],
            inflater: Inflater::new(),
        }
    }
}

/// Calls `f` with `payload` inflated. A broadcast reaches every client as the same compressed
/// bytes; inflating it once per thread, not once per client, keeps the load generator's own
/// CPU (a few µs per inflation, mostly Huffman tables) well below the gateway's per delivery.
/// The first inflation of each distinct message is a real one, and reuse needs equal bytes.
fn with_inflated<R>(payload: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<R, WsError> {
    INFLATED.with_borrow_mut(|cache| {
        // Eight bytes a step: the reader's cost per message must stay far below the gateway's.
        let step = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
        let mut words = payload.chunks_exact(8);
        let mut hash = payload.len() as u64;
        for w in &mut words {
            hash = step(hash, u64::from_le_bytes(w.try_into().unwrap_or_default()));
        }
        let hash = words
            .remainder()
            .iter()
            .fold(hash, |h, &b| step(h, u64::from(b)));
        let slot = (hash % INFLATED_SLOTS as u64) as usize;
        let hit =
            matches!(&cache.slots[slot], Some((h, bytes, _)) if *h == hash && bytes == payload);
        if !hit {
            INFLATIONS.fetch_add(1, Ordering::Relaxed);
            let inflated = cache.inflater.inflate(payload)?.to_vec();
            cache.slots[slot] = Some((hash, payload.to_vec(), inflated));
        }
        let Some((_, _, inflated)) = &cache.slots[slot] else {
            unreachable!("filled above")
        };
        Ok(f(inflated))
    })
}

/// Inflates server messages compressed without context takeover. miniz_oxide's core
/// decompressor into a flat output buffer: resetting it is setting its state (flate2's stream
/// resets clear a 32 KiB window per message, which costs the load generator more than the
/// gateway spends on a delivery).
struct Inflater {
    d: DecompressorOxide,
    input: Vec<u8>,
    out: Vec<u8>,
}

impl Inflater {
    fn new() -> Self {
        Self {
            d: DecompressorOxide::new(),
            input: Vec::with_capacity(4096),
            out: vec![0; 16 * 1024],
        }
    }

    /// Inflates one message (the sender removed the sync-flush tail; it is put back).
    fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], WsError> {
        self.input.clear();
        self.input.extend_from_slice(payload);
        self.input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        self.d.init();
        let flags = TINFL_FLAG_HAS_MORE_INPUT | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (mut read, mut written) = (0, 0);
        loop {
            let (status, r, w) = decompress(
                &mut self.d,
                &self.input[read..],
                &mut self.out,
                written,
                flags,
            );
            read += r;
            written += w;
            match status {
                TINFLStatus::Done => break,
                TINFLStatus::NeedsMoreInput if read == self.input.len() => break,
                TINFLStatus::HasMoreOutput => {
                    if self.out.len() > MAX_MESSAGE {
                        return Err(WsError::Protocol("message larger than 16 MiB"));
                    }
                    let len = self.out.len() * 2;
                    self.out.resize(len, 0);
                }
                _ => return Err(WsError::Protocol("corrupt compressed message")),
            }
        }
        Ok(&self.out[..written])
    }
}

impl WsStream {
    /// Connects (optionally from source address `src`), performs the HTTP upgrade on `path`.
    /// `buf_size` is the initial read buffer (it grows for bigger frames).
    pub async fn connect(
        src: Option<IpAddr>,
        dst: SocketAddr,
        path: &str,
        buf_size: usize,
    ) -> Result<Self, WsError> {
        let connect = async {
            let socket = match dst {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            if let Some(ip) = src {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let io = socket.connect(dst).await?;
            io.set_nodelay(true)?;
            Ok::<_, io::Error>(io)
        };
        let mut io = connect
            .await
            .map_err(|source| WsError::Connect { src, dst, source })?;
        let key = base64(&rand::random::<[u8; 16]>());
        let browser = BROWSER_HEADERS.load(Ordering::Relaxed);
        let offer = if browser {
            BROWSER_HEADER_LINES
        } else if DEFLATE.load(Ordering::Relaxed) {
            DEFLATE_OFFER
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {dst}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        io.write_all(request.as_bytes()).await?;
        let mut buf = vec![0u8; buf_size.max(4096)];
        let mut end = 0;
        let header_end = loop {
            if end == buf.len() {
                return Err(WsError::Upgrade(
                    "response headers larger than the buffer".into(),
                ));
            }
            let n = io.read(&mut buf[end..]).await?;
            if n == 0 {
                return Err(WsError::Upgrade(
                    "connection closed during the upgrade".into(),
                ));
            }
            end += n;
            if let Some(pos) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let status_line = buf[..header_end]
            .split(|&b| b == b'\r')
            .next()
            .unwrap_or_default();
        if !status_line.starts_with(b"HTTP/1.1 101") {
            return Err(WsError::Upgrade(
                String::from_utf8_lossy(status_line).into_owned(),
            ));
        }
        let accepted = deflate_accepted(&buf[..header_end]);
        if accepted && offer.is_empty() {
            return Err(WsError::Protocol(
                "the server accepted permessage-deflate, which was not offered",
            ));
        }
        Ok(Self {
            io,
            buf,
            start: header_end,
            end,
            frag: Vec::new(),
            frag_active: false,
            frag_wire: 0,
            out: Vec::with_capacity(256),
            read_bytes: (end - header_end) as u64,
            deflate: accepted,
            frag_rsv1: false,
            messages: 0,
            compressed: 0,
        })
    }

    /// Whether permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// Data messages read so far, and how many of them arrived compressed.
    pub fn messages(&self) -> (u64, u64) {
        (self.messages, self.compressed)
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), WsError> {
        self.out.clear();
        encode_client_frame(&mut self.out, 0x1, text, rand::random());
        self.io.write_all(&self.out).await?;
        Ok(())
    }

    /// Hands every complete text message already buffered to `on_text`, with the bytes its
    /// frames took on the wire (headers included); if none is buffered, reads once from the
    /// socket first. Returns the number of messages handed over.
    /// Control frames are answered here (ping → pong); a close frame yields `WsError::Closed`.
    pub async fn read_batch(
        &mut self,
        mut on_text: impl FnMut(&[u8], usize),
    ) -> Result<usize, WsError> {
        loop {
            let (count, pong) = self.drain_buffer(&mut on_text)?;
            if let Some(payload) = pong {
                self.out.clear();
                encode_client_frame(&mut self.out, 0xA, &payload, rand::random());
                self.io.write_all(&self.out).await?;
            }
            if count > 0 {
                return Ok(count);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer, compacting or growing it as needed.
    async fn fill(&mut self) -> Result<(), WsError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let new_len = (self.buf.len() * 2).min(MAX_MESSAGE + 16);
                if new_len == self.buf.len() {
                    return Err(WsError::Protocol("message larger than 16 MiB"));
                }
                self.buf.resize(new_len, 0);
            }
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(WsError::Closed);
        }
        self.end += n;
        self.read_bytes += n as u64;
        Ok(())
    }

    /// Bytes read from the socket since the upgrade (what the server wrote to it).
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// Parses complete frames from the buffer. Returns the text messages delivered and the
    /// payload of a ping to answer (the last one wins; pongs only need the latest).
    fn drain_buffer(
        &mut self,
        on_text: &mut impl FnMut(&[u8], usize),
    ) -> Result<(usize, Option<Vec<u8>>), WsError> {
        let mut count = 0;
        let mut pong = None;
        loop {
            let avail = &mut self.buf[self.start..self.end];
            let Some(h) = parse_header(avail)? else {
                break;
            };
            let total = h.header_len + h.payload_len;
            if avail.len() < total {
                // Make sure the buffer can hold the whole frame on the next fill.
                if total > self.buf.len() {
                    let mut bigger = vec![0u8; total.next_power_of_two()];
                    let len = self.end - self.start;
                    bigger[..len].copy_from_slice(&self.buf[self.start..self.end]);
                    self.buf = bigger;
                    self.start = 0;
                    self.end = len;
                }
                break;
            }
            let payload = &mut avail[h.header_len..total];
            if let Some(mask) = h.mask {
                apply_mask(payload, mask);
            }
            self.start += total;
            if h.rsv1 && (!self.deflate || !matches!(h.opcode, 0x1 | 0x2)) {
                return Err(WsError::Protocol(
                    "RSV1 set on a control or continuation frame, or without permessage-deflate",
                ));
            }
            match h.opcode {
                0x1 | 0x2 if h.fin && !self.frag_active => {
                    self.messages += 1;
                    if h.rsv1 {
                        self.compressed += 1;
                        with_inflated(payload, |m| on_text(m, total))?;
                    } else {
                        on_text(payload, total);
                    }
                    count += 1;
                }
                0x1 | 0x2 => {
                    if self.frag_active {
                        return Err(WsError::Protocol(
                            "new data frame inside a fragmented message",
                        ));
                    }
                    self.frag_active = true;
                    self.frag_rsv1 = h.rsv1;
                    self.frag.clear();
                    self.frag.extend_from_slice(payload);
                    self.frag_wire = total;
                }
                0x0 => {
                    if !self.frag_active {
                        return Err(WsError::Protocol("continuation frame without a start"));
                    }
                    self.frag.extend_from_slice(payload);
                    self.frag_wire += total;
                    if self.frag.len() > MAX_MESSAGE {
                        return Err(WsError::Protocol("message larger than 16 MiB"));
                    }
                    if h.fin {
                        self.frag_active = false;
                        self.messages += 1;
                        if self.frag_rsv1 {
                            self.compressed += 1;
                            let wire = self.frag_wire;
                            with_inflated(&self.frag, |m| on_text(m, wire))?;
                        } else {
                            on_text(&self.frag, self.frag_wire);
                        }
                        count += 1;
                    }
                }
                0x8 => return Err(WsError::Closed),
                0x9 => pong = Some(payload.to_vec()),
                0xA => {}
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok((count, pong))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 65535 {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0u8; 16]).len(), 24);
    }

    #[test]
    fn header_lengths_cover_the_three_encodings() {
        for len in [0usize, 125, 126, 65535, 65536, 200_000] {
            let payload = vec![b'x'; len];
            let frame = server_frame(0x1, true, &payload);
            let h = parse_header(&frame).unwrap().unwrap();
            assert_eq!(h.payload_len, len, "len {len}");
            assert_eq!(h.header_len + len, frame.len());
            assert!(h.fin && h.opcode == 1 && h.mask.is_none());
            // Every strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&frame[..cut]).unwrap(), None, "cut {cut}");
            }
        }
    }

    #[test]
    fn a_client_frame_is_masked_and_unmasks_back() {
        let mut out = Vec::new();
        let payload = br#"42["userLocationUpdate",{"city":"Pune"}]"#;
        encode_client_frame(&mut out, 0x1, payload, [1, 2, 3, 4]);
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        let mut body = out[h.header_len..].to_vec();
        assert_ne!(&body[..], &payload[..]);
        apply_mask(&mut body, [1, 2, 3, 4]);
        assert_eq!(&body[..], &payload[..]);
    }

    #[test]
    fn compressed_messages_inflate_one_by_one() {
        let mut inflater = Inflater::new();
        let small = br#"42["cryptoTickerResponse",{"status":"success"}]"#.to_vec();
        let big: Vec<u8> = (0..70_000u32)
            .map(|i| b"0123456789abcdef"[(i % 16) as usize])
            .collect();
        for message in [&small, &big, &small] {
            // A final block here; the gateway's end with a sync flush, both inflate alike.
            let payload = miniz_oxide::deflate::compress_to_vec(message, 6);
            assert_eq!(inflater.inflate(&payload).unwrap(), &message[..]);
            assert_eq!(
                with_inflated(&payload, |m| m.to_vec()).unwrap(),
                &message[..]
            );
            assert_eq!(with_inflated(&payload, |m| m.len()).unwrap(), message.len());
        }
        assert!(inflater.inflate(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn reserved_bits_and_oversized_frames_are_rejected() {
        assert!(parse_header(&[0xA1, 0x00]).is_err());
        assert!(parse_header(&[0x91, 0x00]).is_err());
        assert!(parse_header(&[0xC1, 0x00]).unwrap().unwrap().rsv1);
        let mut big = vec![0x81, 127];
        big.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(parse_header(&big).is_err());
    }

    /// Feeds a byte stream split at awkward points through a real socket pair.
    #[tokio::test]
    async fn the_reader_reassembles_split_and_fragmented_messages() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let mut n = 0;
            while !req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                n += s.read(&mut req[n..]).await.unwrap();
            }
            let mut stream =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
            stream.extend(server_frame(0x1, true, b"0{\"sid\":\"x\"}"));
            stream.extend(server_frame(0x9, true, b"hi"));
            stream.extend(server_frame(0x1, false, b"42[\"a\","));
            stream.extend(server_frame(0x0, true, b"1]"));
            stream.extend(server_frame(0x1, true, &vec![b'y'; 70_000]));
            for chunk in stream.chunks(7) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
            }
            // Expect the pong to the ping.
            let mut got = vec![0u8; 64];
            let n = s.read(&mut got).await.unwrap();
            assert!(
                n >= 6 && got[0] == 0x8A,
                "pong frame expected, got {:?}",
                &got[..n]
            );
            s.write_all(&server_frame(0x8, true, b"")).await.unwrap();
        });
        let mut ws = WsStream::connect(Some("127.0.0.1".parse().unwrap()), addr, "/", 4096)
            .await
            .unwrap();
        let mut msgs: Vec<Vec<u8>> = Vec::new();
        let mut wire = Vec::new();
        let result = loop {
            match ws
                .read_batch(|m, w| {
                    msgs.push(m.to_vec());
                    wire.push(w);
                })
                .await
            {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert!(matches!(result, WsError::Closed), "{result}");
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0], b"0{\"sid\":\"x\"}");
        assert_eq!(msgs[1], b"42[\"a\",1]");
        assert_eq!(msgs[2].len(), 70_000);
        // Header + payload of each message's frames.
        assert_eq!(wire, vec![2 + 12, 2 + 7 + 2 + 2, 10 + 70_000]);
        server.await.unwrap();
    }
}
