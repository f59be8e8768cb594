//! What a Socket.IO client sends: the argument of `userLocationUpdate` (interpreted, hashed
//! for dedup), the handshake's `auth` (the guest id), an event name (the request events), and
//! an `X-Forwarded-For` value (the client's address), and the recovery session id and offset
//! a reconnecting client sends back (D26). Nothing may panic; an offset that decodes encodes
//! back to one that decodes the same.
#![no_main]

use flux_bff::domain::recovery::{Cut, SessionClaims};
use flux_bff::domain::{identity, location, replies, topics};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Every hop trusted: the walk reads the whole value.
        let everyone = ["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let _ = identity::limit_address(Some(text), [127, 0, 0, 1].into(), &everyone);
        let _ = replies::SnapshotRequest::from_event(text);
        let _ = topics::weather_room(text);
        let _ = SessionClaims::verify(text, b"fuzz secret", 0);
        if let Some(cut) = Cut::decode(text) {
            assert_eq!(Cut::decode(&cut.encode()), Some(cut));
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let intent = location::interpret(Some(&value));
    let _ = format!("{intent:?}");
    let _ = location::canonical_hash(&value);
    let _ = identity::accept_guest_id(Some(&value));
});
