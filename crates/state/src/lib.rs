//! Shared state for wasmgate: one [`Store`] trait with two backends, and the GPU worker
//! registry.
//!
//! - [`MemoryStore`], the embedded default: one process, nothing to install. Sharded maps
//!   (lock-light), expiry, and a bound on the number of keys with sampled-LRU eviction.
//! - [`RedisStore`], chosen by `redis.url` (`REDIS_URL`): standalone, sentinel or cluster,
//!   shared by every replica and by the Python workers. Every operation that decides something
//!   (window hits, counters with expiry, the bounded cache index) is one command or one Lua
//!   script on the server, so replicas never race: three gateways enforce one exact limit.
//!
//! Both backends implement the same semantics, checked by one conformance suite
//! (`tests/state.rs`). Keys reach the store already namespaced: the plugin host prefixes
//! every plugin key with `gateway:<plugin>:` (see `wasmgate-plugin-host`).
//!
//! [`WorkerRegistry`] reads what Python GPU workers write (`worker:{id}:status`, `:gpu`,
//! `:heartbeat`) on an interval with `SCAN`, and keeps the active ones in memory for the
//! `workers` import and `GET /api/v1/workers`.
#![deny(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod memory;
mod redis;
mod workers;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use workers::{Worker, WorkerRegistry, WorkerRegistryOptions};

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend is down, reconnecting, or did not answer within the command timeout.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The backend refused the operation (a key holding another type, a bad argument).
    #[error("state store refused the operation: {0}")]
    Refused(String),
}

/// A store result.
pub type StoreResult<T> = Result<T, StoreError>;

/// The future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// The outcome of one rate-limit window hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowHit {
    /// Within the limit (and counted). Rejected hits are not counted.
    pub allowed: bool,
    /// Hits left in the window after this one.
    pub remaining: u64,
    /// Milliseconds until a slot frees: until the oldest counted hit leaves a sliding window,
    /// or until a fixed window ends. When the hit was rejected, the wait before retrying.
    pub reset_after_ms: u64,
}

/// How a rate-limit window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The hits of the last `window` (exact).
    Sliding,
    /// The hits since the window's first hit, until it ends.
    Fixed,
}

/// The state operations the gateway and its plugins use. Every method is atomic on the
/// backend; none is a read-modify-write from the gateway.
pub trait Store: Send + Sync + 'static {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// The value at `key`.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// The values at `keys`, in order (one round trip on Redis).
    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>>;
    /// Stores `value`, expiring after `ttl` when given.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;
    /// Adds `delta` to the integer at `key` (missing = 0) and returns the new value; `ttl`
    /// applies when this call creates the key.
    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64>;
    /// Removes `key`; true when it existed.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;

    /// One hit in a window of `window` allowing `limit` hits: `Sliding` is a sorted set of hit
    /// times under `key` (server time on Redis), `Fixed` a counter that expires `window` after
    /// its first hit. One script on Redis.
    fn window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window: Duration,
        kind: WindowKind,
    ) -> StoreFuture<'a, WindowHit>;

    /// [`Store::window_hit`] with a sliding window.
    fn sliding_window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window: Duration,
    ) -> StoreFuture<'a, WindowHit> {
        self.window_hit(key, limit, window, WindowKind::Sliding)
    }

    /// [`Store::window_hit`] with a fixed window.
    fn fixed_window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window: Duration,
    ) -> StoreFuture<'a, WindowHit> {
        self.window_hit(key, limit, window, WindowKind::Fixed)
    }

    /// Adds `member` to the set at `key`; true when it was new.
    fn set_add<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool>;
    /// Removes `member` from the set at `key`; true when it was there.
    fn set_remove<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool>;
    /// Every member of the set at `key` (unordered).
    fn set_members<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// The number of members of the set at `key`.
    fn set_card<'a>(&'a self, key: &'a str) -> StoreFuture<'a, u64>;
    /// Whether `member` is in the set at `key`.
    fn set_contains<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool>;

    /// Stores `value` at `prefix + member` for `ttl` and records `member` in the index set
    /// `index`, first evicting random members (and their entries) while the index holds
    /// `max_members` or more. Returns how many were evicted. The response cache's bounded
    /// store: entries `gateway:cache:{hash}`, index `gateway:cache:keys`.
    fn put_indexed<'a>(
        &'a self,
        index: &'a str,
        prefix: &'a str,
        member: &'a str,
        value: Vec<u8>,
        ttl: Duration,
        max_members: u64,
    ) -> StoreFuture<'a, u64>;

    /// Up to `max` keys starting with `prefix` (Redis: `SCAN MATCH`, never `KEYS`).
    fn scan_prefix<'a>(&'a self, prefix: &'a str, max: usize) -> StoreFuture<'a, Vec<String>>;

    /// A round trip to the backend.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Whether the backend is reachable, from the last operations and the background probe.
    fn health(&self) -> StoreHealth;
}

