//! Connection-state recovery (issue 12, D26): what a reconnecting client missed, worked out
//! from Kafka positions so that any replica can answer.
//!
//! socket.io-client (4.6+) keeps two strings: the session id (`pid`) of the CONNECT reply, and
//! the last argument of the last room event it received (the "offset"). It sends both back
//! when it reconnects. Here:
//!
//! - the **offset** of an event is a [`Cut`]: for every partition of the event topics, how far
//!   this replica had emitted when it emitted that event (Kafka offset and, for a record with
//!   several emits, the emit's index), with the emit time. Every replica reads every
//!   partition (D11), so every replica can tell which of its own emits lie beyond a cut;
//! - the **pid** is a signed [`SessionClaims`] token (HMAC-SHA256): the user id and an expiry,
//!   so no session store is shared between replicas;
//! - a [`Journal`] is the bounded tail of what this replica emitted (and, after a start, read
//!   back from the log): [`Journal::replay`] picks, in emission order, the events of the
//!   client's rooms that its cut does not cover.
//!
//! Nothing here reads the clock: times are passed in, in milliseconds since the Unix epoch.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::payload::Payload;

/// Where one emit comes from: the record's topic (its index in
/// [`EVENT_TOPICS`](super::topics::EVENT_TOPICS)), partition and offset, and the emit's index
/// among the record's emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
    pub emit: u32,
}

/// Per partition, the first (offset, emit) not yet delivered: everything before it was.
type Mark = (i64, u32);

/// Longest offset string accepted from a client.
const MAX_CUT_CHARS: usize = 4096;
/// Most partitions a decoded cut may name (over all topics).
const MAX_CUT_PARTITIONS: usize = 4096;
const CUT_VERSION: u8 = 1;
/// Distinct room and event names the journal shares between entries.
const MAX_NAMES: usize = 10_000;

/// How far a stream of emits had got, per topic partition, and when.
///
/// A partition the cut does not name was not delivered from at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    at_ms: u64,
    marks: BTreeMap<(u8, i32), Mark>,
}

impl Cut {
    /// When the cut was taken (the emit time of its event).
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// Whether the event at `pos` is on the delivered side of the cut.
    pub fn covers(&self, pos: &Position) -> bool {
        self.marks
            .get(&(pos.topic, pos.partition))
            .is_some_and(|mark| (pos.offset, pos.emit) < *mark)
    }

    fn mark(&self, topic: u8, partition: i32) -> Option<Mark> {
        self.marks.get(&(topic, partition)).copied()
    }

