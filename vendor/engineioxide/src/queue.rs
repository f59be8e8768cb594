//! flux-bff patch: the per-socket send queue.
//!
//! A bounded single-consumer queue with the subset of `tokio::sync::mpsc`'s API that the
//! sockets use. tokio's bounded channel allocates its first block of 32 slots up front
//! (32 × `PacketBuf` = 5.4 KB per socket, whatever the bound); this one allocates nothing
//! until a packet is queued, and [`Sender::release_if_empty`] (called by the heartbeat pass)
//! gives the memory of an emptied queue back, so that an idle socket holds none.
//!
//! One small buffer goes round: the receiver takes the senders' buffer with what is queued
//! and, once it has handed all of it out, gives the emptied buffer back for the next packets
//! (a buffer grown past [`REUSED_SLOTS`] by a burst is freed instead). A packet to a socket
//! whose writer keeps up then allocates nothing; one queued while the writer still holds
//! packets of an earlier batch gets a new buffer (and the writer frees its own when done).
//! Before, every packet to an idle queue allocated its buffer and the writer freed it.
//!
//! Cost per packet: a reservation is one atomic compare-and-swap (no lock), a push one
//! uncontended lock; the receiver takes everything queued in one lock (it swaps the queue
//! with its own empty one), so the broadcasting thread and the socket's writer rarely meet
//! on the lock.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
pub use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

/// An emptied buffer of at most this many slots goes back to the senders; a larger one (a
/// burst's) is freed.
const REUSED_SLOTS: usize = 8;

/// [`Shared::state`]: sends are taken.
const OPEN: u8 = 0;
/// flux-bff patch: sends fail as if the queue were closed, what is queued is still received,
/// but the senders are not told the queue is closed ([`Receiver::seal`]).
const SEALED: u8 = 1;
/// Closed by the receiver ([`Receiver::close`]).
const CLOSED: u8 = 2;

struct Shared<T> {
    items: Mutex<VecDeque<T>>,
    /// Items queued (here or in the receiver's batch) plus slots reserved by [`Permit`]s.
    used: AtomicUsize,
    /// [`OPEN`], [`SEALED`] or [`CLOSED`].
    state: AtomicU8,
    cap: usize,
    /// The receiver, waiting for an item.
    rx_waker: AtomicWaker,
    /// Senders waiting for room ([`Sender::send`]) or for the close ([`Sender::closed`]).
    changed: Notify,
    /// How many wait on `changed` (so that the receiver's hot path skips the notify).
    waiting: AtomicUsize,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        crate::lock(&self.items)
    }

    /// Takes a slot, unless the queue is closed (or sealed) or full.
    fn reserve(&self) -> Result<(), TrySendError<()>> {
        if self.state.load(Ordering::Acquire) != OPEN {
            return Err(TrySendError::Closed(()));
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used >= self.cap {
                return Err(TrySendError::Full(()));
            }
            match self.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(now) => used = now,
            }
        }
    }

    /// Gives `n` slots back.
    fn release(&self, n: usize) {
        if n > 0 {
            // SeqCst: see `notify_changed` (on x86 the same locked instruction as AcqRel).
            self.used.fetch_sub(n, Ordering::SeqCst);
            self.notify_changed();
        }
    }

    /// Queues an item in a reserved slot.
    fn push(&self, item: T) {
        if self.state.load(Ordering::Acquire) != OPEN {
            // A closed queue drops what is sent to it, as tokio's does.
            drop(item);
            self.release(1);
            return;
        }
        self.lock().push_back(item);
        self.rx_waker.wake();
    }

    /// Wakes the senders waiting in [`Self::wait_until`], if any, after a change of `used` or
    /// `state`.
    ///
    /// flux-bff patch: a waiter counts itself in `waiting` and then reads `used` (or `state`);
    /// a change writes `used` (or `state`) and then reads `waiting`. Unless both sides are
    /// sequentially consistent, each may read the other's old value (store buffering: allowed
    /// on weakly ordered CPUs), and a waiter that saw a full queue sleeps through the only
    /// release that would wake it. So the change is a SeqCst write followed by this SeqCst
    /// read, and the waiter puts a SeqCst fence between its count and its read (its reads
    /// are the senders' own, Relaxed or Acquire, on the hot path): one of the two sees the
    /// other.
    fn notify_changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Waits for `changed` until `done` returns a value.
    async fn wait_until<R>(&self, mut done: impl FnMut() -> Option<R>) -> R {
        // flux-bff patch: counted out when the wait ends or is dropped (a timed-out upgrade
        // drops its send, a shutdown its wait for the close): a count left behind made every
        // later release of the queue notify.
        let _waiting = Waiting::count(&self.waiting);
        std::sync::atomic::fence(Ordering::SeqCst); // see `notify_changed`
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(out) = done() {
                return out;
            }
            changed.await;
        }
    }
}

