//! The queue of requests waiting for a backend.
//!
//! A Queue decision means "not now": the best backend is loading, or every candidate is
//! at its concurrency limit. The request then waits until something changes that could
//! change the decision (a route guard settles and frees a slot, or the health checker
//! turns a backend ready) and decides again. So the queue is not a list of requests but
//! a count and a [`Notify`]: every waiter is woken on every change and re-decides, and
//! the pipeline (lock-free, allocation-free) is what picks who gets the freed slot.
//! That costs a decision per waiter per change, a microsecond each, and needs no lock
//! across an `.await`. The count bounds the waiters (`[server] max_queued`).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Waiting requests and the signal that wakes them.
#[derive(Debug)]
pub(crate) struct Queue {
    waiting: AtomicUsize,
    max: usize,
    changed: Notify,
}

/// A place in the queue, given back when dropped.
#[derive(Debug)]
pub(crate) struct Place<'q> {
    queue: &'q Queue,
}

impl Queue {
    pub(crate) fn new(max: usize) -> Self {
        Queue {
            waiting: AtomicUsize::new(0),
            max,
            changed: Notify::new(),
        }
    }

    /// Takes a place, or `None` when `max` requests already wait.
    pub(crate) fn enter(&self) -> Option<Place<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        crate::metrics::queue_depth(self.len());
        Some(Place { queue: self })
    }

    /// Requests waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// The most requests that may wait.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// A future that completes at the next [`wake`](Self::wake). Enable it (or poll it
    /// once) before deciding, so that a change between the decision and the wait is not
    /// missed.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Wakes every waiter to decide again. Cheap when nobody waits.
    pub(crate) fn wake(&self) {
        if self.len() > 0 {
            self.changed.notify_waiters();
        }
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::queue_depth(self.queue.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let queue = Queue::new(2);
        let a = queue.enter().unwrap();
        let _b = queue.enter().unwrap();
        assert!(queue.enter().is_none());
        assert_eq!(queue.len(), 2);
        drop(a);
        assert!(queue.enter().is_some());
    }

    #[tokio::test]
    async fn a_wake_after_enabling_is_not_missed() {
        let queue = Queue::new(1);
        let _place = queue.enter().unwrap();
        let changed = queue.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        queue.wake();
        tokio::time::timeout(std::time::Duration::from_secs(5), changed)
            .await
            .expect("woken");
    }
}
