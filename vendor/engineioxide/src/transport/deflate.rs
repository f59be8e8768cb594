//! flux-bff patch: WebSocket permessage-deflate (RFC 7692) without per-connection state.
//!
//! The extension is negotiated with a client that offers it, and the answer always carries
//! `server_no_context_takeover` and `client_no_context_takeover` (RFC 7692 lets a server add
//! the latter even when the client did not offer it): every message is compressed and
//! inflated on its own, and no connection keeps a compressor, an inflater or a window.
//!
//! Outgoing, a text message is compressed once, not once per socket: a broadcast hands every
//! socket's queue a clone of the same [`Str`], so [`FrameCache`] finds the compressed frame
//! of a message by the address of its bytes (the entry holds a clone of the message, so the
//! address cannot be reused while it is cached), and, for the same bytes emitted to sockets
//! one by one (hydration replies, snapshots sent socket by socket), by their content.
//! Incoming, a compressed message is inflated against a size limit: a deflate bomb or a
//! corrupt stream is an error of that connection only.

use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use engineioxide_core::Str;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;

use crate::lock;

/// The extension as accepted: no context kept on either side.
const ACCEPT: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// [`ACCEPT`] for an offer that asked for a server window of 15 bits, which a server accepts by
/// repeating it (RFC 7692, 7.1.2.1).
const ACCEPT_WINDOW_15: &str = "permessage-deflate; server_no_context_takeover; \
     client_no_context_takeover; server_max_window_bits=15";

/// What ends a message compressed with a sync flush; removed by the sender, appended again by
/// the receiver (RFC 7692, 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The `Sec-WebSocket-Extensions` answer to the client's offers: the first permessage-deflate
/// offer whose parameters can be accepted, `None` when there is none.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

/// The answer to one offer (`permessage-deflate; param; param=value`), `None` to decline it.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut params = offer.split(';').map(str::trim);
    if !params
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return None;
    }
    let mut seen = [false; 4];
    let mut answer = ACCEPT;
    for param in params.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        let index = match (name.as_str(), value) {
            ("server_no_context_takeover", None) => 0,
            ("client_no_context_takeover", None) => 1,
            // The window the client compresses with: a full window inflates any of them.
            ("client_max_window_bits", None) => 2,
            ("client_max_window_bits", Some(v)) if window_bits(v).is_some() => 2,
            // miniz_oxide always compresses with a 32 KiB window: a smaller server window is
            // declined (the client may have another offer).
            ("server_max_window_bits", Some(v)) if window_bits(v) == Some(15) => {
                answer = ACCEPT_WINDOW_15;
                3
            }
            _ => return None,
        };
        // A parameter given twice declines the offer (RFC 7692, 7.1).
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(answer)
}

fn window_bits(value: &str) -> Option<u8> {
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    /// One compressor and one inflater per thread, reset for every message: their state
    /// (hundreds of KB for the compressor) is never per connection.
    static DEFLATE: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The payload of a compressed (RSV1) message holding `prefix` then `message`, or `None` when
/// deflate does not make it smaller.
pub(crate) fn compress(prefix: &[u8], message: &[u8]) -> Option<Bytes> {
    let plain = prefix.len() + message.len();
    DEFLATE.with_borrow_mut(|c| {
        c.reset();
        // Not worth it once the output reaches the plain size (the tail is removed after).
        let mut out = Vec::with_capacity(plain + TAIL.len());
        deflate_all(c, prefix, &mut out, FlushCompress::None)?;
        deflate_all(c, message, &mut out, FlushCompress::Sync)?;
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        if out.len() >= plain {
            return None;
        }
        out.shrink_to_fit();
        Some(Bytes::from(out))
    })
}

/// Feeds all of `input`; `None` if the output does not fit in `out`'s capacity.
fn deflate_all(
    c: &mut Compress,
    input: &[u8],
    out: &mut Vec<u8>,
    flush: FlushCompress,
) -> Option<()> {
    let mut consumed = 0;
    loop {
        let (before_in, before_out) = (c.total_in(), c.total_out());
        c.compress_vec(&input[consumed..], out, flush).ok()?;
        consumed += (c.total_in() - before_in) as usize;
        // Done (input taken, flush complete) when output room is left over.
        if consumed == input.len() && out.len() < out.capacity() {
            return Some(());
        }
        let stuck = c.total_in() == before_in && c.total_out() == before_out;
        if out.len() == out.capacity() || stuck {
            return None;
        }
    }
}

/// Why a compressed message from a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates to more than the limit (a deflate bomb, or just too large).
    #[error("inflates past the size limit")]
    TooLarge,
    /// Not a valid deflate stream, or text that is not UTF-8.
    #[error("corrupt deflate stream or text")]
    Corrupt,
}

