//! Process-wide services behind the host imports: key-value state, the worker registry and
//! plugins' own metrics. Key-value state is a trait so the state issue can put Redis behind it;
//! [`MemoryKv`] is the embedded implementation.
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A key-value failure the plugin sees as `unavailable`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    /// The backend is down or timed out.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// A sliding-window decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowHit {
    /// Counted and within the limit.
    pub allowed: bool,
    /// Hits left.
    pub remaining: u64,
    /// Milliseconds until a hit is allowed again (0 when allowed).
    pub reset_after_ms: u64,
}

/// A boxed future of a key-value call.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// The key-value backend the `kv` import uses. Keys arrive already namespaced.
pub trait KvBackend: Send + Sync {
    /// The value at `key`.
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    /// Stores a value with an optional expiry.
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl_ms: Option<u64>) -> KvFuture<'a, ()>;
    /// Adds `delta` atomically; the expiry applies when the key is created.
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl_ms: Option<u64>) -> KvFuture<'a, i64>;
    /// Removes a key.
    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, bool>;
    /// One atomic sliding-window hit.
    fn window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window_ms: u64,
    ) -> KvFuture<'a, WindowHit>;
}

enum Entry {
    Bytes(Vec<u8>, Option<Instant>),
    Window(VecDeque<Instant>),
}

/// The embedded key-value store: one process, expiry on read.
#[derive(Default)]
pub struct MemoryKv {
    map: Mutex<HashMap<String, Entry>>,
}

impl MemoryKv {
    /// Every live key (for tests and debugging).
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let map = self.map.lock().unwrap();
        let mut keys: Vec<String> = map
            .iter()
            .filter(|(_, e)| !matches!(e, Entry::Bytes(_, Some(exp)) if *exp <= now))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    fn live<'m>(map: &'m mut HashMap<String, Entry>, key: &str) -> Option<&'m mut Entry> {
        let expired =
            matches!(map.get(key), Some(Entry::Bytes(_, Some(exp))) if *exp <= Instant::now());
        if expired {
            map.remove(key);
        }
        map.get_mut(key)
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T, KvError>) -> KvFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

fn expiry(ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| Instant::now() + Duration::from_millis(ms))
}

impl KvBackend for MemoryKv {
    fn get<'a>(&'a self, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let mut map = self.map.lock().unwrap();
        ready(Ok(match Self::live(&mut map, key) {
            Some(Entry::Bytes(v, _)) => Some(v.clone()),
            _ => None,
        }))
    }
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl_ms: Option<u64>) -> KvFuture<'a, ()> {
        self.map
            .lock()
            .unwrap()
            .insert(key.to_string(), Entry::Bytes(value, expiry(ttl_ms)));
        ready(Ok(()))
    }
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl_ms: Option<u64>) -> KvFuture<'a, i64> {
        let mut map = self.map.lock().unwrap();
        let current = match Self::live(&mut map, key) {
            Some(Entry::Bytes(v, exp)) => {
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0);
                (n, *exp)
            }
            _ => (0, expiry(ttl_ms)),
        };
        let next = current.0.saturating_add(delta);
        map.insert(
            key.to_string(),
            Entry::Bytes(next.to_string().into_bytes(), current.1),
        );
        ready(Ok(next))
    }
    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, bool> {
        ready(Ok(self.map.lock().unwrap().remove(key).is_some()))
    }
    fn window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window_ms: u64,
    ) -> KvFuture<'a, WindowHit> {
        let now = Instant::now();
        let window = Duration::from_millis(window_ms);
        let mut map = self.map.lock().unwrap();
        let entry = map
            .entry(key.to_string())
            .or_insert_with(|| Entry::Window(VecDeque::new()));
        if !matches!(entry, Entry::Window(_)) {
            *entry = Entry::Window(VecDeque::new());
        }
        let Entry::Window(hits) = entry else {
            unreachable!()
        };
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            hits.pop_front();
        }
        let hit = if (hits.len() as u64) < limit {
            hits.push_back(now);
            WindowHit {
                allowed: true,
                remaining: limit - hits.len() as u64,
                reset_after_ms: 0,
            }
        } else {
            let oldest = *hits.front().expect("a full window has hits");
            WindowHit {
                allowed: false,
                remaining: 0,
                reset_after_ms: (window.saturating_sub(now.duration_since(oldest))).as_millis()
                    as u64,
            }
        };
        ready(Ok(hit))
    }
}