/// The backend's state as `/gateway/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `up` or `down`.
    pub status: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds since when it has been down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_since: Option<u64>,
}

impl StoreHealth {
    /// `backend` is up.
    pub fn up(backend: &'static str) -> StoreHealth {
        StoreHealth {
            backend,
            status: "up",
            error: None,
            down_since: None,
        }
    }

    /// Whether the backend is up.
    pub fn is_up(&self) -> bool {
        self.status == "up"
    }
}

/// Tracks up/down transitions (shared by the backend and its probe). A failed operation marks
/// the backend down at once; only a probe that *began* after the latest transition to down
/// marks it up again. An operation's success does not: during an outage a reply that was on
/// its way when the connection broke can arrive after another command's failure, and it
/// would flip the state back to up for a moment (seen as a flaky `/gateway/health`). Recovery
/// therefore shows within one probe interval. The common case (up, and a failure or probe
/// that changes nothing) is one atomic load; the mutex is taken only on a transition.
#[derive(Debug, Default)]
pub(crate) struct HealthCell {
    is_down: AtomicBool,
    /// Transitions to down so far: a probe that saw another count when it began is stale.
    downs: AtomicU64,
    down: Mutex<Option<(String, u64)>>,
}

impl HealthCell {
    /// Call before a probe's command; pass the result to [`HealthCell::probe_ok`].
    pub(crate) fn probe_started(&self) -> u64 {
        self.downs.load(Ordering::Acquire)
    }

    /// A probe that began at `started` ([`HealthCell::probe_started`]) succeeded: up, unless
    /// the backend went down after the probe began.
    pub(crate) fn probe_ok(&self, started: u64) {
        if !self.is_down.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.down.lock().unwrap();
        if self.downs.load(Ordering::Acquire) != started {
            return;
        }
        if let Some((error, _)) = down.take() {
            tracing::info!(previous_error = %error, "state store is back");
        }
        self.is_down.store(false, Ordering::Release);
    }

    pub(crate) fn failed(&self, error: &str) {
        if self.is_down.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.down.lock().unwrap();
        if down.is_none() {
            tracing::warn!(%error, "state store is down; plugins get `unavailable` and apply their fail policy");
            *down = Some((error.to_string(), unix_secs()));
            self.downs.fetch_add(1, Ordering::AcqRel);
        }
        self.is_down.store(true, Ordering::Release);
    }
    pub(crate) fn health(&self, backend: &'static str) -> StoreHealth {
        match &*self.down.lock().unwrap() {
            None => StoreHealth::up(backend),
            Some((error, since)) => StoreHealth {
                backend,
                status: "down",
                error: Some(error.clone()),
                down_since: Some(*since),
            },
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the store the configuration asks for: Redis when `redis.url` is set, else the
/// embedded memory store bounded to `memory_max_keys`. Redis being unreachable at startup is
/// not an error: the gateway serves degraded and the client keeps reconnecting.
pub async fn open(config: &wasmgate_config::RedisConfig) -> Result<Arc<dyn Store>, String> {
    match &config.url {
        None => Ok(Arc::new(MemoryStore::new(config.memory_max_keys))),
        Some(_) => Ok(Arc::new(RedisStore::connect(config).await?)),
    }
}

/// The store and the worker registry over it, as the gateway runs them.
#[derive(Clone)]
pub struct SharedState {
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The worker registry (refreshing in the background).
    pub workers: Arc<WorkerRegistry>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("backend", &self.store.kind())
            .finish_non_exhaustive()
    }
}

/// Opens the store `config` asks for and starts the worker registry over it.
pub async fn open_state(config: &wasmgate_config::Config) -> Result<SharedState, String> {
    let store = open(&config.redis).await?;
    let workers = WorkerRegistry::new(store.clone(), WorkerRegistryOptions::from_config(config));
    workers.start();
    Ok(SharedState { store, workers })
}

#[cfg(test)]
mod tests {
    use super::HealthCell;

    /// A probe whose reply was on its way when the store went down does not mark it up; one
    /// sent after does.
    #[test]
    fn only_a_probe_begun_after_the_failure_marks_the_store_up() {
        let h = HealthCell::default();
        assert!(h.health("redis").is_up());
        let stale = h.probe_started();
        h.failed("connection reset");
        h.probe_ok(stale);
        let health = h.health("redis");
        assert!(!health.is_up(), "a stale success is ignored");
        assert_eq!(health.error.as_deref(), Some("connection reset"));

        let fresh = h.probe_started();
        h.failed("another command failed too");
        h.probe_ok(fresh);
        assert!(
            h.health("redis").is_up(),
            "a probe begun while down brings it back"
        );

        // Down again: a probe begun in the earlier outage is stale once more.
        h.failed("gone again");
        h.probe_ok(fresh);
        assert!(!h.health("redis").is_up());
        assert_eq!(h.health("redis").error.as_deref(), Some("gone again"));
    }
}