impl InflateError {
    /// A label for metrics: `too_large` or `corrupt`.
    pub fn as_str(self) -> &'static str {
        match self {
            InflateError::TooLarge => "too_large",
            InflateError::Corrupt => "corrupt",
        }
    }
}

/// A client message, inflated.
pub(crate) enum Inflated {
    Text(String),
    Binary(Vec<u8>),
}

/// Inflates one compressed client message, a text (checked to be UTF-8) or a binary one, to
/// at most `limit` bytes; a refusal is counted ([`inflate_failures`]).
pub(crate) fn inflate_message(
    payload: &[u8],
    limit: usize,
    text: bool,
) -> Result<Inflated, InflateError> {
    let result = inflate(payload, limit).and_then(|data| match text {
        true => String::from_utf8(data)
            .map(Inflated::Text)
            .map_err(|_| InflateError::Corrupt),
        false => Ok(Inflated::Binary(data)),
    });
    if let Err(e) = result {
        count(&INFLATE_FAILURES[e as usize]);
    }
    result
}

/// Inflates one compressed message (no context from earlier messages) to at most `limit`
/// bytes; memory and work stay bounded by `limit` whatever the input.
fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    INFLATE.with_borrow_mut(|d| {
        // A full reset (it clears the 32 KB window): client messages are few, and no state
        // may leak from one message, or one connection, to the next.
        d.reset(false);
        let most = limit.saturating_add(1);
        let mut out = Vec::with_capacity(payload.len().saturating_mul(4).clamp(64.min(most), most));
        if !inflate_all(d, payload, &mut out, limit)? {
            inflate_all(d, &TAIL, &mut out, limit)?;
        }
        Ok(out)
    })
}

/// Feeds all of `input` to `d`; `Ok(true)` once the stream has ended (a final block).
fn inflate_all(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, InflateError> {
    let mut consumed = 0;
    let most = limit.saturating_add(1);
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(InflateError::TooLarge);
            }
            // Grow by doubling, never past one byte over the limit.
            let room = out.capacity().max(64).min(most - out.len());
            out.reserve_exact(room);
        }
        let (before_in, before_out) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        consumed += (d.total_in() - before_in) as usize;
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        let stuck = d.total_in() == before_in && d.total_out() == before_out;
        // All input taken, and either room left or nothing more came with room given (the
        // output filled exactly as the last byte was read): the message needs more input.
        if consumed == input.len() && (out.len() < out.capacity() || stuck) {
            return Ok(false);
        }
        // Input left that the inflater will not take, with room to write: not deflate.
        if stuck && out.len() < out.capacity() {
            return Err(InflateError::Corrupt);
        }
    }
}

/// Compressed frames by message, shared by every connection of the process.
pub(crate) static FRAMES: FrameCache = FrameCache::new();

/// Slots of each of the cache's two tables. Enough that the messages alive at once (a
/// broadcast stays in sockets' queues until the slowest has written it: at most
/// `max_buffer` messages behind, then it is lagging) rarely share a slot: a 64-slot cache
/// thrashed at 1000 clients × 350 events/s (BENCHMARKS.md), every miss costing a compression.
const SLOTS: usize = 4096;
struct Entry {
    /// The message (a clone: its bytes stay allocated, so their address is not reused).
    message: Str,
    hash: u64,
    /// The compressed payload; `None` when compression did not make it smaller.
    frame: Option<Bytes>,
}

/// A cache of compressed frames: the last message of each of [`SLOTS`] slots by address and
/// of [`SLOTS`] slots by content.
/// Evicting is overwriting a slot.
pub(crate) struct FrameCache {
    by_address: [Mutex<Option<Entry>>; SLOTS],
    by_content: [Mutex<Option<Entry>>; SLOTS],
}

fn same_bytes(a: &Str, address: usize, len: usize) -> bool {
    a.as_bytes().as_ptr() as usize == address && a.len() == len
}

impl FrameCache {
    const fn new() -> Self {
        Self {
            by_address: [const { Mutex::new(None) }; SLOTS],
            by_content: [const { Mutex::new(None) }; SLOTS],
        }
    }

