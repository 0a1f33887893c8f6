//! The Redis backend (fred): standalone, sentinel or cluster from the URL scheme, a pool of
//! connections, a timeout on every command, reconnection with exponential backoff, and the
//! deciding operations as Lua scripts run on the server (one round trip each, `EVALSHA`; rate-limit
//! decisions made at the same moment share one: `window::WindowBatch`).
//!
//! While no connection is up, operations fail at once with `unavailable` instead of queueing
//! behind the reconnect: a request never waits on a Redis that is known to be down. A
//! background probe (`PING` every second) notices recovery when there is no traffic.
use std::sync::{Arc, Weak};
use std::time::Duration;

use fred::bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, KeysInterface, SetsInterface};
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::scripts::Script;
use fred::types::Expiration;
use futures_util::StreamExt;

use crate::{
    HealthCell, Store, StoreError, StoreFuture, StoreHealth, StoreResult, WindowHit, WindowKind,
};

mod window;

use window::{WindowBatch, WINDOW};

/// How often the background probe pings.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// INCRBY with the expiry set only when the key is created.
const INCR_TTL: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#;

/// The bounded index: evict random members (and their entries) while the index is full, then
/// store the entry and index it. KEYS: index, entry. ARGV: prefix, member, value, ttl, max.
const PUT_INDEXED: &str = r#"
local evicted = 0
if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 0 then
  local max = tonumber(ARGV[5])
  if max < 1 then max = 1 end
  while redis.call('SCARD', KEYS[1]) >= max do
    local victim = redis.call('SPOP', KEYS[1])
    redis.call('DEL', ARGV[1] .. victim)
    evicted = evicted + 1
  end
  redis.call('SADD', KEYS[1], ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return evicted
"#;

struct Scripts {
    window: Script,
    incr: Script,
    put_indexed: Script,
}

/// The Redis store.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    scripts: Arc<Scripts>,
    health: Arc<HealthCell>,
    clustered: bool,
    /// `redis.batch_window_decisions`, and not a cluster (a script touches keys of one slot).
    batch: bool,
    windows: Arc<WindowBatch>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("clustered", &self.clustered)
            .finish_non_exhaustive()
    }
}

fn classify(e: FredError) -> StoreError {
    let details = e.details();
    let server_refusal = details.starts_with("WRONGTYPE")
        || details.starts_with("ERR")
        || matches!(
            e.kind(),
            ErrorKind::InvalidArgument | ErrorKind::InvalidCommand | ErrorKind::Parse
        );
    if server_refusal {
        StoreError::Refused(details.to_string())
    } else {
        StoreError::Unavailable(format!("{:?}: {details}", e.kind()))
    }
}

fn ttl_ms(d: Duration) -> i64 {
    (d.as_millis() as i64).max(1)
}

/// Escapes glob characters for `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('*');
    s
}

/// Connections to open: as configured, else one per worker thread of the runtime the store
/// is opened on. More connections than threads buy nothing (Redis runs commands one at a time)
/// and cost batching: commands queued on one connection go out in one write and come back in
/// one read, for the gateway and for `redis-server` alike. With one worker thread, four
/// connections cost the gateway ~9 µs of CPU per rate-limited request more than one
/// (docs/performance.md).
fn pool_size(configured: Option<usize>) -> usize {
    configured
        .or_else(|| {
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| h.metrics().num_workers())
        })
        .unwrap_or(1)
        .max(1)
}

