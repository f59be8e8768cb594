//! Engine.IO 4 / Socket.IO 5 text packets, classified by a cheap scan: the packet type from
//! the first bytes, the event name up to its closing quote, and the `lg_ts` timestamp by a
//! substring search. Payloads are never parsed as JSON on the receive path.

use memchr::memmem::Finder;

/// The Socket.IO path of the default namespace over a direct WebSocket.
pub const WS_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// What one Engine.IO message is, as far as the load generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{…}` engine open.
    Open,
    /// `1` engine close.
    Close,
    /// `2` engine ping: must be answered with `3`.
    Ping,
    /// `40{…}` Socket.IO connect acknowledgement.
    Connected,
    /// `44{…}` Socket.IO connect error.
    ConnectError(&'a [u8]),
    /// `41` Socket.IO disconnect.
    Disconnect,
    /// `42["name",…]`: the name and the whole packet for further scans.
    Event { name: &'a [u8], raw: &'a [u8] },
    /// Anything else (pong, noop, acks, binary): ignored.
    Other,
}

/// Classifies one Engine.IO text message.
pub fn classify(msg: &[u8]) -> Packet<'_> {
    match msg.first() {
        Some(b'0') => Packet::Open,
        Some(b'1') => Packet::Close,
        Some(b'2') => Packet::Ping,
        Some(b'4') => match msg.get(1) {
            Some(b'0') => Packet::Connected,
            Some(b'1') => Packet::Disconnect,
            Some(b'4') => Packet::ConnectError(&msg[2..]),
            Some(b'2') => match event_name(&msg[2..]) {
                Some(name) => Packet::Event { name, raw: msg },
                None => Packet::Other,
            },
            _ => Packet::Other,
        },
        _ => Packet::Other,
    }
}

/// The event name of a Socket.IO EVENT body (`["name",…]`, optionally after an ack id).
/// Event names of this contract contain no escaped quotes, so the next `"` ends the name.
fn event_name(body: &[u8]) -> Option<&[u8]> {
    let open = memchr::memchr(b'[', body)?;
    let rest = body.get(open + 1..)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    let rest = &rest[1..];
    let close = memchr::memchr(b'"', rest)?;
    Some(&rest[..close])
}

/// Finds `"lg_ts":<digits>` in a packet and returns the number.
pub struct TimestampScanner {
    finder: Finder<'static>,
}

impl Default for TimestampScanner {
    fn default() -> Self {
        Self {
            finder: Finder::new(b"\"lg_ts\":"),
        }
    }
}

impl TimestampScanner {
    /// The `lg_ts` value (unix microseconds), if present and numeric.
    pub fn scan(&self, raw: &[u8]) -> Option<u64> {
        let at = self.finder.find(raw)? + self.finder.needle().len();
        let mut value: u64 = 0;
        let mut digits = 0;
        for &b in raw.get(at..)? {
            match b {
                b'0'..=b'9' => {
                    value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                    digits += 1;
                }
                b' ' if digits == 0 => {}
                _ => break,
            }
        }
        (digits > 0).then_some(value)
    }
}

/// `40{"guestId":…}`: Socket.IO connect to `/` with the auth object.
pub fn connect_packet(guest_id: &str) -> Vec<u8> {
    let auth = serde_json::json!({ "guestId": guest_id });
    format!("40{auth}").into_bytes()
}

/// `42["name",payload]` with an already serialised JSON payload.
pub fn event_packet(name: &str, payload_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + payload_json.len() + 8);
    out.extend_from_slice(b"42[\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(payload_json.as_bytes());
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_classified_by_their_prefix() {
        assert_eq!(
            classify(br#"0{"sid":"a","pingInterval":25000}"#),
            Packet::Open
        );
        assert_eq!(classify(b"2"), Packet::Ping);
        assert_eq!(classify(b"1"), Packet::Close);
        assert_eq!(classify(br#"40{"sid":"b"}"#), Packet::Connected);
        assert_eq!(classify(b"41"), Packet::Disconnect);
        assert_eq!(
            classify(br#"44{"message":"no"}"#),
            Packet::ConnectError(br#"{"message":"no"}"#)
        );
        assert_eq!(classify(b"3"), Packet::Other);
        assert_eq!(classify(b""), Packet::Other);
        let raw = br#"42["session:init",{"userId":"u","userType":"guest"}]"#;
        assert_eq!(
            classify(raw),
            Packet::Event {
                name: b"session:init",
                raw
            }
        );
        // With an ack id before the array.
        let raw = br#"4217["cryptoTickerResponse",{}]"#;
        assert!(matches!(
            classify(raw),
            Packet::Event {
                name: b"cryptoTickerResponse",
                ..
            }
        ));
        // Malformed events are ignored, not panicked on.
        assert_eq!(classify(b"42"), Packet::Other);
        assert_eq!(classify(b"42[1,2]"), Packet::Other);
        assert_eq!(classify(b"42[\"unterminated"), Packet::Other);
    }

    #[test]
    fn the_timestamp_is_found_inside_the_relayed_ticker() {
        let scanner = TimestampScanner::default();
        let raw = br#"42["cryptoTickerResponse",{"status":"success","data":{"lg_ts":1764201600123456,"source":"coinbase","ts":1,"data":{"type":"ticker"}},"error":null}]"#;
        assert_eq!(scanner.scan(raw), Some(1_764_201_600_123_456));
        assert_eq!(scanner.scan(br#"{"lg_ts": 42}"#), Some(42));
        assert_eq!(scanner.scan(br#"{"lg_ts":"x"}"#), None);
        assert_eq!(scanner.scan(br#"{"lg_ts":99999999999999999999999}"#), None);
        assert_eq!(scanner.scan(br#"{"ts":1}"#), None);
    }

    #[test]
    fn outgoing_packets_are_valid_socket_io() {
        assert_eq!(connect_packet("lg-1"), br#"40{"guestId":"lg-1"}"#);
        assert_eq!(connect_packet("a\"b"), br#"40{"guestId":"a\"b"}"#);
        let p = event_packet("userLocationUpdate", r#"{"city":"Pune"}"#);
        assert_eq!(p, br#"42["userLocationUpdate",{"city":"Pune"}]"#);
        let v: serde_json::Value = serde_json::from_slice(&p[2..]).unwrap();
        assert_eq!(v[0], "userLocationUpdate");
    }
}