    /// The compressed payload of the text message `4` + `message`, compressed at most once
    /// per address and per content while cached; `None` when compression does not help.
    /// Each thread's last messages are looked up before, without a lock (`frames.rs`).
    pub(crate) fn get(&self, message: &Str) -> Option<Bytes> {
        let bytes = message.as_bytes();
        let (address, len) = (bytes.as_ptr() as usize, bytes.len());
        let slot = &self.by_address[slot_of(address as u64 ^ len as u64)];
        if let Some(e) = lock(slot).as_ref()
            && same_bytes(&e.message, address, len)
        {
            count(&ADDRESS_HITS);
            return e.frame.clone();
        }
        let hash = content_hash(bytes);
        let content = &self.by_content[slot_of(hash)];
        let found = lock(content)
            .as_ref()
            .filter(|e| e.hash == hash && e.message.as_bytes() == bytes)
            .map(|e| e.frame.clone());
        if let Some(frame) = found {
            // The same bytes emitted socket by socket (each its own copy): not remembered by
            // address, or a reconnect storm would fill the table with copies of the snapshots
            // that nothing looks up again.
            count(&CONTENT_HITS);
            return frame;
        }
        count(&COMPRESSED);
        let frame = compress(b"4", bytes);
        let entry = || Entry {
            message: message.clone(),
            hash,
            frame: frame.clone(),
        };
        *lock(content) = Some(entry());
        // The first socket of a broadcast: the others hold the same bytes.
        *lock(slot) = Some(entry());
        frame
    }
}

fn slot_of(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// A fast, non-cryptographic hash of a message's bytes (foldhash, fixed seed: the same bytes
/// hash alike on every thread); equal bytes are checked after, so a collision costs only a
/// miss.
fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    foldhash::fast::FixedState::with_seed(0x9E37_79B9_7F4A_7C15).hash_one(bytes)
}