impl RedisStore {
    /// Connects a pool as `config` says (`url`, `password`, `db`, `pool_size`,
    /// `command_timeout_ms`). An unreachable server is not an error: the pool keeps
    /// reconnecting and operations fail with `unavailable` until it answers.
    pub async fn connect(config: &wasmgate_config::RedisConfig) -> Result<RedisStore, String> {
        let url = config.url.as_ref().ok_or("redis.url is not set")?;
        let mut fred_config = Config::from_url(url.expose())
            .map_err(|e| format!("redis.url is not a valid Redis URL: {}", e.details()))?;
        if fred_config.password.is_none() {
            fred_config.password = config.password.as_ref().map(|p| p.expose().to_string());
        }
        if config.db != 0 {
            fred_config.database = Some(config.db);
        }
        fred_config.fail_fast = false;
        let timeout = Duration::from_millis(config.command_timeout_ms.max(1));
        let clustered = fred_config.server.is_clustered();
        let pool = fred::types::Builder::from_config(fred_config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout.max(Duration::from_millis(500));
                c.internal_command_timeout = timeout.max(Duration::from_millis(500));
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_pool(pool_size(config.pool_size))
            .map_err(|e| format!("cannot build the Redis client: {}", e.details()))?;
        pool.connect();
        let health = Arc::new(HealthCell::default());
        let wait = timeout.max(Duration::from_secs(2));
        match tokio::time::timeout(wait, pool.wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!(clustered, "connected to Redis"),
            Ok(Err(e)) => health.failed(&format!("cannot connect: {}", e.details())),
            Err(_) => health.failed("cannot connect: no answer at startup"),
        }
        let store = RedisStore {
            pool,
            scripts: Arc::new(Scripts {
                window: Script::from_lua(WINDOW),
                incr: Script::from_lua(INCR_TTL),
                put_indexed: Script::from_lua(PUT_INDEXED),
            }),
            health,
            clustered,
            batch: config.batch_window_decisions && !clustered,
            windows: Arc::default(),
        };
        if store.health.health("redis").is_up() {
            // Load the scripts now so every later decision is one EVALSHA.
            for s in store.scripts.all() {
                if let Err(e) = s.load(store.pool.next()).await {
                    tracing::warn!(error = %e.details(), "cannot load a Lua script (it loads on first use)");
                }
            }
        }
        spawn_probe(Arc::downgrade(&store.health), store.pool.clone());
        Ok(store)
    }

    /// A connected client, or `unavailable` at once while every connection is down.
    fn client(&self) -> StoreResult<&Client> {
        let c = self.pool.next_connected();
        if c.is_connected() {
            Ok(c)
        } else {
            let e = "not connected to Redis (reconnecting)";
            self.health.failed(e);
            Err(StoreError::Unavailable(e.into()))
        }
    }

    /// Classifies a failure, and records it for `/gateway/health` when it means Redis is
    /// unreachable (only the probe marks it up again: [`HealthCell`]).
    fn track<T>(&self, r: Result<T, FredError>) -> StoreResult<T> {
        r.map_err(|e| {
            let e = classify(e);
            if let StoreError::Unavailable(m) = &e {
                self.health.failed(m);
            }
            e
        })
    }

    async fn eval<R: fred::types::FromValue>(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<fred::types::Value>,
    ) -> StoreResult<R> {
        let client = self.client()?;
        let r = script.evalsha_with_reload(client, keys, args).await;
        self.track(r)
    }
}

impl RedisStore {
    /// On a cluster the index and its entries live in different slots, where one script cannot
    /// touch both: the same steps as single-key commands. Each step is atomic; the bound may be
    /// passed briefly while replicas write at once, and is restored by the next write.
    async fn put_indexed_clustered(
        &self,
        index: &str,
        prefix: &str,
        member: &str,
        value: Vec<u8>,
        ttl: Duration,
        max_members: u64,
    ) -> StoreResult<u64> {
        let client = self.client()?;
        let mut evicted = 0;
        let known = self.track(client.sismember::<bool, _, _>(index, member).await)?;
        if !known {
            let max = max_members.max(1);
            while self.track(client.scard::<u64, _>(index).await)? >= max {
                let victim = self.track(client.spop::<Option<String>, _>(index, None).await)?;
                let Some(victim) = victim else { break };
                self.track(client.del::<i64, _>(format!("{prefix}{victim}")).await)?;
                evicted += 1;
            }
            self.track(client.sadd::<i64, _, _>(index, member).await)?;
        }
        let expire = Some(Expiration::PX(ttl_ms(ttl)));
        let entry = format!("{prefix}{member}");
        let r = client
            .set::<(), _, _>(entry, Bytes::from(value), expire, None, false)
            .await;
        self.track(r)?;
        Ok(evicted)
    }
}

impl Scripts {
    fn all(&self) -> [&Script; 3] {
        [&self.window, &self.incr, &self.put_indexed]
    }
}

fn spawn_probe(health: Weak<HealthCell>, pool: Pool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(health) = health.upgrade() else {
                return;
            };
            let client = pool.next_connected();
            if !client.is_connected() {
                health.failed("not connected to Redis (reconnecting)");
                continue;
            }
            let started = health.probe_started();
            match client.ping::<String>(None).await {
                Ok(_) => health.probe_ok(started),
                Err(e) => health.failed(&format!("ping failed: {}", e.details())),
            }
        }
    });
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let r = self.client()?.get::<Option<Bytes>, _>(key).await;
            Ok(self.track(r)?.map(|b| b.to_vec()))
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> StoreFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.client()?;
            let values: Vec<Option<Bytes>> = if self.clustered {
                // Keys of one MGET must share a slot; concurrent GETs are pipelined instead.
                let gets = keys
                    .iter()
                    .map(|k| client.get::<Option<Bytes>, _>(k.as_str()));
                let r: Result<Vec<_>, _> = futures_util::future::join_all(gets)
                    .await
                    .into_iter()
                    .collect();
                self.track(r)?
            } else {
                let r = client.mget::<Vec<Option<Bytes>>, _>(keys.to_vec()).await;
                self.track(r)?
            };
            Ok(values.into_iter().map(|v| v.map(|b| b.to_vec())).collect())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let expire = ttl.map(|t| Expiration::PX(ttl_ms(t)));
            let r = self
                .client()?
                .set::<(), _, _>(key, Bytes::from(value), expire, None, false)
                .await;
            self.track(r)
        })
    }

    fn incr<'a>(&'a self, key: &'a str, delta: i64, ttl: Option<Duration>) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            let ttl = ttl.map_or(0, ttl_ms);
            self.eval(
                &self.scripts.incr,
                vec![key.to_string()],
                vec![delta.into(), ttl.into()],
            )
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = self.client()?.del::<i64, _>(key).await;
            Ok(self.track(r)? > 0)
        })
    }

    fn window_hit<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        window: Duration,
        kind: WindowKind,
    ) -> StoreFuture<'a, WindowHit> {
        Box::pin(self.window(key, limit, window, kind))
    }

    fn set_add<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = self.client()?.sadd::<i64, _, _>(key, member).await;
            Ok(self.track(r)? > 0)
        })
    }

    fn set_remove<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = self.client()?.srem::<i64, _, _>(key, member).await;
            Ok(self.track(r)? > 0)
        })
    }

    fn set_members<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let r = self.client()?.smembers::<Vec<String>, _>(key).await;
            self.track(r)
        })
    }

    fn set_card<'a>(&'a self, key: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let r = self.client()?.scard::<u64, _>(key).await;
            self.track(r)
        })
    }

    fn set_contains<'a>(&'a self, key: &'a str, member: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let r = self.client()?.sismember::<bool, _, _>(key, member).await;
            self.track(r)
        })
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
        Box::pin(async move {
            if self.clustered {
                return self
                    .put_indexed_clustered(index, prefix, member, value, ttl, max_members)
                    .await;
            }
            let n: i64 = self
                .eval(
                    &self.scripts.put_indexed,
                    vec![index.to_string(), format!("{prefix}{member}")],
                    vec![
                        prefix.into(),
                        member.into(),
                        Bytes::from(value).into(),
                        ttl_ms(ttl).into(),
                        (max_members.min(i64::MAX as u64) as i64).into(),
                    ],
                )
                .await?;
            Ok(n.max(0) as u64)
        })
    }

    fn scan_prefix<'a>(&'a self, prefix: &'a str, max: usize) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let client = self.client()?;
            let pattern = glob_escape(prefix);
            let mut stream = if self.clustered {
                client
                    .scan_cluster_buffered(pattern, Some(500), None)
                    .boxed()
            } else {
                client.scan_buffered(pattern, Some(500), None).boxed()
            };
            let mut out = Vec::new();
            while out.len() < max {
                match stream.next().await {
                    None => break,
                    Some(Ok(key)) => {
                        if let Some(k) = key.as_str() {
                            out.push(k.to_string());
                        }
                    }
                    Some(Err(e)) => return self.track(Err(e)),
                }
            }
            Ok(out)
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let r = self.client()?.ping::<String>(None).await.map(|_| ());
            self.track(r)
        })
    }

    fn health(&self) -> StoreHealth {
        self.health.health("redis")
    }
}

#[cfg(test)]
mod tests {
    use super::pool_size;

    #[test]
    fn the_pool_has_one_connection_per_worker_thread_unless_configured() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(3)
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { pool_size(None) }), 3);
        assert_eq!(rt.block_on(async { pool_size(Some(2)) }), 2);
        let one = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(one.block_on(async { pool_size(None) }), 1);
        assert_eq!(pool_size(None), 1, "outside a runtime");
    }
}
