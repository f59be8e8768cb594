//! `RecordingFanout`: a `ClientFanout` that records every emit and keeps room membership, for
//! tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::domain::Payload;
use crate::ports::{ClientFanout, EmitOptions, FanoutError};

/// Where an emit went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Room(String),
    Socket(String),
}

/// One recorded emit.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    pub target: Target,
    pub event: String,
    pub payload: Payload,
    /// The conflation key the emit carried ([`EmitOptions::latest`]).
    pub latest: Option<String>,
    /// The recovery offset sent as the event's last argument, if any (D26).
    pub offset: Option<String>,
}

/// A fanout that records every emit and keeps room membership like Socket.IO does, for tests.
/// Sockets must be [`RecordingFanout::connect`]ed before they can join rooms.
#[derive(Default)]
pub struct RecordingFanout {
    state: Mutex<State>, // std Mutex: never held across an .await
    emitted: Notify,
}

#[derive(Default)]
struct State {
    delivered: Vec<Delivered>,
    rooms: HashMap<String, BTreeSet<String>>,
}

impl RecordingFanout {
    pub fn connect(&self, socket: &str) {
        self.lock().rooms.entry(socket.to_owned()).or_default();
    }

    pub fn disconnect(&self, socket: &str) {
        self.lock().rooms.remove(socket);
    }

    /// Everything emitted so far.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.lock().delivered.clone()
    }

    /// Forgets what was emitted so far (room membership stays).
    pub fn clear(&self) {
        self.lock().delivered.clear();
    }

    /// Waits until at least `n` emits were recorded or `timeout` passed; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.emitted.notified();
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.delivered();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, target: Target, event: &str, payload: &Payload, options: EmitOptions<'_>) {
        self.lock().delivered.push(Delivered {
            target,
            event: event.to_owned(),
            payload: payload.clone(),
            latest: options.latest.map(str::to_owned),
            offset: options.offset.map(|o| o.to_string()),
        });
        self.emitted.notify_waiters();
    }
}

#[async_trait]
impl ClientFanout for RecordingFanout {
    async fn to_room<'a>(
        &self,
        room: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError> {
        self.record(Target::Room(room.to_owned()), event, payload, options);
        Ok(())
    }

    async fn to_socket<'a>(
        &self,
        socket: &str,
        event: &str,
        payload: &Payload,
        options: EmitOptions<'a>,
    ) -> Result<(), FanoutError> {
        if !self.lock().rooms.contains_key(socket) {
            return Err(FanoutError::UnknownSocket(socket.to_owned()));
        }
        self.record(Target::Socket(socket.to_owned()), event, payload, options);
        Ok(())
    }

    async fn join(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError> {
        let mut st = self.lock();
        let joined = st
            .rooms
            .get_mut(socket)
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))?;
        joined.extend(rooms.iter().cloned());
        Ok(())
    }

    async fn leave(&self, socket: &str, rooms: &[String]) -> Result<(), FanoutError> {
        let mut st = self.lock();
        let joined = st
            .rooms
            .get_mut(socket)
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))?;
        for r in rooms {
            joined.remove(r);
        }
        Ok(())
    }

    async fn rooms_of(&self, socket: &str) -> Result<Vec<String>, FanoutError> {
        let st = self.lock();
        st.rooms
            .get(socket)
            .map(|r| r.iter().cloned().collect())
            .ok_or_else(|| FanoutError::UnknownSocket(socket.to_owned()))
    }
}
