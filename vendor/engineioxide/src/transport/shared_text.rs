//! flux-bff patch: the Engine.IO text of a message (`4` and the message) built once per message
//! and shared by every socket it is sent to.
//!
//! A broadcast hands every socket the same [`Str`] (one allocation, reference-counted); the
//! WebSocket writer then built its own `String` of `4` + message for each socket: an
//! allocation, a copy and a free per delivery. Each thread now keeps its last few messages
//! with their text: a writer that finds its message there (same bytes at the same address,
//! so the same broadcast) clones the text instead. An entry holds a clone of its message, so
//! that address cannot be reused for other bytes while it is cached.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use engineioxide_core::Str;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Messages remembered per thread: the events of one consumer batch interleave in each
/// socket's writes (A, B, C to one socket, then A, B, C to the next).
const SLOTS: usize = 8;

/// Messages shorter than this are built each time: nothing to gain.
const MIN_LEN: usize = 64;

struct Recent {
    slots: [Option<(Str, Utf8Bytes)>; SLOTS],
    next: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent { slots: [const { None }; SLOTS], next: 0 })
    };
}

/// The WebSocket text of Engine.IO message `msg`: `4` followed by `msg`.
pub(crate) fn message_text(msg: Str) -> Utf8Bytes {
    if msg.len() < MIN_LEN {
        return build(&msg);
    }
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let found = recent
            .slots
            .iter()
            .flatten()
            .find(|(key, _)| same(key, &msg));
        if let Some((_, text)) = found {
            return text.clone();
        }
        let text = build(&msg);
        let next = recent.next;
        recent.slots[next] = Some((msg, text.clone()));
        recent.next = (next + 1) % SLOTS;
        text
    })
}

/// The same bytes: the same address and length (a cached key keeps its bytes alive).
fn same(a: &Str, b: &Str) -> bool {
    a.len() == b.len() && std::ptr::eq(a.as_bytes().as_ptr(), b.as_bytes().as_ptr())
}

fn build(msg: &str) -> Utf8Bytes {
    let mut text = BytesMut::with_capacity(msg.len() + 1);
    text.put_u8(b'4');
    text.put_slice(msg.as_bytes());
    let text: Bytes = text.freeze();
    // `4` and a `str`: valid UTF-8.
    Utf8Bytes::try_from(text).expect("4 and a str are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_built_once_per_message_and_is_right() {
        let long = "x".repeat(100);
        let msg = Str::from(long.clone());
        let first = message_text(msg.clone());
        assert_eq!(first.as_str(), format!("4{long}"));
        let again = message_text(msg.clone());
        let first_bytes: &Bytes = first.as_ref();
        let again_bytes: &Bytes = again.as_ref();
        assert_eq!(
            first_bytes.as_ptr(),
            again_bytes.as_ptr(),
            "the same message shares its text"
        );
        // Equal bytes elsewhere are another message: right text, built anew.
        let other = Str::from(long.clone());
        let text = message_text(other);
        assert_eq!(text.as_str(), format!("4{long}"));
        // Short messages, and every slot replaced in turn.
        assert_eq!(message_text(Str::from("hi")).as_str(), "4hi");
        for n in 0..3 * SLOTS {
            let body = format!("{n:>80}");
            assert_eq!(
                message_text(Str::from(body.clone())).as_str(),
                format!("4{body}")
            );
        }
        assert_eq!(message_text(msg).as_str(), format!("4{long}"));
    }
}
