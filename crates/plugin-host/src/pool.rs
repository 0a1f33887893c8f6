//! Pools of live (Store, instance) pairs, one per (plugin, tenant). A request checks an
//! instance out for its whole phase sequence and returns it after `on-log`; an instance that
//! trapped is dropped instead, and one past its use count or memory high-water mark retired.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::Store;

use crate::bindings::GatewayPlugin;
use crate::host::HostState;

/// A live instance and its store; `B` is its typed exports (a plugin's, or the built-in
/// bundle's).
pub struct Pooled<B = GatewayPlugin> {
    /// The store (its data is the host state).
    pub store: Store<HostState>,
    /// The instance's typed exports.
    pub bindings: B,
    /// Requests served.
    pub uses: u64,
    /// A call started and has not returned. Still set when the instance comes back, the call's
    /// future was dropped mid-call (a client went away while a plugin awaited the store): the
    /// component is mid-export and cannot be entered again, so the instance is retired.
    pub in_call: bool,
}

/// The idle instances of one (plugin, tenant) and a count of the live ones.
pub struct InstancePool<B = GatewayPlugin> {
    idle: Mutex<Vec<Pooled<B>>>,
    live: AtomicUsize,
}

impl<B> Default for InstancePool<B> {
    fn default() -> Self {
        InstancePool {
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
        }
    }
}

impl<B> InstancePool<B> {
    /// An idle instance, if any.
    pub fn take_idle(&self) -> Option<Pooled<B>> {
        self.idle.lock().unwrap().pop()
    }

    /// Reserves room for a new instance when fewer than `max` are live.
    pub fn reserve(&self, max: usize) -> bool {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a reservation whose instance was never made, or an instance that was dropped.
    pub fn release(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Returns a healthy instance for reuse.
    pub fn put_back(&self, p: Pooled<B>) {
        self.idle.lock().unwrap().push(p);
    }

    /// Instances alive (idle or checked out).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Idle instances.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Drops every idle instance (on disable or unload).
    pub fn clear(&self) {
        let drained: Vec<Pooled<B>> = std::mem::take(&mut *self.idle.lock().unwrap());
        for _ in &drained {
            self.release();
        }
    }
}

/// An instance checked out by one request. Dropping it without [`Checkout::give_back`]
/// discards the instance (the right thing after a trap).
pub struct Checkout<B = GatewayPlugin> {
    pool: Arc<InstancePool<B>>,
    /// The instance.
    pub inst: Option<Pooled<B>>,
}

impl<B> Checkout<B> {
    pub(crate) fn new(pool: Arc<InstancePool<B>>, inst: Pooled<B>) -> Self {
        Checkout {
            pool,
            inst: Some(inst),
        }
    }

    /// Returns the instance to its pool, or retires it when `retire` says so.
    pub fn give_back(mut self, retire: bool) {
        if let Some(inst) = self.inst.take() {
            if retire {
                drop(inst);
                self.pool.release();
            } else {
                self.pool.put_back(inst);
            }
        }
    }
}

impl<B> Drop for Checkout<B> {
    fn drop(&mut self) {
        if self.inst.take().is_some() {
            self.pool.release();
        }
    }
}
