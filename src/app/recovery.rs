//! Connection-state recovery (issue 12, D26): session ids issued at connect, and the replay of
//! what a reconnecting client missed, from this replica's journal.
//!
//! The journal is written by the event consumer ([`super::ingest`]) under the same lock that
//! [`Recovery::resume`] holds while it sends a replay and joins the rooms: an event is either
//! in the replay or reaches the socket live through its room, never both and never neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::domain::recovery::{Cut, Journal, Refusal, SessionClaims, TokenError};
use crate::domain::topics::{ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK};
use crate::ports::{Admission, ClientFanout, EmitOptions, SessionRecovery};

use crate::telemetry::metrics::{
    RECOVERY_CONFLATED, RECOVERY_HANDSHAKE, RECOVERY_JOURNAL, RECOVERY_REFUSED, RECOVERY_REPLAY,
    RECOVERY_REPLAYED, RECOVERY_SESSIONS,
};

/// The rooms a recovered socket is put back in. A client that holds an offset had received a
/// room event, so it had sent `userLocationUpdate`, which joins these together (contract
/// §c.4). Its weather room is not known here: the session id is sent before the client names
/// its city; the frontend sends `userLocationUpdate` again on every connect, which joins it
/// and serves the city's latest result (D23).
pub const RECOVERED_ROOMS: [&str; 3] = [ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK];

/// How long a recovering handshake waits for this replica to have read as far as the client's
/// offset (it came from a replica that was ahead, or this one is reading its window back at
/// start-up).
const CATCH_UP: Duration = Duration::from_secs(5);
/// The longest `socketio.recovery_window` accepted.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Connection-state recovery's settings: keys of the `[socketio]` section (D26).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RecoverySettings {
    /// How long after the last event it received a client that reconnects gets what it
    /// missed, replayed. `0s` turns recovery off (no session id, no offset argument on room
    /// events).
    #[serde(with = "humantime_serde")]
    pub recovery_window: Duration,
    /// The HMAC secret that signs recovery session ids. Every replica behind one load
    /// balancer needs the same one (or the same `recovery_secret_file`); without either, a
    /// random secret per process: sessions then recover only on the replica that issued them.
    pub recovery_secret: Option<Secret>,
    /// A file holding the recovery secret (trimmed), instead of `recovery_secret`.
    pub recovery_secret_file: Option<std::path::PathBuf>,
    /// How long a recovery session id stays valid after its connection began.
    #[serde(with = "humantime_serde")]
    pub recovery_token_ttl: Duration,
    /// Most events replayed to one recovering client; beyond, tickers are conflated to the
    /// latest per product, and if still beyond, the client gets a normal connection.
    pub replay_budget: usize,
    /// Most emits the recovery journal keeps (the window bounds it too).
    pub recovery_max_events: usize,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            recovery_window: Duration::from_secs(120),
            recovery_secret: None,
            recovery_secret_file: None,
            recovery_token_ttl: Duration::from_secs(24 * 3600),
            replay_budget: 200,
            recovery_max_events: 100_000,
        }
    }
}

impl RecoverySettings {
    /// What is wrong with these settings, one line per problem naming the key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.recovery_window.is_zero() {
            return problems;
        }
        if self.recovery_secret.is_some() && self.recovery_secret_file.is_some() {
            problems.push(
                "socketio.recovery_secret and socketio.recovery_secret_file: set one, not both"
                    .to_owned(),
            );
        }
        if let Some(Secret(secret)) = &self.recovery_secret
            && secret.trim().len() < 32
        {
            problems.push(format!(
                "socketio.recovery_secret (FLUX_SOCKETIO__RECOVERY_SECRET): must be at least 32 characters, got {} (e.g. `openssl rand -hex 32`)",
                secret.trim().len()
            ));
        }
        // Read at validation too, so that a missing or short file exits 2 (D21) as every
        // other configuration error does, not 1 (which the runbook reads as "no Kafka").
        if self.recovery_secret.is_none()
            && let Some(path) = &self.recovery_secret_file
            && let Err(problem) = read_secret_file(path)
        {
            problems.push(problem);
        }
        if self.recovery_max_events == 0 {
            problems.push("socketio.recovery_max_events: must be at least 1".to_owned());
        }
        if self.replay_budget == 0 {
            problems.push(
                "socketio.replay_budget: must be at least 1 (every recovery with a missed event would be refused; set socketio.recovery_window = \"0s\" to turn recovery off)".to_owned(),
            );
        }
        if self.recovery_window > MAX_WINDOW {
            problems.push(format!(
                "socketio.recovery_window: at most {} (a client away longer reconnects as a new one), got {}",
                humantime_serde::re::humantime::format_duration(MAX_WINDOW),
                humantime_serde::re::humantime::format_duration(self.recovery_window)
            ));
        }
        if self.recovery_token_ttl < Duration::from_secs(1) {
            problems.push(format!(
                "socketio.recovery_token_ttl: at least 1s, got {}: every session id would have expired by the time its client reconnects",
                humantime_serde::re::humantime::format_duration(self.recovery_token_ttl)
            ));
        }
        problems
    }
}

