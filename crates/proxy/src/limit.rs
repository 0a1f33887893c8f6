//! In-flight caps. Requests are never queued for a permit (over the cap they get a 503), so an
//! atomic counter does the job without the waiter list (and its mutex) of a semaphore.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A cap on concurrent holders.
#[derive(Debug)]
pub struct InFlightLimit {
    max: usize,
    current: AtomicUsize,
}

/// Held while a request is in flight; gives the slot back on drop.
#[derive(Debug)]
pub struct InFlightPermit(Arc<InFlightLimit>);

impl InFlightLimit {
    /// A limit of `max` concurrent holders.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(InFlightLimit {
            max,
            current: AtomicUsize::new(0),
        })
    }

    /// Takes a slot, or `None` when all `max` are taken.
    /// A compare-and-swap loop, not add-then-undo: a request refused at the cap never
    /// inflates the count, so it cannot make a concurrent request fail spuriously.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightPermit> {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightPermit(self.clone()))
    }

    /// Slots taken now.
    pub fn in_flight(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let l = InFlightLimit::new(2);
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn concurrent_holders_never_exceed_the_cap() {
        let l = InFlightLimit::new(3);
        let peak = Arc::new(AtomicUsize::new(0));
        // Holders are counted by the test itself, not read from the limit.
        let holders = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, peak, holders) = (l.clone(), peak.clone(), holders.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(p) = l.try_acquire() {
                            let now = holders.fetch_add(1, Ordering::AcqRel) + 1;
                            peak.fetch_max(now, Ordering::AcqRel);
                            assert!(l.in_flight() <= 3, "the count never passes the cap");
                            holders.fetch_sub(1, Ordering::AcqRel);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 3);
        assert_eq!(l.in_flight(), 0);
    }
}
