//! The GPU worker registry: what Python workers write to the store, read on an interval.
//!
//! Workers write `worker:{id}:status` (JSON, or a bare status word), `worker:{id}:gpu` (JSON)
//! and `worker:{id}:heartbeat` (unix time in seconds or milliseconds, integer or fractional).
//! Each refresh finds the heartbeats with `SCAN MATCH worker:*:heartbeat` (never `KEYS`) and
//! reads the three keys of every worker in one `MGET`. A worker is active while its heartbeat
//! is younger than the configured age; ages are computed when the list is read, so a worker
//! that stops beating leaves the list on time even between refreshes. The registry only reads:
//! the gateway never writes `worker:*`.
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::Value;

use crate::{Store, StoreError};

/// Heartbeats above this are milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
const MS_THRESHOLD: f64 = 1e11;
/// Most workers one refresh reads.
const MAX_WORKERS: usize = 10_000;

/// One worker as the registry last read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worker {
    /// Worker id (the `{id}` of its keys).
    pub id: String,
    /// `idle`, `busy`, ... as the worker reports it (`unknown` when it reports none).
    pub status: String,
    /// Region, from the status JSON.
    pub region: Option<String>,
    /// Queue depth, from the status JSON, when reported.
    pub queue_depth: Option<u64>,
    /// The GPU report, as the worker wrote it.
    pub gpu: Option<Value>,
    /// The last heartbeat, unix milliseconds.
    pub last_heartbeat_ms: u64,
    /// Milliseconds since the last heartbeat, when the list was read.
    pub heartbeat_age_ms: u64,
}

impl Worker {
    /// GPU utilization in `0.0..=1.0` (`utilization`, `gpu_utilization` or a percentage),
    /// when the GPU report has one.
    pub fn gpu_utilization(&self) -> Option<f64> {
        let gpu = self.gpu.as_ref()?;
        let u = ["utilization", "gpu_utilization", "utilization_gpu"]
            .iter()
            .find_map(|k| gpu.get(*k).and_then(Value::as_f64))?;
        Some(if u > 1.0 { u / 100.0 } else { u })
    }
}

/// Registry settings.
#[derive(Debug, Clone)]
pub struct WorkerRegistryOptions {
    /// Prefix of the worker keys (`worker:`).
    pub key_prefix: String,
    /// How often the store is read (`ROUTER_HEALTH_CHECK_INTERVAL`).
    pub refresh: Duration,
    /// Active while the heartbeat is younger than this.
    pub max_age: Duration,
}

impl WorkerRegistryOptions {
    /// The options `config` sets (`[workers]`, `router.health_check_interval_ms`).
    pub fn from_config(config: &wasmgate_config::Config) -> WorkerRegistryOptions {
        WorkerRegistryOptions {
            key_prefix: config.workers.key_prefix.clone(),
            refresh: Duration::from_millis(config.router.health_check_interval_ms.max(1)),
            max_age: Duration::from_millis(config.workers.max_heartbeat_age_ms),
        }
    }
}

/// The registry (cheap to read: one atomic load).
pub struct WorkerRegistry {
    store: Arc<dyn Store>,
    options: WorkerRegistryOptions,
    workers: ArcSwap<Vec<Worker>>,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for WorkerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRegistry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A heartbeat in seconds or milliseconds (integer or fractional, maybe JSON-quoted) as unix ms.
fn parse_heartbeat(raw: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(raw).ok()?.trim().trim_matches('"');
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || v <= 0.0 {
        return None;
    }
    Some(if v >= MS_THRESHOLD { v } else { v * 1000.0 } as u64)
}

fn parse_worker(id: &str, status: Option<&[u8]>, gpu: Option<&[u8]>, hb_ms: u64) -> Worker {
    let status_json = status.and_then(|s| serde_json::from_slice::<Value>(s).ok());
    let (status, region, queue_depth) = match (&status_json, status) {
        (Some(Value::Object(o)), _) => (
            o.get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            o.get("region").and_then(Value::as_str).map(str::to_string),
            o.get("queue_depth").and_then(Value::as_u64),
        ),
        (Some(Value::String(s)), _) => (s.clone(), None, None),
        (_, Some(raw)) => (String::from_utf8_lossy(raw).trim().to_string(), None, None),
        (_, None) => ("unknown".to_string(), None, None),
    };
    let gpu = gpu.map(|g| {
        serde_json::from_slice::<Value>(g)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(g).into_owned()))
    });
    Worker {
        id: id.to_string(),
        status,
        region: region.filter(|r| !r.is_empty()),
        queue_depth,
        gpu,
        last_heartbeat_ms: hb_ms,
        heartbeat_age_ms: 0,
    }
}

