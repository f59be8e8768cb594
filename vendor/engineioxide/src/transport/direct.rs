//! flux-bff patch: when a thread that sends to a socket writes the socket's WebSocket
//! connection itself instead of waking the socket's writer task (`ws::WsConn`).

use std::cell::Cell;

use engineioxide_core::PacketBuf;

use crate::{engine::Clock, socket::Direct};

/// When a send writes directly: the socket is idle (nothing written for
/// [`DirectPolicy::IDLE_NS`]; nothing queued, which the caller checks), the sending thread
/// has budget left in its window, and the sockets this thread sent to in its previous
/// window were mostly idle. Built once per engine from [`EngineIoConfig::ws_direct_writes`]
/// and copied to each WebSocket connection; with 0 it is off ([`DirectPolicy::is_on`]),
/// and its budget is none.
///
/// [`EngineIoConfig::ws_direct_writes`]: crate::config::EngineIoConfig::ws_direct_writes
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectPolicy {
    clock: Clock,
    /// Direct writes a thread may make per window.
    per_window: u32,
}

impl DirectPolicy {
    /// How long (ns) a socket must have been written nothing for a send to write to it
    /// directly. Events that come closer together are left to the socket's writer task,
    /// which writes all that queued while it waited in one system call: a burst of events to
    /// the same sockets (a consumer's batch) then costs one write per socket, where direct
    /// writes would cost one per event. At 50 events/s per socket (20 ms apart) the writer
    /// tasks had written 1.005 times per delivery, each event alone; at 350/s, bursts of 3–4,
    /// one write for them (BENCHMARKS.md, "Direct writes").
    const IDLE_NS: u64 = 15_000_000;

    /// The windows of a second over which a thread's direct writes are counted.
    const WINDOWS_PER_S: u32 = 100;
    const WINDOW_NS: u64 = 1_000_000_000 / Self::WINDOWS_PER_S as u64;

    /// A thread writes directly only if at most one in this many of the sends of its
    /// previous window found their socket busy.
    const BUSY_ONE_IN: u32 = 10;

    /// The policy for `per_second` direct writes per thread, on `clock`; 0 turns them off.
    pub(crate) fn new(per_second: u32, clock: Clock) -> Self {
        DirectPolicy {
            clock,
            per_window: per_second.div_ceil(Self::WINDOWS_PER_S),
        }
    }

    /// Whether sends write directly at all.
    pub(crate) fn is_on(&self) -> bool {
        self.per_window > 0
    }

    /// Now, on the policy's clock (ns).
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// Whether a socket last written at `last_written` is still busy at `now`: more may
    /// follow, which its writer task batches.
    pub(crate) fn written_recently(&self, last_written: u64, now: u64) -> bool {
        now.saturating_sub(last_written) < Self::IDLE_NS
    }

    /// Counts a send that found its socket busy (packets queued ahead, written recently, its
    /// writer task writing or its reading task reading) and gives its `packets` back to be
    /// queued.
    pub(crate) fn refuse_busy(&self, packets: PacketBuf) -> Direct {
        WINDOW.with(|window| {
            let mut w = window.get();
            w.sends = w.sends.saturating_add(1);
            w.busy = w.busy.saturating_add(1);
            window.set(w);
        });
        Direct::Refused(packets)
    }

    /// flux-bff patch: whether [`Self::take_budget`] at `now` would take budget, without
    /// counting anything (a direct write builds its messages only then).
    pub(crate) fn has_budget(&self, now: u64) -> bool {
        let w = Self::window_at(WINDOW.get(), now);
        w.allowed && w.written < self.per_window
    }

    /// The window `w` is at `now`: itself, or a new one once it is over.
    fn window_at(w: Window, now: u64) -> Window {
        // (A window begun on another engine's clock is over too.)
        if now
            .checked_sub(w.start)
            .is_none_or(|e| e >= Self::WINDOW_NS)
        {
            Window {
                start: now,
                written: 0,
                sends: 0,
                busy: 0,
                allowed: w.busy.saturating_mul(Self::BUSY_ONE_IN) <= w.sends,
            }
        } else {
            w
        }
    }

    /// Whether this thread may write directly at `now` to a socket found idle: at most
    /// `per_window` times in a window of [`Self::WINDOW_NS`], and only if at most one in
    /// [`Self::BUSY_ONE_IN`] of the sends of its previous window (the counts since the window
    /// before began, if no idle socket came by since) found their socket busy.
    ///
    /// The budget bounds what a broadcast to a large room spends writing on its own thread
    /// before it leaves the rest to the writer tasks on every worker. The busy share keeps
    /// direct writes out of the way under load: when sockets are busy, the writer tasks are
    /// behind or have bursts to batch, and a broadcast that wrote the idle sockets first, one
    /// by one on its thread, only adds to the wait of the others (at 3000 × 120/s, load
    /// spikes left sockets idle for 15 ms, and the direct writes that followed raised the
    /// p99 from 28 to 47 ms; through Kafka at 3000 × 100/s, with half the sends busy
    /// allowed, a run's p99 went to 121 ms: BENCHMARKS.md "Direct writes").
    pub(crate) fn take_budget(&self, now: u64) -> bool {
        WINDOW.with(|window| {
            let mut w = Self::window_at(window.get(), now);
            w.sends = w.sends.saturating_add(1);
            let take = w.allowed && w.written < self.per_window;
            w.written += u32::from(take);
            window.set(w);
            take
        })
    }
}

