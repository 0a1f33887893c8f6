//! Process-wide services behind the host imports: the state store (`wasmgate-state`: memory
//! or Redis), the worker registry and plugins' own metrics.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use wasmgate_state::{MemoryStore, Store, WorkerRegistry, WorkerRegistryOptions};

/// Plugins' own metrics, by plugin and name. A plugin's instances hold its series
/// ([`PluginSeries`], through their grants), so counting on a request takes no lookup by
/// plugin name, no hashing and no allocation once the series exists.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    plugins: RwLock<HashMap<String, Arc<PluginSeries>>>,
}

/// One plugin's counters and histograms (count and sum). A plugin has a handful of names: a
/// list searched in order is faster than a hash map.
#[derive(Debug, Default)]
pub struct PluginSeries {
    counters: RwLock<Vec<(String, AtomicU64)>>,
    histograms: Mutex<Vec<(String, u64, f64)>>,
}

/// Metric names plugins may use: `[a-z0-9_]{1,64}` (anything else is dropped).
fn valid_metric_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

impl PluginSeries {
    /// Adds to a counter (created on first use; a name that is not `[a-z0-9_]{1,64}` is
    /// dropped). The name is bytes: a bundle member's comes straight from its packed effects,
    /// and only a new one needs checking.
    pub fn counter_add(&self, name: &[u8], value: u64) {
        if let Some((_, c)) = self
            .counters
            .read()
            .unwrap()
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
        {
            c.fetch_add(value, Ordering::Relaxed);
            return;
        }
        if !valid_metric_name(name) {
            return;
        }
        // Valid names are ASCII.
        let name = String::from_utf8_lossy(name);
        let mut counters = self.counters.write().unwrap();
        match counters.iter().find(|(n, _)| *n == name) {
            Some((_, c)) => {
                c.fetch_add(value, Ordering::Relaxed);
            }
            None => counters.push((name.into_owned(), AtomicU64::new(value))),
        }
    }

    /// A counter's value.
    pub fn counter(&self, name: &str) -> u64 {
        let c = self.counters.read().unwrap();
        c.iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v.load(Ordering::Relaxed))
    }

    /// Records a histogram observation.
    pub fn observe(&self, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut h = self.histograms.lock().unwrap();
        match h.iter_mut().find(|(n, _, _)| n == name) {
            Some(e) => {
                e.1 += 1;
                e.2 += value;
            }
            None if valid_metric_name(name.as_bytes()) => h.push((name.to_string(), 1, value)),
            None => {}
        }
    }
}

impl PluginMetrics {
    /// The series of `plugin` (created on first use).
    pub fn series(&self, plugin: &str) -> Arc<PluginSeries> {
        if let Some(s) = self.plugins.read().unwrap().get(plugin) {
            return s.clone();
        }
        self.plugins
            .write()
            .unwrap()
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }
    /// Adds to a counter.
    pub fn counter_add(&self, plugin: &str, name: &str, value: u64) {
        self.series(plugin).counter_add(name.as_bytes(), value);
    }
    /// Records a histogram observation (count and sum kept).
    pub fn observe(&self, plugin: &str, name: &str, value: f64) {
        self.series(plugin).observe(name, value);
    }
    /// Every counter: `(plugin, name, value)`, sorted.
    pub fn counters(&self) -> Vec<(String, String, u64)> {
        let plugins = self.plugins.read().unwrap();
        let mut out: Vec<_> = plugins
            .iter()
            .flat_map(|(p, s)| {
                let c = s.counters.read().unwrap();
                c.iter()
                    .map(|(n, v)| (p.clone(), n.clone(), v.load(Ordering::Relaxed)))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }
    /// Every histogram: `(plugin, name, count, sum)`, sorted.
    pub fn histograms(&self) -> Vec<(String, String, u64, f64)> {
        let plugins = self.plugins.read().unwrap();
        let mut out: Vec<_> = plugins
            .iter()
            .flat_map(|(p, s)| {
                let h = s.histograms.lock().unwrap();
                h.iter()
                    .map(|(n, c, sum)| (p.clone(), n.clone(), *c, *sum))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
    /// A counter's value.
    pub fn counter(&self, plugin: &str, name: &str) -> u64 {
        let plugins = self.plugins.read().unwrap();
        plugins.get(plugin).map_or(0, |s| s.counter(name))
    }
}

/// Everything the host imports need besides the request.
pub struct HostServices {
    /// Key-value state (keys arrive namespaced).
    pub store: Arc<dyn Store>,
    /// The worker registry.
    pub workers: Arc<WorkerRegistry>,
    /// Plugins' own metrics.
    pub metrics: PluginMetrics,
    /// Prefix of every key the gateway writes (`gateway:`).
    pub key_prefix: String,
}

impl HostServices {
    /// Services over `store` and `workers`.
    pub fn new(
        store: Arc<dyn Store>,
        workers: Arc<WorkerRegistry>,
        key_prefix: &str,
    ) -> Arc<HostServices> {
        Arc::new(HostServices {
            store,
            workers,
            metrics: PluginMetrics::default(),
            key_prefix: key_prefix.to_string(),
        })
    }

    /// Services over the gateway's shared state.
    pub fn from_state(state: &wasmgate_state::SharedState, key_prefix: &str) -> Arc<HostServices> {
        HostServices::new(state.store.clone(), state.workers.clone(), key_prefix)
    }

    /// An embedded memory store and a registry over it (empty until something writes
    /// `worker:*` keys into it); the store is returned too, for tests.
    pub fn in_memory(key_prefix: &str) -> (Arc<HostServices>, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new(100_000));
        let workers = WorkerRegistry::new(
            store.clone(),
            WorkerRegistryOptions {
                key_prefix: "worker:".into(),
                refresh: std::time::Duration::from_secs(10),
                max_age: std::time::Duration::from_secs(30),
            },
        );
        (HostServices::new(store.clone(), workers, key_prefix), store)
    }
}

/// Nanoseconds since the first call (a monotonic clock for plugins).
pub fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