impl WorkerRegistry {
    /// A registry reading `store`; call [`WorkerRegistry::start`] to refresh it in the
    /// background, or [`WorkerRegistry::refresh`] to read now.
    pub fn new(store: Arc<dyn Store>, options: WorkerRegistryOptions) -> Arc<WorkerRegistry> {
        Arc::new(WorkerRegistry {
            store,
            options,
            workers: ArcSwap::from_pointee(Vec::new()),
            last_error: Mutex::new(None),
        })
    }

    /// Reads now, then every `refresh` until the registry is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak: Weak<WorkerRegistry> = Arc::downgrade(self);
        let every = self.options.refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = registry.refresh().await {
                    tracing::debug!(error = %e, "worker registry refresh failed; keeping the last list");
                }
            }
        });
    }

    /// Reads the workers from the store; returns how many have a heartbeat. On failure the
    /// previous list stays (ages keep growing, so dead workers still drop out).
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let r = self.read().await;
        *self.last_error.lock().unwrap() = r.as_ref().err().map(ToString::to_string);
        let workers = r?;
        let n = workers.len();
        self.workers.store(Arc::new(workers));
        Ok(n)
    }

    async fn read(&self) -> Result<Vec<Worker>, StoreError> {
        let prefix = &self.options.key_prefix;
        let keys = self.store.scan_prefix(prefix, MAX_WORKERS * 3).await?;
        let mut ids: Vec<&str> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(prefix.as_str())?.strip_suffix(":heartbeat"))
            .filter(|id| !id.is_empty())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(MAX_WORKERS);
        let wanted: Vec<String> = ids
            .iter()
            .flat_map(|id| ["status", "gpu", "heartbeat"].map(|k| format!("{prefix}{id}:{k}")))
            .collect();
        let values = self.store.get_many(&wanted).await?;
        let mut workers = Vec::with_capacity(ids.len());
        for (id, v) in ids.iter().zip(values.chunks(3)) {
            let [status, gpu, hb] = v else { continue };
            let Some(hb_ms) = hb.as_deref().and_then(parse_heartbeat) else {
                continue;
            };
            workers.push(parse_worker(id, status.as_deref(), gpu.as_deref(), hb_ms));
        }
        Ok(workers)
    }

    /// The active workers (heartbeat younger than the configured age), ages as of now.
    pub fn active(&self) -> Vec<Worker> {
        let now = now_ms();
        let max = self.options.max_age.as_millis() as u64;
        self.workers
            .load()
            .iter()
            .filter_map(|w| {
                let age = now.saturating_sub(w.last_heartbeat_ms);
                (age < max).then(|| Worker {
                    heartbeat_age_ms: age,
                    ..w.clone()
                })
            })
            .collect()
    }

    /// The last refresh's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_in_seconds_or_milliseconds() {
        assert_eq!(parse_heartbeat(b"1732600000"), Some(1_732_600_000_000));
        assert_eq!(parse_heartbeat(b"1732600000123"), Some(1_732_600_000_123));
        assert_eq!(parse_heartbeat(b"1732600000.5"), Some(1_732_600_000_500));
        assert_eq!(parse_heartbeat(b"\"1732600000\""), Some(1_732_600_000_000));
        assert_eq!(parse_heartbeat(b"soon"), None);
        assert_eq!(parse_heartbeat(b"-5"), None);
    }

    #[test]
    fn status_json_or_bare_word() {
        let w = parse_worker(
            "w1",
            Some(br#"{"status":"busy","region":"eu-west","queue_depth":3}"#),
            Some(br#"{"utilization":87}"#),
            5,
        );
        assert_eq!(w.status, "busy");
        assert_eq!(w.region.as_deref(), Some("eu-west"));
        assert_eq!(w.queue_depth, Some(3));
        assert_eq!(w.gpu_utilization(), Some(0.87));
        let w = parse_worker("w2", Some(b"idle"), None, 5);
        assert_eq!((w.status.as_str(), w.region, w.gpu), ("idle", None, None));
        let w = parse_worker("w3", None, Some(b"not json"), 5);
        assert_eq!(w.status, "unknown");
        assert_eq!(w.gpu, Some(Value::String("not json".into())));
    }
}
