//! The inference simulator behind the gateway, with simulated workers heartbeating into a real
//! `redis-server` in the seeds' key layout.
mod common;

use std::time::Duration;

use common::client;
use fred::prelude::*;
use serde_json::{json, Value};
use wasmgate_testkit::sim::{worker_ids, SimOptions, Simulator};
use wasmgate_testkit::{gateway, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_serves_jobs_and_chat_through_the_gateway_and_heartbeats_into_redis() {
    let redis = RedisServer::start().await;
    let sim = Simulator::spawn(SimOptions {
        redis_url: Some(redis.url()),
        workers: 3,
        heartbeat_interval: Duration::from_millis(100),
        job_duration: Duration::from_millis(200),
        token_delay: Duration::from_millis(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let gw = gateway().route("/", "fastapi", &[sim.url()]).spawn().await;
    let c = client();

    let job: Value = common::json(
        c.post(gw.url("/api/v1/jobs"))
            .json(&json!({"prompt": "a cat"})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "queued");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let done: Value = common::json(c.get(gw.url(&format!("/api/v1/jobs/{id}")))).await;
    assert_eq!(done["status"], "completed");
    for path in ["/api/v1/queue/stats", "/api/v1/jobs/stats/queue"] {
        let stats: Value = common::json(c.get(gw.url(path))).await;
        assert_eq!(stats["completed"], 1, "{path}: {stats}");
    }
    let missing = c.get(gw.url("/api/v1/jobs/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "three word prompt"}]});
    let full: Value = common::json(c.post(gw.url("/v1/chat/completions")).json(&chat)).await;
    assert_eq!(full["usage"]["prompt_tokens"], 3);
    assert!(full["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let resp = c
        .post(gw.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let usage_chunk = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .find(|v| v.get("usage").is_some())
        .expect("a usage block");
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 3);

    // Heartbeats in the seeds' layout.
    let client = Builder::from_config(Config::from_url(&redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    for id in worker_ids(3) {
        let status: String = client.get(format!("worker:{id}:status")).await.unwrap();
        let status: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["worker_id"], id.as_str());
        assert!(status["region"].is_string());
        let gpu: String = client.get(format!("worker:{id}:gpu")).await.unwrap();
        assert!(serde_json::from_str::<Value>(&gpu).unwrap()["memory_total_mb"].is_number());
        let hb: String = client.get(format!("worker:{id}:heartbeat")).await.unwrap();
        assert!(
            hb.parse::<u64>().unwrap() > 1_600_000_000,
            "unix time (s or ms)"
        );
    }
    let first: String = client.get("worker:sim-worker-0:heartbeat").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later: String = client.get("worker:sim-worker-0:heartbeat").await.unwrap();
    assert!(
        later.parse::<u64>().unwrap() > first.parse::<u64>().unwrap(),
        "heartbeats keep coming"
    );
    let _ = client.quit().await;
}

/// The integration guide's check, end to end: the `wasmgate` binary in ACIP `.env` mode with
/// `REDIS_URL` (password and database from `REDIS_PASSWORD`/`REDIS_DB`), in front of the
/// simulator whose workers heartbeat into that Redis: `GET /api/v1/workers` lists them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_lists_the_workers_that_heartbeat_into_redis() {
    let redis = RedisServer::start_with(vec!["--requirepass".into(), "s3cret-redis".into()]).await;
    let authed = format!("redis://:s3cret-redis@127.0.0.1:{}/0", redis.port());
    let sim = Simulator::spawn(SimOptions {
        redis_url: Some(authed),
        workers: 3,
        heartbeat_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = common::tempdir("acip-redis");
    std::fs::write(
        dir.join(".env"),
        format!(
            "FASTAPI_URL={}\nGATEWAY_HOST=127.0.0.1\nGATEWAY_PORT=0\nREDIS_URL=redis://127.0.0.1:{}\nREDIS_PASSWORD=s3cret-redis\nREDIS_DB=0\nROUTER_HEALTH_CHECK_INTERVAL=100\nAUTH_ENABLED=false\nPLUGINS_DIR={}\n",
            sim.url(),
            redis.port(),
            dir.join("plugins").display()
        ),
    )
    .unwrap();
    let gw = common::GatewayProcess::spawn(common::wasmgate_command(&dir));
    let c = client();
    let mut listed = Vec::new();
    for _ in 0..100 {
        let v: Value = common::json(c.get(gw.url("/api/v1/workers"))).await;
        listed = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect();
        if listed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed, worker_ids(3));
    let health: Value = common::json(c.get(gw.url("/gateway/health"))).await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["checks"]["redis"]["backend"], "redis");
    assert!(
        !gw.log().contains("s3cret-redis"),
        "the Redis password is never logged"
    );
    std::fs::remove_dir_all(dir).ok();
}
