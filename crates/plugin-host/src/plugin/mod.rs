//! A loaded plugin: its compiled component, settings, per-tenant instance pools, statistics
//! and state (active, disabled by an operator, or failed: disabled after repeated traps). The
//! types that describe it (source, phases, state, failures, statistics) are in `status.rs`.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use crate::bindings::{GatewayPlugin, GatewayPluginPre, PluginInfo};
use crate::bundle::Bundle;
use crate::engine::{PluginEngine, EPOCH_TICK};
use crate::host::{Grants, HostState};
use crate::pool::{Checkout, Pooled, Pools};
use crate::services::HostServices;
use crate::settings::{FailPolicy, PluginSettings};
use crate::{PluginError, Result};

mod status;

pub use status::{CallFailure, Phases, PluginSource, PluginState, PluginStats};

/// A plugin ready to run.
pub struct LoadedPlugin {
    /// Name (from `init`).
    pub name: String,
    /// Version (from `init`).
    pub version: String,
    /// Where it came from.
    pub source: PluginSource,
    /// sha256 of the wasm.
    pub sha256: String,
    /// Implemented phases.
    pub phases: Phases,
    /// Capabilities requested by the plugin and granted by the operator.
    pub granted: Vec<String>,
    /// Capabilities requested but not granted.
    pub refused: Vec<String>,
    /// Settings (budgets, policy, config, where it applies).
    pub settings: PluginSettings,
    /// Whether the compiled code came from the disk cache.
    pub from_cache: bool,
    /// Statistics.
    pub stats: PluginStats,
    runner: Runner,
    state: AtomicU8,
    failure: Mutex<Option<String>>,
    recent_traps: Mutex<VecDeque<Instant>>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Traps within this window count towards automatic disabling.
const TRAP_WINDOW: Duration = Duration::from_secs(60);

/// What runs a plugin's calls.
enum Runner {
    /// Its own component, with its own instances.
    Component(ComponentRunner),
    /// Member `index` of a built-in bundle: the bundle's instances run it, together with the
    /// other members next to it in a chain (`crate::bundle`).
    Member { bundle: Arc<Bundle>, index: u32 },
}

/// A plugin's own component and instances.
struct ComponentRunner {
    pre: GatewayPluginPre<HostState>,
    engine: wasmtime::Engine,
    services: Arc<HostServices>,
    pools: Pools<GatewayPlugin>,
}

/// A new store for an instance: the memory cap, and a CPU deadline of `ticks` epochs at
/// which time spent waiting on the state store is given back (the budget bounds the plugin's
/// own work, not a slow Redis, whose calls have their own timeout).
pub(crate) fn new_store(
    engine: &wasmtime::Engine,
    state: HostState,
    ticks: u64,
) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_callback(|mut ctx| {
        let waited = std::mem::take(&mut ctx.data_mut().io_wait);
        let ticks = (waited.as_micros() as u64).div_ceil(EPOCH_TICK.as_micros() as u64);
        Ok(if ticks > 0 {
            wasmtime::UpdateDeadline::Continue(ticks)
        } else {
            wasmtime::UpdateDeadline::Interrupt
        })
    });
    store
}

/// Epoch ticks of a CPU budget in milliseconds (at least one).
pub(crate) fn budget_ticks(cpu_budget_ms: u64) -> u64 {
    (cpu_budget_ms * 1000)
        .div_ceil(EPOCH_TICK.as_micros() as u64)
        .max(1)
}

/// What a plugin's `init` said, checked against the operator's settings.
pub(crate) struct Adopted {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) phases: Phases,
    pub(crate) granted: Vec<String>,
    pub(crate) refused: Vec<String>,
}