/// One sender waiting in [`Shared::wait_until`], counted in its `waiting` while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // A release that still sees the count notifies no one: harmless.
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Creates a queue holding at most `cap` items.
pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    assert!(cap > 0, "queue capacity must be at least 1");
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        used: AtomicUsize::new(0),
        state: AtomicU8::new(OPEN),
        cap,
        rx_waker: AtomicWaker::new(),
        changed: Notify::new(),
        waiting: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            batch: VecDeque::new(),
        },
    )
}

/// The sending half.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A reserved slot: [`Permit::send`] cannot fail.
pub struct Permit<'a, T> {
    shared: &'a Shared<T>,
}

/// The receiving half.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// What the last take left to hand out, oldest first.
    batch: VecDeque<T>,
}

impl<T> Sender<T> {
    /// flux-bff patch: starts loading what a reservation reads (see [`crate::hint`]).
    #[inline]
    pub fn prefetch(&self) {
        crate::hint::prefetch(&*self.shared);
    }

    /// Reserves a slot, or fails at once when the queue is full or closed.
    pub fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        self.shared.reserve()?;
        Ok(Permit {
            shared: &self.shared,
        })
    }

    /// Queues `item`, or gives it back at once when the queue is full or closed.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.shared.reserve() {
            Ok(()) => {
                self.shared.push(item);
                Ok(())
            }
            Err(TrySendError::Full(())) => Err(TrySendError::Full(item)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(item)),
        }
    }

    /// flux-bff patch: queues `item` even when the queue is full, in one slot past its bound:
    /// fails when the queue is closed, or already over its bound. For the heartbeat's ping: a
    /// slow client whose queue stays full (a lagging socket's backlog keeps it so) must still
    /// be asked for its pong, behind what it has not read yet; a client that reads nothing
    /// (and sends pongs unasked) finds the slot taken at its next ping.
    pub fn send_past_bound(&self, item: T) -> Result<(), TrySendError<T>> {
        if self.shared.state.load(Ordering::Acquire) != OPEN {
            return Err(TrySendError::Closed(item));
        }
        let past = self.shared.cap + 1;
        let mut used = self.shared.used.load(Ordering::Relaxed);
        loop {
            if used >= past {
                return Err(TrySendError::Full(item));
            }
            match self.shared.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        self.shared.push(item);
        Ok(())
    }

    /// Queues `item`, waiting for room; fails when the queue is closed.
    pub async fn send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut item = Some(item);
        self.shared
            .wait_until(|| match self.try_send(item.take()?) {
                Err(TrySendError::Full(back)) => {
                    item = Some(back);
                    None
                }
                other => Some(other),
            })
            .await
    }

    /// Frees the queue's memory if it is empty (an idle socket then holds none).
    pub fn release_if_empty(&self) {
        let mut items = self.shared.lock();
        if items.is_empty() && items.capacity() > 0 {
            *items = VecDeque::new();
        }
    }

    /// Wakes the receiver as a push would, with nothing queued: it looks again at what else
    /// it waits for (the socket's volatile packet, its cancellation), which it watches through
    /// this queue's one waker instead of a registration of its own in each.
    pub fn wake_receiver(&self) {
        self.shared.rx_waker.wake();
    }

    /// Whether the receiver closed the queue.
    pub fn is_closed(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == CLOSED
    }

    /// Waits until the receiver closes the queue.
    pub async fn closed(&self) {
        self.shared
            .wait_until(|| self.is_closed().then_some(()))
            .await
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("cap", &self.shared.cap)
            .finish()
    }
}

impl<T> Permit<'_, T> {
    /// Queues `item` in the reserved slot.
    pub fn send(self, item: T) {
        self.shared.push(item);
        std::mem::forget(self); // the slot is used: skip the release in `drop`
    }

    /// Whether this permit's slot is the only one in use: nothing is queued or waiting in the
    /// receiver's batch, and no other permit is held.
    pub fn is_only_one_in_use(&self) -> bool {
        self.shared.used.load(Ordering::Acquire) == 1
    }

    /// Wakes the receiver, as [`Sender::wake_receiver`].
    pub fn wake_receiver(&self) {
        self.shared.rx_waker.wake();
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.shared.release(1);
    }
}

