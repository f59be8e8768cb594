//! The [`Journal`]: the bounded tail of this replica's emits, and the replay a cut is owed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::cut::{Cut, Mark, Position};
use crate::domain::events::Delivery;
use crate::domain::payload::Payload;

/// Distinct room and event names the journal shares between entries.
const MAX_NAMES: usize = 10_000;

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
    /// This replica was still reading its window back from the log (it had just started) when
    /// the handshake's wait ran out.
    NotCaughtUp,
}

impl Refusal {
    pub const ALL: [Self; 5] = [
        Self::Expired,
        Self::TooOld,
        Self::Ahead,
        Self::OverBudget,
        Self::NotCaughtUp,
    ];

    /// A short, stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::TooOld => "too_old",
            Self::Ahead => "ahead",
            Self::OverBudget => "over_budget",
            Self::NotCaughtUp => "not_caught_up",
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
    /// Per partition held, where its newest emit is.
    newest: HashMap<(u8, i32), Position>,
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
            newest: HashMap::new(),
            names: HashSet::new(),
            max_entries: max_entries.max(1),
            window_ms,
        }
    }

    /// The most emits the journal holds.
    pub fn capacity(&self) -> usize {
        self.max_entries
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
        self.newest.remove(&(topic, partition));
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
        self.newest.insert((pos.topic, pos.partition), pos);
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

    /// Appends every emit of `delivery`, caused by the record at `offset` of `partition` of
    /// event topic `topic` (its index in [`EVENT_TOPICS`](crate::domain::topics::EVENT_TOPICS)),
    /// and returns their offset strings, in order.
    pub fn append_delivery(
        &mut self,
        topic: u8,
        partition: i32,
        offset: i64,
        delivery: &Delivery,
        now_ms: u64,
    ) -> Vec<Arc<str>> {
        let count = delivery.emits.len();
        delivery
            .emits
            .iter()
            .enumerate()
            .map(|(i, emit)| {
                let pos = Position {
                    topic,
                    partition,
                    offset,
                    emit: i as u32,
                };
                self.append(
                    pos,
                    i + 1 == count,
                    &emit.room,
                    &emit.event,
                    &emit.payload,
                    delivery.conflation_key.as_deref(),
                    now_ms,
                )
            })
            .collect()
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
        self.reach(topic, partition, (offset + 1, 0));
    }

    /// `partition` of `topic` was read up to `next_offset` past records that emit nothing (a
    /// transaction marker, an aborted transaction, a batch that cannot be decoded): the head
    /// moves there, as past a handled record. A cut taken after them then names the offset a
    /// replica that starts reading at the log's end holds from, and compares equal on both.
    /// Where the journal holds emits from stays where it was (a partition not yet followed
    /// starts there, as with [`Journal::advance`]).
    pub fn pass(&mut self, topic: u8, partition: i32, next_offset: i64) {
        self.reach(topic, partition, (next_offset, 0));
    }

    /// Moves the head of a partition forward to `next` (never back).
    fn reach(&mut self, topic: u8, partition: i32, next: Mark) {
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
                    self.newest.remove(&tp);
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

    /// The emits to `rooms` that `cut` does not cover, oldest first, and how many entries the
    /// walk looked at. Walking back from the newest emit: the emits of one partition are in
    /// offset order, so once one of them is covered, so is every older one of that partition,
    /// and once every partition held is, the walk stops. A partition whose newest emit is
    /// covered is done before the walk starts: a rare stream (news every few minutes) seen
    /// by the client does not make the walk go back to its last emit, through the whole
    /// window of tickers, under the journal's lock. A partition the cut does not name was never
    /// delivered from: all of it is new.
    fn after(&self, cut: &Cut, rooms: &[&str]) -> (Vec<&Entry>, usize) {
        let mut finished: HashSet<(u8, i32)> = self
            .newest
            .iter()
            .filter(|(_, newest)| cut.covers(newest))
            .map(|(tp, _)| *tp)
            .collect();
        let mut after: Vec<&Entry> = Vec::new();
        let mut walked = 0;
        for e in self.entries.iter().rev() {
            if finished.len() == self.held.len() {
                break;
            }
            walked += 1;
            let tp = (e.pos.topic, e.pos.partition);
            if finished.contains(&tp) {
                continue;
            }
            if cut.covers(&e.pos) {
                finished.insert(tp);
            } else if rooms.contains(&&*e.room) {
                after.push(e);
            }
        }
        after.reverse();
        (after, walked)
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
        let (mut after, _) = self.after(cut, rooms);
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

#[cfg(test)]
mod tests {
    use super::super::cut::tests::pos;
    use super::*;

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
    fn a_cut_taken_after_a_marker_compares_equal_with_a_replica_that_started_past_it() {
        // Tickers (3, 0): a record at 40, a commit marker at 41, nothing since. News (4, 0):
        // one record at 7. Replica A read them all; replica B started later, at the end of
        // the tickers' log (42).
        let rooms = ["crypto.global", "news.global"];
        let mut a = Journal::new(100, 60_000);
        a.start(3, 0, 40);
        a.start(4, 0, 7);
        let before_marker = a.append(
            pos(3, 0, 40, 0),
            true,
            "crypto.global",
            "t",
            &Payload::new(&40),
            Some("BTC"),
            1000,
        );
        a.advance(3, 0, 40);
        a.pass(3, 0, 42);
        let news = |j: &mut Journal| {
            j.append(
                pos(4, 0, 7, 0),
                true,
                "news.global",
                "n",
                &Payload::new(&7),
                None,
                1001,
            )
        };
        let offset_a = news(&mut a);
        let mut b = Journal::new(100, 60_000);
        b.start(3, 0, 42);
        b.start(4, 0, 7);
        let offset_b = news(&mut b);
        let (cut_a, cut_b) = (
            Cut::decode(&offset_a).unwrap(),
            Cut::decode(&offset_b).unwrap(),
        );
        assert_eq!(
            b.check(&cut_a, &rooms, 100, 2000),
            Ok(()),
            "a client of A recovers on B"
        );
        assert_eq!(
            a.check(&cut_b, &rooms, 100, 2000),
            Ok(()),
            "a client of B recovers on A"
        );
        assert_eq!(offset_a, offset_b, "the same cut on both replicas");
        // A still holds everything it held: a client whose last event was the record before
        // the marker gets the news event.
        let before_marker = Cut::decode(&before_marker).unwrap();
        assert_eq!(
            payloads(&a.replay(&before_marker, &rooms, 100, 2000).unwrap()),
            [7]
        );
    }

    /// Found by review: a partition whose newest emit the client had seen (news, minutes ago)
    /// was finished only when the walk reached that emit, through every ticker since, under
    /// the journal's lock, twice per recovery.
    #[test]
    fn a_replay_walks_the_events_after_the_cut_not_back_to_a_rare_stream() {
        let mut j = Journal::new(10_000, 600_000);
        j.append(
            pos(4, 0, 0, 0),
            true,
            "news.global",
            "n",
            &Payload::new(&-1),
            None,
            10,
        );
        j.advance(4, 0, 0);
        let mut offsets = Vec::new();
        for i in 0..1000 {
            let offset = j.append(
                pos(3, 0, i, 0),
                true,
                "crypto.global",
                "t",
                &Payload::new(&i),
                Some("BTC"),
                10,
            );
            j.advance(3, 0, i);
            offsets.push(offset);
        }
        let cut = Cut::decode(&offsets[989]).unwrap();
        let rooms = ["crypto.global", "news.global"];
        let (after, walked) = j.after(&cut, &rooms);
        assert_eq!(after.len(), 10);
        assert!(
            walked <= 11,
            "walked {walked} entries for 10 events after the cut"
        );
        let (after, walked) = j.after(&Cut::decode(&offsets[999]).unwrap(), &rooms);
        assert_eq!(
            (after.len(), walked),
            (0, 0),
            "nothing after the newest emit"
        );
        // A news event after the cut: all of both partitions after it, nothing more.
        j.append(
            pos(4, 0, 1, 0),
            true,
            "news.global",
            "n",
            &Payload::new(&-2),
            None,
            11,
        );
        let replay = j.replay(&cut, &rooms, 100, 20).unwrap();
        assert_eq!(
            payloads(&replay),
            [990, 991, 992, 993, 994, 995, 996, 997, 998, 999, -2]
        );
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
}