/// The replay budget a socket of `socket_room` packets (its send queue and backlog) can take:
/// a replay is pushed at once, behind the CONNECT packet and `session:init`, and beyond the
/// room it would overflow the backlog, close the connection (D30), and the client would
/// reconnect into the same replay (found by review). A larger `configured` budget is capped,
/// said once at start-up.
fn replay_budget(configured: usize, socket_room: usize) -> usize {
    let fits = socket_room.saturating_sub(2).max(1);
    if configured > fits {
        tracing::warn!(
            configured,
            budget = fits,
            "socketio.replay_budget is above what a socket's queue and backlog hold (socketio.max_buffer + socketio.max_backlog - 2): replays are capped there (raise those to replay more)"
        );
    }
    configured.min(fits)
}

/// The recovery secret held in `path`, trimmed.
///
/// # Errors
/// When the file cannot be read or holds too short a secret: names the file and the fix.
fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "socketio.recovery_secret_file: cannot read {}: {e} (give a readable file holding the recovery secret, or unset FLUX_SOCKETIO__RECOVERY_SECRET_FILE)",
            path.display()
        )
    })?;
    let secret = text.trim();
    if secret.len() < 32 {
        return Err(format!(
            "socketio.recovery_secret_file: {} holds {} characters after trimming; the recovery secret needs at least 32 (e.g. `openssl rand -hex 32`)",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

/// A secret read from the configuration: never shown in logs or dumps.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

pub struct Recovery {
    journal: Mutex<Journal>,
    /// Set once the consumer reads live on every partition: until then the journal is still
    /// being filled from the log read back at start-up, and a replay would miss the rest.
    caught_up: AtomicBool,
    /// Where replays go.
    fanout: Arc<dyn ClientFanout>,
    secret: Vec<u8>,
    window: Duration,
    token_ttl: Duration,
    budget: usize,
    /// How long a handshake waits for this replica to reach its offset.
    catch_up: Duration,
    /// Woken when the journal may have moved on (a writer let it go, or the consumer caught
    /// up): what a handshake waiting to catch up waits for.
    advanced: Notify,
    /// How many times handshakes looked at the journal, for tests of how often they wake.
    #[cfg(test)]
    looks: std::sync::atomic::AtomicUsize,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Recovery {
    /// Recovery as configured, replaying through `fanout`, a handshake waiting to catch up
    /// within `connect_timeout` ([`Recovery::catching_up_within`]), a replay fitting in
    /// `socket_room` packets (a socket's send queue and backlog: `replay_budget`); `None`
    /// when `socketio.recovery_window` is 0.
    ///
    /// # Errors
    /// When `socketio.recovery_secret_file` cannot be read or holds too short a secret (names
    /// the file and the fix).
    pub fn from_settings(
        settings: &RecoverySettings,
        connect_timeout: Duration,
        socket_room: usize,
        fanout: Arc<dyn ClientFanout>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        if settings.recovery_window.is_zero() {
            return Ok(None);
        }
        let budget = replay_budget(settings.replay_budget, socket_room);
        let secret = match (&settings.recovery_secret, &settings.recovery_secret_file) {
            (Some(Secret(secret)), _) => secret.trim().as_bytes().to_vec(),
            (None, Some(path)) => read_secret_file(path).map_err(anyhow::Error::msg)?,
            (None, None) => {
                tracing::info!(
                    "connection-state recovery: no socketio.recovery_secret set; sessions recover on this replica only (set FLUX_SOCKETIO__RECOVERY_SECRET to the same value on every replica)"
                );
                let mut secret = vec![0u8; 32];
                rand::fill(&mut secret[..]);
                secret
            }
        };
        Ok(Some(Arc::new(
            Self::new(
                secret,
                settings.recovery_window,
                settings.recovery_token_ttl,
                budget,
                settings.recovery_max_events,
                fanout,
            )
            .catching_up_within(connect_timeout),
        )))
    }

    pub fn new(
        secret: Vec<u8>,
        window: Duration,
        token_ttl: Duration,
        budget: usize,
        max_events: usize,
        fanout: Arc<dyn ClientFanout>,
    ) -> Self {
        Self {
            journal: Mutex::new(Journal::new(max_events, window.as_millis() as u64)),
            caught_up: AtomicBool::new(false),
            fanout,
            secret,
            window,
            token_ttl,
            budget,
            catch_up: CATCH_UP,
            advanced: Notify::new(),
            #[cfg(test)]
            looks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits for this replica to catch up with a handshake's offset for at most half of
    /// `connect_timeout`: the handshake waits in the connect middleware, and socketioxide closes
    /// a session still connecting after `connect_timeout` (found by review: with a timeout
    /// under the 5 s of the wait, a client whose offset was ahead was closed, reconnected with
    /// the same offset, and was closed again, for as long as this replica stayed behind).
    #[must_use]
    pub fn catching_up_within(mut self, connect_timeout: Duration) -> Self {
        self.catch_up = CATCH_UP.min(connect_timeout / 2);
        self
    }

    /// Whether the event consumer has read back its window and reads live on every partition:
    /// the journal holds everything up to now, and recovered sessions may be replayed.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// See [`Recovery::is_caught_up`].
    pub fn set_caught_up(&self) {
        if !self.caught_up.swap(true, Ordering::Relaxed) {
            tracing::debug!("recovery journal caught up with the log");
            self.advanced.notify_waiters();
        }
    }

    /// The window of the journal: the event consumer reads this much of the log back at
    /// start-up.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The journal, for the event consumer: hold the guard while emitting what was appended.
    /// Handshakes waiting for the journal to reach their offset look again once it is let go.
    pub async fn journal(&self) -> Appending<'_> {
        Appending {
            journal: Some(self.journal.lock().await),
            recovery: self,
        }
    }

    /// Exports the journal's size.
    pub fn export(journal: &Journal) {
        metrics::gauge!(RECOVERY_JOURNAL).set(journal.len() as f64);
    }

    /// A new session id for `user_id`.
    pub fn issue(&self, user_id: &str) -> String {
        let claims = SessionClaims {
            user_id: user_id.to_owned(),
            expires_ms: now_ms().saturating_add(self.token_ttl.as_millis() as u64),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        };
        claims.sign(&self.secret)
    }

    async fn admit_session(&self, pid: &str, offset: Option<&str>, user_id: &str) -> Admission {
        let claims = match SessionClaims::verify(pid, &self.secret, now_ms()) {
            Ok(claims) => claims,
            Err(e) => return self.fresh(user_id, Some(e.label())),
        };
        if claims.user_id != user_id {
            return self.fresh(user_id, Some("other_user"));
        }
        let Some(cut) = offset.and_then(Cut::decode) else {
            return self.fresh(user_id, Some("no_offset"));
        };
        match self.check(&cut).await {
            Ok(()) => Admission {
                pid: pid.to_owned(),
                resume: Some(cut),
            },
            Err(refusal) => self.fresh(user_id, Some(refusal.label())),
        }
    }

    fn fresh(&self, user_id: &str, refused: Option<&'static str>) -> Admission {
        if let Some(reason) = refused {
            refuse(reason);
        }
        Admission {
            pid: self.issue(user_id),
            resume: None,
        }
    }

    /// Whether a replay from `cut` would be accepted now, once this replica has read that far
    /// and finished reading its window back (a replay before then would miss the rest of it:
    /// those records are journaled, never emitted).
    async fn check(&self, cut: &Cut) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + self.catch_up;
        loop {
            // Registered before the look, so that an advance right after it is not missed;
            // woken by the journal's writers, not by polling it (a restarted replica's
            // reconnect storm would take its lock a hundred times a second per handshake,
            // against the consumer reading its window back: found by review).
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            {
                let journal = self.journal.lock().await;
                #[cfg(test)]
                self.looks.fetch_add(1, Ordering::Relaxed);
                match journal.check(cut, &RECOVERED_ROOMS, self.budget, now_ms()) {
                    Err(Refusal::Ahead) => {}
                    Ok(()) if !self.caught_up.load(Ordering::Relaxed) => {}
                    other => return other,
                }
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                // Named for its cause: `ahead` tells the operator this replica reads behind
                // the others, where it was only starting (found by review).
                return Err(if self.caught_up.load(Ordering::Relaxed) {
                    Refusal::Ahead
                } else {
                    Refusal::NotCaughtUp
                });
            }
        }
    }
}

/// The journal held by a writer; once the consumer has caught up, waiting handshakes look
/// again when it is let go (before, none can be answered: [`Recovery::set_caught_up`] wakes
/// them, and waking them at every batch of the read-back would queue each on the lock the
/// consumer needs, found by review).
pub struct Appending<'a> {
    journal: Option<MutexGuard<'a, Journal>>,
    recovery: &'a Recovery,
}

impl std::ops::Deref for Appending<'_> {
    type Target = Journal;

    fn deref(&self) -> &Journal {
        self.journal.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Appending<'_> {
    fn deref_mut(&mut self) -> &mut Journal {
        self.journal.as_deref_mut().expect("held until dropped")
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        drop(self.journal.take()); // let go first: the woken handshakes take it at once
        if self.recovery.is_caught_up() {
            self.recovery.advanced.notify_waiters();
        }
    }
}

#[async_trait]
impl SessionRecovery for Recovery {
    /// Decides at the handshake whether the client's session is recovered: a session id this
    /// deployment signed for the same user, not expired, and an offset this replica can replay
    /// from within the budget (waiting up to 5 s for this replica to read as far). Anything
    /// else is a normal connection with a new session id, counted with its reason.
    async fn admit(&self, handshake: Option<&Value>, user_id: &str) -> Admission {
        let field = |name: &str| handshake.and_then(|h| h.get(name)).and_then(Value::as_str);
        let Some(pid) = field("pid") else {
            return self.fresh(user_id, None);
        };
        let started = std::time::Instant::now();
        let admission = self.admit_session(pid, field("offset"), user_id).await;
        metrics::histogram!(RECOVERY_HANDSHAKE).record(started.elapsed().as_secs_f64());
        admission
    }

    /// Sends `socket` every event of [`RECOVERED_ROOMS`] after `cut`, in order, and puts it
    /// back in those rooms, atomically with respect to the event consumer. Returns how many
    /// events were replayed.
    ///
    /// # Errors
    /// The [`Refusal`] when the replay is no longer possible (the journal moved on since the
    /// handshake); the socket is then left as a normal connection.
    async fn resume(&self, socket: &str, cut: &Cut) -> Result<usize, Refusal> {
        let started = std::time::Instant::now();
        let journal = self.journal.lock().await;
        let replay = match journal.replay(cut, &RECOVERED_ROOMS, self.budget, now_ms()) {
            Ok(replay) => replay,
            Err(refusal) => {
                refuse(refusal.label());
                return Err(refusal);
            }
        };
        for entry in &replay.entries {
            // Never behind the client's own cut (see `Cut::merged`).
            let offset: Arc<str> = match Cut::decode(&entry.offset) {
                Some(own) => Arc::from(own.merged(cut).encode()),
                None => entry.offset.clone(),
            };
            if let Err(e) = self
                .fanout
                .to_socket(socket, &entry.event, &entry.payload, replayed(&offset))
                .await
            {
                tracing::debug!(socket, error = %e, "replay stopped: socket gone");
                return Ok(0);
            }
        }
        let rooms: Vec<String> = RECOVERED_ROOMS.iter().map(|r| (*r).to_owned()).collect();
        if self.fanout.join(socket, &rooms).await.is_err() {
            return Ok(0);
        }
        drop(journal);
        metrics::histogram!(RECOVERY_REPLAY).record(started.elapsed().as_secs_f64());
        metrics::counter!(RECOVERY_SESSIONS, "outcome" => "recovered").increment(1);
        metrics::counter!(RECOVERY_REPLAYED).increment(replay.entries.len() as u64);
        if replay.conflated > 0 {
            metrics::counter!(RECOVERY_CONFLATED).increment(replay.conflated as u64);
        }
        tracing::debug!(
            socket,
            replayed = replay.entries.len(),
            conflated = replay.conflated,
            "session recovered"
        );
        Ok(replay.entries.len())
    }
}

/// A replayed event carries its offset, as it did live; every replayed event is owed (the
/// budget already conflated what may be).
fn replayed(offset: &Arc<str>) -> EmitOptions<'_> {
    EmitOptions {
        latest: None,
        offset: Some(offset),
    }
}

/// Declares the recovery series at zero: outcomes, every refusal reason, replayed and
/// conflated events, the journal's size.
pub fn declare_metrics() {
    for outcome in ["recovered", "refused"] {
        metrics::counter!(RECOVERY_SESSIONS, "outcome" => outcome).increment(0);
    }
    let reasons = TokenError::ALL
        .map(TokenError::label)
        .into_iter()
        .chain(["other_user", "no_offset"])
        .chain(Refusal::ALL.map(Refusal::label));
    for reason in reasons {
        metrics::counter!(RECOVERY_REFUSED, "reason" => reason).increment(0);
    }
    metrics::counter!(RECOVERY_REPLAYED).increment(0);
    metrics::counter!(RECOVERY_CONFLATED).increment(0);
    metrics::gauge!(RECOVERY_JOURNAL).increment(0.0);
}

fn refuse(reason: &'static str) {
    metrics::counter!(RECOVERY_SESSIONS, "outcome" => "refused").increment(1);
    metrics::counter!(RECOVERY_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use serde_json::json;

    use super::*;
    use crate::adapters::memory::RecordingFanout;
    use crate::domain::Payload;
    use crate::domain::recovery::Position;
    use crate::domain::topics::EV_TICKER;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn recovery(window: Duration) -> Recovery {
        recovery_on(window, Arc::new(RecordingFanout::default()))
    }

    /// Recovery that replays through `fanout`, its journal caught up with the log.
    fn recovery_on(window: Duration, fanout: Arc<RecordingFanout>) -> Recovery {
        let r = reading_back(window, fanout);
        r.set_caught_up();
        r
    }

    /// Recovery whose consumer still reads its window back.
    fn reading_back(window: Duration, fanout: Arc<RecordingFanout>) -> Recovery {
        Recovery::new(
            SECRET.to_vec(),
            window,
            Duration::from_secs(3600),
            100,
            1000,
            fanout,
        )
    }

    /// Journals tickers `range` (offsets of partition 0 of the ticker topic, one record each)
    /// and returns their offset strings.
    async fn ticks(r: &Recovery, range: Range<i64>) -> Vec<Arc<str>> {
        let mut journal = r.journal().await;
        journal.start(3, 0, range.start);
        range
            .map(|i| {
                let pos = Position {
                    topic: 3,
                    partition: 0,
                    offset: i,
                    emit: 0,
                };
                let offset = journal.append(
                    pos,
                    true,
                    ROOM_CRYPTO,
                    EV_TICKER,
                    &Payload::new(&i),
                    Some("BTC"),
                    now_ms(),
                );
                journal.advance(3, 0, i);
                offset
            })
            .collect()
    }

    fn handshake(pid: &str, offset: &str) -> Value {
        json!({"guestId": "u1", "pid": pid, "offset": offset})
    }

    #[tokio::test]
    async fn a_valid_session_keeps_its_pid_and_gets_every_later_event_then_its_rooms() {
        let fanout = Arc::new(RecordingFanout::default());
        let r = recovery_on(Duration::from_secs(120), fanout.clone());
        let offsets = ticks(&r, 0..10).await;
        let pid = r.issue("u1");
        let admission = r.admit(Some(&handshake(&pid, &offsets[6])), "u1").await;
        assert_eq!(admission.pid, pid);
        let cut = admission.resume.expect("recovered");
        // What the consumer emits between the handshake and the replay is in the replay too.
        let later = ticks(&r, 10..12).await;
        fanout.connect("s1");
        assert_eq!(r.resume("s1", &cut).await, Ok(5));
        let replayed: Vec<(String, Option<String>)> = fanout
            .delivered()
            .into_iter()
            .map(|d| (d.payload.as_str().to_owned(), d.offset))
            .collect();
        let expected: Vec<(String, Option<String>)> = (7..12)
            .map(|i: usize| {
                let offset = if i < 10 { &offsets[i] } else { &later[i - 10] };
                (i.to_string(), Some(offset.to_string()))
            })
            .collect();
        assert_eq!(replayed, expected);
        let mut rooms = fanout.rooms_of("s1").await.unwrap();
        rooms.sort();
        assert_eq!(rooms, [ROOM_CRYPTO, ROOM_NEWS, ROOM_STOCK]);
    }

    #[tokio::test]
    async fn anything_else_is_a_normal_connection_with_a_new_session_id() {
        let r = recovery(Duration::from_millis(300));
        let offsets = ticks(&r, 0..3).await;
        let pid = r.issue("u1");
        let other_user = r.issue("u2");
        let signed_elsewhere = Recovery::new(
            b"another secret".to_vec(),
            Duration::from_secs(9),
            Duration::from_secs(9),
            9,
            9,
            Arc::new(RecordingFanout::default()),
        )
        .issue("u1");
        let mut forged = pid.clone().into_bytes();
        let middle = forged.len() / 2;
        forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let cases = [
            ("no pid", json!({"guestId": "u1"})),
            ("forged pid", handshake(&forged, &offsets[1])),
            (
                "another deployment's pid",
                handshake(&signed_elsewhere, &offsets[1]),
            ),
            ("another user's pid", handshake(&other_user, &offsets[1])),
            ("no offset", json!({"pid": pid})),
            (
                "an offset that is not one",
                handshake(&pid, "not-an-offset"),
            ),
            (
                "a pid that is not a string",
                json!({"pid": 7, "offset": &*offsets[1]}),
            ),
        ];
        for (case, shake) in cases {
            let admission = r.admit(Some(&shake), "u1").await;
            assert!(admission.resume.is_none(), "{case}: recovered");
            assert_ne!(admission.pid, pid, "{case}: same pid");
            let claims = SessionClaims::verify(&admission.pid, SECRET, now_ms()).unwrap();
            assert_eq!(claims.user_id, "u1", "{case}");
        }
        assert!(r.admit(None, "u1").await.resume.is_none());
        // Outside the window.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let admission = r.admit(Some(&handshake(&pid, &offsets[1])), "u1").await;
        assert!(
            admission.resume.is_none(),
            "an offset older than the window"
        );
    }

    #[test]
    fn a_replay_budget_beyond_a_sockets_room_is_capped_to_it() {
        assert_eq!(replay_budget(200, 512), 200);
        assert_eq!(
            replay_budget(200, 20),
            18,
            "the CONNECT packet and session:init first"
        );
        assert_eq!(replay_budget(5, 1), 1);
    }

    /// Found by review: socketioxide closes a session still connecting after
    /// `connect_timeout`, and the wait ran its 5 s whatever the timeout.
    #[tokio::test(start_paused = true)]
    async fn a_handshake_waits_to_catch_up_for_half_the_connect_timeout_at_most() {
        let ahead = recovery(Duration::from_secs(120));
        let offsets = ticks(&ahead, 0..5).await;
        let r = recovery(Duration::from_secs(120)).catching_up_within(Duration::from_secs(2));
        ticks(&r, 0..3).await;
        let pid = r.issue("u1");
        let started = tokio::time::Instant::now();
        let admission = r.admit(Some(&handshake(&pid, &offsets[4])), "u1").await;
        assert!(admission.resume.is_none());
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(1)..Duration::from_millis(1100)).contains(&waited),
            "waited {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_offset_from_a_replica_further_ahead_waits_for_this_one_to_get_there() {
        let ahead = recovery(Duration::from_secs(120));
        let offsets = ticks(&ahead, 0..5).await;
        let r = Arc::new(recovery(Duration::from_secs(120)));
        ticks(&r, 0..3).await;
        let pid = r.issue("u1");
        let waiting = {
            let (r, shake) = (r.clone(), handshake(&pid, &offsets[4]));
            tokio::spawn(async move { r.admit(Some(&shake), "u1").await })
        };
        // Off any 10 ms step: a poll every 10 ms would have found it only later.
        tokio::time::sleep(Duration::from_millis(1005)).await;
        assert!(!waiting.is_finished());
        let reached = tokio::time::Instant::now();
        ticks(&r, 3..5).await;
        assert!(waiting.await.unwrap().resume.is_some());
        // Woken by the journal's writer, not found by a poll some time later (the clock is
        // paused: it moves only when every task waits on a timer).
        assert_eq!(reached.elapsed(), Duration::ZERO, "answered by a poll");
        // One that this replica never reaches: refused after the catch-up wait.
        let never = ticks(&ahead, 5..9).await;
        let started = tokio::time::Instant::now();
        let admission = r.admit(Some(&handshake(&pid, &never[3])), "u1").await;
        assert!(admission.resume.is_none());
        assert!(started.elapsed() >= CATCH_UP);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_waits_for_the_window_read_back_and_is_refused_if_it_takes_too_long() {
        // Found by the chaos soak (issue 19): a client recovering on a replica still reading
        // its window back was replayed what was journaled so far, and missed the rest.
        let r = Arc::new(reading_back(
            Duration::from_secs(120),
            Arc::new(RecordingFanout::default()),
        ));
        let offsets = ticks(&r, 0..10).await;
        let pid = r.issue("u1");
        // Not caught up within the 5 s: a normal connection.
        let admission = r.admit(Some(&handshake(&pid, &offsets[3])), "u1").await;
        assert!(admission.resume.is_none(), "refused while reading back");
        let cut = Cut::decode(&offsets[3]).unwrap();
        assert_eq!(
            r.check(&cut).await,
            Err(Refusal::NotCaughtUp),
            "named for its cause"
        );
        // Caught up meanwhile: recovered.
        let late = {
            let r = r.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                r.set_caught_up();
            })
        };
        let admission = r.admit(Some(&handshake(&pid, &offsets[3])), "u1").await;
        assert!(admission.resume.is_some(), "recovered once caught up");
        late.await.unwrap();
    }

    /// Found by review: the journal's writer woke every waiting handshake at each batch of the
    /// read-back, when none of them could be answered before it caught up; each then queued
    /// on the lock the consumer needed.
    #[tokio::test(start_paused = true)]
    async fn a_handshake_waiting_for_the_read_back_is_not_woken_by_each_batch() {
        let r = Arc::new(reading_back(
            Duration::from_secs(120),
            Arc::new(RecordingFanout::default()),
        ));
        let offsets = ticks(&r, 0..3).await;
        let pid = r.issue("u1");
        let waiting = {
            let (r, shake) = (r.clone(), handshake(&pid, &offsets[1]));
            tokio::spawn(async move { r.admit(Some(&shake), "u1").await })
        };
        tokio::task::yield_now().await;
        for i in 3..300 {
            ticks(&r, i..i + 1).await;
            tokio::task::yield_now().await;
        }
        r.set_caught_up();
        assert!(waiting.await.unwrap().resume.is_some());
        let looks = r.looks.load(Ordering::Relaxed);
        assert!(looks <= 3, "looked {looks} times");
    }

    #[tokio::test]
    async fn replayed_offsets_never_fall_behind_the_clients_own_cut() {
        // Found by the chaos soak (issue 19): a replayed event's offset was its own cut, behind
        // the client's on a partition the client had read further through another replica;
        // its next recovery then replayed events it already had.
        let fanout = Arc::new(RecordingFanout::default());
        let r = recovery_on(Duration::from_secs(120), fanout.clone());
        // News (topic 4) known here from offset 50 when the tickers were emitted...
        r.journal().await.start(4, 0, 50);
        let offsets = ticks(&r, 0..10).await;
        // ...and read as far as offset 100 since (no news in the rooms replayed).
        r.journal().await.advance(4, 0, 100);
        // The client's cut: ticker 3, and news up to 100 (seen through another replica).
        let mut elsewhere = Journal::new(10, 120_000);
        elsewhere.start(4, 0, 100);
        let news = elsewhere.append(
            Position {
                topic: 4,
                partition: 0,
                offset: 100,
                emit: 0,
            },
            true,
            "news.global",
            "topNewsResponse",
            &Payload::new(&0),
            None,
            now_ms(),
        );
        let client = Cut::decode(&offsets[3])
            .unwrap()
            .merged(&Cut::decode(&news).unwrap());
        let pid = r.issue("u1");
        let admission = r
            .admit(Some(&handshake(&pid, &client.encode())), "u1")
            .await;
        let cut = admission.resume.expect("recovered");
        fanout.connect("s1");
        assert_eq!(r.resume("s1", &cut).await, Ok(6));
        let news_seen = Position {
            topic: 4,
            partition: 0,
            offset: 100,
            emit: 0,
        };
        for d in fanout.delivered() {
            let offset = Cut::decode(d.offset.as_deref().unwrap()).unwrap();
            assert!(
                offset.covers(&news_seen),
                "a replayed offset went back: {d:?}"
            );
        }
    }
}
