//! Shared state through the real gateway: plugin namespaces on Redis checked with `MONITOR`,
//! read grants, the worker registry and `GET /api/v1/workers`, and a Redis outage under
//! traffic.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{client, drop_plugin, eventually, json, read, tempdir};
use fred::interfaces::{ClientLike, KeysInterface};
use serde_json::Value;
use wasmgate_plugin_host::guests;
use wasmgate_testkit::{gateway, upstream, RedisServer};

async fn put(c: &fred::clients::Client, key: &str, value: &str) {
    let _: () = c.set(key, value, None, None, false).await.unwrap();
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Commands that only read (or set up a connection). Everything else may write, scripts
/// included (their keys are checked).
const READS: &[&str] = &[
    "GET",
    "MGET",
    "EXISTS",
    "SCAN",
    "SMEMBERS",
    "SCARD",
    "SISMEMBER",
    "ZCARD",
    "ZRANGE",
    "PTTL",
    "TTL",
    "TIME",
    "PING",
    "INFO",
    "ECHO",
    "CLIENT",
    "HELLO",
    "AUTH",
    "SELECT",
    "SCRIPT",
    "COMMAND",
];

/// The keys a recorded command touches.
fn keys_of(c: &fred::monitor::MonitorCommand) -> Vec<String> {
    let args: Vec<String> = c
        .args
        .iter()
        .map(|a| a.as_str().map(|s| s.to_string()).unwrap_or_default())
        .collect();
    let cmd = c.command.to_uppercase();
    match cmd.as_str() {
        "EVALSHA" | "EVAL" => {
            let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            args.iter().skip(2).take(n).cloned().collect()
        }
        "DEL" | "UNLINK" => args,
        "MSET" => args.into_iter().step_by(2).collect(),
        _ => args.into_iter().take(1).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_write_only_under_gateway_and_read_only_what_is_granted() {
    let redis = RedisServer::start().await;
    let py = redis.client().await;
    put(&py, "worker:1:status", r#"{"status":"idle"}"#).await;
    put(&py, "queue:stats", r#"{"pending":3}"#).await;
    let up = upstream().spawn().await;
    let dir = tempdir("state-namespaces");
    drop_plugin(
        &dir,
        "tp-kv-escape",
        &read(guests::TP_KV_ESCAPE),
        Some("routes = [\"probe\"]\ngrant = [\"kv\"]\nkv_read = [\"worker:*\"]\n"),
    );
    drop_plugin(
        &dir,
        "tp-window",
        &read(guests::TP_WINDOW),
        Some("grant = [\"kv\", \"workers\"]\n[config]\nlimit = 1000\nwindow_ms = 60000\n"),
    );
    let gw = gateway()
        .route("/probe", "probe", &[up.url()])
        .route("/", "main", &[up.url()])
        .redis(&redis.url())
        .plugins_dir(&dir)
        .spawn()
        .await;
    let monitor = redis.monitor().await;
    let c = client();

    let report = json(c.get(gw.url("/probe"))).await;
    // Writes with keys that look absolute or climb out all land inside the namespace.
    for k in ["write_worker", "write_absolute", "set_add", "delete"] {
        assert!(
            report[k].as_str().unwrap().starts_with("ok"),
            "{k}: {report}"
        );
    }
    assert_eq!(report["read_back"], "ok:Some(\"pwned\")", "its own copy");
    assert!(report["put_indexed"].as_str().unwrap().starts_with("ok"));
    // Reads outside: only what the manifest granted.
    assert_eq!(
        report["shared_worker"], "ok:Some(\"{\\\"status\\\":\\\"idle\\\"}\")",
        "{report}"
    );
    assert_eq!(
        report["shared_set"], "ok:false",
        "granted by `worker:*`, not a member"
    );
    for k in ["shared_queue", "shared_gateway"] {
        assert!(
            report[k].as_str().unwrap().starts_with("denied"),
            "{k}: {report}"
        );
    }
    for _ in 0..20 {
        let resp = c.get(gw.url("/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-window"], "allowed");
    }
    assert_eq!(
        c.get(gw.url("/api/v1/workers"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The backend's keys are untouched...
    let status: String = py.get("worker:1:status").await.unwrap();
    assert_eq!(status, r#"{"status":"idle"}"#);
    let hb: Option<String> = py.get("worker:1:heartbeat").await.unwrap();
    assert_eq!(hb, None);
    // ...and by MONITOR, every write the gateway made was under `gateway:`.
    let commands = monitor.commands().await;
    let writes: Vec<_> = commands
        .iter()
        .filter(|c| !READS.contains(&c.command.to_uppercase().as_str()))
        .collect();
    let write_keys: Vec<String> = writes.iter().flat_map(|c| keys_of(c)).collect();
    assert!(
        write_keys.len() >= 25,
        "the traffic wrote (window hits, the probe's writes): {write_keys:?}"
    );
    for (cmd, keys) in writes.iter().map(|c| (c, keys_of(c))) {
        for k in keys {
            assert!(
                k.starts_with("gateway:"),
                "{} from {} wrote `{k}` outside gateway:",
                cmd.command,
                cmd.client
            );
        }
    }
    assert!(
        write_keys.contains(&"gateway:tp-kv-escape:worker:1:status".to_string()),
        "the escape attempt landed in the plugin's namespace: {write_keys:?}"
    );
    assert!(write_keys
        .iter()
        .any(|k| k.starts_with("gateway:tp-window:client:")));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registry_reads_heartbeats_and_serves_the_worker_list() {
    let redis = RedisServer::start().await;
    let py = redis.client().await;
    let t = now();
    put(
        &py,
        "worker:gpu-a:status",
        r#"{"status":"idle","region":"us-east","queue_depth":2}"#,
    )
    .await;
    put(
        &py,
        "worker:gpu-a:gpu",
        r#"{"name":"NVIDIA A100","utilization":0.5}"#,
    )
    .await;
    put(&py, "worker:gpu-a:heartbeat", &t.as_secs().to_string()).await;
    put(&py, "worker:gpu-b:status", "busy").await;
    put(&py, "worker:gpu-b:heartbeat", &t.as_millis().to_string()).await;
    put(&py, "worker:gpu-dead:status", r#"{"status":"idle"}"#).await;
    put(
        &py,
        "worker:gpu-dead:heartbeat",
        &(t.as_secs() - 120).to_string(),
    )
    .await;
    put(&py, "worker:gpu-nohb:status", r#"{"status":"idle"}"#).await;

    let up = upstream().spawn().await;
    let dir = tempdir("state-workers");
    drop_plugin(
        &dir,
        "tp-window",
        &read(guests::TP_WINDOW),
        Some("grant = [\"kv\", \"workers\"]\n[config]\nlimit = 1000\nwindow_ms = 60000\nworkers = true\n"),
    );
    let gw = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(|c| c.router.health_check_interval_ms = 100)
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();

    let resp = c.get(gw.url("/api/v1/workers")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.headers()["x-window"],
        "allowed",
        "plugins run on the worker list like on any route"
    );
    assert_eq!(
        resp.headers()["x-workers"],
        "2",
        "the workers import agrees"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["total"], 2, "active only: {v}");
    let ids: Vec<&str> = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpu-a", "gpu-b"]);
    let a = &v["workers"][0];
    assert_eq!(a["status"], "idle");
    assert_eq!(a["region"], "us-east");
    assert_eq!(a["queue_depth"], 2);
    assert_eq!(a["gpu"]["name"], "NVIDIA A100");
    assert!(a["heartbeat_age_ms"].as_u64().unwrap() < 30_000);
    assert_eq!(
        a["last_heartbeat_ms"].as_u64().unwrap(),
        t.as_secs() * 1000,
        "seconds read as seconds"
    );
    let b = &v["workers"][1];
    assert_eq!(b["status"], "busy", "a bare status word");
    assert_eq!(
        b["last_heartbeat_ms"].as_u64().unwrap(),
        t.as_millis() as u64,
        "milliseconds read as milliseconds"
    );

    // A new worker shows up on the next refresh, a stopped one leaves.
    put(&py, "worker:gpu-c:heartbeat", &now().as_secs().to_string()).await;
    let _: i64 = py.del("worker:gpu-b:heartbeat").await.unwrap();
    eventually("the registry refreshed", async || {
        let v = json(c.get(gw.url("/api/v1/workers"))).await;
        let ids: Vec<String> = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect();
        ids == ["gpu-a", "gpu-c"]
    })
    .await;
    let resp = c.post(gw.url("/api/v1/workers")).send().await.unwrap();
    common::expect_error(resp, 405, "method_not_allowed").await;
    let health = json(c.get(gw.url("/gateway/health"))).await;
    assert_eq!(health["checks"]["workers"]["active"], 2, "{health}");
    assert_eq!(health["checks"]["redis"]["backend"], "redis");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn without_redis_state_is_in_memory_and_the_worker_list_is_empty() {
    let up = upstream().spawn().await;
    let gw = gateway().upstream(&up).spawn().await;
    let c = client();
    let v = json(c.get(gw.url("/api/v1/workers"))).await;
    assert_eq!(v, serde_json::json!({"workers": [], "total": 0}));
    let health = json(c.get(gw.url("/gateway/health"))).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["checks"]["redis"]["backend"], "memory");
    assert_eq!(health["checks"]["redis"]["status"], "up");
    // The endpoint path is configurable, and can be turned off.
    let off = gateway()
        .upstream(&up)
        .config(|c| c.workers.endpoint = String::new())
        .spawn()
        .await;
    let echo = json(c.get(off.url("/api/v1/workers"))).await;
    assert_eq!(echo["uri"], "/api/v1/workers", "proxied to the upstream");
}

/// Redis killed and restarted under traffic: every request is served (the plugin's declared
/// fail-open policy), `/gateway/health` says `degraded` and why, and everything recovers with
/// no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_under_traffic_costs_no_request_and_recovers_by_itself() {
    let mut redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let dir = tempdir("state-outage");
    drop_plugin(
        &dir,
        "tp-window",
        &read(guests::TP_WINDOW),
        Some("grant = [\"kv\"]\n[config]\nlimit = 1000000\nwindow_ms = 60000\n"),
    );
    let gw = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .plugins_dir(&dir)
        .spawn()
        .await;
    let url = gw.url("/v1/chat");
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get(&url).send().await.expect("every request is answered");
                    let w = r
                        .headers()
                        .get("x-window")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    seen.lock().unwrap().push((r.status().as_u16(), w));
                }
            })
        })
        .collect();
    let c = client();
    let outcomes = |w: &str| seen.lock().unwrap().iter().filter(|(_, x)| x == w).count();
    eventually("traffic flows", async || outcomes("allowed") > 20).await;
    assert_eq!(
        json(c.get(gw.url("/gateway/health"))).await["status"],
        "healthy"
    );

    redis.stop();
    eventually("health says degraded", async || {
        let h = json(c.get(gw.url("/gateway/health"))).await;
        h["status"] == "degraded" && h["checks"]["redis"]["error"].is_string()
    })
    .await;
    let h = json(c.get(gw.url("/gateway/health"))).await;
    assert_eq!(h["checks"]["redis"]["status"], "down", "{h}");
    eventually("requests pass fail-open", async || {
        outcomes("unavailable") > 20
    })
    .await;

    redis.restart().await;
    let before = outcomes("allowed");
    eventually("health recovers", async || {
        json(c.get(gw.url("/gateway/health"))).await["status"] == "healthy"
    })
    .await;
    eventually("the plugin uses Redis again", async || {
        outcomes("allowed") > before + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(s, _)| *s == 200),
        "no request failed: {:?}",
        seen.iter()
            .filter(|(s, _)| *s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        seen.iter()
            .all(|(_, w)| w == "allowed" || w == "unavailable"),
        "only the two outcomes"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Time a plugin spends waiting on the store is not CPU: a Redis that stalls (`DEBUG SLEEP`)
/// for six times the plugin's CPU budget delays the request but does not kill the plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_slow_store_does_not_count_against_the_cpu_budget() {
    let redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let dir = tempdir("state-slow");
    drop_plugin(
        &dir,
        "tp-window",
        &read(guests::TP_WINDOW),
        Some("grant = [\"kv\"]\n[budget]\ncpu_ms = 50\n[config]\nlimit = 100\nwindow_ms = 60000\n"),
    );
    let gw = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(|c| c.redis.command_timeout_ms = 2_000)
        .plugins_dir(&dir)
        .spawn()
        .await;
    let c = client();
    assert_eq!(
        c.get(gw.url("/warm")).send().await.unwrap().headers()["x-window"],
        "allowed"
    );
    let py = redis.client().await;
    let stall = tokio::spawn(async move {
        let cmd = fred::types::CustomCommand::new_static("DEBUG", None, false);
        let _: fred::types::Value = py.custom(cmd, vec!["SLEEP", "0.3"]).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let resp = c.get(gw.url("/slow")).send().await.unwrap();
    let waited = started.elapsed();
    stall.await.unwrap();
    assert_eq!(resp.status(), 200, "not a CPU-budget kill");
    assert_eq!(resp.headers()["x-window"], "allowed");
    assert!(
        waited >= Duration::from_millis(150),
        "the call really waited on Redis ({waited:?})"
    );
    let plugins = json(c.get(gw.url("/gateway/plugins"))).await;
    assert_eq!(plugins["plugins"][0]["cpu_kills"], 0, "{plugins}");
    std::fs::remove_dir_all(dir).ok();
}