/// One active GPU worker as plugins see it.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Reported status.
    pub status: String,
    /// Region, when reported.
    pub region: Option<String>,
    /// GPU report as JSON.
    pub gpu_json: Option<String>,
    /// Milliseconds since the last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// Where the `workers` import reads from (the state issue feeds it from Redis heartbeats).
pub trait WorkerSource: Send + Sync {
    /// The active workers.
    fn active(&self) -> Vec<WorkerInfo>;
}

/// No workers (in-memory mode without a simulator).
#[derive(Debug, Default)]
pub struct NoWorkers;

impl WorkerSource for NoWorkers {
    fn active(&self) -> Vec<WorkerInfo> {
        Vec::new()
    }
}

/// Plugins' own metrics, by plugin and name.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    counters: Mutex<HashMap<(String, String), u64>>,
    histograms: Mutex<HashMap<(String, String), (u64, f64)>>,
}

/// Metric names plugins may use: `[a-z0-9_]{1,64}` (anything else is dropped).
fn valid_metric_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl PluginMetrics {
    /// Adds to a counter.
    pub fn counter_add(&self, plugin: &str, name: &str, value: u64) {
        if valid_metric_name(name) {
            *self
                .counters
                .lock()
                .unwrap()
                .entry((plugin.to_string(), name.to_string()))
                .or_default() += value;
        }
    }
    /// Records a histogram observation (count and sum kept).
    pub fn observe(&self, plugin: &str, name: &str, value: f64) {
        if valid_metric_name(name) && value.is_finite() {
            let mut h = self.histograms.lock().unwrap();
            let e = h.entry((plugin.to_string(), name.to_string())).or_default();
            e.0 += 1;
            e.1 += value;
        }
    }
    /// A counter's value.
    pub fn counter(&self, plugin: &str, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(&(plugin.to_string(), name.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// Everything the host imports need besides the request.
pub struct HostServices {
    /// Key-value state.
    pub kv: Arc<dyn KvBackend>,
    /// The worker registry.
    pub workers: Arc<dyn WorkerSource>,
    /// Plugins' own metrics.
    pub metrics: PluginMetrics,
    /// Prefix of every key (`gateway:`).
    pub key_prefix: String,
}

impl HostServices {
    /// In-memory state, no workers.
    pub fn in_memory(key_prefix: &str) -> (Arc<HostServices>, Arc<MemoryKv>) {
        let kv = Arc::new(MemoryKv::default());
        let services = Arc::new(HostServices {
            kv: kv.clone(),
            workers: Arc::new(NoWorkers),
            metrics: PluginMetrics::default(),
            key_prefix: key_prefix.to_string(),
        });
        (services, kv)
    }
}

/// Nanoseconds since the first call (a monotonic clock for plugins).
pub fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_kv_expiry_incr_and_windows() {
        let kv = MemoryKv::default();
        kv.set("a", b"1".to_vec(), Some(30)).await.unwrap();
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.incr("a", 2, None).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(kv.get("a").await.unwrap(), None, "expired");
        assert_eq!(kv.incr("n", 5, None).await.unwrap(), 5);
        assert!(kv.delete("n").await.unwrap());
        assert!(!kv.delete("n").await.unwrap());
        for i in 0..3 {
            let h = kv.window_hit("w", 3, 60_000).await.unwrap();
            assert!(h.allowed);
            assert_eq!(h.remaining, 2 - i);
        }
        let h = kv.window_hit("w", 3, 60_000).await.unwrap();
        assert!(!h.allowed);
        assert!(h.reset_after_ms > 59_000);
    }
}
