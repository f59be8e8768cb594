//! flux-bff patch: the per-socket send queue.
//!
//! A bounded single-consumer queue with the subset of `tokio::sync::mpsc`'s API that the
//! sockets use. tokio's bounded channel allocates its first block of 32 slots up front
//! (32 × `PacketBuf` = 5.4 KB per socket, whatever the bound); this one allocates nothing
//! until a packet is queued, and [`Sender::release_if_empty`] (called by the heartbeat pass)
//! gives the memory of an emptied queue back, so that an idle socket holds none and a busy
//! one does not reallocate on every drain.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
pub use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

struct Inner<T> {
    items: VecDeque<T>,
    /// Slots held by [`Permit`]s not yet used.
    reserved: usize,
    closed: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    cap: usize,
    /// The receiver, waiting for an item.
    rx_waker: AtomicWaker,
    /// Senders waiting for room ([`Sender::send`]) or for the close ([`Sender::closed`]).
    changed: Notify,
    /// How many wait on `changed` (so that the receiver's hot path skips the notify).
    waiting: AtomicUsize,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify_changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// Waits for `changed` until `done` returns a value.
    async fn wait_until<R>(&self, mut done: impl FnMut() -> Option<R>) -> R {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let out = loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(out) = done() {
                break out;
            }
            changed.await;
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

/// Creates a queue holding at most `cap` items.
pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    assert!(cap > 0, "queue capacity must be at least 1");
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            reserved: 0,
            closed: false,
        }),
        cap,
        rx_waker: AtomicWaker::new(),
        changed: Notify::new(),
        waiting: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
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
}

impl<T> Sender<T> {
    /// Reserves a slot, or fails at once when the queue is full or closed.
    pub fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(TrySendError::Closed(()));
        }
        if inner.items.len() + inner.reserved >= self.shared.cap {
            return Err(TrySendError::Full(()));
        }
        inner.reserved += 1;
        Ok(Permit {
            shared: &self.shared,
        })
    }

    /// Queues `item`, or gives it back at once when the queue is full or closed.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(TrySendError::Closed(item));
        }
        if inner.items.len() + inner.reserved >= self.shared.cap {
            return Err(TrySendError::Full(item));
        }
        inner.items.push_back(item);
        drop(inner);
        self.shared.rx_waker.wake();
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
        let mut inner = self.shared.lock();
        if inner.items.is_empty() && inner.items.capacity() > 0 {
            inner.items = VecDeque::new();
        }
    }

    /// Whether the receiver closed the queue.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
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
        let mut inner = self.shared.lock();
        inner.reserved -= 1;
        // A closed queue drops what is sent to it, as tokio's does.
        if !inner.closed {
            inner.items.push_back(item);
        }
        drop(inner);
        self.shared.rx_waker.wake();
        std::mem::forget(self); // the slot is used: skip the release in `drop`
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.shared.lock().reserved -= 1;
        self.shared.notify_changed();
    }
}

impl<T> Receiver<T> {
    fn pop(&self) -> Option<T> {
        let mut inner = self.shared.lock();
        let item = inner.items.pop_front();
        if item.is_some() {
            drop(inner);
            self.shared.notify_changed();
        }
        item
    }

    /// Polls for the next item; `None` once the queue is closed and empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        self.shared.rx_waker.register(cx.waker());
        // Again, after registering: an item queued in between would not wake us.
        if let Some(item) = self.pop() {
            return Poll::Ready(Some(item));
        }
        if self.shared.lock().closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// Waits for the next item; `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item, if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.pop() {
            Some(item) => Ok(item),
            None if self.shared.lock().closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the queue: no more sends; what is queued can still be received.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.notify_changed();
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
        assert_eq!(
            tx.shared.lock().items.capacity(),
            0,
            "nothing allocated up front"
        );
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
        for n in 0..1000 {
            assert_eq!(rx.recv().await, Some(n));
        }
        assert!(
            tx.shared.lock().items.capacity() >= 1000,
            "kept while in use"
        );
        tx.release_if_empty();
        assert_eq!(tx.shared.lock().items.capacity(), 0);
        // Not while something is queued.
        tx.try_send(1).unwrap();
        tx.release_if_empty();
        assert!(tx.shared.lock().items.capacity() > 0);
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