static ADDRESS_HITS: AtomicU64 = AtomicU64::new(0);
static CONTENT_HITS: AtomicU64 = AtomicU64::new(0);
static COMPRESSED: AtomicU64 = AtomicU64::new(0);
static INFLATE_FAILURES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// A compressed frame reused from a thread's recent messages (`frames.rs`): counted with
/// those found by address.
pub(crate) fn count_reuse() {
    count(&ADDRESS_HITS);
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Compressed frames written since the process started: `(found by address, found by
/// content, compressed)`. Every compressed message was looked up once per socket that got
/// it, so `1 - compressed / total` is the share of deliveries that reused a frame.
pub fn frames() -> (u64, u64, u64) {
    (
        ADDRESS_HITS.load(Ordering::Relaxed),
        CONTENT_HITS.load(Ordering::Relaxed),
        COMPRESSED.load(Ordering::Relaxed),
    )
}

/// Compressed client messages refused since the process started, by reason.
pub fn inflate_failures(reason: InflateError) -> u64 {
    INFLATE_FAILURES[reason as usize].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn browser_and_node_offers_are_accepted_without_context_takeover() {
        for offer in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "Permessage-Deflate; client_max_window_bits=10; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate",
        ] {
            assert_eq!(negotiate(&headers(&[offer])), Some(ACCEPT), "{offer}");
        }
        assert_eq!(
            negotiate(&headers(&[
                "foo",
                "permessage-deflate; server_max_window_bits=15"
            ])),
            Some(ACCEPT_WINDOW_15)
        );
    }

    #[test]
    fn offers_that_cannot_be_honoured_are_declined() {
        for offer in [
            "",
            "deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; unknown_param",
            "permessage-deflate; client_no_context_takeover=1",
        ] {
            assert_eq!(negotiate(&headers(&[offer])), None, "{offer}");
        }
        assert_eq!(negotiate(&HeaderMap::new()), None);
        // A declined offer does not hide an acceptable one after it.
        assert_eq!(
            negotiate(&headers(&[
                "permessage-deflate; server_max_window_bits=9, permessage-deflate"
            ])),
            Some(ACCEPT)
        );
    }

    #[test]
    fn a_compressed_message_inflates_to_the_same_bytes() {
        let message = r#"2["newsUpdate",{"status":"success","data":[{"title":"same words, same words, same words"}]}]"#;
        let frame = compress(b"4", message.as_bytes()).expect("compressible");
        assert!(frame.len() < message.len());
        assert!(!frame.ends_with(&TAIL));
        let back = inflate(&frame, 1 << 16).unwrap();
        assert_eq!(back, format!("4{message}").into_bytes());
    }

    #[test]
    fn incompressible_messages_stay_plain() {
        assert_eq!(compress(b"4", b"2"), None);
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..600)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        assert_eq!(compress(b"", &noise), None);
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(b"", &zeros).unwrap();
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 65_536), Err(InflateError::TooLarge));
        // Exactly at the limit is fine.
        let exact = compress(b"", &zeros[..65_536]).unwrap();
        assert_eq!(inflate(&exact, 65_536).unwrap().len(), 65_536);
        assert_eq!(inflate(&exact, 65_535), Err(InflateError::TooLarge));
    }

    #[test]
    fn a_corrupt_stream_is_refused() {
        // Block type 3 is reserved.
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
        let before = inflate_failures(InflateError::Corrupt);
        assert!(inflate_message(&[0xff, 0xff, 0xff], 1024, false).is_err());
        assert!(inflate_failures(InflateError::Corrupt) > before);
        // Valid deflate, but not UTF-8 text.
        let latin1 = compress(b"", &[0xe9; 300]).unwrap();
        assert!(matches!(
            inflate_message(&latin1, 1024, false),
            Ok(Inflated::Binary(b)) if b == [0xe9; 300]
        ));
        assert!(matches!(
            inflate_message(&latin1, 1024, true),
            Err(InflateError::Corrupt)
        ));
    }

    /// Every size, with data that compresses a lot, some and little, so that the inflater's
    /// output buffer fills exactly as its input ends at some of them (a review found the loop
    /// would then have called a valid message corrupt had the inflater consumed its last
    /// input byte with no room left; miniz_oxide holds that byte back, and the loop no longer
    /// depends on it). A limit of the exact size passes, one byte less is too large.
    #[test]
    fn every_size_round_trips_and_the_limit_is_exact() {
        let prose = b"the quick brown fox jumps over the lazy dog; ";
        let mut seed = 7u32;
        let mut noise = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            b'a' + (seed >> 16) as u8 % 26
        };
        for n in 1..=3000usize {
            let kinds: [Vec<u8>; 3] = [
                vec![b'a'; n],
                prose.iter().copied().cycle().take(n).collect(),
                (0..n).map(|_| noise()).collect(),
            ];
            for data in kinds {
                let Some(payload) = compress(b"", &data) else {
                    continue; // incompressible: sent plain
                };
                assert_eq!(inflate(&payload, n).as_deref(), Ok(&data[..]), "size {n}");
                // The limit at which the first output buffer is the whole message.
                let limit = 4 * payload.len();
                match inflate(&payload, limit) {
                    Ok(out) => assert!(limit >= n && out == data, "size {n}, limit {limit}"),
                    Err(e) => assert!(limit < n && e == InflateError::TooLarge, "size {n}"),
                }
                assert_eq!(
                    inflate(&payload, n - 1),
                    Err(InflateError::TooLarge),
                    "size {n}"
                );
            }
        }
    }

    #[test]
    fn extreme_limits_do_not_panic() {
        let payload = compress(b"", &[b'x'; 500]).unwrap();
        assert_eq!(inflate(&payload, usize::MAX).unwrap().len(), 500);
        assert_eq!(inflate(&payload, 10), Err(InflateError::TooLarge));
        assert_eq!(inflate(&payload, 0), Err(InflateError::TooLarge));
    }

    #[test]
    fn the_cache_compresses_once_per_message_by_address_or_content() {
        let cache = &FRAMES;
        let text = "2[\"cryptoTickerResponse\",{\"price\":\"1\"}] ".repeat(20);
        let shared = Str::from(text.clone());
        let (a0, c0, m0) = frames();
        let first = cache.get(&shared).unwrap();
        for _ in 0..10 {
            // Broadcast: every socket holds a clone of the same bytes.
            assert_eq!(cache.get(&shared.clone()).unwrap(), first);
        }
        // The same text in another allocation (an emit per socket).
        let other = Str::from(text);
        assert_eq!(cache.get(&other).unwrap(), first);
        let (a1, c1, m1) = frames();
        // Other tests may run at once: at least these lookups are counted.
        assert!(a1 - a0 >= 10 && c1 - c0 >= 1 && m1 - m0 >= 1);
        assert_eq!(
            inflate(&first, 1 << 16).unwrap(),
            format!("4{shared}").into_bytes()
        );
    }
}
