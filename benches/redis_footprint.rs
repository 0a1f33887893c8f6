//! Redis memory the gateway's own keys take, checked against the ACIP integration guide's
//! estimate (~200 B per rate-limited client, ~5 KB per cached 5 KB response, ~6.3 MB in all
//! for 1000 clients and 1000 entries). A real `redis-server` on a free port; the gateway with
//! rate-limit and cache on; `used_memory` before and after. `cargo bench --bench
//! redis_footprint` (FOOTPRINT_CLIENTS, FOOTPRINT_ENTRIES, FOOTPRINT_HITS, FOOTPRINT_BODY_BYTES).
use fred::interfaces::{ClientLike, ServerInterface, SetsInterface};
use wasmgate_testkit::load::env_knob;
use wasmgate_testkit::{gateway, upstream, RedisServer};

async fn used_memory(c: &fred::clients::Client) -> i64 {
    let info: String = c
        .custom(fred::cmd!("INFO"), vec!["memory"])
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

async fn db_size(c: &fred::clients::Client) -> i64 {
    c.dbsize().await.expect("DBSIZE")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients = env_knob("FOOTPRINT_CLIENTS", 1000);
    let entries = env_knob("FOOTPRINT_ENTRIES", 1000);
    let hits = env_knob("FOOTPRINT_HITS", 10);
    let body_bytes = env_knob("FOOTPRINT_BODY_BYTES", 5000) as usize;
    let body: &'static str = Box::leak("x".repeat(body_bytes).into_boxed_str());

    let redis = RedisServer::start().await;
    let up = upstream().route("/models", body).spawn().await;
    let gw = gateway()
        .upstream(&up)
        .redis(&redis.url())
        .config(|c| {
            c.forwarded.enabled = true;
            c.forwarded.trusted_proxies = vec!["127.0.0.1".into()];
            c.rate_limit.enabled = true;
            c.rate_limit.max_requests = 1_000_000;
            c.rate_limit.window_ms = 600_000;
            c.cache.enabled = true;
            c.cache.paths = vec!["/models".into()];
            c.cache.ttl_seconds = 600;
            c.cache.max_size = entries.max(1000);
        })
        .spawn()
        .await;
    let r = redis.client().await;
    wasmgate_testkit::install_crypto_provider();
    let http = reqwest::Client::new();
    let client_ip = |i: u64| format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);

    // Rate-limit state: `clients` callers, `hits` requests each in one window (sliding: one
    // sorted-set member per hit), on a path the cache does not store.
    let base = used_memory(&r).await;
    let keys_before = db_size(&r).await;
    for i in 0..clients {
        for _ in 0..hits {
            let resp = http
                .get(gw.url("/api/v1/jobs/stats/queue"))
                .header("x-forwarded-for", client_ip(i))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
    }
    let after_limits = used_memory(&r).await;
    let limit_keys = db_size(&r).await - keys_before;
    assert_eq!(limit_keys as u64, clients, "one rate-limit key per client");

    // Cache state: `entries` distinct cached responses of `body_bytes`, one caller.
    for i in 0..entries {
        let resp = http
            .get(gw.url(&format!("/models/{i}")))
            .header("x-forwarded-for", "10.255.255.254")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-gateway-cache"], "MISS");
        assert_eq!(resp.bytes().await.unwrap().len(), body_bytes);
    }
    let after_cache = used_memory(&r).await;
    let cached: i64 = r.scard("gateway:cache:keys").await.unwrap();
    assert_eq!(cached as u64, entries, "every response stored and indexed");

    let per_client = (after_limits - base) as f64 / clients as f64;
    let per_entry = (after_cache - after_limits) as f64 / entries as f64;
    println!(
        "redis_footprint: {clients} clients x {hits} hits (sliding window), {entries} cached responses of {body_bytes} B"
    );
    println!("  rate limit: {per_client:>8.0} B per client   (seeds' estimate: ~200 B)");
    println!(
        "  cache:      {per_entry:>8.0} B per entry    ({:.2}x the body; seeds' estimate: ~5 KB for ~5 KB)",
        per_entry / body_bytes as f64
    );
    println!(
        "  total:      {:>8.2} MB for these keys (seeds' estimate for 1000 clients + 1000 entries: ~5.2 MB of its 6.3 MB)",
        (after_cache - base) as f64 / 1e6
    );
    drop(gw);
}