impl<T> Receiver<T> {
    /// The oldest item: from the current batch, else from a new batch taken from the queue.
    fn pop(&mut self) -> Option<T> {
        if self.batch.is_empty() {
            // The batch is empty and holds no buffer (see below): take the senders', unless
            // it is empty too (then it stays theirs, for the next packet).
            let mut items = self.shared.lock();
            if items.is_empty() {
                return None;
            }
            self.batch = std::mem::take(&mut *items);
        }
        let item = self.batch.pop_front()?;
        self.shared.release(1);
        if self.batch.is_empty() {
            self.recycle();
        }
        Some(item)
    }

    /// Gives the emptied batch's buffer back to the senders when theirs has none (it was
    /// taken with the batch, and nothing was queued since), so that the next packet needs no
    /// allocation; frees it otherwise, or when a burst grew it. Either way the receiver holds
    /// no buffer while it waits, and the heartbeat's [`Sender::release_if_empty`] frees the
    /// one of a socket that stays idle.
    fn recycle(&mut self) {
        let mut emptied = std::mem::take(&mut self.batch);
        emptied.clear(); // empty already; this starts its ring at the front again
        if emptied.capacity() <= REUSED_SLOTS {
            let mut items = self.shared.lock();
            if items.capacity() == 0 {
                *items = emptied;
            }
        }
    }

    /// Wakes the task of `cx` on the next send, close or [`Sender::wake_receiver`], without
    /// taking anything (a receiver busy with what it took still hears of a cancellation).
    pub fn register(&self, cx: &mut Context<'_>) {
        self.shared.rx_waker.register(cx.waker());
    }

