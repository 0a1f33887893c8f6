//! Scale-out on loopback: three `wasmgate` processes sharing one `redis-server`, under load from
//! a client spread across them. The global rate limit holds exactly, a response one replica
//! cached is a hit on the others, killing one replica loses no request the other two received,
//! and a Redis restart under load costs no request on any replica.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, eventually, json, tempdir, wasmgate_command, GatewayProcess};
use wasmgate_testkit::{upstream, RedisServer, TestUpstream};

/// The replicas' shared configuration: rate limit (1 000 000 a minute by default, 30 on the
/// `limited` route), cache on `/cached`, state in `redis`.
fn replica_config(redis: &str, up: &TestUpstream) -> String {
    format!(
        r#"[server]
host = "127.0.0.1"
port = 0
workers = 1
[log]
level = "warn,wasmgate=info"
access_log = false
[redis]
url = "{redis}"
[[routes]]
name = "limited"
prefix = "/limited"
upstream = "backend"
[[routes]]
name = "api"
prefix = "/"
upstream = "backend"
[upstreams.backend]
targets = ["{target}"]
[rate_limit]
enabled = true
window_ms = 60000
max_requests = 1000000
[rate_limit.routes.limited]
max_requests = 30
[cache]
enabled = true
paths = ["/cached"]
ttl_seconds = 60
"#,
        target = up.url()
    )
}

struct Replicas {
    gateways: Vec<Option<GatewayProcess>>,
    urls: Vec<String>,
    dir: std::path::PathBuf,
}