    /// The compact text form: base64url of a version byte, the time, and per topic (in
    /// [`EVENT_TOPICS`](super::topics::EVENT_TOPICS) order) its partitions' marks, as varints.
    /// About 30–60 characters for six topics of one partition each.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(48);
        out.push(CUT_VERSION);
        put_varint(&mut out, self.at_ms);
        let topics = self
            .marks
            .keys()
            .map(|(t, _)| *t as usize + 1)
            .max()
            .unwrap_or(0);
        put_varint(&mut out, topics as u64);
        for topic in 0..topics {
            let parts: Vec<(i32, Mark)> = self
                .marks
                .range((topic as u8, 0)..=(topic as u8, i32::MAX))
                .map(|((_, p), m)| (*p, *m))
                .collect();
            let count = parts.last().map_or(0, |(p, _)| *p as usize + 1);
            put_varint(&mut out, count as u64);
            let mut next = parts.into_iter().peekable();
            for partition in 0..count as i32 {
                let (offset, emit) = match next.peek() {
                    Some((p, m)) if *p == partition => {
                        let m = *m;
                        next.next();
                        m
                    }
                    _ => (0, 0),
                };
                let offset = offset.max(0) as u64;
                put_varint(&mut out, (offset << 1) | u64::from(emit > 0));
                if emit > 0 {
                    put_varint(&mut out, u64::from(emit));
                }
            }
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Reads [`Cut::encode`]'s form; `None` for anything else (a client may send any string).
    pub fn decode(text: &str) -> Option<Self> {
        if text.is_empty() || text.len() > MAX_CUT_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let mut input = bytes.as_slice();
        if take_byte(&mut input)? != CUT_VERSION {
            return None;
        }
        let at_ms = take_varint(&mut input)?;
        let topics = take_varint(&mut input)?;
        if topics > u64::from(u8::MAX) {
            return None;
        }
        let mut marks = BTreeMap::new();
        for topic in 0..topics as u8 {
            let count = take_varint(&mut input)?;
            if count as usize > MAX_CUT_PARTITIONS.saturating_sub(marks.len()) {
                return None;
            }
            for partition in 0..count as i32 {
                let word = take_varint(&mut input)?;
                let offset = i64::try_from(word >> 1).ok()?;
                let emit = if word & 1 == 1 {
                    u32::try_from(take_varint(&mut input)?).ok()?
                } else {
                    0
                };
                marks.insert((topic, partition), (offset, emit));
            }
        }
        input.is_empty().then_some(Self { at_ms, marks })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_byte(input: &mut &[u8]) -> Option<u8> {
    let (first, rest) = input.split_first()?;
    *input = rest;
    Some(*first)
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take_byte(input)?;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One emit as the journal keeps it: enough to send it again, byte for byte.
#[derive(Clone, Debug)]
pub struct Entry {
    pub pos: Position,
    pub at_ms: u64,
    pub room: Arc<str>,
    pub event: Arc<str>,
    pub payload: Payload,
    /// The conflation key (a ticker's product), when only the latest per key matters.
    pub key: Option<Arc<str>>,
    /// The offset string the event was (or would have been) emitted with.
    pub offset: Arc<str>,
}

/// Why a cut cannot be replayed from this journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The cut is older than the recovery window.
    Expired,
    /// This journal does not reach back to the cut on some partition (this replica started, or
    /// forgot, after it).
    TooOld,
    /// The cut is ahead of this replica on some partition: it has not read that far yet (it
    /// may, shortly: the caller may wait and ask again).
    Ahead,
    /// More events than the replay budget, even with tickers conflated.
    OverBudget,
}

impl Refusal {
    /// A short, stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::TooOld => "too_old",
            Self::Ahead => "ahead",
            Self::OverBudget => "over_budget",
        }
    }
}

/// What to send a recovering client, in order.
#[derive(Debug, Default)]
pub struct Replay {
    pub entries: Vec<Entry>,
    /// Tickers left out because a newer one of the same product follows (only beyond the
    /// budget).
    pub conflated: usize,
}

/// The bounded tail of this replica's emits, in emission order, with where each partition
/// stands.
#[derive(Debug)]
pub struct Journal {
    entries: VecDeque<Entry>,
    /// What has been handled: the cut of the latest emit, moved on past every handled record.
    head: Cut,
    /// Per partition, from where the journal holds every emit.
    low: BTreeMap<(u8, i32), Mark>,
    /// Per partition, how many of its emits the journal holds (none: not listed).
    held: HashMap<(u8, i32), usize>,
    /// Room and event names shared by the entries (a handful, plus one room per city).
    names: HashSet<Arc<str>>,
    max_entries: usize,
    window_ms: u64,
}

impl Journal {
    /// A journal of at most `max_entries` emits, none kept longer than `window_ms`.
    pub fn new(max_entries: usize, window_ms: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            head: Cut::default(),
            low: BTreeMap::new(),
            held: HashMap::new(),
            names: HashSet::new(),
            max_entries: max_entries.max(1),
            window_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The emits held, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Reading `partition` of `topic` starts at `offset`: the journal holds it from there.
    /// A partition it already follows at that offset or later is left as it is; one whose log
    /// went back (data loss, topic recreated) starts over, its emits forgotten.
    pub fn start(&mut self, topic: u8, partition: i32, offset: i64) {
        match self.head.mark(topic, partition) {
            Some((at, _)) if at <= offset => {}
            Some(_) => self.restart(topic, partition, offset),
            None => {
                self.head.marks.insert((topic, partition), (offset, 0));
                self.low.insert((topic, partition), (offset, 0));
            }
        }
    }

    fn restart(&mut self, topic: u8, partition: i32, offset: i64) {
        self.entries
            .retain(|e| (e.pos.topic, e.pos.partition) != (topic, partition));
        self.held.remove(&(topic, partition));
        self.head.marks.insert((topic, partition), (offset, 0));
        self.low.insert((topic, partition), (offset, 0));
    }

    /// Records an emit and returns its offset string (the cut just after it). `last` says it
    /// is the last emit of its record: the cut then names the next record, which a replica
    /// that starts reading there can answer.
    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        pos: Position,
        last: bool,
        room: &str,
        event: &str,
        payload: &Payload,
        key: Option<&str>,
        now_ms: u64,
    ) -> Arc<str> {
        match self.head.mark(pos.topic, pos.partition) {
            None => self.start(pos.topic, pos.partition, pos.offset),
            Some(mark) if (pos.offset, pos.emit) < mark => {
                self.restart(pos.topic, pos.partition, pos.offset);
            }
            Some(_) => {}
        }
        let mark = if last {
            (pos.offset + 1, 0)
        } else {
            (pos.offset, pos.emit + 1)
        };
        self.head.marks.insert((pos.topic, pos.partition), mark);
        self.head.at_ms = now_ms;
        let offset: Arc<str> = Arc::from(self.head.encode());
        *self.held.entry((pos.topic, pos.partition)).or_default() += 1;
        let (room, event) = (self.name(room), self.name(event));
        self.entries.push_back(Entry {
            pos,
            at_ms: now_ms,
            room,
            event,
            payload: payload.clone(),
            key: key.map(Arc::from),
            offset: Arc::clone(&offset),
        });
        self.evict(now_ms);
        offset
    }

