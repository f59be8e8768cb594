//! The recovery window read back at start-up (D26): per partition with records in the window,
//! those up to where live reading began are journaled only, neither emitted again nor cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::domain::recovery::Journal;
use crate::domain::topics;
use crate::ports::{Positions, Record};

/// The part of a partition read back at start-up: from `next` (the next record expected) to
/// `live` (where live reading began).
#[derive(Debug)]
pub(super) struct ReadBack {
    pub(super) next: i64,
    pub(super) live: i64,
}

/// The partitions being read back.
#[derive(Debug, Default)]
pub(super) struct ReadBacks(
    Mutex<HashMap<(String, i32), ReadBack>>, // std Mutex: never held across an .await
    /// The newest snapshot journaled from the read-back, per snapshot key: when it was
    /// produced.
    Mutex<HashMap<&'static str, SystemTime>>,
);

impl ReadBacks {
    /// Where to start reading each partition of `live` (the live positions), given `back`
    /// (the first positions within the recovery window): the earlier of the two, but no
    /// further back than the journal's capacity of records. Every partition that starts
    /// before its live position is read back; `journal` starts each partition where reading
    /// starts.
    pub(super) fn plan(
        &self,
        live: &Positions,
        back: &Positions,
        journal: &mut Journal,
    ) -> Positions {
        let mut read_back = self.lock();
        // Partitions listed by time (their log end could not be read) start as listed.
        let mut from = live.clone();
        // `back` is the first record stamped at or after the window's start, so one record
        // stamped far ahead (a producer clock hours fast, microseconds written as
        // milliseconds) puts it days of the partition back. The journal keeps at most
        // `capacity` emits over all partitions, one or more per record it holds: reading
        // further back than that many records of one partition journals only what is evicted
        // again (but for the room rejected records and transaction markers leave), and holds
        // every live event of the partition back meanwhile.
        let most = i64::try_from(journal.capacity()).unwrap_or(i64::MAX);
        for (topic, partition, live_at) in live.iter() {
            let at = back
                .get(topic, partition)
                .unwrap_or(live_at)
                .min(live_at)
                .max(live_at.saturating_sub(most));
            from.set(topic, partition, at);
            if at < live_at {
                let range = ReadBack {
                    next: at,
                    live: live_at,
                };
                read_back.insert((topic.to_owned(), partition), range);
            }
            if let Some(t) = topics::event_topic_index(topic) {
                journal.start(t, partition, at);
            }
        }
        from
    }

    /// Whether `record` was read back for the recovery journal only (before live reading).
    /// A partition's read-back ends at its live position, or as soon as its log goes back
    /// (data loss, issue 10): what follows is live.
    pub(super) fn is_history(&self, record: &Record) -> bool {
        let mut read_back = self.lock();
        if read_back.is_empty() {
            return false;
        }
        let key = (record.topic.to_string(), record.partition);
        let Some(range) = read_back.get_mut(&key) else {
            return false;
        };
        if record.offset < range.next || record.offset >= range.live {
            read_back.remove(&key);
            return false;
        }
        range.next = record.offset + 1;
        if range.next >= range.live {
            read_back.remove(&key); // the next record of the partition is live
        }
        true
    }

    /// `topic`/`partition` was read up to `next_offset` past records not delivered (a
    /// partition ending in a transaction marker): its read-back ends once that reaches its
    /// live position.
    pub(super) fn passed(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut read_back = self.lock();
        let key = (topic.to_owned(), partition);
        if let Some(range) = read_back.get_mut(&key) {
            range.next = range.next.max(next_offset);
            if range.next >= range.live {
                read_back.remove(&key);
            }
        }
    }

    /// Whether every partition reads live (nothing, or nothing more, to read back).
    pub(super) fn is_done(&self) -> bool {
        self.lock().is_empty()
    }

    #[cfg(test)]
    pub(super) fn insert(&self, topic: &str, partition: i32, range: ReadBack) {
        self.lock().insert((topic.to_owned(), partition), range);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), ReadBack>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a snapshot of `key` read back, produced at `produced_at`, is older than one
    /// read back before it (from another partition of a keyless topic: they are read in no
    /// order between them). Else it is the newest so far. Unknown or future times count as
    /// now, as the store counts them.
    pub(super) fn older_than_read(
        &self,
        key: &'static str,
        produced_at: Option<SystemTime>,
    ) -> bool {
        let Some(produced) = produced_at.map(|at| at.min(SystemTime::now())) else {
            return false;
        };
        let mut newest = self.1.lock().unwrap_or_else(|e| e.into_inner());
        match newest.get(key) {
            Some(read) if *read > produced => true,
            _ => {
                newest.insert(key, produced);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Next;

    fn record(offset: i64) -> Record {
        Record {
            topic: std::sync::Arc::from(topics::TICKER_EVENTS),
            partition: 0,
            offset,
            key: None,
            value: None,
            timestamp: None,
        }
    }

    #[test]
    fn a_read_back_starts_no_further_back_than_the_journal_holds() {
        let read_backs = ReadBacks::default();
        let mut journal = Journal::new(100, 120_000);
        let mut live = Positions::default();
        live.set(topics::TICKER_EVENTS, 0, 1_000_000);
        live.set(topics::NEWS_EVENTS, 0, 50);
        // A record stamped far ahead at offset 0 is the first "at or after" the window's start.
        let mut back = Positions::default();
        back.set(topics::TICKER_EVENTS, 0, 0);
        back.set(topics::NEWS_EVENTS, 0, 10);
        let from = read_backs.plan(&live, &back, &mut journal);
        assert_eq!(from.get(topics::TICKER_EVENTS, 0), Some(999_900));
        assert_eq!(
            from.get(topics::NEWS_EVENTS, 0),
            Some(10),
            "a window within the bound is read back whole"
        );
        // The records before the bound are not history: read-back ends at the live position.
        assert!(read_backs.is_history(&record(999_900)));
        assert!(!read_backs.is_history(&record(1_000_000)));
    }

    #[test]
    fn a_partition_whose_log_end_was_not_read_keeps_its_start_by_time() {
        let read_backs = ReadBacks::default();
        let mut journal = Journal::new(100, 120_000);
        let at = SystemTime::now();
        let mut live = Positions::default();
        live.set(topics::TICKER_EVENTS, 0, 40);
        live.set_next(topics::TICKER_EVENTS, 1, Next::ProducedSince(at));
        let from = read_backs.plan(&live, &Positions::default(), &mut journal);
        assert_eq!(from.get(topics::TICKER_EVENTS, 0), Some(40));
        // Left out, the partition of a listed topic would be read from its log start.
        assert_eq!(
            from.next(topics::TICKER_EVENTS, 1),
            Some(Next::ProducedSince(at))
        );
    }

    #[test]
    fn a_partition_ending_in_records_not_delivered_finishes_its_read_back_when_passed() {
        let read_backs = ReadBacks::default();
        // Records 8 and 9, then a commit marker at 10: live reading began at 11.
        read_backs.insert(topics::TICKER_EVENTS, 0, ReadBack { next: 8, live: 11 });
        assert!(read_backs.is_history(&record(8)));
        assert!(read_backs.is_history(&record(9)));
        assert!(!read_backs.is_done(), "the marker at 10 is never delivered");
        read_backs.passed(topics::TICKER_EVENTS, 0, 10);
        assert!(!read_backs.is_done(), "not yet at the live position");
        read_backs.passed(topics::TICKER_EVENTS, 0, 11);
        assert!(read_backs.is_done());
    }
}
