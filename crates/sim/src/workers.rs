//! Simulated Python GPU workers writing heartbeats into Redis, as the real workers do (or,
//! in-process, into the gateway's own store: `wasmgate demo` without Redis).
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::Expiration;
use tokio::sync::watch;

use super::SimOptions;

/// The ids the simulator gives its workers.
pub fn worker_ids(n: usize) -> Vec<String> {
    prefixed_worker_ids("sim-worker-", n)
}

/// Worker ids `{prefix}{i}`.
pub fn prefixed_worker_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Where heartbeats go.
pub(super) enum Writer {
    /// A Redis client, as a Python worker's.
    Redis(Client),
    /// A store in this process.
    Store(Arc<dyn wasmgate_state::Store>),
}

impl Writer {
    pub(super) async fn connect(url: &str) -> anyhow::Result<Writer> {
        let client = Builder::from_config(Config::from_url(url)?).build()?;
        client.init().await?;
        Ok(Writer::Redis(client))
    }

    async fn set(&self, key: String, value: String, ttl_s: i64) -> anyhow::Result<()> {
        match self {
            Writer::Redis(c) => {
                let ex = Some(Expiration::EX(ttl_s));
                let _: () = c.set(key, value, ex, None, false).await?;
            }
            Writer::Store(s) => {
                let ttl = Duration::from_secs(ttl_s as u64);
                s.set(&key, value.into_bytes(), Some(ttl))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        if let Writer::Redis(c) = self {
            let _ = c.quit().await;
        }
    }
}

pub(super) async fn spawn(
    client: Writer,
    opts: &SimOptions,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ids = prefixed_worker_ids(&opts.worker_prefix, opts.workers);
    let regions = opts.regions.clone();
    let interval = opts.heartbeat_interval;
    // Keys outlive a few missed beats, then vanish like a dead worker's would.
    let ttl = (interval.as_secs() as i64 * 5).max(30);
    beat(&client, &ids, &regions, ttl, 0).await?;
    tokio::spawn(async move {
        let mut tick = 1u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => break,
            }
            if let Err(e) = beat(&client, &ids, &regions, ttl, tick).await {
                tracing::warn!(error = %e, "simulated worker heartbeat failed");
            }
            tick += 1;
        }
        client.close().await;
    });
    Ok(())
}

async fn beat(
    client: &Writer,
    ids: &[String],
    regions: &[String],
    ttl: i64,
    tick: u64,
) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    for (i, id) in ids.iter().enumerate() {
        let region = regions
            .get(i % regions.len().max(1))
            .cloned()
            .unwrap_or_default();
        let busy = (tick + i as u64).is_multiple_of(3);
        let status = serde_json::json!({
            "worker_id": id,
            "status": if busy { "busy" } else { "idle" },
            "region": region,
            "current_job": if busy { Some(format!("job-{tick}")) } else { None },
            "queue_depth": (tick + i as u64) % 4,
            "jobs_completed": tick * (i as u64 + 1),
        });
        let util = ((tick * 7 + i as u64 * 13) % 100) as f64 / 100.0;
        let gpu = serde_json::json!({
            "name": "NVIDIA A100-SXM4-80GB",
            "count": 1,
            "memory_total_mb": 81920,
            "memory_used_mb": (81920.0 * util) as u64,
            "utilization": util,
            "temperature_c": 40 + (tick % 30),
        });
        // Even workers write seconds, odd workers milliseconds: both occur in the wild.
        let hb = if i.is_multiple_of(2) {
            now.as_secs().to_string()
        } else {
            now.as_millis().to_string()
        };
        client
            .set(format!("worker:{id}:status"), status.to_string(), ttl)
            .await?;
        client
            .set(format!("worker:{id}:gpu"), gpu.to_string(), ttl)
            .await?;
        client
            .set(format!("worker:{id}:heartbeat"), hb, ttl)
            .await?;
    }
    Ok(())
}
