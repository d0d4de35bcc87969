//! The order in which requests waiting for a slot get one. Every waiter wakes when a slot
//! frees, and a request that has just arrived tries at once; if all of them raced, the oldest
//! waiter would lose to whichever ran first, again and again: measured with 12 callers on 4
//! slots, a request in about 250 waited past the 10 s `queue_timeout` while newer ones were
//! served. So a request for a model that others already wait for queues behind them, and only
//! the first waiter for its model tries. Per model: a waiter for one model never holds back a
//! request for another.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct WaitQueue {
    inner: Mutex<Inner>,
    /// The number waiting, read without the lock: nearly every request finds none.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Ticket number (the order of arrival) → the model it waits for.
    waiting: BTreeMap<u64, Arc<str>>,
}

/// One request's place in the queue; leaving (served, timed out, or its client gone) is
/// dropping it.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<WaitQueue>,
    number: u64,
    model: Arc<str>,
}

impl WaitQueue {
    /// Queues a request for `model` at the back.
    pub fn join(self: &Arc<Self>, model: &str) -> Ticket {
        let model: Arc<str> = Arc::from(model);
        let mut inner = self.inner.lock();
        let number = inner.next;
        inner.next += 1;
        inner.waiting.insert(number, model.clone());
        self.len.store(inner.waiting.len(), Ordering::Release);
        Ticket {
            queue: self.clone(),
            number,
            model,
        }
    }

    /// Whether any request waits for `model`: a new one goes behind it.
    pub fn anyone_waits_for(&self, model: &str) -> bool {
        !self.is_empty() && self.inner.lock().waiting.values().any(|m| &**m == model)
    }

    /// Requests waiting, for every model.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Ticket {
    /// No request for the same model has waited longer.
    pub fn is_first(&self) -> bool {
        let inner = self.queue.inner.lock();
        !inner
            .waiting
            .range(..self.number)
            .any(|(_, m)| *m == self.model)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.queue.inner.lock();
        inner.waiting.remove(&self.number);
        self.queue.len.store(inner.waiting.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served_per_model() {
        let queue = Arc::new(WaitQueue::default());
        let a1 = queue.join("a");
        let b1 = queue.join("b");
        let a2 = queue.join("a");
        assert!(
            a1.is_first() && b1.is_first(),
            "another model never waits behind"
        );
        assert!(!a2.is_first());
        assert!(queue.anyone_waits_for("a") && !queue.anyone_waits_for("c"));
        assert_eq!(queue.len(), 3);
        drop(a1);
        assert!(
            a2.is_first(),
            "the next in line once the first is served or leaves"
        );
        drop((a2, b1));
        assert!(queue.is_empty());
    }
}
