//! A session's bounded queue: many senders (the router's table and whoever looked a
//! session up), one receiver (the session's task).
//!
//! Not tokio's mpsc: its channel keeps a preallocated block of 32 slots and its own
//! bookkeeping for as long as the session lives, about 730 bytes for every idle session.
//! This one is a mutex around a `VecDeque` that allocates on the first stanza and gives
//! its room back whenever it is drained; an idle session pays for the shared header only.
//! The semantics are those the sessions relied on: bounded length, `Full` and `Closed`
//! from `try_send`, `None` from `recv` once closed (or every sender gone) and drained, a
//! dropped receiver closes the queue.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

pub use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    /// Live [`Sender`]s; the receiver sees the end once this is zero and the queue empty.
    senders: AtomicUsize,
    max_len: usize,
}

struct Inner<T> {
    items: VecDeque<T>,
    /// The receiver waiting for an item (or for the end).
    waker: Option<Waker>,
    /// The receiver closed the queue or is gone: nothing more is taken.
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // A poisoned lock only means a panic elsewhere; each critical section leaves the
        // queue consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Inner<T> {
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        if item.is_some() && self.items.is_empty() && self.items.capacity() > 0 {
            // Drained: an idle session keeps no room for the last burst.
            self.items = VecDeque::new();
        }
        item
    }
}

/// A bounded queue holding at most `max_len` items (at least one).
pub fn bounded<T>(max_len: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            waker: None,
            closed: false,
        }),
        senders: AtomicUsize::new(1),
        max_len: max_len.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or closed; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut inner = self.shared.lock();
            if inner.closed {
                return Err(TrySendError::Closed(item));
            }
            if inner.items.len() >= self.shared.max_len {
                return Err(TrySendError::Full(item));
            }
            inner.items.push_back(item);
            inner.waker.take()
        };
        // Woken outside the lock: the receiver's task may run at once on another thread.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.shared.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The receiver closed the queue or is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a waiting receiver must see the end.
            let waker = self.shared.lock().waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("max_len", &self.shared.max_len)
            .finish_non_exhaustive()
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is closed (or every sender is gone) and
    /// empty. Cancel-safe: an item is only taken when this returns it.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if let Some(item) = inner.pop() {
                return Poll::Ready(Some(item));
            }
            // Read under the lock: a last sender dropping after this takes the waker
            // stored below, under the same lock, and wakes it.
            if inner.closed || self.shared.senders.load(Ordering::Acquire) == 0 {
                return Poll::Ready(None);
            }
            match &mut inner.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut inner = self.shared.lock();
        if let Some(item) = inner.pop() {
            return Ok(item);
        }
        if inner.closed || self.shared.senders.load(Ordering::Acquire) == 0 {
            Err(TryRecvError::Disconnected)
        } else {
            Err(TryRecvError::Empty)
        }
    }

    /// Refuses further items; those already queued can still be taken.
    pub fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut inner = self.shared.lock();
            inner.closed = true;
            inner.waker = None;
            std::mem::take(&mut inner.items)
        };
        // Dropped outside the lock: an item's own drop must not run under it.
        drop(items);
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("max_len", &self.shared.max_len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_in_order_and_full() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.try_recv().unwrap(), 1);
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.try_recv().unwrap(), 3);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert!(tx.is_empty());
    }

    #[test]
    fn drained_queue_gives_its_room_back() {
        let (tx, mut rx) = bounded(64);
        for i in 0..40 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.shared.lock().items.capacity(), 0);
    }

    #[test]
    fn close_keeps_what_was_queued() {
        let (tx, mut rx) = bounded(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[test]
    fn dropped_receiver_closes() {
        let (tx, rx) = bounded(4);
        tx.try_send(1).unwrap();
        drop(rx);
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert_eq!(tx.len(), 0);
    }

    #[test]
    fn items_queued_before_the_last_sender_left_are_still_received() {
        let (tx, mut rx) = bounded(4);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        drop(tx);
        tx2.try_send(2).unwrap();
        drop(tx2);
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_on_the_last_sender_leaving() {
        let (tx, mut rx) = bounded::<u32>(4);
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(7).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        drop(tx2);
        let (first, second) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first, Some(7));
        assert_eq!(second, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_none_lost() {
        let (tx, mut rx) = bounded::<u32>(100_000);
        let mut tasks = Vec::new();
        for t in 0..4u32 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..1000 {
                    tx.try_send(t * 1000 + i).unwrap();
                    if i % 100 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        for t in tasks {
            t.await.unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
    }
}
