//! The embedded store: sharded maps behind short mutexes, lazy expiry, and a bound on the
//! number of keys (expired keys go first, then the least recently used of a small sample, as
//! Redis's `allkeys-lru` does). Keys are hashed with foldhash, seeded per process: keys carry
//! what clients send (identities, addresses), so the hash must not be predictable, and SipHash
//! costs several times more on a rate-limit key.
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Store, StoreError, StoreFuture, StoreHealth, StoreResult, WindowHit, WindowKind};

const SHARDS: usize = 16;
/// Keys looked at to choose an eviction victim.
const EVICTION_SAMPLE: usize = 8;
/// A full shard sweeps expired keys at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

enum Value {
    Bytes(Vec<u8>),
    Set(HashSet<String>),
    /// Sliding-window hit times, oldest first.
    Hits(VecDeque<Instant>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "string",
            Value::Set(_) => "set",
            Value::Hits(_) => "window",
        }
    }
}

struct Entry {
    value: Value,
    expires: Option<Instant>,
    touched: u64,
}

/// foldhash, seeded once per process.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry, Hasher>,
    last_sweep: Option<Instant>,
}

/// The embedded in-memory store (one process; the default when `REDIS_URL` is unset).
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: Hasher,
    per_shard: usize,
    clock: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_keys", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

fn wrong_type(key: &str, found: &Value, wanted: &str) -> StoreError {
    StoreError::Refused(format!(
        "key `{key}` holds a {}, not a {wanted}",
        found.kind()
    ))
}

fn deadline(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|t| Instant::now() + t)
}

fn ms_ceil(d: Duration) -> u64 {
    d.as_micros().div_ceil(1000) as u64
}

