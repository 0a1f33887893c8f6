//! Pools of live (Store, instance) pairs, one per (plugin, tenant). A request checks an
//! instance out for its whole phase sequence and returns it after `on-log`; an instance that
//! trapped is dropped instead, and one past its use count or memory high-water mark retired.
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::Store;

use crate::bindings::GatewayPlugin;
use crate::host::HostState;
use crate::plugin::CallFailure;

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

impl<B> Pooled<B> {
    /// A new instance, not yet used.
    pub(crate) fn new(store: Store<HostState>, bindings: B) -> Self {
        Pooled {
            store,
            bindings,
            uses: 0,
            in_call: false,
        }
    }
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

/// The instance pools of one component (a plugin's, or the built-in bundle's): the shared
/// pool of requests without a tenant, reached without a lock or a hash (every request checks
/// an instance out of it when tenants are not used), and one pool per tenant (no two tenants
/// share an instance).
pub(crate) struct Pools<B> {
    shared: Arc<InstancePool<B>>,
    tenants: Mutex<HashMap<String, Arc<InstancePool<B>>>>,
}

impl<B> Default for Pools<B> {
    fn default() -> Self {
        Pools {
            shared: Arc::default(),
            tenants: Mutex::new(HashMap::new()),
        }
    }
}

impl<B> Pools<B> {
    /// The pool of `tenant` (made on first use), or the shared one.
    fn get(&self, tenant: Option<&str>) -> Arc<InstancePool<B>> {
        let Some(tenant) = tenant else {
            return self.shared.clone();
        };
        let mut pools = self.tenants.lock().unwrap();
        match pools.get(tenant) {
            Some(p) => p.clone(),
            None => pools.entry(tenant.to_string()).or_default().clone(),
        }
    }

    /// The shared pool, then every tenant's.
    fn all(&self) -> Vec<Arc<InstancePool<B>>> {
        let tenants = self.tenants.lock().unwrap();
        std::iter::once(self.shared.clone())
            .chain(tenants.values().cloned())
            .collect()
    }

    /// An idle instance of `tenant`'s pool, else a new one from `make` while fewer than `max`
    /// are live in that pool.
    pub(crate) async fn checkout(
        &self,
        tenant: Option<&str>,
        max: usize,
        make: impl AsyncFnOnce() -> Result<Pooled<B>, CallFailure>,
    ) -> Result<Checkout<B>, CallFailure> {
        let pool = self.get(tenant);
        if let Some(inst) = pool.take_idle() {
            return Ok(Checkout::new(pool, inst));
        }
        if !pool.reserve(max) {
            return Err(CallFailure::NoInstance);
        }
        match make().await {
            Ok(inst) => Ok(Checkout::new(pool, inst)),
            Err(f) => {
                pool.release();
                Err(f)
            }
        }
    }

    /// Keeps the probe instance made at load in the shared pool.
    pub(crate) fn keep_probe(&self, probe: Pooled<B>) {
        assert!(self.shared.reserve(usize::MAX));
        self.shared.put_back(probe);
    }

    /// Drops every idle instance.
    pub(crate) fn clear(&self) {
        for pool in self.all() {
            pool.clear();
        }
    }

    /// Idle instances across tenants.
    pub(crate) fn idle(&self) -> usize {
        self.all().iter().map(|p| p.idle()).sum()
    }

    /// Live instances across tenants.
    pub(crate) fn live(&self) -> usize {
        self.all().iter().map(|p| p.live()).sum()
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

impl<B> Checkout<B> {
    /// Returns the instance after a request it served: counted, and retired when its call was
    /// cut off (`in_call`), it served `max_uses` requests, or its memory grew past
    /// `high_water` bytes.
    pub(crate) fn give_back_used(mut self, max_uses: u64, high_water: usize) {
        let retire = match self.inst.as_mut() {
            Some(inst) => {
                inst.uses += 1;
                inst.in_call
                    || inst.uses >= max_uses
                    || inst.store.data().limiter.peak_bytes > high_water
            }
            None => true,
        };
        self.give_back(retire);
    }
}

impl<B> Drop for Checkout<B> {
    fn drop(&mut self) {
        if self.inst.take().is_some() {
            self.pool.release();
        }
    }
}
