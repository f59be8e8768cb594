//! flux-bff patch: the WebSocket message of an Engine.IO message, built once per broadcast and
//! shared by every socket it is written to.
//!
//! A broadcast hands every socket the same [`Str`] (one allocation, reference-counted). The
//! WebSocket writer built its own `String` of `4` + message for each socket (an allocation, a
//! copy and a free per delivery) and, with permessage-deflate, would compress it for each.
//! Each thread now keeps its last [`RECENT`] messages with what was built for them: the plain
//! text and, when asked for, the compressed payload. A writer that finds its message there
//! (the same bytes at the same address: the same broadcast) clones what was built, without a
//! lock. A compressed payload not found here comes from the process-wide
//! [`deflate::FRAMES`](super::deflate::FRAMES), so each message is compressed about once.
//! An entry holds a clone of its message, so that address cannot be reused for other bytes
//! while it is cached.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use engineioxide_core::Str;
use tokio_tungstenite::tungstenite::{
    Message, Utf8Bytes,
    protocol::frame::{
        Frame, FrameHeader,
        coding::{Data, OpCode},
    },
};

use super::deflate;

/// Messages remembered per thread: the events of one consumer batch interleave in each
/// socket's writes (A, B, C to one socket, then A, B, C to the next), and a thread serves
/// many sockets.
const RECENT: usize = 16;

/// Plain messages shorter than this are built each time: nothing to gain.
const MIN_SHARED: usize = 64;

struct Entry {
    message: Str,
    text: Option<Utf8Bytes>,
    /// `Some(None)`: compression was tried and does not make this message smaller.
    deflated: Option<Option<Bytes>>,
}

struct Recent {
    entries: [Option<Entry>; RECENT],
    next: usize,
}

thread_local! {
    static RECENT_MESSAGES: RefCell<Recent> = const {
        RefCell::new(Recent { entries: [const { None }; RECENT], next: 0 })
    };
}

#[cfg(test)]
thread_local! {
    /// Tests: called as each message is built on this thread (what is locked meanwhile).
    pub(crate) static ON_BUILD: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
}

/// The WebSocket message of Engine.IO message `msg` (`4` followed by `msg`): with
/// `compress_from` (permessage-deflate negotiated, and its threshold), a compressed (RSV1)
/// text frame when the message is at least that long and deflate makes it smaller; plain
/// text otherwise.
pub(crate) fn message(msg: Str, compress_from: Option<usize>) -> Message {
    #[cfg(test)]
    ON_BUILD.with_borrow(|hook| hook.as_ref().map(|hook| hook()));
    let compress = compress_from.is_some_and(|min| msg.len() + 1 >= min);
    if !compress && msg.len() < MIN_SHARED {
        return Message::Text(build(&msg));
    }
    RECENT_MESSAGES.with_borrow_mut(|recent| {
        let index = match recent
            .entries
            .iter()
            .position(|e| e.as_ref().is_some_and(|e| same_bytes(&e.message, &msg)))
        {
            Some(index) => index,
            None => {
                let index = recent.next;
                recent.next = (index + 1) % RECENT;
                recent.entries[index] = Some(Entry {
                    message: msg.clone(),
                    text: None,
                    deflated: None,
                });
                index
            }
        };
        let Some(entry) = recent.entries[index].as_mut() else {
            unreachable!("the entry was found or just stored")
        };
        if compress {
            let deflated = match &entry.deflated {
                Some(deflated) => {
                    deflate::count_reuse();
                    deflated.clone()
                }
                None => entry.deflated.insert(deflate::FRAMES.get(&msg)).clone(),
            };
            if let Some(payload) = deflated {
                return Message::Frame(rsv1_text_frame(payload));
            }
        }
        Message::Text(entry.text.get_or_insert_with(|| build(&msg)).clone())
    })
}

/// A text frame whose payload is compressed.
fn rsv1_text_frame(payload: Bytes) -> Frame {
    let header = FrameHeader {
        rsv1: true,
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    Frame::from_payload(header, payload)
}

/// The same bytes: the same address and length (a cached message keeps its bytes alive).
fn same_bytes(a: &Str, b: &Str) -> bool {
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

    fn text_of(message: Message) -> Utf8Bytes {
        match message {
            Message::Text(text) => text,
            other => panic!("a plain text message, not {other:?}"),
        }
    }

    #[test]
    fn the_text_is_built_once_per_message_and_is_right() {
        let long = "x".repeat(100);
        let msg = Str::from(long.clone());
        let first = text_of(message(msg.clone(), None));
        assert_eq!(first.as_str(), format!("4{long}"));
        let again = text_of(message(msg.clone(), None));
        let first_bytes: &Bytes = first.as_ref();
        let again_bytes: &Bytes = again.as_ref();
        assert_eq!(
            first_bytes.as_ptr(),
            again_bytes.as_ptr(),
            "the same message shares its text"
        );
        // Equal bytes elsewhere are another message: right text, built anew.
        let other = Str::from(long.clone());
        assert_eq!(text_of(message(other, None)).as_str(), format!("4{long}"));
        // Short messages, and every slot replaced in turn.
        assert_eq!(text_of(message(Str::from("hi"), None)).as_str(), "4hi");
        for n in 0..3 * RECENT {
            let body = format!("{n:>80}");
            assert_eq!(
                text_of(message(Str::from(body.clone()), None)).as_str(),
                format!("4{body}")
            );
        }
        assert_eq!(text_of(message(msg, None)).as_str(), format!("4{long}"));
    }

    #[test]
    fn compressed_frames_are_shared_and_small_or_incompressible_messages_stay_plain() {
        let long = "2[\"cryptoTickerResponse\",{\"price\":\"1\"}] ".repeat(20);
        let msg = Str::from(long.clone());
        let Message::Frame(first) = message(msg.clone(), Some(256)) else {
            panic!("a compressed frame")
        };
        assert!(first.header().rsv1);
        assert_eq!(first.header().opcode, OpCode::Data(Data::Text));
        let Message::Frame(again) = message(msg.clone(), Some(256)) else {
            panic!("a compressed frame")
        };
        assert_eq!(
            first.payload().as_ptr(),
            again.payload().as_ptr(),
            "one compression per broadcast"
        );
        // The same message to a socket without the extension: plain, and right.
        assert_eq!(
            text_of(message(msg.clone(), None)).as_str(),
            format!("4{long}")
        );
        // Below the threshold: plain.
        let short = Str::from("x".repeat(200));
        assert!(matches!(message(short, Some(256)), Message::Text(_)));
    }
}