impl Replicas {
    fn start(redis: &RedisServer, up: &TestUpstream) -> Replicas {
        let dir = tempdir("scale-out");
        let file = dir.join("wasmgate.toml");
        std::fs::write(&file, replica_config(&redis.url(), up)).unwrap();
        let gateways: Vec<_> = (0..3)
            .map(|_| {
                let mut cmd = wasmgate_command(&dir);
                cmd.arg("--config").arg(&file);
                Some(GatewayProcess::spawn(cmd))
            })
            .collect();
        let urls = gateways
            .iter()
            .map(|g| g.as_ref().unwrap().url(""))
            .collect();
        Replicas {
            gateways,
            urls,
            dir,
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.gateways.clear();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// One answered or failed request: (replica, status or 0 when the connection failed).
type Outcome = (usize, u16);

/// Load spread across the replicas round-robin by `tasks` clients until `stop`; a client whose
/// replica does not answer (connection refused or reset) tries the next one, as a load
/// balancer would. Records every attempt.
fn spread_load(
    urls: &[String],
    path: &'static str,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Mutex<Vec<Outcome>>>) {
    let seen: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let handles = (0..tasks)
        .map(|t| {
            let (urls, stop, seen) = (urls.to_vec(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                wasmgate_testkit::install_crypto_provider();
                let c = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut next = t;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Each logical request is answered by some replica within three tries.
                    let mut answered = false;
                    for _ in 0..urls.len() {
                        let i = next % urls.len();
                        next += 1;
                        let url = format!("{}{path}/{t}-{n}", urls[i]);
                        match c.get(url).send().await {
                            Ok(r) => {
                                seen.lock().unwrap().push((i, r.status().as_u16()));
                                answered = true;
                                break;
                            }
                            Err(_) => seen.lock().unwrap().push((i, 0)),
                        }
                    }
                    assert!(answered, "no replica answered");
                }
            })
        })
        .collect();
    (handles, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_limits_and_cache_and_survive_losing_one() {
    let redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let mut replicas = Replicas::start(&redis, &up);
    let urls = replicas.urls.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (load, seen) = spread_load(&urls, "/api/v1/jobs", 4, &stop);
    let count =
        |pred: &dyn Fn(&Outcome) -> bool| seen.lock().unwrap().iter().filter(|o| pred(o)).count();
    eventually("load reaches every replica", async || {
        (0..3).all(|i| count(&|o| o.0 == i && o.1 == 200) > 10)
    })
    .await;

    // The global limit holds exactly: 150 concurrent calls spread over the three, limit 30.
    let statuses = common::burst(150, |i| format!("{}/limited/x", urls[i % 3])).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 120);

    // A response cached by one replica is a hit on the other two. The cache key has the host:
    // behind a load balancer every replica sees the public one.
    let c = client();
    let public = |url: String| c.get(url).header("host", "api.example.com");
    let cache_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-gateway-cache")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let r = public(format!("{}/cached/model-card", urls[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_of(&r).as_deref(), Some("MISS"));
    let first = r.text().await.unwrap();
    for url in &urls[1..] {
        let r = public(format!("{url}/cached/model-card"))
            .send()
            .await
            .unwrap();
        assert_eq!(cache_of(&r).as_deref(), Some("HIT"), "{url}");
        assert_eq!(r.text().await.unwrap(), first, "the same body");
    }
    assert_eq!(up.requests_to("/cached"), 1, "the backend saw one request");

    // Kill one replica mid-load (SIGKILL: no drain). Everything the other two received is
    // answered; the clients that hit the dead one fail over.
    let before_kill = seen.lock().unwrap().len();
    replicas.gateways[2] = None;
    eventually("the survivors keep serving", async || {
        seen.lock().unwrap()[before_kill..]
            .iter()
            .filter(|o| o.0 != 2 && o.1 == 200)
            .count()
            > 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await
            .expect("every logical request was answered by some replica");
    }
    let seen = seen.lock().unwrap();
    let survivors: Vec<_> = seen.iter().filter(|o| o.0 != 2).collect();
    assert!(
        survivors.iter().all(|o| o.1 == 200),
        "every request the surviving replicas received was served: {:?}",
        survivors
            .iter()
            .filter(|o| o.1 != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let dead_after: Vec<_> = seen[before_kill..].iter().filter(|o| o.0 == 2).collect();
    assert!(
        dead_after.iter().any(|o| o.1 == 0),
        "the killed replica refused connections after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_costs_no_request_on_any_replica() {
    let mut redis = RedisServer::start().await;
    let up = upstream().spawn().await;
    let replicas = Replicas::start(&redis, &up);
    let urls = replicas.urls.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (load, seen) = spread_load(&urls, "/api/v1/jobs", 4, &stop);
    let c = client();
    let served = || seen.lock().unwrap().iter().filter(|o| o.1 == 200).count();
    let health = async |i: usize| json(c.get(format!("{}/gateway/health", urls[i]))).await;
    eventually("traffic flows", async || served() > 30).await;
    for i in 0..3 {
        assert_eq!(health(i).await["status"], "healthy");
    }

    redis.stop();
    for i in 0..3 {
        eventually("every replica reports the store down", async || {
            let h = health(i).await;
            h["status"] == "degraded" && h["checks"]["redis"]["status"] == "down"
        })
        .await;
    }
    // Fail-open: requests keep flowing, without rate-limit headers while the store is down.
    let during = served();
    eventually("requests pass while Redis is down", async || {
        served() > during + 60
    })
    .await;
    let r = c
        .get(format!("{}/api/v1/jobs/probe", urls[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit").is_none());

    redis.restart().await;
    for i in 0..3 {
        eventually("every replica recovers by itself", async || {
            health(i).await["status"] == "healthy"
        })
        .await;
    }
    for url in &urls {
        eventually("limits apply again", async || {
            let r = c
                .get(format!("{url}/api/v1/jobs/probe"))
                .send()
                .await
                .unwrap();
            r.headers().contains_key("x-ratelimit-limit")
        })
        .await;
    }
    let after = served();
    eventually("traffic flows after the restart", async || {
        served() > after + 30
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|o| o.1 == 200),
        "no request failed on any replica: {:?}",
        seen.iter()
            .filter(|o| o.1 != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
}