    /// `name` as a shared string: one allocation per distinct room or event name (up to
    /// [`MAX_NAMES`]), not one per entry.
    fn name(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.names.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        if self.names.len() < MAX_NAMES {
            self.names.insert(Arc::clone(&shared));
        }
        shared
    }

    /// The record at `offset` is handled (emitted, rejected or skipped): the head moves past it.
    pub fn advance(&mut self, topic: u8, partition: i32, offset: i64) {
        let next = (offset + 1, 0);
        match self.head.mark(topic, partition) {
            None => {
                self.head.marks.insert((topic, partition), next);
                self.low.insert((topic, partition), next);
            }
            Some(mark) if mark < next => {
                self.head.marks.insert((topic, partition), next);
            }
            Some(_) => {}
        }
    }

    /// Forgets emits older than the window or beyond the size bound.
    pub fn evict(&mut self, now_ms: u64) {
        while let Some(first) = self.entries.front() {
            let old = first.at_ms.saturating_add(self.window_ms) < now_ms;
            if !old && self.entries.len() <= self.max_entries {
                break;
            }
            let gone = self.entries.pop_front().expect("front exists");
            let tp = (gone.pos.topic, gone.pos.partition);
            if let Some(count) = self.held.get_mut(&tp) {
                *count -= 1;
                if *count == 0 {
                    self.held.remove(&tp);
                }
            }
            let after = (gone.pos.offset, gone.pos.emit + 1);
            let low = self
                .low
                .entry((gone.pos.topic, gone.pos.partition))
                .or_insert(after);
            if *low < after {
                *low = after;
            }
        }
    }

    /// The events of `rooms` beyond `cut`, in emission order. Beyond `budget` events, tickers
    /// (events with a key) are conflated to the latest per room, event and key.
    ///
    /// # Errors
    /// A [`Refusal`] when the cut is outside the window, beyond this journal's reach, ahead of
    /// it, or the replay is over budget.
    pub fn replay(
        &self,
        cut: &Cut,
        rooms: &[&str],
        budget: usize,
        now_ms: u64,
    ) -> Result<Replay, Refusal> {
        let (entries, conflated) = self.select(cut, rooms, budget, now_ms)?;
        Ok(Replay {
            entries: entries.into_iter().cloned().collect(),
            conflated,
        })
    }

    /// Whether [`Journal::replay`] would succeed, without copying the events out.
    ///
    /// # Errors
    /// The [`Refusal`] `replay` would return.
    pub fn check(
        &self,
        cut: &Cut,
        rooms: &[&str],
        budget: usize,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        self.select(cut, rooms, budget, now_ms).map(|_| ())
    }