fn ready<'a, T: Send + 'a>(v: StoreResult<T>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl MemoryStore {
    /// A store holding at most `max_keys` keys (rounded up to a multiple of the shard count).
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Hasher::default(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            clock: AtomicU64::new(0),
        }
    }

    /// Every live key, sorted (for tests and debugging).
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let mut keys: Vec<String> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.lock().unwrap();
                s.map
                    .iter()
                    .filter(|(_, e)| e.expires.is_none_or(|x| x > now))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        keys
    }

    /// Runs `f` on the live entry at `key` (expired entries are removed first) with its shard
    /// locked. `f` may insert or remove the key.
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Shard, u64) -> T) -> T {
        self.with_at(key, None, f)
    }

    /// [`MemoryStore::with`] at `now` (read from the clock only when needed when `None`).
    fn with_at<T>(
        &self,
        key: &str,
        now: Option<Instant>,
        f: impl FnOnce(&mut Shard, u64) -> T,
    ) -> T {
        let idx = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = self.shards[idx].lock().unwrap();
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        // One lookup: touch the entry, or find it expired.
        let expired = match shard.map.get_mut(key) {
            Some(e)
                if e.expires
                    .is_some_and(|x| x <= now.unwrap_or_else(Instant::now)) =>
            {
                true
            }
            Some(e) => {
                e.touched = tick;
                false
            }
            None => false,
        };
        if expired {
            shard.map.remove(key);
        }
        f(&mut shard, tick)
    }

    fn insert(&self, shard: &mut Shard, key: &str, entry: Entry) {
        if !shard.map.contains_key(key) && shard.map.len() >= self.per_shard {
            shard.make_room(self.per_shard);
        }
        shard.map.insert(key.to_string(), entry);
    }

    /// The live entry at `key`, created (with no expiry) from `empty` when missing.
    fn entry_or_insert<'s>(
        &self,
        shard: &'s mut Shard,
        key: &str,
        tick: u64,
        empty: impl FnOnce() -> Value,
    ) -> &'s mut Entry {
        if !shard.map.contains_key(key) {
            let entry = Entry {
                value: empty(),
                expires: None,
                touched: tick,
            };
            self.insert(shard, key, entry);
        }
        shard.map.get_mut(key).expect("present")
    }

    /// Reads the set at `key` (`None` when missing).
    fn read_set<T>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&HashSet<String>>) -> T,
    ) -> StoreResult<T> {
        self.with(key, |s, _| match s.map.get(key).map(|e| &e.value) {
            None => Ok(f(None)),
            Some(Value::Set(set)) => Ok(f(Some(set))),
            Some(other) => Err(wrong_type(key, other, "set")),
        })
    }

    fn get_now(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.with(key, |s, _| match s.map.get(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(other) => Err(wrong_type(key, other, "string")),
        })
    }

    fn hit(
        &self,
        key: &str,
        limit: u64,
        window: Duration,
        kind: WindowKind,
    ) -> StoreResult<WindowHit> {
        let now = Instant::now();
        self.with_at(key, Some(now), |s, tick| {
            if kind == WindowKind::Sliding {
                let entry = self.entry_or_insert(s, key, tick, || Value::Hits(VecDeque::new()));
                let Value::Hits(hits) = &mut entry.value else {
                    return Err(wrong_type(key, &entry.value, "window"));
                };
                while hits
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= window)
                {
                    hits.pop_front();
                }
                let allowed = (hits.len() as u64) < limit;
                if allowed {
                    hits.push_back(now);
                    entry.expires = Some(now + window);
                }
                let count = hits.len() as u64;
                let reset = match hits.front() {
                    Some(oldest) => ms_ceil((*oldest + window).saturating_duration_since(now)),
                    None => ms_ceil(window),
                };
                if hits.is_empty() {
                    s.map.remove(key);
                }
                Ok(WindowHit {
                    allowed,
                    remaining: limit.saturating_sub(count),
                    reset_after_ms: reset,
                })
            } else {
                let (count, expires) = match s.map.get(key) {
                    None => (0, now + window),
                    Some(Entry {
                        value: Value::Bytes(b),
                        expires,
                        ..
                    }) => (
                        parse_int(key, b)?.max(0) as u64,
                        expires.unwrap_or(now + window),
                    ),
                    Some(e) => return Err(wrong_type(key, &e.value, "counter")),
                };
                let allowed = count < limit;
                let count = if allowed { count + 1 } else { count };
                if allowed {
                    let entry = Entry {
                        value: Value::Bytes(count.to_string().into_bytes()),
                        expires: Some(expires),
                        touched: tick,
                    };
                    self.insert(s, key, entry);
                }
                Ok(WindowHit {
                    allowed,
                    remaining: limit.saturating_sub(count),
                    reset_after_ms: ms_ceil(expires.saturating_duration_since(now)),
                })
            }
        })
    }
}

fn parse_int(key: &str, b: &[u8]) -> StoreResult<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| StoreError::Refused(format!("key `{key}` does not hold an integer")))
}

impl Shard {
    /// Frees one slot: expired keys first (at most once per [`SWEEP_EVERY`]), else the least
    /// recently used of a sample.
    fn make_room(&mut self, cap: usize) {
        let now = Instant::now();
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            self.map.retain(|_, e| e.expires.is_none_or(|x| x > now));
            if self.map.len() < cap {
                return;
            }
        }
        let victim = self
            .map
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, e)| e.touched)
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.map.remove(&k);
        }
    }
}

impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        ready(self.get_now(key))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        ready(keys.iter().map(|k| self.get_now(k)).collect())
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.with(key, |s, tick| {
            let entry = Entry {
                value: Value::Bytes(value),
                expires: deadline(ttl),
                touched: tick,
            };
            self.insert(s, key, entry);
        });
        ready(Ok(()))
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        ready(self.with(key, |s, tick| {
            let (current, expires) = match s.map.get(key) {
                None => (0, deadline(ttl)),
                Some(Entry {
                    value: Value::Bytes(b),
                    expires,
                    ..
                }) => (parse_int(key, b)?, *expires),
                Some(e) => return Err(wrong_type(key, &e.value, "string")),
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| StoreError::Refused(format!("incr of `{key}` overflows")))?;
            let entry = Entry {
                value: Value::Bytes(next.to_string().into_bytes()),
                expires,
                touched: tick,
            };
            self.insert(s, key, entry);
            Ok(next)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        ready(Ok(self.with(key, |s, _| s.map.remove(key).is_some())))
    }

    fn window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window: Duration,
        kind: WindowKind,
    ) -> StoreFuture<'a, WindowHit> {
        ready(self.hit(key, limit, window, kind))
    }

    fn set_add<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        ready(self.with(key, |s, tick| {
            match &mut self
                .entry_or_insert(s, key, tick, || Value::Set(HashSet::new()))
                .value
            {
                Value::Set(set) => Ok(set.insert(member.to_string())),
                other => Err(wrong_type(key, other, "set")),
            }
        }))
    }

    fn set_remove<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        ready(self.with(key, |s, _| {
            let removed = match s.map.get_mut(key).map(|e| &mut e.value) {
                None => return Ok(false),
                Some(Value::Set(set)) => (set.remove(member), set.is_empty()),
                Some(other) => return Err(wrong_type(key, other, "set")),
            };
            if removed.1 {
                s.map.remove(key);
            }
            Ok(removed.0)
        }))
    }

    fn set_members<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<String>> {
        ready(self.read_set(key, |set| {
            set.map_or_else(Vec::new, |s| s.iter().cloned().collect())
        }))
    }

    fn set_card<'a>(&'a self, key: &'a str) -> StoreFuture<'a, u64> {
        ready(self.read_set(key, |set| set.map_or(0, |s| s.len() as u64)))
    }

    fn set_contains<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        ready(self.read_set(key, |set| set.is_some_and(|s| s.contains(member))))
    }

    fn put_indexed<'a>(
        &'a self,
        index: &'a str,
        prefix: &'a str,
        member: &'a str,
        value: Vec<u8>,
        ttl: Duration,
        max_members: u64,
    ) -> StoreFuture<'a, u64> {
        // The index shard is locked alone, then each entry's: never two shards at once.
        let evicted = self.with(index, |s, tick| {
            let entry = self.entry_or_insert(s, index, tick, || Value::Set(HashSet::new()));
            let Value::Set(set) = &mut entry.value else {
                return Err(wrong_type(index, &entry.value, "set"));
            };
            let mut evicted = Vec::new();
            if !set.contains(member) {
                while set.len() as u64 >= max_members.max(1) {
                    let victim = set.iter().next().cloned().expect("non-empty");
                    set.remove(&victim);
                    evicted.push(victim);
                }
                set.insert(member.to_string());
            }
            Ok(evicted)
        });
        let evicted = match evicted {
            Ok(e) => e,
            Err(e) => return ready(Err(e)),
        };
        for victim in &evicted {
            let key = format!("{prefix}{victim}");
            self.with(&key, |s, _| s.map.remove(&key));
        }
        let key = format!("{prefix}{member}");
        self.with(&key, |s, tick| {
            let entry = Entry {
                value: Value::Bytes(value),
                expires: Some(Instant::now() + ttl),
                touched: tick,
            };
            self.insert(s, &key, entry);
        });
        ready(Ok(evicted.len() as u64))
    }

    fn scan_prefix<'a>(&'a self, prefix: &'a str, max: usize) -> StoreFuture<'a, Vec<String>> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let s = shard.lock().unwrap();
            for (k, e) in &s.map {
                if out.len() >= max {
                    return ready(Ok(out));
                }
                if k.starts_with(prefix) && e.expires.is_none_or(|x| x > now) {
                    out.push(k.clone());
                }
            }
        }
        ready(Ok(out))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        ready(Ok(()))
    }

    fn health(&self) -> StoreHealth {
        StoreHealth::up("memory")
    }
}