/// Checks a plugin's `init` answer: a valid name, known capabilities (granted when the
/// operator allows them).
pub(crate) fn adopt(info: PluginInfo, settings: &PluginSettings) -> Result<Adopted> {
    let valid_name = !info.name.is_empty()
        && info.name.len() <= 64
        && info
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_name {
        return Err(PluginError::Init(format!(
            "plugin name `{}` must be 1-64 of [a-z0-9-]",
            info.name
        )));
    }
    let (mut granted, mut refused) = (Vec::new(), Vec::new());
    let mut buffer_request_body = false;
    for cap in &info.capabilities {
        // Costs memory (bounded by `server.max_body_bytes`) and latency, grants no access:
        // needs no operator grant.
        if cap == "buffer-request-body" {
            buffer_request_body = true;
            continue;
        }
        if !["kv", "workers", "metrics"].contains(&cap.as_str()) {
            return Err(PluginError::Init(format!("unknown capability `{cap}`")));
        }
        if settings.grants.iter().any(|g| g == cap) {
            granted.push(cap.clone());
        } else {
            refused.push(cap.clone());
        }
    }
    let mut phases = Phases::from_wit(&info.phases);
    phases.buffer_request_body = buffer_request_body && phases.request_body;
    Ok(Adopted {
        name: info.name,
        version: info.version,
        phases,
        granted,
        refused,
    })
}