    /// The entries of a replay and how many tickers were conflated.
    fn select(
        &self,
        cut: &Cut,
        rooms: &[&str],
        budget: usize,
        now_ms: u64,
    ) -> Result<(Vec<&Entry>, usize), Refusal> {
        // Older than the window, or from further in the future than clocks drift (the offset
        // is the client's to forge; a forged one gains nothing it could not have anyway).
        if now_ms.saturating_sub(cut.at_ms) > self.window_ms
            || cut.at_ms > now_ms.saturating_add(self.window_ms)
        {
            return Err(Refusal::Expired);
        }
        for (tp, mark) in &cut.marks {
            match self.head.marks.get(tp) {
                Some(head) if head >= mark => {}
                _ => return Err(Refusal::Ahead),
            }
            if self.low.get(tp).is_some_and(|low| low > mark) {
                return Err(Refusal::TooOld);
            }
        }
        // Walking back from the newest emit: the emits of one partition are in offset order,
        // so once one of them is covered, so is every older one of that partition, and once
        // every partition held is, the walk stops: it costs the events after the cut, not the
        // window. A partition the cut does not name was never delivered from: all of it is new.
        let mut finished: HashSet<(u8, i32)> = HashSet::new();
        let mut after: Vec<&Entry> = Vec::new();
        for e in self.entries.iter().rev() {
            let tp = (e.pos.topic, e.pos.partition);
            if finished.contains(&tp) {
                continue;
            }
            if cut.covers(&e.pos) {
                finished.insert(tp);
                if finished.len() == self.held.len() {
                    break;
                }
            } else if rooms.contains(&&*e.room) {
                after.push(e);
            }
        }
        after.reverse();
        let mut conflated = 0;
        if after.len() > budget {
            let mut seen = HashSet::new();
            let before = after.len();
            let mut keep: Vec<&Entry> = Vec::with_capacity(budget);
            for e in after.into_iter().rev() {
                let newest = match &e.key {
                    Some(key) => seen.insert((&e.room, &e.event, key)),
                    None => true,
                };
                if newest {
                    keep.push(e);
                }
            }
            keep.reverse();
            conflated = before - keep.len();
            after = keep;
            if after.len() > budget {
                return Err(Refusal::OverBudget);
            }
        }
        Ok((after, conflated))
    }
}

/// What a recovery session id says, signed by the replica that issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The user id of the session (the handshake identity).
    #[serde(rename = "u")]
    pub user_id: String,
    /// Not valid after this time (ms since the Unix epoch).
    #[serde(rename = "e")]
    pub expires_ms: u64,
    /// Random, so that two sessions of one user never share an id.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a session id is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_token",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
        }
    }
}

const TOKEN_PREFIX: &str = "r1.";
/// Longest session id accepted from a client.
const MAX_TOKEN_CHARS: usize = 1024;

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(TOKEN_PREFIX.as_bytes());
    mac.update(body.as_bytes());
    mac
}

