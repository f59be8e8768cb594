//! The offset a client holds: a [`Cut`] over every event-topic partition, and its compact
//! text form.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
pub(super) type Mark = (i64, u32);

/// Longest offset string accepted from a client.
const MAX_CUT_CHARS: usize = 4096;
/// Most partitions a decoded cut may name (over all topics).
const MAX_CUT_PARTITIONS: usize = 4096;
const CUT_VERSION: u8 = 1;

/// How far a stream of emits had got, per topic partition, and when.
///
/// A partition the cut does not name was not delivered from at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    pub(super) at_ms: u64,
    pub(super) marks: BTreeMap<(u8, i32), Mark>,
}

impl Cut {
    /// When the cut was taken (the emit time of its event).
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }

    /// The cut covering what either covers: per partition the further mark, the later time.
    /// A replayed event's own cut can be behind the client's on partitions it has nothing to
    /// do with (the client's came from a replica further ahead there); sent as it is, it would
    /// move the client's offset back, and the next recovery would replay what it has (issue
    /// 19).
    pub fn merged(&self, other: &Cut) -> Cut {
        let mut marks = self.marks.clone();
        for (key, mark) in &other.marks {
            let entry = marks.entry(*key).or_insert(*mark);
            *entry = (*entry).max(*mark);
        }
        Cut {
            at_ms: self.at_ms.max(other.at_ms),
            marks,
        }
    }

    /// Whether the event at `pos` is on the delivered side of the cut.
    pub fn covers(&self, pos: &Position) -> bool {
        self.marks
            .get(&(pos.topic, pos.partition))
            .is_some_and(|mark| (pos.offset, pos.emit) < *mark)
    }

    pub(super) fn mark(&self, topic: u8, partition: i32) -> Option<Mark> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::super::Journal;
    use super::*;
    use crate::domain::Payload;

    pub(in crate::domain::recovery) fn pos(
        topic: u8,
        partition: i32,
        offset: i64,
        emit: u32,
    ) -> Position {
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

    #[test]
    fn a_merged_cut_covers_what_either_covers() {
        let mut a = Journal::new(100, 60_000);
        a.start(0, 0, 10);
        a.start(3, 0, 0);
        let offset_a = a.append(pos(0, 0, 10, 0), true, "r", "e", &Payload::new(&1), None, 5);
        let mut b = Journal::new(100, 60_000);
        b.start(0, 0, 0);
        b.start(3, 0, 20);
        let offset_b = b.append(pos(3, 0, 20, 0), true, "r", "e", &Payload::new(&2), None, 9);
        let (a, b) = (
            Cut::decode(&offset_a).unwrap(),
            Cut::decode(&offset_b).unwrap(),
        );
        let both = a.merged(&b);
        for p in [
            pos(0, 0, 10, 0),
            pos(3, 0, 20, 0),
            pos(0, 0, 3, 0),
            pos(3, 0, 5, 0),
        ] {
            assert!(both.covers(&p), "{p:?}");
        }
        assert!(!both.covers(&pos(0, 0, 11, 0)) && !both.covers(&pos(3, 0, 21, 0)));
        assert_eq!(both.at_ms(), 9);
        assert_eq!(Cut::decode(&both.encode()), Some(both));
    }
}