/// A thread's current window: its direct writes, and how busy the sockets it sent to were.
#[derive(Clone, Copy)]
struct Window {
    /// When it began (the policy's clock, ns).
    start: u64,
    written: u32,
    /// Sends to sockets with a direct write, and those of them that found the socket busy.
    sends: u32,
    busy: u32,
    /// Whether direct writes are allowed in this window: the sockets of the previous one
    /// were mostly idle.
    allowed: bool,
}

thread_local! {
    static WINDOW: Cell<Window> = const {
        Cell::new(Window { start: 0, written: 0, sends: 0, busy: 0, allowed: true })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test runs on a thread of its own: its window starts afresh.
    fn policy(per_second: u32) -> DirectPolicy {
        DirectPolicy::new(per_second, Clock::start())
    }

    #[test]
    fn zero_turns_direct_writes_off() {
        let off = policy(0);
        assert!(!off.is_on());
        assert!(
            !off.take_budget(DirectPolicy::WINDOW_NS),
            "no budget when off"
        );
        assert!(policy(1).is_on());
    }

    #[test]
    fn a_thread_writes_its_budget_per_window_and_no_more() {
        let policy = policy(300); // 3 per window of 10 ms
        let start = 7 * DirectPolicy::WINDOW_NS;
        let taken = (0..5).filter(|_| policy.take_budget(start)).count();
        assert_eq!(taken, 3);
        assert!(!policy.take_budget(start + DirectPolicy::WINDOW_NS - 1));
        assert!(policy.take_budget(start + DirectPolicy::WINDOW_NS));
    }

    #[test]
    fn a_window_of_busy_sockets_stops_direct_writes_in_the_next() {
        let policy = policy(100_000);
        let start = 3 * DirectPolicy::WINDOW_NS;
        assert!(policy.take_budget(start));
        // 9 idle sends and 1 busy: one in ten, still allowed.
        (0..8).for_each(|_| assert!(policy.take_budget(start)));
        policy.refuse_busy(PacketBuf::new());
        let next = start + DirectPolicy::WINDOW_NS;
        assert!(policy.take_budget(next), "one busy send in ten is allowed");
        // 1 idle send and 1 busy: half, so none in the window after.
        policy.refuse_busy(PacketBuf::new());
        let after = next + DirectPolicy::WINDOW_NS;
        assert!(
            !policy.take_budget(after),
            "half the sends found their socket busy"
        );
        assert!(
            policy.take_budget(after + DirectPolicy::WINDOW_NS),
            "the refused window's sends were idle"
        );
    }

    /// flux-bff patch: `has_budget` answers what `take_budget` would, and counts nothing.
    #[test]
    fn has_budget_answers_as_take_budget_would() {
        let policy = policy(200); // 2 per window
        let start = 9 * DirectPolicy::WINDOW_NS;
        for _ in 0..2 {
            assert!(policy.has_budget(start));
            assert!(policy.has_budget(start), "asking takes nothing");
            assert!(policy.take_budget(start));
        }
        assert!(!policy.has_budget(start));
        assert!(!policy.take_budget(start));
        // A busy window: the next is refused, as `take_budget` refuses it.
        let next = start + DirectPolicy::WINDOW_NS;
        (0..3).for_each(|_| drop(policy.refuse_busy(PacketBuf::new())));
        assert!(!policy.has_budget(next));
        assert!(!policy.take_budget(next));
        assert!(policy.has_budget(next + DirectPolicy::WINDOW_NS));
        assert!(
            !DirectPolicy::new(0, Clock::start()).has_budget(next),
            "none when off"
        );
    }

    #[test]
    fn a_window_begun_on_another_clock_is_over() {
        let policy = policy(100);
        assert!(policy.take_budget(50 * DirectPolicy::WINDOW_NS));
        assert!(!policy.take_budget(50 * DirectPolicy::WINDOW_NS));
        // An engine that started later reads a smaller time.
        assert!(policy.take_budget(DirectPolicy::WINDOW_NS));
    }

    #[test]
    fn a_socket_written_within_15_ms_is_busy() {
        let policy = policy(100);
        assert!(policy.written_recently(1_000, 1_000 + DirectPolicy::IDLE_NS - 1));
        assert!(!policy.written_recently(1_000, 1_000 + DirectPolicy::IDLE_NS));
    }
}
