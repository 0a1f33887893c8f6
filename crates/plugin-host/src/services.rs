//! Process-wide services behind the host imports: the state store (`wasmgate-state`: memory
//! or Redis), the worker registry and plugins' own metrics.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use wasmgate_state::{MemoryStore, Store, WorkerRegistry, WorkerRegistryOptions};

/// Plugins' own metrics, by plugin and name. Updating an existing series allocates nothing
/// (it is on every request of a plugin that counts).
#[derive(Debug, Default)]
pub struct PluginMetrics {
    counters: Mutex<Series<u64>>,
    histograms: Mutex<Series<(u64, f64)>>,
}

/// Plugin name → metric name → value.
type Series<V> = HashMap<String, HashMap<String, V>>;

/// Metric names plugins may use: `[a-z0-9_]{1,64}` (anything else is dropped).
fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The series `(plugin, name)` of `map`, created on first use.
fn series<'m, V: Default>(map: &'m mut Series<V>, plugin: &str, name: &str) -> &'m mut V {
    if !map.contains_key(plugin) {
        map.insert(plugin.to_string(), HashMap::new());
    }
    let by_name = map.get_mut(plugin).expect("inserted");
    if !by_name.contains_key(name) {
        by_name.insert(name.to_string(), V::default());
    }
    by_name.get_mut(name).expect("inserted")
}

impl PluginMetrics {
    /// Adds to a counter.
    pub fn counter_add(&self, plugin: &str, name: &str, value: u64) {
        if valid_metric_name(name) {
            *series(&mut self.counters.lock().unwrap(), plugin, name) += value;
        }
    }
    /// Records a histogram observation (count and sum kept).
    pub fn observe(&self, plugin: &str, name: &str, value: f64) {
        if valid_metric_name(name) && value.is_finite() {
            let mut h = self.histograms.lock().unwrap();
            let e = series(&mut h, plugin, name);
            e.0 += 1;
            e.1 += value;
        }
    }
    /// Every counter: `(plugin, name, value)`, sorted.
    pub fn counters(&self) -> Vec<(String, String, u64)> {
        let c = self.counters.lock().unwrap();
        let mut out: Vec<_> = c
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(n, v)| (p.clone(), n.clone(), *v)))
            .collect();
        out.sort();
        out
    }
    /// Every histogram: `(plugin, name, count, sum)`, sorted.
    pub fn histograms(&self) -> Vec<(String, String, u64, f64)> {
        let h = self.histograms.lock().unwrap();
        let mut out: Vec<_> = h
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(n, v)| (p.clone(), n.clone(), v.0, v.1)))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
    /// A counter's value.
    pub fn counter(&self, plugin: &str, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(plugin)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0)
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