impl LoadedPlugin {
    /// Compiles, links and initializes a plugin; any failure is the reason it is refused.
    pub async fn load(
        engine: &PluginEngine,
        services: Arc<HostServices>,
        source: PluginSource,
        wasm: &[u8],
        settings: PluginSettings,
    ) -> Result<LoadedPlugin> {
        let sha256 = crate::engine::sha256_hex(wasm);
        let (component, from_cache): (Component, bool) = engine.compile(wasm)?;
        // The host links what only its own built-in bundle may import: a plugin that imports
        // it does not implement the gateway-plugin world.
        if let Some((name, _)) = component
            .component_type()
            .imports(&engine.engine)
            .find(|(name, _)| name.starts_with(crate::bundle::INTERFACE))
        {
            return Err(PluginError::World(format!(
                "imports `{name}`, which only wasmgate's built-in bundle may use"
            )));
        }
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::World(format!("{e:#}")))?;
        let pre = GatewayPluginPre::new(pre).map_err(|e| PluginError::World(format!("{e:#}")))?;
        let mut plugin = LoadedPlugin {
            name: String::new(),
            version: String::new(),
            source,
            sha256,
            phases: Phases::default(),
            granted: Vec::new(),
            refused: Vec::new(),
            settings,
            from_cache,
            stats: PluginStats::default(),
            runner: Runner::Component(ComponentRunner {
                pre,
                engine: engine.engine.clone(),
                services,
                pools: Pools::default(),
            }),
            state: AtomicU8::new(0),
            failure: Mutex::new(None),
            recent_traps: Mutex::new(VecDeque::new()),
        };
        // A probe instance: `init` must succeed, and its answer defines the plugin.
        let (mut probe, info) = plugin.instantiate(None).await.map_err(|e| match e {
            InstantiateError::Init(m) => PluginError::Init(m),
            InstantiateError::Wasm(m) => PluginError::Init(m),
        })?;
        let a = adopt(info, &plugin.settings)?;
        (plugin.name, plugin.version, plugin.phases) = (a.name, a.version, a.phases);
        (plugin.granted, plugin.refused) = (a.granted, a.refused);
        let Runner::Component(c) = &plugin.runner else {
            unreachable!("made above")
        };
        // The probe was made before its name and grants were known: give it the real ones.
        probe.store.data_mut().grants = Arc::new(Grants::new(
            &plugin.name,
            None,
            &c.services,
            &plugin.granted,
            &plugin.settings,
        ));
        c.pools.keep_probe(probe);
        Ok(plugin)
    }

    /// A member of a built-in bundle (made by [`Bundle::load`]).
    pub(crate) fn member(
        bundle: Arc<Bundle>,
        index: u32,
        adopted: Adopted,
        settings: PluginSettings,
    ) -> LoadedPlugin {
        LoadedPlugin {
            name: adopted.name,
            version: adopted.version,
            source: PluginSource::Builtin,
            sha256: bundle.sha256.clone(),
            phases: adopted.phases,
            granted: adopted.granted,
            refused: adopted.refused,
            settings,
            from_cache: bundle.from_cache,
            stats: PluginStats::default(),
            runner: Runner::Member { bundle, index },
            state: AtomicU8::new(0),
            failure: Mutex::new(None),
            recent_traps: Mutex::new(VecDeque::new()),
        }
    }

    /// The bundle this plugin is a member of, and its index there.
    pub fn bundle_member(&self) -> Option<(&Arc<Bundle>, u32)> {
        match &self.runner {
            Runner::Member { bundle, index } => Some((bundle, *index)),
            Runner::Component(_) => None,
        }
    }

    fn component(&self) -> Option<&ComponentRunner> {
        match &self.runner {
            Runner::Component(c) => Some(c),
            Runner::Member { .. } => None,
        }
    }

    /// Every pool of this plugin's instances: the shared one, then the tenants' (a bundle
    /// member's are its bundle's, shared with the other members).
    fn clear_pools(&self) {
        match &self.runner {
            Runner::Component(c) => c.pools.clear(),
            Runner::Member { bundle, .. } => bundle.pools.clear(),
        }
    }

    fn budget_ticks(&self) -> u64 {
        budget_ticks(self.settings.cpu_budget_ms)
    }

    async fn instantiate(
        &self,
        tenant: Option<&str>,
    ) -> std::result::Result<(Pooled, PluginInfo), InstantiateError> {
        let Some(c) = self.component() else {
            return Err(InstantiateError::Wasm(
                "a bundle member runs in its bundle's instances".into(),
            ));
        };
        let name = if self.name.is_empty() {
            "(loading)"
        } else {
            &self.name
        };
        let grants = Arc::new(Grants::new(
            name,
            tenant,
            &c.services,
            &self.granted,
            &self.settings,
        ));
        // Instantiation and init get 10 budgets.
        let mut store = new_store(
            &c.engine,
            HostState::new(grants, c.services.clone(), self.settings.memory_bytes),
            self.budget_ticks() * 10,
        );
        let bindings = c
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| InstantiateError::Wasm(format!("instantiation failed: {e:#}")))?;
        let info = bindings
            .call_init(&mut store, &self.settings.config_json)
            .await
            .map_err(|e| InstantiateError::Wasm(format!("init trapped: {e:#}")))?
            .map_err(InstantiateError::Init)?;
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        Ok((Pooled::new(store, bindings), info))
    }

    /// Checks out an instance for a request of `tenant`.
    pub async fn checkout(
        &self,
        tenant: Option<&str>,
    ) -> std::result::Result<Checkout, CallFailure> {
        if self.state() != PluginState::Active {
            return Err(CallFailure::Inactive);
        }
        let Some(c) = self.component() else {
            return Err(CallFailure::Trap(
                "a bundle member runs in its bundle's instances".into(),
            ));
        };
        let make = async || match self.instantiate(tenant).await {
            Ok((inst, info)) if info.name == self.name => Ok(inst),
            Ok((_, info)) => Err(self.record_failure(CallFailure::Trap(format!(
                "init now says name `{}`",
                info.name
            )))),
            Err(InstantiateError::Init(m) | InstantiateError::Wasm(m)) => {
                Err(self.record_failure(CallFailure::Trap(m)))
            }
        };
        c.pools
            .checkout(tenant, self.settings.max_instances, make)
            .await
    }

    /// Runs one export on a checked-out instance: the request state is moved into the store
    /// and back out (never copied), the CPU deadline is armed, and the outcome is classified and
    /// counted. After an `Err` the instance must be dropped.
    pub async fn call_with_state<T>(
        &self,
        inst: &mut Pooled,
        state: &mut Box<crate::host::RequestState>,
        call: impl AsyncFnOnce(
            &crate::bindings::GatewayPlugin,
            &mut Store<HostState>,
        ) -> wasmtime::Result<T>,
    ) -> std::result::Result<T, CallFailure> {
        std::mem::swap(&mut inst.store.data_mut().req, state);
        self.arm(inst);
        let started = Instant::now();
        inst.in_call = true;
        let r = call(&inst.bindings, &mut inst.store).await;
        inst.in_call = false;
        std::mem::swap(&mut inst.store.data_mut().req, state);
        self.finish_call(inst, started, r)
    }

    /// Runs `on-request-headers` on a checked-out instance: the single call the request path
    /// makes per plugin (and the benchmarks measure).
    pub async fn call_request_headers(
        &self,
        inst: &mut Pooled,
        state: &mut Box<crate::host::RequestState>,
    ) -> std::result::Result<crate::bindings::wasmgate::plugin::types::Action, CallFailure> {
        self.call_with_state(inst, state, async |b, s| b.call_on_request_headers(s).await)
            .await
    }

    /// Prepares a call: the CPU deadline.
    pub(crate) fn arm(&self, inst: &mut Pooled) {
        inst.store.set_epoch_deadline(self.budget_ticks());
        inst.store.data_mut().io_wait = std::time::Duration::ZERO;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// Classifies a call's outcome and updates the statistics.
    pub(crate) fn finish_call<T>(
        &self,
        inst: &Pooled,
        started: Instant,
        r: wasmtime::Result<T>,
    ) -> std::result::Result<T, CallFailure> {
        self.stats.record_duration(started.elapsed());
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.record_failure(classify(&e, inst.store.data()))),
        }
    }

    pub(crate) fn record_failure(&self, f: CallFailure) -> CallFailure {
        self.stats.traps.fetch_add(1, Ordering::Relaxed);
        match f {
            CallFailure::CpuBudget => self.stats.cpu_kills.fetch_add(1, Ordering::Relaxed),
            CallFailure::Memory => self.stats.memory_kills.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        tracing::warn!(plugin = %self.name, failure = %f, "plugin call failed; its instance is replaced");
        let now = Instant::now();
        let mut recent = self.recent_traps.lock().unwrap();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > TRAP_WINDOW)
        {
            recent.pop_front();
        }
        let limit = self.settings.disable_after_traps;
        if limit > 0 && recent.len() as u32 >= limit && self.state() == PluginState::Active {
            let reason = format!(
                "disabled after {} traps within {}s; last: {f}",
                recent.len(),
                TRAP_WINDOW.as_secs()
            );
            tracing::error!(plugin = %self.name, %reason, "plugin disabled automatically");
            *self.failure.lock().unwrap() = Some(reason);
            self.state.store(2, Ordering::Release);
            self.clear_pools();
        }
        f
    }

    /// The state.
    pub fn state(&self) -> PluginState {
        match self.state.load(Ordering::Acquire) {
            0 => PluginState::Active,
            1 => PluginState::Disabled,
            _ => PluginState::Failed,
        }
    }

    /// Why the plugin failed, when it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    /// Turns the plugin on (clearing a failure) or off.
    pub fn set_enabled(&self, on: bool) {
        if on {
            self.recent_traps.lock().unwrap().clear();
            *self.failure.lock().unwrap() = None;
            self.state.store(0, Ordering::Release);
        } else {
            self.state.store(1, Ordering::Release);
            self.clear_pools();
        }
    }

    /// Drops the idle instances so later requests get fresh ones.
    pub fn recycle(&self) {
        self.clear_pools();
    }

    /// Idle instances across tenants (a bundle member's: its bundle's).
    pub fn idle_instances(&self) -> usize {
        match &self.runner {
            Runner::Component(c) => c.pools.idle(),
            Runner::Member { bundle, .. } => bundle.pools.idle(),
        }
    }

    /// Live instances across tenants (a bundle member's: its bundle's).
    pub fn live_instances(&self) -> usize {
        match &self.runner {
            Runner::Component(c) => c.pools.live(),
            Runner::Member { bundle, .. } => bundle.pools.live(),
        }
    }

    /// What to do when a call fails.
    pub fn fail_policy(&self) -> FailPolicy {
        self.settings.fail_policy
    }
}

/// What a failed call was: a blown CPU budget, a refused memory growth, or another trap.
pub(crate) fn classify(e: &wasmtime::Error, state: &HostState) -> CallFailure {
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        CallFailure::CpuBudget
    } else if state.limiter.refused {
        CallFailure::Memory
    } else {
        CallFailure::Trap(format!("{e:#}"))
    }
}

enum InstantiateError {
    Init(String),
    Wasm(String),
}