impl SessionClaims {
    /// The session id: `r1.<base64url JSON claims>.<base64url HMAC-SHA256>`.
    pub fn sign(&self, secret: &[u8]) -> String {
        let json = serde_json::to_vec(self).expect("claims serialise");
        let body = URL_SAFE_NO_PAD.encode(json);
        let tag = mac(secret, &body).finalize().into_bytes();
        format!("{TOKEN_PREFIX}{body}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks a session id's signature (in constant time) and expiry.
    ///
    /// # Errors
    /// A [`TokenError`] saying why it is refused.
    pub fn verify(token: &str, secret: &[u8], now_ms: u64) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let rest = token
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (body, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        mac(secret, body)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Self = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_ms < now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(topic: u8, partition: i32, offset: i64, emit: u32) -> Position {
        Position {
            topic,
            partition,
            offset,
            emit,
        }
    }

    #[test]
    fn a_cut_reads_back_what_it_wrote_and_says_what_it_covers() {
        let mut j = Journal::new(100, 60_000);
        j.start(0, 0, 5);
        j.start(3, 1, 1_000_000_000);
        let off = j.append(
            pos(3, 1, 1_000_000_000, 0),
            false,
            "r",
            "e",
            &Payload::new(&1),
            None,
            7,
        );
        let cut = Cut::decode(&off).expect("decodes");
        assert_eq!(cut.at_ms(), 7);
        assert!(cut.covers(&pos(3, 1, 1_000_000_000, 0)));
        assert!(!cut.covers(&pos(3, 1, 1_000_000_000, 1)));
        assert!(cut.covers(&pos(0, 0, 4, 9)));
        assert!(!cut.covers(&pos(0, 0, 5, 0)));
        // Partition 0 of topic 3 was never read: filled with "nothing delivered".
        assert!(!cut.covers(&pos(3, 0, 0, 0)));
        // A topic the cut does not reach, and an unknown partition: nothing delivered.
        assert!(!cut.covers(&pos(5, 0, 0, 0)));
        assert!(!cut.covers(&pos(0, 7, 0, 0)));
        assert!(off.len() < 40, "{off} is {} characters", off.len());
    }

    #[test]
    fn anything_but_an_encoded_cut_is_refused() {
        for bad in [
            "",
            "x",
            "%%%",
            "AQ",
            &"A".repeat(5000),
            "AQEB_____________w",
        ] {
            assert_eq!(Cut::decode(bad), None, "{bad:?}");
        }
        let mut good = Journal::new(10, 1000);
        let off = good.append(pos(1, 0, 3, 0), true, "r", "e", &Payload::new(&1), None, 1);
        let mut bytes = URL_SAFE_NO_PAD.decode(&*off).unwrap();
        bytes.push(0); // trailing garbage
        assert_eq!(Cut::decode(&URL_SAFE_NO_PAD.encode(bytes)), None);
    }

    /// A journal with ticks 0..n of product `BTC` on (3, 0) at offsets 0..n, one per ms.
    fn ticks(n: i64) -> (Journal, Vec<Arc<str>>) {
        let mut j = Journal::new(1000, 60_000);
        j.start(3, 0, 0);
        let offsets = (0..n)
            .map(|i| {
                let o = j.append(
                    pos(3, 0, i, 0),
                    true,
                    "crypto.global",
                    "cryptoTickerResponse",
                    &Payload::new(&i),
                    Some("BTC"),
                    1000 + i as u64,
                );
                j.advance(3, 0, i);
                o
            })
            .collect();
        (j, offsets)
    }

    fn payloads(r: &Replay) -> Vec<i64> {
        r.entries
            .iter()
            .map(|e| e.payload.as_str().parse().unwrap())
            .collect()
    }

    #[test]
    fn a_replay_is_every_event_of_the_rooms_after_the_cut_in_order() {
        let (mut j, offsets) = ticks(10);
        j.append(
            pos(4, 0, 0, 0),
            false,
            "news.global",
            "newsUpdate",
            &Payload::new(&100),
            None,
            1100,
        );
        j.append(
            pos(4, 0, 0, 1),
            true,
            "weather.Pune",
            "w",
            &Payload::new(&101),
            None,
            1100,
        );
        let cut = Cut::decode(&offsets[6]).unwrap();
        let r = j
            .replay(&cut, &["crypto.global", "news.global"], 100, 2000)
            .unwrap();
        assert_eq!(payloads(&r), [7, 8, 9, 100]);
        assert_eq!(r.conflated, 0);
        // The offsets replayed are the ones first emitted.
        assert_eq!(r.entries[0].offset, offsets[7]);
        // Nothing missed: nothing to replay.
        let last = Cut::decode(&offsets[9]).unwrap();
        let r = j.replay(&last, &["crypto.global"], 100, 2000).unwrap();
        assert!(r.entries.is_empty());
    }

    #[test]
    fn beyond_the_budget_tickers_are_conflated_and_beyond_that_refused() {
        let (mut j, offsets) = ticks(10);
        j.append(
            pos(4, 0, 0, 0),
            true,
            "crypto.global",
            "topCoins",
            &Payload::new(&100),
            None,
            1100,
        );
        let cut = Cut::decode(&offsets[0]).unwrap();
        let r = j.replay(&cut, &["crypto.global"], 3, 2000).unwrap();
        assert_eq!(payloads(&r), [9, 100]);
        assert_eq!(r.conflated, 8);
        assert_eq!(
            j.replay(&cut, &["crypto.global"], 1, 2000).unwrap_err(),
            Refusal::OverBudget
        );
    }

    #[test]
    fn a_cut_outside_the_window_beyond_the_journal_or_ahead_of_it_is_refused() {
        let (j, offsets) = ticks(10);
        let cut = Cut::decode(&offsets[2]).unwrap();
        assert_eq!(
            j.replay(&cut, &["crypto.global"], 100, 1002 + 60_001)
                .unwrap_err(),
            Refusal::Expired
        );
        // Ahead: another replica had read further.
        let (ahead, offsets_ahead) = ticks(12);
        let far = Cut::decode(&offsets_ahead[11]).unwrap();
        assert!(ahead.check(&far, &["crypto.global"], 100, 2000).is_ok());
        assert_eq!(
            j.replay(&far, &["crypto.global"], 100, 2000).unwrap_err(),
            Refusal::Ahead
        );
        // Too old: this replica started after the cut.
        let mut late = Journal::new(100, 60_000);
        late.start(3, 0, 5);
        late.append(
            pos(3, 0, 5, 0),
            true,
            "crypto.global",
            "t",
            &Payload::new(&5),
            None,
            1010,
        );
        assert_eq!(
            late.replay(&cut, &["crypto.global"], 100, 2000)
                .unwrap_err(),
            Refusal::TooOld
        );
        // From where it started, it can answer.
        let at4 = Cut::decode(&offsets[4]).unwrap();
        assert_eq!(
            late.replay(&at4, &["crypto.global"], 100, 2000)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn evicted_events_make_older_cuts_too_old() {
        let mut j = Journal::new(3, 60_000);
        j.start(3, 0, 0);
        let mut offsets = Vec::new();
        for i in 0..5 {
            offsets.push(j.append(pos(3, 0, i, 0), true, "r", "t", &Payload::new(&i), None, 10));
        }
        assert_eq!(j.len(), 3);
        let evicted = Cut::decode(&offsets[0]).unwrap();
        assert_eq!(
            j.replay(&evicted, &["r"], 100, 10).unwrap_err(),
            Refusal::TooOld
        );
        let kept = Cut::decode(&offsets[1]).unwrap();
        assert_eq!(j.replay(&kept, &["r"], 100, 10).unwrap().entries.len(), 3);
        // Age: everything older than the window goes.
        j.evict(10 + 60_001);
        assert!(j.is_empty());
    }

    #[test]
    fn a_replay_is_every_uncovered_event_whatever_the_interleaving_of_partitions() {
        // Three partitions emitted in a pseudo-random interleaving; every cut a client could
        // hold (the offset of any emit) against a brute-force filter of the journal.
        let mut j = Journal::new(10_000, 60_000);
        let mut next = [0i64; 3];
        let mut seed = 7u64;
        let mut offsets = Vec::new();
        for i in 0..300 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let p = (seed >> 33) as usize % 3;
            let room = if i % 4 == 0 {
                "news.global"
            } else {
                "crypto.global"
            };
            let pos = pos(3, p as i32, next[p], 0);
            offsets.push(j.append(pos, true, room, "e", &Payload::new(&i), None, 10));
            j.advance(3, p as i32, next[p]);
            next[p] += 1;
        }
        for offset in &offsets {
            let cut = Cut::decode(offset).unwrap();
            let got: Vec<String> = j
                .replay(&cut, &["crypto.global"], 10_000, 10)
                .unwrap()
                .entries
                .iter()
                .map(|e| e.payload.as_str().to_owned())
                .collect();
            let want: Vec<String> = j
                .entries()
                .filter(|e| !cut.covers(&e.pos) && &*e.room == "crypto.global")
                .map(|e| e.payload.as_str().to_owned())
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_log_that_went_back_starts_its_partition_over() {
        let (mut j, _) = ticks(10);
        j.append(
            pos(3, 0, 2, 0),
            true,
            "crypto.global",
            "t",
            &Payload::new(&-1),
            None,
            2000,
        );
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn a_session_id_is_accepted_only_with_its_signature_and_before_its_expiry() {
        let claims = SessionClaims {
            user_id: "guest-1".into(),
            expires_ms: 10_000,
            nonce: "abc".into(),
        };
        let token = claims.sign(b"secret");
        assert_eq!(
            SessionClaims::verify(&token, b"secret", 9_999),
            Ok(claims.clone())
        );
        assert_eq!(
            SessionClaims::verify(&token, b"other", 9_999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            SessionClaims::verify(&token, b"secret", 10_001),
            Err(TokenError::Expired)
        );
        // One character changed anywhere: refused.
        for i in TOKEN_PREFIX.len()..token.len() {
            let mut forged = token.clone().into_bytes();
            forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert!(
                SessionClaims::verify(&forged, b"secret", 0).is_err(),
                "{forged}"
            );
        }
        for bad in ["", "r1.", "r1.x.y", "xyz", &"r".repeat(2000)] {
            assert_eq!(
                SessionClaims::verify(bad, b"secret", 0),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }
}
