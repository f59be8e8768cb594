//! flux-bff patch: what the WebSocket writers wrote, process-wide, for the gateway's metrics
//! (`flux_socket_messages_sent_total`, `flux_socket_bytes_sent_total`,
//! `flux_socket_direct_writes_total`). Relaxed atomics,
//! added once per written batch. And the permessage-deflate counts: compressed frames by how
//! they were found, compressed client messages refused by reason.

pub use crate::transport::deflate::{
    InflateError, frames as ws_compressed_frames, inflate_failures as ws_inflate_failures,
};

use std::sync::atomic::{AtomicU64, Ordering};

static MESSAGES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static DIRECT: AtomicU64 = AtomicU64::new(0);

/// Messages written to WebSocket connections since the process started.
pub fn ws_messages_sent() -> u64 {
    MESSAGES.load(Ordering::Relaxed)
}

/// Payload bytes of those messages (frame headers not included; compressed messages count
/// their compressed size).
pub fn ws_bytes_sent() -> u64 {
    BYTES.load(Ordering::Relaxed)
}

/// Of those messages, the ones the sending thread wrote out itself, without waking the
/// socket's writer task (see `EngineIoConfig::ws_direct_writes`); one it could write only
/// in part, finished by the writer task, is not counted.
pub fn ws_direct_writes() -> u64 {
    DIRECT.load(Ordering::Relaxed)
}

pub(crate) fn add_ws_direct(messages: u64) {
    DIRECT.fetch_add(messages, Ordering::Relaxed);
}

pub(crate) fn add_ws_sent(messages: u64, bytes: u64) {
    if messages > 0 {
        MESSAGES.fetch_add(messages, Ordering::Relaxed);
        BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
}