    /// Polls for the next item; `None` once the queue is closed (or sealed) and empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        self.shared.rx_waker.register(cx.waker());
        // Again, after registering: an item queued in between would not wake us.
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        if self.shared.state.load(Ordering::Acquire) != OPEN {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Waits for the next item; `None` once the queue is closed and empty. (The WebSocket
    /// writer polls [`Self::poll_recv`] itself; tests and the test harness use this.)
    #[cfg_attr(not(any(test, feature = "__test_harness")), allow(dead_code))]
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item, if one is queued.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests below
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.pop() {
            Some(item) => Ok(item),
            None if self.shared.state.load(Ordering::Acquire) != OPEN => {
                Err(TryRecvError::Disconnected)
            }
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the queue: no more sends; what is queued can still be received.
    pub fn close(&mut self) {
        // SeqCst: see `Shared::notify_changed`.
        self.shared.state.store(CLOSED, Ordering::SeqCst);
        self.shared.notify_changed();
    }

    /// flux-bff patch: takes no more sends (they fail as if the queue were closed) while what
    /// is queued is still handed out; [`Self::poll_recv`] returns `None` once it is. Unlike
    /// [`Self::close`], the senders are not told the queue is closed ([`Sender::is_closed`],
    /// [`Sender::closed`]): the session's close does that once its transport has let go.
    pub fn seal(&mut self) {
        // SeqCst: see `Shared::notify_changed` (a sender waiting for room fails now).
        let sealed =
            self.shared
                .state
                .compare_exchange(OPEN, SEALED, Ordering::SeqCst, Ordering::Relaxed);
        if sealed.is_ok() {
            self.shared.notify_changed();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("cap", &self.shared.cap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_lazy() {
        let (tx, mut rx) = channel::<u32>(3);
        assert_eq!(tx.shared.lock().capacity(), 0, "nothing allocated up front");
        let permit = tx.try_reserve().unwrap();
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        permit.send(3);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        // An unused permit gives its slot back.
        let unused = tx.try_reserve().unwrap();
        drop(unused);
        for n in 0..3 {
            tx.try_send(n).unwrap();
        }
    }

    #[tokio::test]
    async fn a_burst_is_released_once_sent() {
        let (tx, mut rx) = channel::<u32>(1024);
        for n in 0..1000 {
            tx.try_send(n).unwrap();
        }
        assert_eq!(rx.recv().await, Some(0));
        // The receiver took the whole burst in one batch; the queue starts afresh.
        assert_eq!(tx.shared.lock().capacity(), 0);
        assert!(rx.batch.capacity() >= 999);
        tx.try_send(1000).unwrap();
        for n in 1..=1000 {
            assert_eq!(rx.recv().await, Some(n));
        }
        assert_eq!(rx.batch.capacity(), 0, "an emptied batch holds no buffer");
        let back = tx.shared.lock().capacity();
        assert!(
            (1..=REUSED_SLOTS).contains(&back),
            "the burst's buffer is freed, the small one of the last packet handed back: {back}"
        );
        assert_eq!(tx.shared.used.load(Ordering::Relaxed), 0);
        // An emptied queue is released by `release_if_empty`, a non-empty one is not.
        tx.try_send(1).unwrap();
        tx.release_if_empty();
        assert!(tx.shared.lock().capacity() > 0);
        assert_eq!(rx.recv().await, Some(1));
        tx.try_send(2).unwrap();
        rx.try_recv().unwrap();
        tx.release_if_empty();
        assert_eq!(tx.shared.lock().capacity(), 0);
    }

    #[tokio::test]
    async fn one_small_buffer_goes_round_and_an_idle_queue_frees_it() {
        let (tx, mut rx) = channel::<u32>(64);
        tx.try_send(0).unwrap();
        let buffer = tx.shared.lock().as_slices().0.as_ptr();
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.batch.capacity(), 0);
        assert!(
            tx.shared.lock().capacity() > 0,
            "the emptied buffer is back"
        );
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert!(
            tx.shared.lock().capacity() > 0,
            "looking at an empty queue leaves the buffer with the senders"
        );
        for n in 1..=3 {
            tx.try_send(n).unwrap();
        }
        assert_eq!(
            tx.shared.lock().as_slices().0.as_ptr(),
            buffer,
            "the next packets went into the same buffer"
        );
        assert_eq!(rx.recv().await, Some(1));
        // Sent while the receiver holds the buffer: a new one is allocated for the senders,
        // and the receiver's is freed when emptied (only one goes back).
        tx.try_send(4).unwrap();
        for n in 2..=4 {
            assert_eq!(rx.recv().await, Some(n));
        }
        assert!(tx.shared.lock().capacity() > 0);
        assert_eq!(rx.batch.capacity(), 0);
        tx.release_if_empty();
        assert_eq!(
            tx.shared.lock().capacity(),
            0,
            "an idle socket holds no queue memory"
        );
    }

    /// flux-bff patch: a wait that is dropped (a timed-out upgrade's send, a shutdown's wait
    /// for the close) is no longer counted: releases stop notifying.
    #[test]
    fn a_dropped_wait_is_counted_out() {
        use futures_util::FutureExt;
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(0).unwrap();
        assert!(tx.send(1).now_or_never().is_none(), "no room: it waits");
        assert!(tx.closed().now_or_never().is_none(), "open: it waits");
        assert_eq!(tx.shared.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(rx.try_recv(), Ok(0));
    }

    #[tokio::test]
    async fn a_sealed_queue_hands_out_what_it_holds_and_takes_nothing_more() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let waiting = tokio::spawn({
            let tx = Arc::new(tx);
            let waiting = tx.clone();
            async move { (waiting.send(3).await, tx) }
        });
        tokio::task::yield_now().await; // it waits for room
        rx.seal();
        let (sent, tx) = waiting.await.unwrap();
        assert!(
            matches!(sent, Err(TrySendError::Closed(3))),
            "the waiting send fails"
        );
        assert!(matches!(tx.try_send(4), Err(TrySendError::Closed(4))));
        assert!(!tx.is_closed(), "the senders are not told it is closed");
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
        rx.close();
        assert!(tx.is_closed());
        rx.seal();
        assert!(tx.is_closed(), "sealing does not reopen a closed queue");
    }

    #[tokio::test]
    async fn the_receiver_wakes_and_senders_wait_for_room() {
        let (tx, mut rx) = channel::<u32>(1);
        let tx = Arc::new(tx);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(n) = rx.recv().await {
                got.push(n);
                if n == 99 {
                    rx.close();
                }
            }
            got
        });
        for n in 0..100 {
            tx.send(n).await.unwrap();
        }
        tx.closed().await;
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(7), Err(TrySendError::Closed(7))));
        assert_eq!(reader.await.unwrap(), (0..100).collect::<Vec<_>>());
    }
}
